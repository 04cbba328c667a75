"""End to end on a tiny corpus, with real SentencePiece and sacreBLEU: a tiny Transformer overfits 30
synthetic pairs to BLEU > 90, beam search scores at least as well as greedy, and the checkpoint it
leaves translates and evaluates through the CLI."""
import io
import json
import math

import pytest
import torch

from revsearch import cli
from revsearch.data.batching import encode_pairs
from revsearch.data.corpus import write_corpus
from revsearch.data.synthetic import SyntheticConfig, generate_pairs
from revsearch.data.tokenizer import SentencePieceConfig, train_tokenizer
from revsearch.models.transformer import StandardTransformer, TransformerConfig
from revsearch.train.checkpoint import load_for_inference
from revsearch.train.decoding import DecodeConfig, beam_search, greedy_decode, translate, translate_ids
from revsearch.train.evaluate import EvalConfig, evaluate_model, score
from revsearch.train.trainer import TrainConfig, Trainer

COMMANDS = ["data", "train", "translate", "evaluate"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("overfit")
    pairs = generate_pairs(30, seed=7, config=SyntheticConfig(max_words=12))
    write_corpus(d / "corpus", "en", "de", {"train": pairs, "valid": pairs, "test": pairs})
    tok = train_tokenizer([d / "corpus" / "train.en", d / "corpus" / "train.de"],
                          SentencePieceConfig(vocab_size=150, cache_dir=str(d / "cache")))
    enc = encode_pairs(tok, pairs)
    torch.manual_seed(0)
    model = StandardTransformer(TransformerConfig(tok.vocab_size, embed_dim=64, hidden=64, encoder_layers=2,
                                                  decoder_layers=2, heads=4, ffn_dim=128, dropout=0.0))
    result = Trainer(model, enc, enc, TrainConfig(lr=5e-3, warmup_steps=20, max_steps=150, max_tokens=4000,
                                                  valid_every=25, quiet=True, save_dir=str(d / "ckpt")),
                     spm_model=tok.model_proto).train()
    yield dict(dir=d, pairs=pairs, tok=tok, model=model, result=result)
    torch.set_num_threads(before)


def test_tiny_model_overfits_to_bleu_above_90(overfit):
    res = evaluate_model(overfit["model"], overfit["tok"], overfit["pairs"],
                         EvalConfig(decode=DecodeConfig(beam_size=1)))
    assert res.bleu > 90, res.bleu_detail
    assert res.chrf > 90
    assert res.bleu_signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert res.chrf_signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_beam_at_least_as_good_as_greedy(overfit):
    m, tok, pairs = overfit["model"], overfit["tok"], overfit["pairs"]
    greedy = evaluate_model(m, tok, pairs, EvalConfig(decode=DecodeConfig(beam_size=1)))
    beam = evaluate_model(m, tok, pairs, EvalConfig(decode=DecodeConfig(beam_size=4)))
    assert beam.bleu >= greedy.bleu - 1e-9 and beam.bleu > 90


def test_batched_decoding_matches_one_by_one(overfit):
    m, tok, pairs = overfit["model"], overfit["tok"], overfit["pairs"]
    sources = [tok.encode_src(s) for s, _ in pairs[:6]]
    width = max(map(len, sources))
    batch = torch.tensor([s + [0] * (width - len(s)) for s in sources])
    for fn, cfg in ((greedy_decode, DecodeConfig(beam_size=1)), (beam_search, DecodeConfig(beam_size=3))):
        together = fn(m, batch, cfg)
        alone = [fn(m, torch.tensor([s]), cfg)[0] for s in sources]
        assert together == alone
    # the length limit holds
    for fn in (greedy_decode, beam_search):
        short = fn(m, batch, DecodeConfig(beam_size=2, max_len_ratio=0.1, max_len_extra=1))
        assert all(len(h) + 1 <= math.ceil(0.1 * len(s)) + 1 for h, s in zip(short, sources))
    assert translate(m, tok, []) == []


def test_cached_decoding_identical_on_the_trained_checkpoint(overfit):
    """Incremental decoding of the trained checkpoint: token-identical greedy and beam outputs on every
    pair, per-step logits within 1e-5 of the uncached decoder (teacher-forced on the references)."""
    model, tok, _ = load_for_inference(overfit["result"].checkpoints["best"])
    sources = [tok.encode_src(s) for s, _ in overfit["pairs"]]
    for beam in (1, 4):
        cached = translate_ids(model, sources, DecodeConfig(beam_size=beam))
        assert cached == translate_ids(model, sources, DecodeConfig(beam_size=beam, cached=False))
    width = max(map(len, sources[:8]))
    src = torch.tensor([s + [0] * (width - len(s)) for s in sources[:8]])
    targets = [tok.encode_tgt(t)[:-1] for _, t in overfit["pairs"][:8]]
    length = min(map(len, targets))
    tgt = torch.tensor([t[:length] for t in targets])
    with torch.no_grad():
        memory, pad = model.encode(src)
        full = model.decode(tgt, memory, pad)
        state = model.start_decoding(memory, pad)
        for t in range(length):
            torch.testing.assert_close(model.decode_step(tgt[:, t:t + 1], state), full[:, t], atol=1e-5, rtol=0)


def test_score_files_and_errors():
    b, c, bsig, _ = score(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert b.score == pytest.approx(100.0) and "tok:13a" in bsig
    with pytest.raises(Exception, match="1 hypotheses but 2 references"):
        score(["a"], ["a", "b"])


def test_checkpoint_translates_on_its_own(overfit):
    ckpt = overfit["result"].checkpoints["best"]
    model, tok, state = load_for_inference(ckpt)
    src, tgt = overfit["pairs"][0]
    assert translate(model, tok, [src], DecodeConfig(beam_size=2)) == [tgt]
    assert state["model_spec"]["builder"] == "revsearch.models.transformer:build_from_config"


def test_cli_translate_stdin_and_file(overfit, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "COMMANDS", COMMANDS)
    ckpt = overfit["result"].checkpoints["best"]
    pairs = overfit["pairs"]
    monkeypatch.setattr("sys.stdin", io.StringIO(pairs[1][0] + "\n\n" + pairs[2][0] + "\n"))
    assert cli.main(["translate", "--checkpoint", ckpt, "--beam", "1"]) == 0
    assert capsys.readouterr().out == pairs[1][1] + "\n\n" + pairs[2][1] + "\n"
    (tmp_path / "in.txt").write_text(pairs[3][0] + "\n", encoding="utf-8")
    assert cli.main(["translate", "--checkpoint", ckpt, "--input", str(tmp_path / "in.txt"),
                     "--output", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == pairs[3][1] + "\n"
    assert "translated 1 sentences in" in capsys.readouterr().err   # the speed line goes to stderr
    rc = cli.main(["translate", "--checkpoint", ckpt, "--input", str(tmp_path / "missing.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"revsearch: error: {tmp_path / 'missing.txt'}: file not found\n"


def test_cli_evaluate(overfit, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "COMMANDS", COMMANDS)
    ckpt = overfit["result"].checkpoints["best"]
    rc = cli.main(["evaluate", "--checkpoint", ckpt, "--corpus", str(overfit["dir"] / "corpus"),
                   "--beam", "1", "--json", str(tmp_path / "s.json"), "--output", str(tmp_path / "hyp")])
    out = capsys.readouterr().out
    assert rc == 0 and "BLEU signature: nrefs:1|case:mixed" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["bleu"] > 90 and scores["sentences"] == 30
    assert "decoded 30 sentences in" in out and scores["sentences_per_s"] > 0 and scores["seconds"] > 0
    rc = cli.main(["evaluate", "--checkpoint", ckpt, "--corpus", str(overfit["dir"] / "corpus"), "--beam", "2",
                   "--limit", "5", "--uncached", "--json", str(tmp_path / "u.json")])
    capsys.readouterr()
    assert rc == 0 and json.loads((tmp_path / "u.json").read_text())["sentences"] == 5
    rc = cli.main(["evaluate", "--hyp", str(tmp_path / "hyp"), "--ref", str(overfit["dir"] / "corpus" / "test.de")])
    assert rc == 0 and f"BLEU = {scores['bleu']:.2f}" in capsys.readouterr().out
    rc = cli.main(["evaluate", "--checkpoint", ckpt])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--corpus" in err


def test_cli_train_baseline_tiny(tmp_path, monkeypatch, capsys, overfit):
    monkeypatch.setattr(cli, "COMMANDS", COMMANDS)
    rc = cli.main(["train-baseline", "--corpus", str(overfit["dir"] / "corpus"), "--out", str(tmp_path / "run"),
                   "--size", "tiny", "--vocab-size", "150", "--max-steps", "6", "--valid-every", "3",
                   "--cache-dir", str(overfit["dir"] / "cache"), "--quiet", "--beam", "1", "--average-last", "2",
                   "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "test BLEU" in out and "BLEU signature" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["train"]["steps"] == 6 and res["eval"]["weights"] == "avg" and res["vocab_size"] == 150
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / "test.hyp").is_file()
    rc = cli.main(["train-baseline", "--corpus", str(tmp_path / "nowhere"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"revsearch: error: {tmp_path / 'nowhere'}: corpus directory not found\n", err
