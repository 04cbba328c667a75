"""A joint SentencePiece model over both sides of the training text, cached by content.

Ids are fixed across the project: pad=0, unk=1, bos=2, eos=3. The model is trained in memory and written
to ``cache_dir/<hash>.model``, where the hash covers the training files' bytes and every option, so a
rerun (or another process) with the same text and options loads it instead of training again. Writing
is atomic (temporary file + ``os.replace``): two processes racing both train and the last rename wins
with an identical file; a reader never sees half a model.

``Tokenizer`` wraps the processor: source ids end with eos, target ids are ``bos ... eos`` (the trainer
shifts them), ``decode`` drops everything from the first eos and the special ids.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import sentencepiece as spm

from ..errors import DataError

from ..special_tokens import BOS_ID, EOS_ID, PAD_ID, SPECIAL_IDS, UNK_ID  # noqa: F401 - re-exported


def default_cache_dir() -> str:
    return os.environ.get("REVSEARCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "revsearch"))


@dataclass
class SentencePieceConfig:
    vocab_size: int = 8000
    model_type: str = "unigram"          # unigram | bpe
    character_coverage: float = 1.0
    input_sentence_size: int = 2_000_000  # lines sampled for training (0 = all)
    max_sentence_length: int = 4192      # bytes; longer lines are skipped by the trainer
    hard_vocab_limit: bool = False       # False: a small corpus gives a smaller vocabulary, not an error
    seed: int = 0
    cache_dir: Optional[str] = None      # None: $REVSEARCH_CACHE or ~/.cache/revsearch; <dir>/spm/

    def __post_init__(self):
        if self.model_type not in ("unigram", "bpe"):
            raise DataError(f"SentencePiece model_type must be 'unigram' or 'bpe', got {self.model_type!r}")
        if self.vocab_size < 8:
            raise DataError(f"SentencePiece vocab_size must be >= 8, got {self.vocab_size}")

    def options(self) -> dict:
        d = asdict(self)
        d.pop("cache_dir")
        return d


class Tokenizer:
    """SentencePiece encode/decode with the project's special ids."""

    def __init__(self, model_proto: bytes, path: Optional[str] = None):
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as err:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError variants
            raise DataError(f"{path or 'SentencePiece model'}: not a valid SentencePiece model ({err})") from None
        self.model_proto = bytes(model_proto)
        self.path = path
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(f"{path or 'SentencePiece model'}: special ids pad/unk/bos/eos are {ids}, "
                            f"expected (0, 1, 2, 3)")

    @classmethod
    def load(cls, path: os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: SentencePiece model not found")
        return cls(path.read_bytes(), str(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode_src(self, text: str) -> List[int]:
        return self.sp.encode(text, add_eos=True)

    def encode_tgt(self, text: str) -> List[int]:
        return self.sp.encode(text, add_bos=True, add_eos=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = True) -> List[int]:
        return self.sp.encode(text, add_bos=add_bos, add_eos=add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = True) -> List[List[int]]:
        return self.sp.encode(list(texts), add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in SPECIAL_IDS:
                out.append(i)
        return self.sp.decode(out)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> List[str]:
        return [self.decode(ids) for ids in batch]

    def pieces(self, text: str) -> List[str]:
        return self.sp.encode(text, out_type=str)


def _hash_inputs(files: Sequence[os.PathLike], options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise DataError(f"{p}: file not found (SentencePiece training input)")
        h.update(b"\0file\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:24]


def _iter_lines(files: Sequence[os.PathLike]) -> Iterator[str]:
    for f in files:
        with open(f, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    yield line


def train_tokenizer(files: Sequence[os.PathLike], config: Optional[SentencePieceConfig] = None,
                    log=None) -> Tokenizer:
    """Train (or load from the cache) a joint SentencePiece model on ``files`` (give both sides of the
    training split). ``log`` (a callable taking a str) hears about cache hits and a reduced vocabulary."""
    config = config or SentencePieceConfig()
    if not files:
        raise DataError("SentencePiece: no training files given")
    key = _hash_inputs(files, config.options())
    cache = Path(config.cache_dir or default_cache_dir()) / "spm"
    path = cache / f"{key}.model"
    if path.is_file():
        try:
            tok = Tokenizer.load(path)
            if log:
                log(f"SentencePiece model from cache: {path} (vocab {tok.vocab_size})")
            return tok
        except DataError:
            pass  # a damaged cache entry is retrained and replaced below
    buf = io.BytesIO()
    spm.set_random_generator_seed(config.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_iter_lines(files), model_writer=buf,
            vocab_size=config.vocab_size, model_type=config.model_type,
            character_coverage=config.character_coverage,
            input_sentence_size=config.input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=config.max_sentence_length, hard_vocab_limit=config.hard_vocab_limit,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            num_threads=min(4, os.cpu_count() or 1), minloglevel=2,
        )
    except RuntimeError as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise DataError(f"SentencePiece: vocabulary size {config.vocab_size} is too large for this small "
                            f"training text ({msg.split('] ')[-1]}); use a smaller --vocab-size") from None
        raise DataError(f"SentencePiece training failed: {msg}") from None
    tok = Tokenizer(buf.getvalue(), str(path))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.{os.getpid()}.{id(buf)}.tmp"
    tmp.write_bytes(tok.model_proto)
    os.replace(tmp, path)
    if log:
        note = (f" (asked for {config.vocab_size}; the text supports only this many)"
                if tok.vocab_size < config.vocab_size else "")
        log(f"SentencePiece model trained: {path} (vocab {tok.vocab_size}{note})")
    return tok
