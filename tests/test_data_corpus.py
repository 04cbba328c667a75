"""Corpus loading and validation, importing aligned files, and the data CLI's error handling."""
import json

import pytest

from revsearch import cli
from revsearch.data.corpus import CorpusConfig, load_corpus, read_parallel, write_corpus
from revsearch.data.importer import ImportConfig, import_corpus
from revsearch.errors import DataError

MY_COMMANDS = ["data", "train", "translate", "evaluate"]


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``revsearch`` with only this part's subcommands registered -> (rc, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS", MY_COMMANDS)

    def run(*argv):
        rc = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def make_corpus(d, n=5, src="en", tgt="de"):
    splits = {s: [(f"{s} source {i}", f"{s} ziel {i}") for i in range(n)] for s in ("train", "valid", "test")}
    write_corpus(d, src, tgt, splits)
    return splits


def test_directory_convention_and_meta(tmp_path):
    splits = make_corpus(tmp_path)
    corpus = load_corpus(CorpusConfig(dir=str(tmp_path)))
    assert (corpus.src_lang, corpus.tgt_lang) == ("en", "de")
    assert corpus.train == splits["train"] and corpus.test == splits["test"]
    assert corpus.files["valid"][0].endswith("valid.en")
    assert json.loads((tmp_path / "meta.json").read_text())["sizes"]["train"] == 5


def test_explicit_paths_override_directory(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "other.en").write_text("a\nb\n")
    (tmp_path / "other.de").write_text("x\ny\n")
    cfg = CorpusConfig(dir=str(tmp_path), test_src=str(tmp_path / "other.en"), test_tgt=str(tmp_path / "other.de"))
    assert load_corpus(cfg).test == [("a", "x"), ("b", "y")]


def test_languages_required_without_meta(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DataError, match="languages unknown"):
        load_corpus(CorpusConfig(dir=str(tmp_path)))
    assert load_corpus(CorpusConfig(dir=str(tmp_path), src_lang="en", tgt_lang="de")).train


def test_missing_file(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "valid.de").unlink()
    with pytest.raises(DataError) as e:
        load_corpus(CorpusConfig(dir=str(tmp_path)))
    assert str(e.value) == f"{tmp_path / 'valid.de'}: file not found"


