"""WMT'14 preparation on small local fixtures: archives with the statmt.org layout, SGML test sets,
cleaning, the CLI; the download function with file:// URLs (no network)."""
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from revsearch import cli
from revsearch.data import wmt14
from revsearch.data.corpus import CorpusConfig, load_corpus
from revsearch.errors import DataError

REAL_SGM = Path(__file__).resolve().parents[2] / "shared" / "data" / "wmt14_newstest2014" / "sgm"


def _tar(path: Path, members: dict) -> None:
    mode = "w" if path.name.endswith(".tar") else "w:gz"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            data = data if isinstance(data, bytes) else data.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sgml(setid, lang, docs, kind="srcset"):
    out = [f'<{kind} setid="{setid}" srclang="any">']
    for docid, segs in docs:
        out.append(f'<doc docid="{docid}" genre="news" origlang="{lang}">')
        out += [f'<seg id="{i}">{s}</seg>' for i, s in enumerate(segs, 1)]
        out.append("</doc>")
    out.append(f"</{kind}>")
    return "\n".join(out) + "\n"


def make_raw(raw: Path, pair: str = "en-de") -> dict:
    """Write tiny archives for ``pair`` into ``raw``; return the expected clean training pairs."""
    xx = pair.split("-")[1]
    raw.mkdir(parents=True, exist_ok=True)
    expected = []
    for key, en_name, xx_name in wmt14.TRAIN_CORPORA[pair]:
        en = [f"{key} sentence {i} ." for i in range(3)]
        fo = [f"{key} Satz {i} ." for i in range(3)]
        expected += list(zip(en, fo))
        # noise: an empty side, extra whitespace, a control character, a wildly mismatched length
        en += ["", "  spaced   out  ", "bell\x07char", "short"]
        fo += ["leer", "weit  auseinander ", "Glocke", " ".join(["lang"] * 40)]
        expected += [("spaced out", "weit auseinander"), ("bellchar", "Glocke")]
        folder = "training/" if key in ("europarl", "nc-v9") else ("un/" if key == "un" else "")
        en_data, xx_data = "\n".join(en) + "\n", "\n".join(fo) + "\n"
        if en_name.endswith(".gz"):
            en_data, xx_data = gzip.compress(en_data.encode()), gzip.compress(xx_data.encode())
        _tar(raw / wmt14.archive_name(key), {folder + en_name: en_data, folder + xx_name: xx_data})
    v_en, v_xx = wmt14.VALID_FILES[pair]
    _tar(raw / "dev.tgz", {f"dev/{v_en}": "Valid one .\nValid  two .\n", f"dev/{v_xx}": "Gültig eins .\nGültig zwei .\n",
                           "dev/newstest2012.en": "unused\n"})
    t_src, t_ref = wmt14.TEST_FILES[pair]
    src = _sgml("newstest2014", "en", [("d1", ["Fish &amp; chips", "A &quot;quote&quot;"]), ("d2", ["Last one"])])
    ref = _sgml("newstest2014", xx, [("d2", ["Letzter"]), ("d1", ["Fisch &amp; Pommes", "Ein „Zitat“"])], "refset")
    _tar(raw / "test-full.tgz", {f"test-full/{t_src}": src, f"test-full/{t_ref}": ref})
    return {"train": expected, "test": [("Fish & chips", "Fisch & Pommes"), ('A "quote"', "Ein „Zitat“"),
                                        ("Last one", "Letzter")],
            "valid": [("Valid one .", "Gültig eins ."), ("Valid two .", "Gültig zwei .")]}


@pytest.mark.parametrize("pair", ["en-de", "en-fr"])
def test_convert_on_fixtures(tmp_path, pair):
    expected = make_raw(tmp_path / "raw", pair)
    logs = []
    wmt14.convert_wmt14(pair, tmp_path / "raw", tmp_path / "out", log=logs.append)
    xx = pair.split("-")[1]
    corpus = load_corpus(CorpusConfig(dir=str(tmp_path / "out")))
    assert (corpus.src_lang, corpus.tgt_lang) == ("en", xx)
    assert corpus.train == expected["train"]
    assert corpus.valid == expected["valid"]
    assert corpus.test == expected["test"]                 # aligned by (docid, seg id), entities unescaped
    assert not (tmp_path / "out" / ".work").exists()
    n = len(wmt14.TRAIN_CORPORA[pair])
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["train_dropped"] == {"bad_utf8": 0, "empty": n, "long": 0, "ratio": n, "duplicate": 0}
    assert meta["sizes"] == {"train": 5 * n, "valid": 2, "test": 3}
    assert meta["valid_set"] == "newstest2013" and sum(meta["train_sources"].values()) == 7 * n
    assert any(m.startswith(f"train: kept {5 * n} pairs") for m in logs)


def test_limit_and_dropped_counts(tmp_path):
    make_raw(tmp_path / "raw")
    wmt14.convert_wmt14("en-de", tmp_path / "raw", tmp_path / "out", wmt14.CleanConfig(limit=4), log=lambda m: None)
    assert len(load_corpus(CorpusConfig(dir=str(tmp_path / "out"))).train) == 4
    pairs, counts = wmt14.clean_pairs([("a", ""), ("a b", "c d"), ("x", "y " * 10), ("w " * 300, "v")],
                                      wmt14.CleanConfig())
    assert pairs == [("a b", "c d")] and counts == {"bad_utf8": 0, "empty": 1, "long": 1, "ratio": 1, "duplicate": 0}


