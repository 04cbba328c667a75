"""WMT'14 English-German / English-French / English-Czech as corpus directories.

Train: the WMT'14 constrained parallel corpora listed in ``TRAIN_CORPORA`` (Europarl v7, Common Crawl,
News Commentary v9; for en-fr also the UN corpus and the 10^9 French-English corpus; CzEng for en-cs
needs a registration and is not fetched). Valid: newstest2013 (``dev.tgz``). Test: newstest2014, the
full 3,003-sentence version (``test-full.tgz``, the one fairseq and the paper report on).

The network lives in one function, ``download`` (urllib, temporary file + rename, resumable by simply
rerunning: finished archives are skipped). Everything else (finding members in the archives,
decompressing, parsing the SGML of the newstest sets, cleaning, writing ``train/valid/test.{src,tgt}``)
is ``convert_wmt14``, which works on a folder of archives that may have been fetched by any means
(``--raw DIR``), and is what the tests exercise on small local fixtures.
"""
from __future__ import annotations

import gzip
import html
import os
import re
import shutil
import tarfile
import unicodedata
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..errors import DataError
from .corpus import Pair, write_corpus

STATMT = "http://www.statmt.org"
ARCHIVES = {
    "europarl": f"{STATMT}/wmt13/training-parallel-europarl-v7.tgz",
    "commoncrawl": f"{STATMT}/wmt13/training-parallel-commoncrawl.tgz",
    "nc-v9": f"{STATMT}/wmt14/training-parallel-nc-v9.tgz",
    "un": f"{STATMT}/wmt13/training-parallel-un.tgz",
    "giga": f"{STATMT}/wmt10/training-giga-fren.tar",
    "dev": f"{STATMT}/wmt14/dev.tgz",
    "test": f"{STATMT}/wmt14/test-full.tgz",
}
# pair -> [(archive, member basename for English, member basename for the other language)]
TRAIN_CORPORA: Dict[str, List[Tuple[str, str, str]]] = {
    "en-de": [("europarl", "europarl-v7.de-en.en", "europarl-v7.de-en.de"),
              ("commoncrawl", "commoncrawl.de-en.en", "commoncrawl.de-en.de"),
              ("nc-v9", "news-commentary-v9.de-en.en", "news-commentary-v9.de-en.de")],
    "en-fr": [("europarl", "europarl-v7.fr-en.en", "europarl-v7.fr-en.fr"),
              ("commoncrawl", "commoncrawl.fr-en.en", "commoncrawl.fr-en.fr"),
              ("nc-v9", "news-commentary-v9.fr-en.en", "news-commentary-v9.fr-en.fr"),
              ("un", "undoc.2000.fr-en.en", "undoc.2000.fr-en.fr"),
              ("giga", "giga-fren.release2.fixed.en.gz", "giga-fren.release2.fixed.fr.gz")],
    "en-cs": [("europarl", "europarl-v7.cs-en.en", "europarl-v7.cs-en.cs"),
              ("commoncrawl", "commoncrawl.cs-en.en", "commoncrawl.cs-en.cs"),
              ("nc-v9", "news-commentary-v9.cs-en.en", "news-commentary-v9.cs-en.cs")],
}
# newstest2013 (plain text in dev.tgz) and newstest2014 (SGML in test-full.tgz)
VALID_FILES = {"en-de": ("newstest2013.en", "newstest2013.de"), "en-fr": ("newstest2013.en", "newstest2013.fr"),
               "en-cs": ("newstest2013.en", "newstest2013.cs")}
TEST_FILES = {"en-de": ("newstest2014-deen-src.en.sgm", "newstest2014-deen-ref.de.sgm"),
              "en-fr": ("newstest2014-fren-src.en.sgm", "newstest2014-fren-ref.fr.sgm"),
              "en-cs": ("newstest2014-csen-src.en.sgm", "newstest2014-csen-ref.cs.sgm")}
PAIRS = tuple(TRAIN_CORPORA)


