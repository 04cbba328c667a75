"""Translation throughput: cached (incremental) vs uncached decoding, beam 4 and greedy, for a derived
model and a Transformer of equal parameter count (within 3%, sized by stage 2's rule,
``search.sizing.size_transformer``).

Input: the first ``--lines`` (500) source lines of newstest2014 en->de from the shared data folder; the
run is skipped cleanly (exit 0, JSON with ``"skipped"``) when it is absent. ``--synthetic N`` uses N
generated sentences instead (the smoke test). A SentencePiece model is trained on the newstest lines
(cached between runs). The models are randomly initialised (dropout off in eval): speed does not depend
on the weights, but the output length does, and a random model runs to the length limit, so the limit
is set to the source length (``--max-len-ratio 1.0 --max-len-extra 0``): outputs are then as long as
newstest references are on average instead of 1.5x + 10 longer, which would inflate the speed-up.

Reported per (model, beam, cached): sentences/s, output tokens/s (end token included), and whether the
outputs are token-identical to the uncached reference. CPU, one thread by default.

    python experiments/bench_decoding.py --json results/bench_decoding.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# On a shared machine idle OpenMP threads spin and distort timings; must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from revsearch.errors import ConfigError  # noqa: E402
from revsearch.models.split_seq2seq import SplitSeq2SeqConfig  # noqa: E402
from revsearch.models.transformer import StandardTransformer, count_parameters  # noqa: E402
from revsearch.search.derive import build_derived_model  # noqa: E402
from revsearch.search.genotype import Genotype  # noqa: E402
from revsearch.train.decoding import DecodeConfig, translate_ids  # noqa: E402

NEWSTEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                        "wmt14_newstest2014", "en-de")
TOLERANCE = 0.03   # the Transformer's count within 3% of the derived model's (retrain.size's default)
#: a plausible searched cell: attention and (dynamic) convolutions in both stacks
GENOTYPE = {"schema_version": 1, "splits": 2, "pooling": "max",
            "encoder": {"candidates": ["self_attn", "conv7", "ffn"],
                        "cell": [["self_attn", "conv7"], ["ffn", "self_attn"]]},
            "decoder": {"candidates": ["self_attn", "dynconv7", "ffn", "glu"],
                        "cell": [["self_attn", "dynconv7"], ["ffn", "glu"]]}}


def load_lines(args):
    """(source lines, spm training files, description) or None when the data is absent."""
    if args.synthetic:
        from revsearch.data.synthetic import SyntheticConfig, generate_pairs
        pairs = generate_pairs(args.synthetic, seed=0, config=SyntheticConfig(max_words=12))
        return [s for s, _ in pairs], pairs, f"{args.synthetic} synthetic sentences"
    src = os.path.join(args.data, "test.en")
    tgt = os.path.join(args.data, "test.de")
    if not (os.path.isfile(src) and os.path.isfile(tgt)):
        return None
    with open(src, encoding="utf-8") as f:
        lines = [line.strip() for line in f][: args.lines]
    return lines, (src, tgt), f"newstest2014 en-de, first {len(lines)} source lines"


def train_spm(files, args, tmp):
    from revsearch.data.tokenizer import SentencePieceConfig, train_tokenizer
    if isinstance(files, list):       # synthetic pairs: write them out
        src, tgt = os.path.join(tmp, "s.en"), os.path.join(tmp, "s.de")
        with open(src, "w", encoding="utf-8") as f:
            f.write("".join(s + "\n" for s, _ in files))
        with open(tgt, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for _, t in files))
        files = (src, tgt)
    return train_tokenizer(list(files), SentencePieceConfig(vocab_size=args.vocab_size, cache_dir=args.cache_dir))


def build_models(vocab: int, args):
    """The derived model at ``--hidden`` and the Transformer sized to its parameter count by stage 2's own
    rule (``search.sizing.size_transformer``: a width that is a multiple of its heads with FFN 4x, else the
    FFN width solved for; the heads are ``baseline_heads`` of the reference width, as stage 2 gives the
    baseline), so the benchmark compares the models a run would compare."""
    from revsearch.search.sizing import baseline_heads, size_transformer, transformer_config
    torch.manual_seed(0)
    derived = build_derived_model(Genotype.from_dict(GENOTYPE, "benchmark genotype"), SplitSeq2SeqConfig(
        vocab, hidden=args.hidden, splits=2, embed_dim=args.embed_dim, encoder_layers=args.layers,
        decoder_layers=args.layers, heads=args.heads, dropout=0.1, max_len=1024)).eval()
    reference = {"hidden": args.hidden, "embed_dim": args.embed_dim, "heads": baseline_heads(args.hidden),
                 "encoder_layers": args.layers, "decoder_layers": args.layers, "dropout": 0.1}
    sized = size_transformer("transformer", reference, vocab, count_parameters(derived), TOLERANCE,
                             what="bench_decoding.py")
    torch.manual_seed(0)
    transformer = StandardTransformer(transformer_config(sized.model, vocab)).eval()
    return {"derived": derived, "transformer": transformer}


@torch.no_grad()
def normalised_score(model, source, hyp, alpha: float) -> float:
    """The beam-search score of ``hyp`` (+ end token) under the uncached decoder: summed log-probabilities
    over the GNMT length penalty."""
    from revsearch.data.tokenizer import BOS_ID, EOS_ID
    src = torch.tensor([source])
    memory, pad = model.encode(src)
    tgt = torch.tensor([[BOS_ID] + hyp])
    logp = torch.log_softmax(model.decode(tgt, memory, pad)[0].float(), -1)
    total = float(logp.gather(1, torch.tensor([hyp + [EOS_ID]]).t()).sum())
    return total / (((5.0 + len(hyp) + 1) / 6.0) ** alpha if alpha else 1.0)


def mismatches(model, sources, cached, reference, cfg):
    """How many outputs differ, and the largest score gap between the two hypotheses of a differing
    sentence: gaps at rounding level (~1e-5) are near-ties that float32 may order either way, a real
    difference in the decoder would show as a large gap."""
    differ = [i for i, (a, b) in enumerate(zip(cached, reference)) if a != b]
    gap = max((abs(normalised_score(model, sources[i], cached[i], cfg.length_penalty)
                   - normalised_score(model, sources[i], reference[i], cfg.length_penalty)) for i in differ),
              default=0.0)
    return len(differ), gap


def timed(model, sources, cfg):
    start = time.perf_counter()
    out = translate_ids(model, sources, cfg)
    return out, time.perf_counter() - start


def _identity(record) -> str:
    if not record["cached"]:
        return "(reference)"
    if record["identical_to_uncached"]:
        return "yes"
    return (f"no: {record['differing_sentences']}/{record['sentences']} sentences, "
            f"score gap <= {record['max_score_gap']:.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=NEWSTEST, help="folder with test.en / test.de")
    p.add_argument("--lines", type=int, default=500)
    p.add_argument("--synthetic", type=int, default=0, help="use N generated sentences instead (smoke test)")
    p.add_argument("--beams", default="4,1")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-len-ratio", type=float, default=1.0)
    p.add_argument("--max-len-extra", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=None, help="SentencePiece cache (default: revsearch's)")
    p.add_argument("--json", help="write the records here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = load_lines(args)
    if loaded is None:
        reason = f"newstest2014 not found under {os.path.abspath(args.data)}"
        print(f"skipped: {reason}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"records": [], "skipped": reason}, f, indent=2)
        return 0
    lines, spm_files, description = loaded
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_spm(spm_files, args, tmp)
    sources = [tokenizer.encode_src(line) for line in lines]
    try:
        models = build_models(tokenizer.vocab_size, args)
    except ConfigError as err:   # no Transformer width lands within 3% of the derived model: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    params = {name: count_parameters(m) for name, m in models.items()}
    n_tokens = sum(map(len, sources))
    print(f"{description}; {n_tokens} source tokens (mean {n_tokens / len(sources):.1f}); vocab "
          f"{tokenizer.vocab_size}; params derived {params['derived']:,}, transformer {params['transformer']:,} "
          f"(hidden {models['transformer'].config.hidden}, ffn {models['transformer'].config.ffn_dim}, "
          f"heads {models['transformer'].config.heads}); "
          f"{args.threads} thread(s)", flush=True)

    records = []
    for name, model in models.items():
        for beam in (int(b) for b in args.beams.split(",")):
            runs = {}
            for cached in (False, True):
                cfg = DecodeConfig(beam_size=beam, max_tokens=args.max_tokens, max_len_ratio=args.max_len_ratio,
                                   max_len_extra=args.max_len_extra, cached=cached)
                translate_ids(model, sources[:4], cfg)          # warm-up: first-call allocations
                out, seconds = timed(model, sources, cfg)
                runs[cached] = (out, seconds)
                tokens = sum(len(h) + 1 for h in out)
                records.append({"model": name, "beam": beam, "cached": cached, "sentences": len(sources),
                                "seconds": seconds, "sentences_per_s": len(sources) / seconds,
                                "tokens_per_s": tokens / seconds, "output_tokens": tokens,
                                "params": params[name],
                                "identical_to_uncached": True if not cached else out == runs[False][0]})
                if cached:
                    records[-1]["differing_sentences"], records[-1]["max_score_gap"] = mismatches(
                        model, sources, out, runs[False][0], cfg)
                print(f"  {name:11s} beam {beam} {'cached  ' if cached else 'uncached'} {seconds:7.1f} s",
                      flush=True)

    speedup = {}
    print()
    print("| model | beam | decoding | sentences/s | tokens/s | speed-up | identical to uncached |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        base = next(x for x in records if x["model"] == r["model"] and x["beam"] == r["beam"] and not x["cached"])
        s = base["seconds"] / r["seconds"]
        if r["cached"]:
            speedup[f"{r['model']}/beam{r['beam']}"] = s
        print(f"| {r['model']} | {r['beam']} | {'cached' if r['cached'] else 'uncached'} | "
              f"{r['sentences_per_s']:.2f} | {r['tokens_per_s']:.1f} | {s:.2f}x | {_identity(r)} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"data": description, "threads": args.threads, "params": params,
                       "transformer_hidden": models["transformer"].config.hidden,
                       "transformer_ffn_dim": models["transformer"].config.ffn_dim,
                       "transformer_heads": models["transformer"].config.heads,
                       "max_len_ratio": args.max_len_ratio, "max_len_extra": args.max_len_extra,
                       "speedup": speedup, "records": records}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