def test_training_corpus_problems(tmp_path):
    make_raw(tmp_path / "raw")
    nc = tmp_path / "raw" / "training-parallel-nc-v9.tgz"
    _tar(nc, {"training/news-commentary-v9.de-en.en": b"good\nbad \xff byte\nfine\n",
              "training/news-commentary-v9.de-en.de": "gut\nschlecht\nfein\n"})
    logs = []
    wmt14.convert_wmt14("en-de", tmp_path / "raw", tmp_path / "out",
                        wmt14.CleanConfig(dedupe=True), log=logs.append)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["train_dropped"]["bad_utf8"] == 1 and meta["train_sources"]["nc-v9"] == 3
    assert "training-parallel-nc-v9.tgz: 3 pairs, kept 2" in logs
    _tar(nc, {"training/news-commentary-v9.de-en.en": "a\nb\nc\n",
              "training/news-commentary-v9.de-en.de": "x\ny\n"})
    with pytest.raises(DataError, match=r"nc-v9.tgz:news-commentary-v9.de-en.en has 3 lines but "
                                        r".*news-commentary-v9.de-en.de has 2"):
        wmt14.convert_wmt14("en-de", tmp_path / "raw", tmp_path / "out2", log=lambda m: None)
    _tar(nc, {"training/other.en": "a\n"})
    with pytest.raises(DataError, match=r"nc-v9.tgz: no member named news-commentary-v9.de-en.en"):
        wmt14.convert_wmt14("en-de", tmp_path / "raw", tmp_path / "out3", log=lambda m: None)


def test_download_is_the_only_network_step(tmp_path, monkeypatch):
    """prepare_wmt14 end to end, with the statmt.org URLs replaced by file:// URLs."""
    make_raw(tmp_path / "mirror")
    monkeypatch.setattr(wmt14, "ARCHIVES", {k: (tmp_path / "mirror" / v.rsplit("/", 1)[1]).as_uri()
                                            for k, v in wmt14.ARCHIVES.items()})
    logs = []
    wmt14.prepare_wmt14("en-de", tmp_path / "out", log=logs.append)
    assert sum(m.startswith("downloading file://") for m in logs) == 5
    assert len(load_corpus(CorpusConfig(dir=str(tmp_path / "out"))).test) == 3
    logs.clear()
    wmt14.prepare_wmt14("en-de", tmp_path / "out", log=logs.append)     # archives kept: no refetch
    assert not any(m.startswith("downloading") for m in logs)
    with pytest.raises(DataError, match="cannot download"):
        wmt14.download((tmp_path / "nope.tgz").as_uri(), tmp_path / "x" / "nope.tgz", log=lambda m: None)
    assert not list((tmp_path / "x").glob("*"))


def test_missing_and_broken_archives(tmp_path):
    make_raw(tmp_path / "raw")
    (tmp_path / "raw" / "dev.tgz").unlink()
    with pytest.raises(DataError, match=r"missing WMT'14 archive\(s\) dev.tgz"):
        wmt14.prepare_wmt14("en-de", tmp_path / "out", raw_dir=tmp_path / "raw", download_missing=False)
    (tmp_path / "raw" / "dev.tgz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match=r"dev.tgz: cannot read archive"):
        wmt14.convert_wmt14("en-de", tmp_path / "raw", tmp_path / "out", log=lambda m: None)
    with pytest.raises(DataError, match="unknown WMT'14 pair"):
        wmt14.check_pair("en-xx")


def test_sgml_errors(tmp_path):
    with pytest.raises(DataError, match="no <seg> elements"):
        wmt14.parse_sgml("<srcset>\n</srcset>\n", "f.sgm")
    src = wmt14.parse_sgml(_sgml("t", "en", [("d", ["a", "b"])]), "src.sgm")
    ref = wmt14.parse_sgml(_sgml("t", "de", [("d", ["x"]), ("e", ["y"])]), "ref.sgm")
    with pytest.raises(DataError, match="ref.sgm: no segment for docid 'd' seg 2 of src.sgm"):
        wmt14.align_sgml(src, ref, "src.sgm", "ref.sgm")


def test_cli_wmt14_from_raw_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ["data"])
    make_raw(tmp_path / "raw")
    rc = cli.main(["data", "wmt14", "--pair", "en-de", "--out", str(tmp_path / "out"), "--raw",
                   str(tmp_path / "raw"), "--no-download"])
    assert rc == 0 and (tmp_path / "out" / "test.de").read_text(encoding="utf-8").startswith("Fisch & Pommes\n")
    capsys.readouterr()
    rc = cli.main(["data", "wmt14", "--pair", "en-de", "--out", str(tmp_path / "o2"), "--raw",
                   str(tmp_path / "empty"), "--no-download"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "missing WMT'14 archive(s)" in err


@pytest.mark.skipif(not REAL_SGM.is_dir(), reason="shared newstest2014 SGML not available")
def test_real_newstest2014_sgml_matches_plain_text():
    pairs = wmt14.sgml_pairs(REAL_SGM / "newstest2014-deen-src.en.sgm", REAL_SGM / "newstest2014-deen-ref.de.sgm")
    assert len(pairs) == 3003
    plain = REAL_SGM.parent / "en-de"
    if plain.is_dir():
        assert [s for s, _ in pairs] == (plain / "test.en").read_text(encoding="utf-8").splitlines()
        assert [t for _, t in pairs] == (plain / "test.de").read_text(encoding="utf-8").splitlines()
