"""The joint SentencePiece model: special ids, round trip, content-hash cache, races, small corpora."""
import multiprocessing as mp

import pytest

from revsearch.data.synthetic import generate_pairs
from revsearch.data.tokenizer import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceConfig, Tokenizer,
                                      train_tokenizer)
from revsearch.errors import DataError


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    pairs = generate_pairs(300, seed=3)
    (d / "train.en").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (d / "train.de").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return d, pairs


def test_special_ids_and_round_trip(text_files, tmp_path):
    d, pairs = text_files
    tok = train_tokenizer([d / "train.en", d / "train.de"], SentencePieceConfig(vocab_size=300, cache_dir=str(tmp_path)))
    assert tok.vocab_size == 300
    assert [tok.sp.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)] == ["<pad>", "<unk>", "<s>", "</s>"]
    src, tgt = pairs[0]
    s_ids, t_ids = tok.encode_src(src), tok.encode_tgt(tgt)
    assert s_ids[-1] == EOS_ID and BOS_ID not in s_ids
    assert t_ids[0] == BOS_ID and t_ids[-1] == EOS_ID
    assert tok.decode(s_ids) == src and tok.decode(t_ids) == tgt
    assert tok.decode(t_ids + [5, 6, PAD_ID]) == tgt          # everything after eos is dropped
    assert "ä" in tok.decode(tok.encode("Bäume"))               # umlauts covered (character_coverage=1)
    assert Tokenizer(tok.model_proto).encode_src(src) == s_ids  # rebuilt from bytes (checkpoints)


def test_cache_reuse_and_key(text_files, tmp_path):
    d, _ = text_files
    files = [d / "train.en", d / "train.de"]
    logs = []
    cfg = SentencePieceConfig(vocab_size=200, cache_dir=str(tmp_path))
    a = train_tokenizer(files, cfg, log=logs.append)
    b = train_tokenizer(files, cfg, log=logs.append)
    assert "trained" in logs[0] and "from cache" in logs[1] and a.path == b.path
    assert a.model_proto == b.model_proto
    assert len(list((tmp_path / "spm").glob("*.model"))) == 1
    assert not list((tmp_path / "spm").glob("*.tmp"))
    c = train_tokenizer(files, SentencePieceConfig(vocab_size=200, model_type="bpe", cache_dir=str(tmp_path)))
    assert c.path != a.path                                       # options are part of the key
    (tmp_path / "other.txt").write_text((d / "train.en").read_text(encoding="utf-8") + "extra line\n", encoding="utf-8")
    e = train_tokenizer([tmp_path / "other.txt", files[1]], cfg)
    assert e.path != a.path                                       # so is the content


def test_damaged_cache_entry_is_retrained(text_files, tmp_path):
    d, _ = text_files
    cfg = SentencePieceConfig(vocab_size=150, cache_dir=str(tmp_path))
    a = train_tokenizer([d / "train.en"], cfg)
    with open(a.path, "wb") as f:
        f.write(b"garbage")
    b = train_tokenizer([d / "train.en"], cfg)
    assert b.vocab_size == 150 and Tokenizer.load(b.path).vocab_size == 150


def _race(args):
    files, cache = args
    tok = train_tokenizer(files, SentencePieceConfig(vocab_size=250, cache_dir=cache))
    return tok.path, tok.vocab_size


def test_two_processes_racing_share_one_model(text_files, tmp_path):
    d, _ = text_files
    files = [str(d / "train.en"), str(d / "train.de")]
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_race, [(files, str(tmp_path))] * 2)
    assert results[0] == results[1]
    assert len(list((tmp_path / "spm").glob("*.model"))) == 1
    assert not list((tmp_path / "spm").glob(".*tmp"))
    assert Tokenizer.load(results[0][0]).vocab_size == 250


def test_small_corpus_vocab(tmp_path):
    (tmp_path / "tiny.txt").write_text("hello world\nfoo bar baz\n" * 5)
    tok = train_tokenizer([tmp_path / "tiny.txt"], SentencePieceConfig(vocab_size=1000, cache_dir=str(tmp_path)))
    assert 4 < tok.vocab_size < 1000                           # shrinks instead of failing
    with pytest.raises(DataError, match=r"vocabulary size 1000 is too large .*use a smaller --vocab-size"):
        train_tokenizer([tmp_path / "tiny.txt"],
                        SentencePieceConfig(vocab_size=1000, hard_vocab_limit=True, cache_dir=str(tmp_path / "x")))


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        train_tokenizer([tmp_path / "missing.txt"], SentencePieceConfig(cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="model_type"):
        SentencePieceConfig(model_type="word")
    (tmp_path / "bad.model").write_bytes(b"\x00\x01not a model")
    with pytest.raises(DataError, match="bad.model: not a valid SentencePiece model"):
        Tokenizer.load(tmp_path / "bad.model")