@dataclass
class CleanConfig:
    """Training-data cleaning (valid/test are only whitespace-normalised, never dropped)."""
    max_words: int = 250
    max_ratio: float = 3.0        # drop pairs whose word counts differ by more than this factor
    dedupe: bool = False
    limit: Optional[int] = None   # keep only the first N training pairs (quick experiments)


def archive_name(key: str) -> str:
    return ARCHIVES[key].rsplit("/", 1)[-1]


def needed_archives(pair: str) -> List[str]:
    check_pair(pair)
    return sorted({a for a, _, _ in TRAIN_CORPORA[pair]} | {"dev", "test"})


def check_pair(pair: str) -> None:
    if pair not in TRAIN_CORPORA:
        raise DataError(f"unknown WMT'14 pair {pair!r}; expected one of {', '.join(PAIRS)}")


def download(url: str, dest: Path, log: Callable[[str], None] = print) -> Path:
    """The only network access: fetch ``url`` to ``dest`` unless it already exists (atomic rename)."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, length=1 << 20)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {err} (fetch it by hand into {dest.parent} and use --raw)") from None
    os.replace(tmp, dest)
    return dest


def fetch_wmt14(pair: str, raw_dir: os.PathLike, log: Callable[[str], None] = print) -> Path:
    raw_dir = Path(raw_dir)
    for key in needed_archives(pair):
        download(ARCHIVES[key], raw_dir / archive_name(key), log)
    return raw_dir


# ----------------------------------------------------------------------------------------- conversion

def parse_sgml(text: str, path: str = "<sgml>") -> List[Tuple[str, str, str]]:
    """Segments of a WMT newstest SGML file as (docid, seg id, text), in file order. Entities are
    unescaped; ``DataError`` when there are no ``<seg>`` elements."""
    segs: List[Tuple[str, str, str]] = []
    docid = ""
    doc_re = re.compile(r'<doc\b[^>]*\bdocid="([^"]*)"', re.I)
    seg_re = re.compile(r'<seg\b[^>]*?\bid="?([^"\s>]*)"?[^>]*>(.*?)</seg>', re.I | re.S)
    for m in re.finditer(r"<doc\b[^>]*>|<seg\b.*?</seg>", text, re.I | re.S):
        tag = m.group(0)
        if tag[:4].lower() == "<doc":
            d = doc_re.match(tag)
            docid = d.group(1) if d else ""
            continue
        s = seg_re.match(tag)
        if s is None:
            line = text.count("\n", 0, m.start()) + 1
            raise DataError(f"{path}: line {line}: malformed <seg> element")
        segs.append((docid, s.group(1), normalize(html.unescape(s.group(2)))))
    if not segs:
        raise DataError(f"{path}: no <seg> elements found (not a WMT SGML file?)")
    return segs


def align_sgml(src: List[Tuple[str, str, str]], ref: List[Tuple[str, str, str]],
               src_path: str, ref_path: str) -> List[Pair]:
    ref_by_key = {(d, i): t for d, i, t in ref}
    if len(ref_by_key) != len(ref):
        raise DataError(f"{ref_path}: duplicate (docid, seg id) pairs")
    pairs = []
    for d, i, t in src:
        if (d, i) not in ref_by_key:
            raise DataError(f"{ref_path}: no segment for docid {d!r} seg {i} of {src_path}")
        pairs.append((t, ref_by_key[(d, i)]))
    if len(src) != len(ref):
        raise DataError(f"{src_path} has {len(src)} segments but {ref_path} has {len(ref)}")
    return pairs


_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b\ufeff]")


def normalize(line: str) -> str:
    """NFC, control characters removed, runs of whitespace collapsed, stripped."""
    line = _CONTROL.sub("", unicodedata.normalize("NFC", line))
    return " ".join(line.split())


def iter_clean(pairs: Iterable[Tuple[Optional[str], Optional[str]]], config: CleanConfig,
               counts: Dict[str, int], seen: Optional[set] = None) -> Iterator[Pair]:
    """Yield cleaned pairs, counting what is dropped in ``counts`` (a side that is None could not be
    decoded as UTF-8). Stops after ``config.limit`` pairs. ``seen`` carries dedupe state across calls."""
    for key in ("bad_utf8", "empty", "long", "ratio", "duplicate"):
        counts.setdefault(key, 0)
    seen = set() if seen is None else seen
    kept = 0
    for s, t in pairs:
        if s is None or t is None:
            counts["bad_utf8"] += 1
            continue
        s, t = normalize(s), normalize(t)
        if not s or not t:
            counts["empty"] += 1
            continue
        ns, nt = len(s.split()), len(t.split())
        if ns > config.max_words or nt > config.max_words:
            counts["long"] += 1
            continue
        if max(ns, nt) > config.max_ratio * min(ns, nt) and max(ns, nt) > 3:
            counts["ratio"] += 1
            continue
        if config.dedupe:
            h = hash((s, t))
            if h in seen:
                counts["duplicate"] += 1
                continue
            seen.add(h)
        yield s, t
        kept += 1
        if config.limit and kept >= config.limit:
            return


def clean_pairs(pairs: Iterable[Pair], config: CleanConfig) -> Tuple[List[Pair], Dict[str, int]]:
    counts: Dict[str, int] = {}
    kept = list(iter_clean(pairs, config, counts))
    return kept, counts


def _member(tar: tarfile.TarFile, basename: str, archive: Path) -> tarfile.TarInfo:
    for m in tar.getmembers():
        if m.isfile() and m.name.rsplit("/", 1)[-1] == basename:
            return m
    raise DataError(f"{archive}: no member named {basename}")


def _extract(archive: Path, basenames: Sequence[str], work: Path) -> List[Path]:
    """Copy the named members (matched by basename) out of a tar archive into ``work``; gzip members
    are decompressed. Member paths are never used as output paths."""
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found (run without --raw to download, or fetch it by hand)")
    out = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for base in basenames:
                member = _member(tar, base, archive)
                target = work / (base[:-3] if base.endswith(".gz") else base)
                fobj = tar.extractfile(member)
                if base.endswith(".gz"):
                    fobj = gzip.GzipFile(fileobj=fobj)
                with open(target, "wb") as f:
                    shutil.copyfileobj(fobj, f, length=1 << 20)
                out.append(target)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot read archive ({err})") from None
    return out


def _read_text(path: Path, label: str) -> List[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{label}: line {line}: invalid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _parallel(en_path: Path, xx_path: Path, label_en: str, label_xx: str) -> Iterator[Pair]:
    en, xx = _read_text(en_path, label_en), _read_text(xx_path, label_xx)
    if len(en) != len(xx):
        raise DataError(f"{label_en} has {len(en)} lines but {label_xx} has {len(xx)}")
    return zip(en, xx)


def _stream_lines(path: Path) -> Iterator[Optional[str]]:
    with open(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield None


def _stream_parallel(en_path: Path, xx_path: Path, label_en: str, label_xx: str,
                     counter: Dict[str, int]) -> Iterator[Tuple[Optional[str], Optional[str]]]:
    """Both files line by line (training corpora are too big to hold in memory: 4.5M pairs for en-de,
    40M for en-fr); a line that is not UTF-8 comes as None. Unequal lengths raise ``DataError``."""
    en, xx = _stream_lines(en_path), _stream_lines(xx_path)
    end = object()
    while True:
        a, b = next(en, end), next(xx, end)
        if a is end or b is end:
            if a is end and b is end:
                return
            n_en = counter["lines"] + (a is not end) + sum(1 for _ in en)
            n_xx = counter["lines"] + (b is not end) + sum(1 for _ in xx)
            raise DataError(f"{label_en} has {n_en} lines but {label_xx} has {n_xx}")
        counter["lines"] += 1
        yield a, b


def convert_wmt14(pair: str, raw_dir: os.PathLike, out_dir: os.PathLike, clean: Optional[CleanConfig] = None,
                  log: Callable[[str], None] = print) -> Path:
    """Build the corpus directory ``out_dir`` (train/valid/test.{en,xx} + meta.json) from the archives in
    ``raw_dir`` (named as on statmt.org). Source is always English."""
    check_pair(pair)
    clean = clean or CleanConfig()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    xx = pair.split("-")[1]
    work = out_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    counts: Dict[str, int] = {}
    sources: Dict[str, int] = {}
    seen: set = set()
    n_train = 0
    try:
        with open(work / "train.en", "w", encoding="utf-8") as f_en, \
                open(work / f"train.{xx}", "w", encoding="utf-8") as f_xx:
            for key, en_name, xx_name in TRAIN_CORPORA[pair]:
                if clean.limit and n_train >= clean.limit:
                    break
                archive = raw_dir / archive_name(key)
                en_p, xx_p = _extract(archive, [en_name, xx_name], work)
                counter = {"lines": 0}
                lines = _stream_parallel(en_p, xx_p, f"{archive.name}:{en_name}", f"{archive.name}:{xx_name}",
                                         counter)
                limit = CleanConfig(**dict(vars(clean), limit=clean.limit - n_train if clean.limit else None))
                kept = 0
                for s_, t_ in iter_clean(lines, limit, counts, seen):
                    f_en.write(s_ + "\n")
                    f_xx.write(t_ + "\n")
                    kept += 1
                n_train += kept
                sources[key] = counter["lines"]
                en_p.unlink()
                xx_p.unlink()
                log(f"{archive.name}: {counter['lines']} pairs, kept {kept}")
        log(f"train: kept {n_train} pairs; dropped " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        if not n_train:
            raise DataError(f"WMT'14 {pair}: no training pairs left after cleaning")

        dev = raw_dir / archive_name("dev")
        en_p, xx_p = _extract(dev, VALID_FILES[pair], work)
        valid = [(normalize(s), normalize(t))
                 for s, t in _parallel(en_p, xx_p, f"{dev.name}:{VALID_FILES[pair][0]}",
                                       f"{dev.name}:{VALID_FILES[pair][1]}")]
        test_arch = raw_dir / archive_name("test")
        src_p, ref_p = _extract(test_arch, TEST_FILES[pair], work)
        test = sgml_pairs(src_p, ref_p)
        for name, split in (("valid", valid), ("test", test)):
            bad = next((i for i, (s, t) in enumerate(split, 1) if not s or not t), None)
            if bad:
                raise DataError(f"{name} split of WMT'14 {pair}: segment {bad} is empty")
        write_corpus(out_dir, "en", xx, {"valid": valid, "test": test},
                     extra_meta={"dataset": f"wmt14-{pair}", "valid_set": "newstest2013",
                                 "test_set": "newstest2014 (full)", "train_sources": sources,
                                 "train_dropped": counts,
                                 "sizes": {"train": n_train, "valid": len(valid), "test": len(test)}})
        for lang in ("en", xx):
            os.replace(work / f"train.{lang}", out_dir / f"train.{lang}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out_dir}: train {n_train}, valid {len(valid)}, test {len(test)}")
    return out_dir


def sgml_pairs(src_path: os.PathLike, ref_path: os.PathLike) -> List[Pair]:
    """Aligned (source, reference) segments of a newstest SGML pair of files."""
    src_path, ref_path = Path(src_path), Path(ref_path)
    src = parse_sgml("\n".join(_read_text(src_path, str(src_path))), str(src_path))
    ref = parse_sgml("\n".join(_read_text(ref_path, str(ref_path))), str(ref_path))
    return align_sgml(src, ref, str(src_path), str(ref_path))


def prepare_wmt14(pair: str, out_dir: os.PathLike, raw_dir: Optional[os.PathLike] = None,
                  download_missing: bool = True, clean: Optional[CleanConfig] = None,
                  log: Callable[[str], None] = print) -> Path:
    """Download (unless ``download_missing`` is False) and convert. Archives go to ``raw_dir``
    (default ``out_dir/raw``) and are kept for reruns."""
    check_pair(pair)
    raw = Path(raw_dir) if raw_dir else Path(out_dir) / "raw"
    if download_missing:
        fetch_wmt14(pair, raw, log)
    else:
        missing = [archive_name(k) for k in needed_archives(pair) if not (raw / archive_name(k)).is_file()]
        if missing:
            raise DataError(f"{raw}: missing WMT'14 archive(s) {', '.join(missing)}")
    return convert_wmt14(pair, raw, out_dir, clean, log)
