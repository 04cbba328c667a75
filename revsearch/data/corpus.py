"""Parallel corpora on disk: a corpus directory holds ``{train,valid,test}.{src_lang,tgt_lang}``, plain
UTF-8, one sentence per line, both sides of a split with the same number of lines. A ``meta.json`` next
to them (written by every ``revsearch data`` command) names the source and target languages so that
later commands do not need to be told.

Loading validates, and every problem is one ``DataError`` line naming the file (and line, where there is
one): missing file, line-count mismatch, invalid UTF-8, empty line. Over-long training pairs (more than
``max_words`` whitespace words on either side) are not an error: they are filtered and counted
(``Corpus.stats``), and the count is reported. Valid and test splits are never filtered: scores must be
on the whole test set.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError

SPLITS = ("train", "valid", "test")
META_FILE = "meta.json"
Pair = Tuple[str, str]
#: a language code is part of every file name (``train.<code>``): letters, digits, - and _ only, so that
#: no code can name a path (``/../../x``) outside the corpus directory. The sweep file uses the same rule.
LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")


def check_language(code, what: str = "language code") -> str:
    """``code`` if it is a valid language code, else one ``DataError`` line naming ``what``."""
    if not isinstance(code, str) or not LANG_RE.match(code):
        shown = repr(code) if len(repr(code)) <= 60 else repr(code)[:57] + "..."
        raise DataError(f"{what}: must be a language code such as en (a letter, then up to 15 letters, "
                        f"digits, - or _), got {shown}")
    return code


def check_corpus_dir(directory) -> None:
    """A corpus directory that is missing or is a file, said so (not as a missing ``train.en`` inside it)."""
    if directory is None or os.path.isdir(directory):
        return
    if os.path.exists(directory):
        raise DataError(f"{directory}: is a file, expected a corpus directory holding "
                        f"{{train,valid,test}}.{{src,tgt}}")
    raise DataError(f"{directory}: corpus directory not found")


@dataclass
class CorpusConfig:
    """Where a corpus lives. Either ``dir`` (the directory convention) or explicit per-split paths;
    explicit paths override the directory's. ``src_lang``/``tgt_lang`` default to ``dir/meta.json``."""
    dir: Optional[str] = None
    src_lang: Optional[str] = None
    tgt_lang: Optional[str] = None
    train_src: Optional[str] = None
    train_tgt: Optional[str] = None
    valid_src: Optional[str] = None
    valid_tgt: Optional[str] = None
    test_src: Optional[str] = None
    test_tgt: Optional[str] = None
    max_words: int = 250          # training pairs longer than this (either side) are filtered
    empty_lines: str = "error"    # "error" | "skip": what an empty line in any split means

    def __post_init__(self):
        if self.empty_lines not in ("error", "skip"):
            raise DataError(f"empty_lines must be 'error' or 'skip', got {self.empty_lines!r}")
        if self.max_words < 1:
            raise DataError(f"max_words must be >= 1, got {self.max_words}")

    def languages(self) -> Tuple[str, str]:
        src, tgt = self.src_lang, self.tgt_lang
        if (src is None or tgt is None) and self.dir:
            meta = read_meta(self.dir)
            src = src or meta.get("src_lang")
            tgt = tgt or meta.get("tgt_lang")
        if not src or not tgt:
            raise DataError(f"corpus {self.dir or '(explicit paths)'}: source/target languages unknown; "
                            f"give them (--src-lang/--tgt-lang) or add {META_FILE}")
        where = f"corpus {self.dir or '(explicit paths)'}"
        return check_language(src, f"{where}: src_lang"), check_language(tgt, f"{where}: tgt_lang")

    def paths(self, split: str) -> Tuple[Path, Path]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        src_p, tgt_p = getattr(self, f"{split}_src"), getattr(self, f"{split}_tgt")
        if src_p is None or tgt_p is None:
            if not self.dir:
                raise DataError(f"no {split} files given and no corpus directory")
            src, tgt = self.languages()
            src_p = src_p or os.path.join(self.dir, f"{split}.{src}")
            tgt_p = tgt_p or os.path.join(self.dir, f"{split}.{tgt}")
        return Path(src_p), Path(tgt_p)


@dataclass
class SplitStats:
    pairs: int = 0
    filtered_long: int = 0
    skipped_empty: int = 0


@dataclass
class Corpus:
    src_lang: str
    tgt_lang: str
    splits: Dict[str, List[Pair]] = field(default_factory=dict)
    stats: Dict[str, SplitStats] = field(default_factory=dict)
    files: Dict[str, Tuple[str, str]] = field(default_factory=dict)

    @property
    def train(self) -> List[Pair]:
        return self.splits.get("train", [])

    @property
    def valid(self) -> List[Pair]:
        return self.splits.get("valid", [])

    @property
    def test(self) -> List[Pair]:
        return self.splits.get("test", [])

    def messages(self) -> List[str]:
        """Human-readable notes about what loading filtered (one line each)."""
        out = []
        for split, st in self.stats.items():
            src, _ = self.files[split]
            if st.filtered_long:
                out.append(f"{src}: filtered {st.filtered_long} over-long pair(s) of "
                           f"{st.pairs + st.filtered_long + st.skipped_empty}")
            if st.skipped_empty:
                out.append(f"{src}: skipped {st.skipped_empty} pair(s) with an empty side")
        return out


