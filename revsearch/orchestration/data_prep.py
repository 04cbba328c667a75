"""Data for a sweep: prepared once on the driver (corpus written and validated, SentencePiece trained
into a shared cache), then loaded cheaply by every trial from absolute paths.

Trials may sample a different vocabulary size; the tokenizer cache is keyed by content and options and
written atomically, so concurrent trials asking for the same model share one training.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ..data import (CorpusConfig, SentencePieceConfig, SyntheticConfig, Tokenizer, encode_pairs,
                    load_corpus, split_for_search, train_tokenizer, write_synthetic)
from ..data.batching import EncodedPair, filter_long
from ..errors import DataError


@dataclass(frozen=True)
class PreparedData:
    corpus_dir: str
    src_lang: str
    tgt_lang: str
    cache_dir: str            # SentencePiece models live in <cache_dir>/spm
    description: str

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def prepare_data(kind: str, storage: str, *, synthetic: Optional[dict] = None, path: Optional[str] = None,
                 src_lang: Optional[str] = None, tgt_lang: Optional[str] = None,
                 pair: Optional[str] = None, log: Callable[[str], None] = print,
                 max_words: int = 250) -> PreparedData:
    """Make the corpus exist on disk and check it loads with the trials' length filter (``max_words``:
    the sweep's ``data.max_len``, which trials also apply to words) and still has the training pairs the
    search needs; returns where it is."""
    storage = os.path.abspath(storage)
    if kind == "synthetic":
        config = SyntheticConfig(**(synthetic or {}))
        corpus_dir = os.path.join(storage, "data", f"synthetic-{_digest(asdict(config))}")
        if not os.path.isfile(os.path.join(corpus_dir, "meta.json")):
            log(f"generating the synthetic en-de pair ({config.train} train pairs) in {corpus_dir}")
            write_synthetic(corpus_dir, config)
        src_lang, tgt_lang, description = "en", "de", f"synthetic(train={config.train}, seed={config.seed})"
    elif kind == "corpus":
        if not path:
            raise DataError("data.path: a corpus directory is required for data.kind 'corpus'")
        corpus_dir, description = os.path.abspath(path), f"corpus {path}"
    elif kind == "wmt14":
        from ..data.wmt14 import prepare_wmt14
        corpus_dir = os.path.join(storage, "data", f"wmt14-{pair}")
        if not os.path.isfile(os.path.join(corpus_dir, "meta.json")):
            log(f"preparing WMT'14 {pair} in {corpus_dir} (downloads the training corpora)")
            prepare_wmt14(pair, corpus_dir, log=log)
        src_lang, tgt_lang = pair.split("-")
        description = f"wmt14 {pair}"
    else:
        raise DataError(f"data.kind: unknown kind {kind!r}; valid: synthetic, corpus, wmt14")
    corpus = load_corpus(CorpusConfig(dir=corpus_dir, src_lang=src_lang, tgt_lang=tgt_lang, max_words=max_words))
    for message in corpus.messages():
        log(message)
    cache_dir = os.path.join(storage, "cache")
    return PreparedData(corpus_dir, corpus.src_lang, corpus.tgt_lang, cache_dir, description)


def shortest_max_len(sweep) -> int:
    """The smallest ``max_len`` a trial of ``sweep`` can get (``data.max_len``, or the least value a
    ``space`` parameter can sample; a derived one is not bounded here): the strictest length filter."""
    lengths = [sweep.data.max_len]
    param = sweep.space.get("max_len")
    if param is not None and param.type == "choice":
        lengths += [int(v) for v in param.values]
    elif param is not None and param.low is not None:
        lengths.append(int(param.low))
    return min(lengths)


@functools.lru_cache(maxsize=4)
def load_prepared_corpus(prepared: PreparedData, max_words: int):
    """The prepared corpus as text pairs, sentences longer than ``max_words`` dropped from training."""
    return load_corpus(CorpusConfig(dir=prepared.corpus_dir, src_lang=prepared.src_lang,
                                    tgt_lang=prepared.tgt_lang, max_words=max_words))


def tokenizer_for(prepared: PreparedData, vocab_size: int, model_type: str = "unigram",
                  log: Optional[Callable[[str], None]] = None) -> Tokenizer:
    src, tgt = (os.path.join(prepared.corpus_dir, f"train.{lang}")
                for lang in (prepared.src_lang, prepared.tgt_lang))
    return train_tokenizer([src, tgt], SentencePieceConfig(vocab_size=vocab_size, model_type=model_type,
                                                           cache_dir=prepared.cache_dir), log=log)


@dataclass
class EncodedData:
    tokenizer: Tokenizer
    train: List[EncodedPair]
    valid: List[EncodedPair]
    test_pairs: List[Tuple[str, str]]
    valid_pairs: List[Tuple[str, str]]
    train_pairs: List[Tuple[str, str]]


def encoded_data(prepared: PreparedData, vocab_size: int, model_type: str = "unigram",
                 max_len: int = 128, log: Optional[Callable[[str], None]] = None) -> EncodedData:
    corpus = load_prepared_corpus(prepared, max_len)
    tokenizer = tokenizer_for(prepared, vocab_size, model_type, log)
    train = encode_pairs(tokenizer, corpus.train)
    keep, _ = filter_long(train, max_len)
    return EncodedData(tokenizer, [train[i] for i in keep], encode_pairs(tokenizer, corpus.valid),
                       corpus.test, corpus.valid, [corpus.train[i] for i in keep])


def search_split(data: EncodedData, arch_fraction: float, seed: int) -> Tuple[List[EncodedPair], List[EncodedPair]]:
    """(weight part, architecture part), disjoint by sentence pair (docs/method.md, "Search")."""
    indices = list(range(len(data.train)))
    weight_idx, arch_idx = split_for_search(indices, arch_fraction, seed,
                                            key=lambda i: data.train_pairs[i])
    return [data.train[i] for i in weight_idx], [data.train[i] for i in arch_idx]