def test_line_count_mismatch(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(DataError, match=r"a\.en has 3 lines but .*a\.de has 2"):
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")


def test_invalid_utf8_reports_file_and_line(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_bytes("eins\nzwei\ndr\xe4i\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")
    assert f"{tmp_path / 'a.de'}: line 3: invalid UTF-8" in str(e.value)


def test_empty_line_is_an_error_or_skipped(tmp_path):
    (tmp_path / "a.en").write_text("one\n\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n")
    with pytest.raises(DataError) as e:
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")
    assert str(e.value) == f"{tmp_path / 'a.en'}: line 2: empty line"
    pairs, stats = read_parallel(tmp_path / "a.en", tmp_path / "a.de", empty_lines="skip")
    assert pairs == [("one", "eins"), ("three", "drei")] and stats.skipped_empty == 1


def test_over_long_training_pairs_filtered_and_counted(tmp_path):
    make_corpus(tmp_path)
    long_line = " ".join(["w"] * 30)
    (tmp_path / "train.en").write_text("short\n" + long_line + "\nfine too\n")
    (tmp_path / "train.de").write_text("kurz\nlang\nauch gut\n")
    (tmp_path / "test.de").write_text("\n".join([long_line] * 5) + "\n")  # eval splits are never filtered
    corpus = load_corpus(CorpusConfig(dir=str(tmp_path), max_words=10))
    assert corpus.train == [("short", "kurz"), ("fine too", "auch gut")]
    assert corpus.stats["train"].filtered_long == 1 and len(corpus.test) == 5
    assert corpus.messages() == [f"{tmp_path / 'train.en'}: filtered 1 over-long pair(s) of 3"]


def test_all_pairs_filtered_is_an_error(tmp_path):
    (tmp_path / "a.en").write_text("a b c\n")
    (tmp_path / "a.de").write_text("x\n")
    with pytest.raises(DataError, match="no usable pairs left"):
        read_parallel(tmp_path / "a.en", tmp_path / "a.de", max_words=2)


def test_import_holds_out_valid_and_test(tmp_path):
    src, tgt = tmp_path / "in.en", tmp_path / "in.fr"
    src.write_text("".join(f"sentence {i}\n" for i in range(50)) + "\n" + "sentence 3\n")
    tgt.write_text("".join(f"phrase {i}\n" for i in range(50)) + "\n" + "phrase 3\n")
    out = tmp_path / "corpus"
    import_corpus(ImportConfig(str(src), str(tgt), "en", "fr", valid_size=5, test_size=5, seed=1), out, log=lambda m: None)
    corpus = load_corpus(CorpusConfig(dir=str(out)))
    assert (len(corpus.valid), len(corpus.test)) == (5, 5)
    held = {s for s, _ in corpus.valid + corpus.test}
    assert not held & {s for s, _ in corpus.train}
    assert len(corpus.train) + 10 <= 50
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_dropped"]["empty"] == 1


def test_import_with_explicit_eval_files(tmp_path):
    for name, lines in {"t.en": ["a b", "c d", "e f"], "t.de": ["A B", "C D", "E F"],
                        "v.en": ["g"], "v.de": ["G"], "x.en": ["h"], "x.de": ["H"]}.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    cfg = ImportConfig(str(tmp_path / "t.en"), str(tmp_path / "t.de"), "en", "de", str(tmp_path / "v.en"),
                       str(tmp_path / "v.de"), str(tmp_path / "x.en"), str(tmp_path / "x.de"))
    import_corpus(cfg, tmp_path / "c", log=lambda m: None)
    corpus = load_corpus(CorpusConfig(dir=str(tmp_path / "c")))
    assert corpus.valid == [("g", "G")] and corpus.test == [("h", "H")] and len(corpus.train) == 3


def test_cli_import_and_check(tmp_path, run_cli):
    (tmp_path / "s.txt").write_text("".join(f"s {i}\n" for i in range(20)))
    (tmp_path / "t.txt").write_text("".join(f"t {i}\n" for i in range(20)))
    rc, out, err = run_cli("data", "import", "--src", tmp_path / "s.txt", "--tgt", tmp_path / "t.txt",
                           "--src-lang", "en", "--tgt-lang", "de", "--out", tmp_path / "c",
                           "--valid-size", 2, "--test-size", 3)
    assert rc == 0, err
    rc, out, err = run_cli("data", "check", "--corpus", tmp_path / "c")
    assert rc == 0 and "train" in out and "15 pairs" in out


@pytest.mark.parametrize("case", ["missing", "mismatch", "utf8", "empty"])
def test_cli_data_errors_are_one_line(tmp_path, run_cli, case):
    make_corpus(tmp_path)
    expected = {"missing": "train.de: file not found", "mismatch": "has 5 lines but",
                "utf8": "line 2: invalid UTF-8", "empty": "line 4: empty line"}[case]
    if case == "missing":
        (tmp_path / "train.de").unlink()
    elif case == "mismatch":
        (tmp_path / "test.de").write_text("only\n")
    elif case == "utf8":
        (tmp_path / "valid.en").write_bytes(b"ok\n\xff\xfe bad\nok\nok\nok\n")
    else:
        (tmp_path / "train.en").write_text("a\nb\nc\n\ne\n")
    rc, out, err = run_cli("data", "check", "--corpus", tmp_path)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("revsearch: error: ") and expected in err
    assert "Traceback" not in err


def test_cli_import_missing_file(tmp_path, run_cli):
    rc, _, err = run_cli("data", "import", "--src", tmp_path / "nope.en", "--tgt", tmp_path / "nope.de",
                         "--src-lang", "en", "--tgt-lang", "de", "--out", tmp_path / "c")
    assert rc == 2 and err.strip() == f"revsearch: error: {tmp_path / 'nope.en'}: file not found"
