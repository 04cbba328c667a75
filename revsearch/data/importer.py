"""Import any aligned pair of text files as a corpus directory.

Training files are validated (``read_parallel``), cleaned with the same rules as WMT'14 (whitespace
normalised, empty / over-long / badly length-mismatched pairs dropped and counted). Valid and test come
from their own files when given; otherwise they are held out of the training data, deterministically
for the seed, and the held-out source sentences are removed from train so that scores are honest.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..errors import DataError
from .corpus import Pair, check_language, read_parallel, write_corpus
from .wmt14 import CleanConfig, clean_pairs, normalize


@dataclass
class ImportConfig:
    src: str
    tgt: str
    src_lang: str
    tgt_lang: str
    valid_src: Optional[str] = None
    valid_tgt: Optional[str] = None
    test_src: Optional[str] = None
    test_tgt: Optional[str] = None
    valid_size: int = 1000        # held out of train when no valid files are given
    test_size: int = 1000         # held out of train when no test files are given
    seed: int = 0
    clean: CleanConfig = None

    def __post_init__(self):
        if self.clean is None:
            self.clean = CleanConfig()
        for side in ("valid", "test"):
            given = (getattr(self, f"{side}_src"), getattr(self, f"{side}_tgt"))
            if (given[0] is None) != (given[1] is None):
                raise DataError(f"give both --{side}-src and --{side}-tgt, or neither")
        check_language(self.src_lang, "--src-lang")
        check_language(self.tgt_lang, "--tgt-lang")
        if self.src_lang == self.tgt_lang:
            raise DataError(f"source and target language are both {self.src_lang!r}")

    def check_output(self, out_dir: os.PathLike, option: str = "--out") -> None:
        """Refuse an output directory whose files would overwrite an input file (``--out`` set to the
        folder holding ``train.en``): the input would be truncated before, or while, it is read."""
        written = {os.path.realpath(os.path.join(out_dir, f"{split}.{lang}"))
                   for split in ("train", "valid", "test") for lang in (self.src_lang, self.tgt_lang)}
        written.add(os.path.realpath(os.path.join(out_dir, "meta.json")))
        for name in ("src", "tgt", "valid_src", "valid_tgt", "test_src", "test_tgt"):
            given = getattr(self, name)
            if given is not None and os.path.realpath(given) in written:
                raise DataError(f"{option} {out_dir}: would overwrite the input --{name.replace('_', '-')} "
                                f"{given}; choose another output directory")


def _eval_split(src: str, tgt: str) -> List[Pair]:
    pairs, _ = read_parallel(src, tgt, max_words=None, empty_lines="error")
    return [(normalize(s), normalize(t)) for s, t in pairs]


def import_corpus(config: ImportConfig, out_dir: os.PathLike, log: Callable[[str], None] = print) -> Path:
    config.check_output(out_dir)
    raw, stats = read_parallel(config.src, config.tgt, max_words=None, empty_lines="skip")
    train, counts = clean_pairs(raw, config.clean)
    counts["empty"] += stats.skipped_empty
    splits: Dict[str, List[Pair]] = {}
    held_out: Dict[str, int] = {}
    rng = random.Random(config.seed)
    for side, size in (("valid", config.valid_size), ("test", config.test_size)):
        files = (getattr(config, f"{side}_src"), getattr(config, f"{side}_tgt"))
        if files[0] is not None:
            splits[side] = _eval_split(*files)
            continue
        if size < 1:
            raise DataError(f"no {side} files given and --{side}-size is {size}")
        if size >= len(train):
            raise DataError(f"{config.src}: only {len(train)} usable pairs, cannot hold out {size} for {side}")
        order = list(range(len(train)))
        rng.shuffle(order)
        chosen = set(order[:size])
        splits[side] = [train[i] for i in sorted(chosen)]
        train = [p for i, p in enumerate(train) if i not in chosen]
        held_out[side] = size
    eval_sources = {s for side in ("valid", "test") for s, _ in splits[side]}
    before = len(train)
    train = [p for p in train if p[0] not in eval_sources]
    counts["overlap_with_eval"] = before - len(train)
    if not train:
        raise DataError(f"{config.src}: no training pairs left after cleaning and holding out valid/test")
    splits["train"] = train
    write_corpus(out_dir, config.src_lang, config.tgt_lang, splits,
                 extra_meta={"imported_from": {"src": str(config.src), "tgt": str(config.tgt)},
                             "held_out": held_out, "train_dropped": counts})
    log(f"wrote {out_dir}: train {len(train)}, valid {len(splits['valid'])}, test {len(splits['test'])}; "
        f"dropped " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return Path(out_dir)