def read_lines(path: os.PathLike) -> List[str]:
    """All lines of a UTF-8 text file without line terminators. ``DataError`` (naming the file, and the
    line for bad UTF-8) when the file is missing, unreadable, or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: line {line_no}: invalid UTF-8 (byte 0x{raw[err.start]:02x})") from None
    nul = text.find("\x00")
    if nul >= 0:  # valid UTF-8 but a binary file (or UTF-16): SentencePiece and the tokenizers choke on it
        raise DataError(f"{path}: line {text.count(chr(10), 0, nul) + 1}: NUL byte (a binary or UTF-16 file?); "
                        f"expected UTF-8 text")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def read_parallel(src_path: os.PathLike, tgt_path: os.PathLike, max_words: Optional[int] = None,
                  empty_lines: str = "error") -> Tuple[List[Pair], SplitStats]:
    """Read two aligned files into stripped (src, tgt) pairs, validating them (see module docstring).
    ``max_words=None`` keeps every pair."""
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}: "
                        f"the two sides must be line-aligned")
    if not src_lines:
        raise DataError(f"{src_path}: file is empty")
    pairs: List[Pair] = []
    stats = SplitStats()
    for i, (s, t) in enumerate(zip(src_lines, tgt_lines), start=1):
        s, t = s.strip(), t.strip()
        if not s or not t:
            if empty_lines == "skip":
                stats.skipped_empty += 1
                continue
            raise DataError(f"{src_path if not s else tgt_path}: line {i}: empty line")
        if max_words is not None and (len(s.split()) > max_words or len(t.split()) > max_words):
            stats.filtered_long += 1
            continue
        pairs.append((s, t))
    if not pairs:
        raise DataError(f"{src_path}: no usable pairs left after filtering "
                        f"({stats.filtered_long} over-long, {stats.skipped_empty} empty)")
    stats.pairs = len(pairs)
    return pairs, stats


#: distinct training pairs the search needs: it splits them, disjoint by content, into a part that
#: trains the weights and a part that trains the architecture (``batching.split_for_search``)
MIN_TRAIN_PAIRS = 2


def check_training_minimum(pairs: Sequence[Pair], stats: SplitStats, source: str, max_words: int) -> None:
    """One ``DataError`` line, at load time (``data check``, and before a sweep starts Ray), for a training
    split the search could not use; it would otherwise fail inside every trial."""
    distinct = len(set(pairs))
    if distinct >= MIN_TRAIN_PAIRS:
        return
    filtered = (f" after filtering {stats.filtered_long} pair(s) longer than {max_words} words"
                if stats.filtered_long else "")
    same = f" ({len(pairs)} identical)" if len(pairs) > distinct else ""
    raise DataError(f"{source}: {distinct} distinct training pair(s) left{filtered}{same}; the search and "
                    f"retrain need at least {MIN_TRAIN_PAIRS} (the search splits them into weight and "
                    f"architecture parts)")


def load_corpus(config: CorpusConfig, splits: Sequence[str] = SPLITS) -> Corpus:
    """Load and validate the requested splits. Only ``train`` is length-filtered."""
    check_corpus_dir(config.dir)
    src_lang, tgt_lang = config.languages()
    corpus = Corpus(src_lang=src_lang, tgt_lang=tgt_lang)
    for split in splits:
        src_p, tgt_p = config.paths(split)
        pairs, stats = read_parallel(src_p, tgt_p, config.max_words if split == "train" else None,
                                     config.empty_lines)
        if split == "train":
            check_training_minimum(pairs, stats, str(src_p), config.max_words)
        corpus.splits[split] = pairs
        corpus.stats[split] = stats
        corpus.files[split] = (str(src_p), str(tgt_p))
    return corpus


def read_meta(directory: os.PathLike) -> dict:
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_split(directory: os.PathLike, split: str, src_lang: str, tgt_lang: str,
                pairs: Sequence[Pair]) -> Tuple[Path, Path]:
    """Write one split as ``directory/split.{src_lang,tgt_lang}``. Lines must not contain newlines."""
    directory = Path(directory)
    out = []
    for lang, side in ((src_lang, 0), (tgt_lang, 1)):
        path = directory / f"{split}.{lang}"
        atomic_write_text(path, "".join(p[side] + "\n" for p in pairs))
        out.append(path)
    return out[0], out[1]


def write_corpus(directory: os.PathLike, src_lang: str, tgt_lang: str, splits: Dict[str, Sequence[Pair]],
                 extra_meta: Optional[dict] = None) -> Path:
    """Write a corpus directory (the given splits plus ``meta.json``)."""
    check_language(src_lang, "source language")
    check_language(tgt_lang, "target language")
    if src_lang == tgt_lang:
        raise DataError(f"source and target language are both {src_lang!r}")
    directory = Path(directory)
    for split, pairs in splits.items():
        write_split(directory, split, src_lang, tgt_lang, pairs)
    meta = {"src_lang": src_lang, "tgt_lang": tgt_lang,
            "sizes": {k: len(v) for k, v in splits.items()}}
    meta.update(extra_meta or {})
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory
