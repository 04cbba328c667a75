"""Bad inputs through the real CLI (``python -m revsearch.cli`` in a subprocess): every case must exit
non-zero with exactly one stderr line that is not a traceback and names the file, field or option at
fault; a sweep-file case must leave nothing in MLflow (no ``mlflow.db`` under the storage, or one
without runs).

The cases are the table of ``docs/bad-inputs.md``. Regenerate its rows (exit code and exact line, with
the temporary directory shown as ``<tmp>``) with::

    python tests/test_bad_inputs.py --markdown
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "bad-inputs.md")
TIMEOUT = 120
#: what a user would export to make MLflow's HTTP client give up quickly; revsearch fails fast without
#: them (a TCP probe before MLflow), the unreachable-server cases run both ways
FAST_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
UNREACHABLE = "http://127.0.0.1:9"   # the discard port: nothing listens there
SECRET = "s3cretPW"

# a sweep that validates and would run in seconds; every sweep case breaks one thing in a copy of it
BASE: Dict = {
    "name": "bad",
    "data": {"kind": "synthetic", "synthetic": {"train": 40, "valid": 8, "test": 8}, "vocab_size": 100,
             "max_tokens": 256, "max_len": 32},
    "search": {"steps": 2, "report_every": 1, "checkpoint_every": 1, "hidden": 16, "splits": 2,
               "embed_dim": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "op_set": "tiny"},
    "op_sets": {"tiny": {"encoder": ["conv3", "self_attn"], "decoder": ["conv3", "cross_attn"]}},
    "num_samples": 1,
    "max_concurrent": 1,
    "retrain": {"top_k": 1, "steps": 2, "validate_every": 1},
}
GENOTYPE = {"schema_version": 1, "splits": 2, "pooling": "max",
            "encoder": {"candidates": ["conv3", "self_attn"], "cell": [["conv3", "self_attn"]]},
            "decoder": {"candidates": ["conv3", "cross_attn"], "cell": [["conv3", "cross_attn"]]}}


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if anyone unpickles it unsafely."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- the files the cases use ------------------------------------------------------------------------
class Files:
    """Builds every fixture file under one temporary root (a few ms each; torch only for checkpoints)."""

    def __init__(self, root: str):
        self.root = root
        self.cases = os.path.join(root, "cases")
        os.makedirs(self.cases, exist_ok=True)
        self.marker = os.path.join(root, "PWNED")

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def storage(self, case_id: str) -> str:
        return os.path.join(self.cases, case_id)

    def text(self, name: str, content, mode: str = "w") -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, mode) as f:
            f.write(content)
        return path

    def sweep(self, name: str, edit: Optional[Callable[[dict], None]] = None, raw: Optional[str] = None) -> str:
        if raw is not None:
            return self.text(name, raw)
        data = copy.deepcopy(BASE)
        if edit:
            edit(data)
        return self.text(name, yaml.safe_dump(data, sort_keys=False))

    def corpus(self, name: str, break_it: Optional[Callable[[str], None]] = None, meta: bool = True) -> str:
        d = self.path(name)
        os.makedirs(d, exist_ok=True)
        for split, n in (("train", 6), ("valid", 3), ("test", 3)):
            for lang, word in (("en", "house"), ("de", "Haus")):
                with open(os.path.join(d, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                    f.write("".join(f"the {word} {i}\n" for i in range(n)))
        if meta:
            with open(os.path.join(d, "meta.json"), "w") as f:
                json.dump({"src_lang": "en", "tgt_lang": "de"}, f)
        if break_it:
            break_it(d)
        return d

    def genotype(self, name: str, edit: Optional[Callable[[dict], None]] = None) -> str:
        data = copy.deepcopy(GENOTYPE)
        if edit:
            edit(data)
        return self.text(name, json.dumps(data))

    def checkpoint(self, name: str, extra: Optional[dict] = None, revsearch_format: bool = True) -> str:
        import torch
        state = {"w": torch.zeros(2)}
        if revsearch_format:
            state = {"format": "revsearch-seq2seq", "version": 1, "model": state,
                     "model_spec": {"builder": "revsearch.models.transformer:build", "config": {}},
                     "spm_model": b"not used"}
        state.update(extra or {})
        path = self.path(name)
        torch.save(state, path)
        return path

    def real_checkpoint(self) -> str:
        """A checkpoint that translates (untrained): a tiny Transformer with ``max_len`` 16 and a real
        SentencePiece model, for the cases whose error lies in the input, not in the checkpoint."""
        path = self.path("real.pt")
        if os.path.exists(path):
            return path
        import torch
        from revsearch.data.tokenizer import SentencePieceConfig, train_tokenizer
        from revsearch.models.transformer import StandardTransformer, TransformerConfig
        from revsearch.train.checkpoint import save_checkpoint
        text = self.text("spm.txt", "".join(f"the house {i} is small and the garden is green\n" for i in range(40)))
        tok = train_tokenizer([text], SentencePieceConfig(vocab_size=40, cache_dir=self.path("spm-cache")))
        torch.manual_seed(0)
        model = StandardTransformer(TransformerConfig(tok.vocab_size, embed_dim=8, hidden=8, encoder_layers=1,
                                                      decoder_layers=1, heads=2, ffn_dim=16, max_len=16))
        save_checkpoint(path, {"model": model.state_dict(), "model_spec": model.spec(),
                               "spm_model": tok.model_proto})
        return path

    def registered_store(self) -> str:
        """A sqlite MLflow store in which ``real_checkpoint()`` is registered as ``tiny`` (alias ``best``),
        for the ``translate --model`` cases; returns its URI."""
        db = self.path(os.path.join("registry", "mlflow.db"))
        uri = "sqlite:///" + db
        if os.path.exists(db):
            return uri
        from revsearch.orchestration.registry import register_checkpoint
        from revsearch.orchestration.tracking import Tracker
        os.makedirs(os.path.dirname(db), exist_ok=True)
        tracker = Tracker(uri, "registry", artifact_root=self.path(os.path.join("registry", "artifacts")))
        run_id = tracker.start_run("retrain", {})
        tracker.end_run(run_id)
        register_checkpoint(tracker.client, tracker.experiment_id, run_id, self.real_checkpoint(), "tiny", "tiny")
        return uri

    def payload_checkpoint(self) -> str:
        return self.checkpoint("payload.pt", {"evil": Payload(self.marker)})


def _write_lines(path: str, lines: bytes) -> None:
    with open(path, "wb") as f:
        f.write(lines)


def _truncate(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _edited_checkpoint(f: "Files", name: str, edit: Callable[[dict], None]) -> str:
    """A copy of ``f.real_checkpoint()`` with ``edit`` applied to its loaded state (issue 12)."""
    import torch
    state = torch.load(f.real_checkpoint(), weights_only=True)
    edit(state)
    path = f.path(name)
    torch.save(state, path)
    return path


def _nan_weights(state: dict) -> None:
    for tensor in state["model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))


def _one_pair_corpus(d: str) -> None:
    """Training split reduced to one pair (valid and test untouched)."""
    for lang, text in (("en", "the house\n"), ("de", "das Haus\n")):
        _write_lines(os.path.join(d, f"train.{lang}"), text.encode())


def _one_short_pair_corpus(d: str) -> None:
    """Two training pairs, one of them longer than the base sweep's ``max_len`` (32) words."""
    long_line = " ".join(["word"] * 40)
    _write_lines(os.path.join(d, "train.en"), f"the house\n{long_line}\n".encode())
    _write_lines(os.path.join(d, "train.de"), b"das Haus\nlang\n")


def _deep_json(f: "Files", name: str, depth: int = 200_000) -> str:
    return f.text(name, "[" * depth + "]" * depth)


def _not_writable_storage(f: Files) -> str:
    """A results path that cannot be created: below a read-only directory, or in sysfs for root."""
    if os.geteuid() != 0:
        d = f.path("readonly")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o500)
        return os.path.join(d, "results")
    path = "/sys/revsearch-results"    # root may write anywhere but sysfs and the like
    try:
        os.makedirs(path)
    except OSError:
        return path
    os.rmdir(path)
    pytest.skip("no read-only location for a root user")


# --- the cases --------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    area: str
    what: str                                   # the bad input, in words (the doc's first column)
    argv: Callable[[Files, str], List[str]]     # (files, storage dir) -> revsearch arguments
    expect: List[str]                           # substrings of the error line (the file/field/option)
    sweep: bool = False                         # a sweep-file case: nothing may reach MLflow
    env: Dict[str, str] = field(default_factory=dict)
    forbid: List[str] = field(default_factory=list)   # substrings that must NOT appear (secrets)
    known_issue: str = ""                       # xfail(strict) reason: a library problem reported upstream
    stdin: bytes = b""                          # fed to the command's stdin (default: nothing, /dev/null)
    memory_cap: int = 0                         # bytes of address space (RLIMIT_AS): an input that could
                                                # allocate without bound must not endanger the machine
    leaves_nothing: bool = False                # the storage folder must not even be created
    max_seconds: float = 0                      # a bounded case must answer within this (0: TIMEOUT only)


def run_case(*sweep_args, storage_flag=True):
    """argv builder for ``revsearch run FILE --storage STORAGE`` where FILE comes from ``sweep_args``."""
    def build(f: Files, storage: str) -> List[str]:
        path = sweep_args[0](f) if callable(sweep_args[0]) else sweep_args[0]
        return ["run", path] + (["--storage", storage] if storage_flag else []) + list(sweep_args[1:])
    return build


def sweep_file(name, edit=None, raw=None):
    return lambda f: f.sweep(name, edit, raw)


def setter(dotted: str, value):
    def edit(d: dict) -> None:
        *parents, last = dotted.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value
    return edit


def dropper(key: str):
    return lambda d: d.pop(key)


def space(params: dict):
    return setter("space", params)


# --- issue 12 (bounds, writing only where asked): fixtures ---------------------------------------------
GIB = 2 ** 30


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML flow list whose aliases expand to width**levels (9**9 ~ 387 million) scalars."""
    parts = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def bomb_sweep(name: str, where: str):
    """The base sweep with the alias bomb as the value of ``where`` (dotted)."""
    def build(f: Files) -> str:
        data = copy.deepcopy(BASE)
        setter(where, "BOMB")(data)
        return f.text(name, yaml.safe_dump(data, sort_keys=False).replace("BOMB", alias_bomb(), 1))
    return build


def fifo(f: Files) -> str:
    path = f.path("fifo.yaml")
    if not os.path.exists(path):
        os.mkfifo(path)
    return path


def symlink_loop(f: Files) -> str:
    path = f.path("loop")
    if not os.path.lexists(path):
        os.symlink(path, path)
    return path


def big_genotype_file(f: Files, name: str, splits: int = 2, layers: int = 1) -> str:
    ops = (["conv3", "self_attn"] * splits)[:splits]
    data = copy.deepcopy(GENOTYPE)
    data["splits"] = splits
    data["encoder"]["cell"] = [ops] * layers
    data["decoder"]["cell"] = [(["conv3", "cross_attn"] * splits)[:splits]] * layers
    return f.text(name, json.dumps(data))


def oversized_spec_checkpoint(f: Files) -> str:
    """A small Transformer's weights under a spec that says hidden = 24,000 (the file stays small)."""
    from dataclasses import asdict
    from revsearch.models.transformer import StandardTransformer, TransformerConfig
    config = TransformerConfig(vocab_size=64, embed_dim=16, hidden=16, encoder_layers=1, decoder_layers=1,
                               heads=2, ffn_dim=32)
    model = StandardTransformer(config)
    spec = model.spec()
    spec["config"] = dict(asdict(config), hidden=24000, ffn_dim=96000)
    return f.checkpoint("oversized-spec.pt", {"model": model.state_dict(), "model_spec": spec})


def garbage_run_dir(f: Files) -> str:
    d = f.path("garbage-run")
    os.makedirs(d, exist_ok=True)
    f.text("garbage-run/run_state.json", "{not json")
    return d


def derived_hidden_space(d: dict) -> None:
    d["space"] = {"splits": {"type": "choice", "values": [2]}, "width": {"type": "choice", "values": [8]},
                  "hidden": {"type": "derived", "expr": "splits * width"}}


CASES: List[Case] = [
    # sweep YAML -------------------------------------------------------------------------------------
    Case("sweep-missing", "sweep YAML", "sweep file does not exist",
         run_case(lambda f: f.path("missing.yaml")), ["missing.yaml", "not found"], sweep=True),
    Case("sweep-is-directory", "sweep YAML", "sweep path is a directory",
         run_case(lambda f: f.root), ["is a directory"], sweep=True),
    Case("sweep-empty", "sweep YAML", "empty file",
         run_case(sweep_file("empty.yaml", raw="")), ["empty.yaml", "empty"], sweep=True),
    Case("sweep-syntax", "sweep YAML", "YAML syntax error (unclosed flow mapping)",
         run_case(sweep_file("syntax.yaml", raw="name: x\nsearch: {steps: 3\n")), ["syntax.yaml", "line"],
         sweep=True),
    Case("sweep-duplicate-key", "sweep YAML", "duplicate key",
         run_case(sweep_file("dup.yaml", raw="name: a\nseed: 1\nname: b\n")), ["dup.yaml", "duplicate key"],
         sweep=True),
    Case("sweep-not-mapping", "sweep YAML", "top level is a list",
         run_case(sweep_file("list.yaml", raw="- name: x\n")), ["list.yaml", "mapping"], sweep=True),
    Case("sweep-non-utf8", "sweep YAML", "file is Latin-1, not UTF-8",
         run_case(lambda f: f.text("latin1.yaml", b"name: caf\xe9\n", "wb")), ["latin1.yaml", "UTF-8"],
         sweep=True),
    Case("sweep-unknown-key", "sweep YAML", "misspelt top-level key (`num_sample`)",
         run_case(sweep_file("typo.yaml", setter("num_sample", 3))), ["typo.yaml", "num_sample", "num_samples"],
         sweep=True),
    Case("sweep-missing-name", "sweep YAML", "no `name`",
         run_case(sweep_file("noname.yaml", dropper("name"))), ["noname.yaml", "name"], sweep=True),
    Case("sweep-negative-steps", "sweep YAML", "`search.steps: -5`",
         run_case(sweep_file("steps.yaml", setter("search.steps", -5))), ["steps.yaml", "search.steps"],
         sweep=True),
    Case("sweep-wrong-type", "sweep YAML", "`search.lr: fast` (a string)",
         run_case(sweep_file("lr.yaml", setter("search.lr", "fast"))), ["lr.yaml", "search.lr"], sweep=True),
    Case("sweep-hidden-splits", "sweep YAML", "`search.hidden: 30` with `splits: 4`",
         run_case(sweep_file("div.yaml", lambda d: d["search"].update(hidden=30, splits=4))),
         ["div.yaml", "search.hidden", "divisible"], sweep=True),
    Case("sweep-data-kind", "sweep YAML", "`data.kind: parquet`",
         run_case(sweep_file("kind.yaml", setter("data.kind", "parquet"))), ["kind.yaml", "data.kind"],
         sweep=True),
    Case("sweep-unknown-op", "sweep YAML", "op set with an unknown op (`conv4`)",
         run_case(sweep_file("op.yaml", setter("op_sets.tiny.encoder", ["conv3", "conv4"]))),
         ["op.yaml", "op_sets.tiny.encoder", "conv4"], sweep=True),
    Case("sweep-top-k", "sweep YAML", "`retrain.top_k` larger than `num_samples`",
         run_case(sweep_file("topk.yaml", setter("retrain.top_k", 5))), ["topk.yaml", "retrain.top_k"],
         sweep=True),
    Case("sweep-storage-uri", "sweep YAML", "`storage: s3://bucket/runs` (not a local path)",
         run_case(sweep_file("s3.yaml", setter("storage", "s3://bucket/runs")), storage_flag=False),
         ["s3.yaml", "storage"], sweep=True),
    # search space -----------------------------------------------------------------------------------
    Case("space-unknown-type", "search space", "`type: categorical`",
         run_case(sweep_file("sp-type.yaml", space({"splits": {"type": "categorical", "values": [2, 3]}}))),
         ["sp-type.yaml", "space.splits.type"], sweep=True),
    Case("space-low-high", "search space", "uniform with `low > high`",
         run_case(sweep_file("sp-range.yaml", space({"dropout": {"type": "uniform", "low": 0.3, "high": 0.1}}))),
         ["sp-range.yaml", "space.dropout.high"], sweep=True),
    Case("space-loguniform-zero", "search space", "loguniform with `low: 0`",
         run_case(sweep_file("sp-log.yaml", space({"alpha_lr": {"type": "loguniform", "low": 0.0, "high": 0.1}}))),
         ["sp-log.yaml", "space.alpha_lr.low"], sweep=True),
    Case("space-expr-code", "search space", "derived `expr` that tries to run code",
         run_case(lambda f: f.sweep("sp-code.yaml", space({"hidden": {
             "type": "derived", "expr": f"__import__('os').system('touch {f.marker}')"}}))),
         ["sp-code.yaml", "space.hidden.expr", "not allowed"], sweep=True),
    Case("space-expr-unknown-name", "search space", "derived `expr` reads an undefined name",
         run_case(sweep_file("sp-name.yaml", space({"hidden": {"type": "derived", "expr": "splits * width"}}))),
         ["sp-name.yaml", "space.hidden.expr", "unknown name"], sweep=True),
    Case("space-when-unknown", "search space", "`when` names a parameter that does not exist",
         run_case(sweep_file("sp-when.yaml", space({"cell_layers": {"type": "int", "low": 1, "high": 2,
                                                                    "when": {"nosuch": 2}}}))),
         ["sp-when.yaml", "space.cell_layers.when.nosuch"], sweep=True),
    Case("space-misspelt-setting", "search space", "misspelt setting (`hiden`)",
         run_case(sweep_file("sp-typo.yaml", space({"hiden": {"type": "choice", "values": [32]}}))),
         ["sp-typo.yaml", "space.hiden", "hidden"], sweep=True),
    Case("space-out-of-range", "search space", "choice value outside the setting's range (`splits: [1, 2]`)",
         run_case(sweep_file("sp-splits.yaml", space({"splits": {"type": "choice", "values": [1, 2]}}))),
         ["sp-splits.yaml", "space.splits.values"], sweep=True),
    Case("space-bad-combination", "search space", "a samplable combination breaks a rule (`splits: [2, 3]`, hidden 16)",
         run_case(sweep_file("sp-combo.yaml", space({"splits": {"type": "choice", "values": [2, 3]}}))),
         ["sp-combo.yaml", "space", "hidden"], sweep=True),
    # data -------------------------------------------------------------------------------------------
    Case("data-missing-file", "data", "corpus directory without `test.de`",
         lambda f, s: ["data", "check", "--corpus",
                       f.corpus("c-missing", lambda d: os.remove(os.path.join(d, "test.de")))],
         ["test.de", "not found"]),
    Case("data-line-mismatch", "data", "`train.de` one line shorter than `train.en`",
         lambda f, s: ["data", "check", "--corpus",
                       f.corpus("c-mismatch", lambda d: _write_lines(os.path.join(d, "train.de"),
                                                                     b"".join(b"das Haus %d\n" % i for i in range(5))))],
         ["train.en", "train.de", "line"]),
    Case("data-non-utf8", "data", "Latin-1 byte on line 2 of `valid.en`",
         lambda f, s: ["data", "check", "--corpus",
                       f.corpus("c-latin1", lambda d: _write_lines(os.path.join(d, "valid.en"),
                                                                   b"the house\ncaf\xe9 au lait\nthe end\n"))],
         ["valid.en", "line 2", "UTF-8"]),
    Case("data-empty-line", "data", "empty line 3 in `train.en`",
         lambda f, s: ["data", "check", "--corpus",
                       f.corpus("c-empty", lambda d: _write_lines(os.path.join(d, "train.en"),
                                                                  b"a\nb\n\nd\ne\nf\n"))],
         ["train.en", "line 3", "empty line"]),
    Case("data-no-languages", "data", "corpus without `meta.json` and no `--src-lang/--tgt-lang`",
         lambda f, s: ["data", "check", "--corpus", f.corpus("c-nometa", meta=False)],
         ["c-nometa", "languages"]),
    Case("data-import-mismatch", "data", "`data import` of misaligned files",
         lambda f, s: ["data", "import", "--src", f.text("imp.en", "a\nb\nc\n"), "--tgt", f.text("imp.de", "a\nb\n"),
                       "--src-lang", "en", "--tgt-lang", "de", "--out", f.path("imp-out")],
         ["imp.en", "imp.de"]),
    Case("data-hyp-non-utf8", "data", "`evaluate --hyp` file is not UTF-8",
         lambda f, s: ["evaluate", "--hyp", f.text("hyp.txt", b"ok\n\xff\xfe\n", "wb"), "--ref", f.text("ref.txt", "a\nb\n")],
         ["hyp.txt", "line 2", "UTF-8"]),
    Case("data-sweep-corpus-missing", "data", "sweep with `data.kind: corpus` and a `data.path` that does not exist",
         run_case(lambda f: f.sweep("corpus-missing.yaml", lambda d: d.update(
             data={"kind": "corpus", "path": f.path("no-such-corpus"), "src_lang": "en", "tgt_lang": "de"}))),
         ["no-such-corpus"], sweep=True),
    # data minimums and binary files (issue 12, items 8 and 13) ----------------------------------------
    Case("data-one-training-pair", "data", "`data check` of a corpus with one training pair (the search needs 2)",
         lambda f, s: ["data", "check", "--corpus", f.corpus("c-one", _one_pair_corpus)],
         ["c-one/train.en", "1 distinct training pair", "at least 2"]),
    Case("data-one-pair-after-filter", "data", "sweep whose corpus keeps one training pair under `data.max_len` words",
         run_case(lambda f: f.sweep("one-short.yaml", lambda d: d.update(data=dict(
             d["data"], kind="corpus", path=f.corpus("c-one-short", _one_short_pair_corpus), synthetic=None)))),
         ["c-one-short/train.en", "after filtering 1 pair(s) longer than 32 words"], sweep=True),
    Case("data-nul-byte", "data", "NUL byte on line 2 of `train.en`",
         lambda f, s: ["data", "check", "--corpus",
                       f.corpus("c-nul", lambda d: _write_lines(os.path.join(d, "train.en"),
                                                                b"a\nb\x00c\nc\nd\ne\nf\n"))],
         ["c-nul/train.en", "line 2", "NUL byte"]),
    # output directories (issue 12, item 12) -----------------------------------------------------------
    Case("data-synthetic-out-file", "data", "`data synthetic --out` is a file",
         lambda f, s: ["data", "synthetic", "--out", f.text("out-file", "x"), "--train", "10"],
         ["--out", "out-file", "is a file"]),
    Case("data-synthetic-out-unwritable", "data", "`data synthetic --out` where we may not write",
         lambda f, s: ["data", "synthetic", "--out", _not_writable_storage(f), "--train", "10"],
         ["--out", "cannot write"]),
    Case("data-import-out-file", "data", "`data import --out` is a file",
         lambda f, s: ["data", "import", "--src", f.text("imp2.en", "a\nb\nc\n"), "--tgt", f.text("imp2.de", "a\nb\nc\n"),
                       "--src-lang", "en", "--tgt-lang", "de", "--out", f.text("out-file2", "x")],
         ["--out", "out-file2", "is a file"]),
    Case("train-baseline-out-file", "data", "`train-baseline --out` is a file (refused before SentencePiece)",
         lambda f, s: ["train-baseline", "--corpus", f.corpus("c-good"), "--out", f.text("out-file3", "x")],
         ["--out", "out-file3", "is a file"], max_seconds=30),
    Case("train-baseline-out-unwritable", "data", "`train-baseline --out` where we may not write",
         lambda f, s: ["train-baseline", "--corpus", f.corpus("c-good"), "--out", _not_writable_storage(f)],
         ["--out", "cannot write"], max_seconds=30),
    # genotypes --------------------------------------------------------------------------------------
    Case("genotype-missing", "genotype", "genotype file does not exist",
         lambda f, s: ["retrain", f.path("missing.json"), "--config", f.sweep("base.yaml"), "--storage", s],
         ["missing.json", "not found"], sweep=True),
    Case("genotype-bad-json", "genotype", "not JSON (truncated object)",
         lambda f, s: ["retrain", f.text("g-bad.json", '{"splits": 2,'), "--config", f.sweep("base.yaml"),
                       "--storage", s],
         ["g-bad.json", "JSON"], sweep=True),
    Case("genotype-unknown-op", "genotype", "cell uses an unknown op (`conv4`)",
         lambda f, s: ["retrain", f.genotype("g-op.json", lambda g: g["encoder"]["cell"][0].__setitem__(0, "conv4")),
                       "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-op.json", "encoder", "conv4"], sweep=True),
    Case("genotype-node-count", "genotype", "a cell layer lists 1 op for 2 splits",
         lambda f, s: ["retrain", f.genotype("g-nodes.json", lambda g: g["decoder"]["cell"].__setitem__(0, ["conv3"])),
                       "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-nodes.json", "decoder.cell[0]", "2 ops"], sweep=True),
    Case("genotype-pickle", "genotype", "a pickle (with a code payload) instead of JSON",
         lambda f, s: ["retrain", f.text("g-pickle.json", pickle.dumps(Payload(f.marker)), "wb"),
                       "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-pickle.json", "JSON"], sweep=True),
    Case("genotype-deep-nesting", "genotype", "JSON nested 200,000 deep",
         lambda f, s: ["retrain", _deep_json(f, "g-deep.json"), "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-deep.json", "nested too deeply"], sweep=True),
    Case("genotype-is-directory", "genotype", "genotype path is a directory",
         lambda f, s: ["retrain", f.corpus("g-dir"), "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-dir", "is a directory"], sweep=True),
    Case("genotype-nan-probability", "genotype", "`NaN` among the probabilities",
         lambda f, s: ["retrain", f.genotype("g-nan.json", lambda g: g["encoder"].__setitem__(
             "probabilities", [[[float("nan"), 1.0], [0.0, 1.0]]])), "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-nan.json", "encoder.probabilities[0][0]", "nan"], sweep=True),
    Case("genotype-infinite-probability", "genotype", "`Infinity` among the probabilities",
         lambda f, s: ["retrain", f.genotype("g-inf.json", lambda g: g["decoder"].__setitem__(
             "probabilities", [[[1.0, 0.0], [0.0, float("inf")]]])), "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-inf.json", "decoder.probabilities[0][1]", "inf"], sweep=True),
    Case("retrain-threads-zero", "CLI", "`retrain --threads 0`",
         lambda f, s: ["retrain", f.genotype("g-ok.json"), "--config", f.sweep("base.yaml"), "--storage", s,
                       "--threads", "0"],
         ["revsearch retrain", "--threads", "'0'"], sweep=True),
    # checkpoints ------------------------------------------------------------------------------------
    Case("checkpoint-missing", "checkpoint", "`translate --checkpoint` file does not exist",
         lambda f, s: ["translate", "--checkpoint", f.path("missing.pt")], ["missing.pt", "not found"]),
    Case("checkpoint-corrupt", "checkpoint", "random bytes",
         lambda f, s: ["translate", "--checkpoint", f.text("corrupt.pt", os.urandom(4096), "wb")],
         ["corrupt.pt", "corrupt"]),
    Case("checkpoint-truncated", "checkpoint", "a real checkpoint cut in half",
         lambda f, s: ["translate", "--checkpoint", _truncate(f.checkpoint("truncated.pt"))],
         ["truncated.pt", "truncated"]),
    Case("checkpoint-pickle-translate", "checkpoint", "pickle payload (`translate`)",
         lambda f, s: ["translate", "--checkpoint", f.payload_checkpoint()], ["payload.pt", "weights_only"]),
    Case("checkpoint-pickle-evaluate", "checkpoint", "pickle payload (`evaluate`)",
         lambda f, s: ["evaluate", "--checkpoint", f.payload_checkpoint(), "--corpus", f.corpus("c-good")],
         ["payload.pt", "weights_only"]),
    Case("checkpoint-foreign", "checkpoint", "a torch file that is not a revsearch checkpoint",
         lambda f, s: ["translate", "--checkpoint", f.checkpoint("foreign.pt", revsearch_format=False)],
         ["foreign.pt", "not a revsearch checkpoint"]),
    Case("checkpoint-config-missing-keys", "checkpoint", "derived-model builder with an empty config (no `genotype`)",
         lambda f, s: ["translate", "--checkpoint", _edited_checkpoint(f, "nokeys.pt", lambda st: st.__setitem__(
             "model_spec", {"builder": "revsearch.search.derive:build_from_spec", "config": {}}))],
         ["nokeys.pt", "lacks 'genotype'", "build_from_spec"]),
    Case("checkpoint-nan-weights", "checkpoint", "every weight NaN (a diverged training; translated to empty lines)",
         lambda f, s: ["translate", "--checkpoint", _edited_checkpoint(f, "nan.pt", lambda st: _nan_weights(st))],
         ["nan.pt", "NaN"], stdin=b"the house\n"),
    # tracking URIs ----------------------------------------------------------------------------------
    Case("tracking-unreachable", "tracking URI", f"`--tracking-uri {UNREACHABLE}` (nothing listening)",
         run_case(sweep_file("base.yaml"), "--tracking-uri", UNREACHABLE), ["--tracking-uri", "127.0.0.1:9"],
         sweep=True),
    Case("tracking-unreachable-fast-env", "tracking URI", f"same, with `MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`",
         run_case(sweep_file("base.yaml"), "--tracking-uri", UNREACHABLE), ["--tracking-uri", "127.0.0.1:9"],
         sweep=True, env=FAST_MLFLOW_ENV),
    Case("tracking-unreachable-yaml", "tracking URI", f"`tracking.uri: {UNREACHABLE}` in the sweep",
         run_case(sweep_file("track-http.yaml", setter("tracking.uri", UNREACHABLE))),
         ["track-http.yaml", "tracking.uri", "127.0.0.1:9"], sweep=True),
    Case("tracking-report-unreachable", "tracking URI", "`report --tracking-uri` unreachable",
         lambda f, s: ["report", "--tracking-uri", UNREACHABLE, "--experiment", "bad"],
         ["tracking.uri", "127.0.0.1:9"]),
    Case("tracking-file-yaml", "tracking URI", "`tracking.uri: file:///…/mlruns` in the sweep",
         run_case(lambda f: f.sweep("track-file.yaml", setter("tracking.uri", "file://" + f.path("mlruns")))),
         ["track-file.yaml", "tracking.uri", "file store"], sweep=True),
    Case("tracking-file-cli", "tracking URI", "`--tracking-uri file:…/mlruns`",
         run_case(sweep_file("base.yaml"), "--tracking-uri", "file:./mlruns"), ["--tracking-uri", "file store"],
         sweep=True),
    Case("tracking-no-scheme-cli", "tracking URI", "`--tracking-uri mlruns` (a bare path)",
         run_case(sweep_file("base.yaml"), "--tracking-uri", "mlruns"), ["--tracking-uri", "mlruns"], sweep=True),
    Case("tracking-db-password", "tracking URI", "`postgresql://user:PASSWORD@127.0.0.1:9/db` (no server, maybe no driver)",
         run_case(sweep_file("base.yaml"), "--tracking-uri", f"postgresql://user:{SECRET}@127.0.0.1:9/db"),
         ["--tracking-uri", "postgresql://***@127.0.0.1:9/db"], sweep=True, forbid=[SECRET]),
    # Ray cluster address ----------------------------------------------------------------------------
    Case("ray-address-unreachable", "Ray address", "`--address 127.0.0.1:9` (no Ray head there)",
         run_case(sweep_file("base.yaml"), "--address", "127.0.0.1:9"), ["--address 127.0.0.1:9", "no Ray cluster"],
         sweep=True),
    Case("ray-address-env-unreachable", "Ray address", "`RAY_ADDRESS=127.0.0.1:9` in the environment",
         run_case(sweep_file("base.yaml")), ["RAY_ADDRESS 127.0.0.1:9", "no Ray cluster"], sweep=True,
         env={"RAY_ADDRESS": "127.0.0.1:9"}),
    Case("ray-address-malformed", "Ray address", "`--address head-node` (no port)",
         run_case(sweep_file("base.yaml"), "--address", "head-node"), ["--address", "head-node", "host:port"],
         sweep=True),
    Case("ray-address-client", "Ray address", "`--address ray://127.0.0.1:10001` (Ray Client)",
         run_case(sweep_file("base.yaml"), "--address", "ray://127.0.0.1:10001"), ["--address", "ray://", "not supported"],
         sweep=True),
    # storage ----------------------------------------------------------------------------------------
    Case("storage-is-file-cli", "storage", "`--storage` is a file",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", f.text("storage-file", "x")],
         ["--storage", "storage-file", "is a file"], sweep=True),
    Case("storage-is-file-yaml", "storage", "`storage:` in the sweep is a file",
         run_case(lambda f: f.sweep("storage-file.yaml", setter("storage", f.text("storage-file2", "x"))),
                  storage_flag=False),
         ["storage-file.yaml", "storage", "is a file"], sweep=True),
    Case("storage-under-file", "storage", "`--storage` below a file (`FILE/results`)",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", os.path.join(f.text("storage-file3", "x"), "r")],
         ["--storage", "storage-file3", "Not a directory"], sweep=True),
    Case("storage-not-writable", "storage", "`--storage` in a directory we may not write",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", _not_writable_storage(f)],
         ["--storage", "cannot write"], sweep=True),
    # CLI arguments ----------------------------------------------------------------------------------
    Case("cli-unknown-command", "CLI", "unknown subcommand", lambda f, s: ["frobnicate"],
         ["frobnicate", "invalid choice"]),
    Case("cli-unknown-option", "CLI", "unknown option of a subcommand",
         lambda f, s: ["run", f.sweep("base.yaml"), "--bogus"], ["revsearch run", "--bogus"]),
    Case("cli-missing-required", "CLI", "required option left out",
         lambda f, s: ["translate"], ["revsearch translate", "--checkpoint"]),
    Case("cli-bad-int", "CLI", "non-integer where an integer is expected",
         lambda f, s: ["train-baseline", "--corpus", f.root, "--max-steps", "many"], ["--max-steps", "many"]),
    Case("cli-bad-choice", "CLI", "value outside the option's choices",
         lambda f, s: ["data", "wmt14", "--pair", "en-xx", "--out", f.path("w")], ["--pair", "en-xx"]),
    Case("cli-resume-missing", "CLI", "`--resume DIR` that is not a run directory",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", s, "--resume", f.path("no-run")],
         ["--resume", "no-run"], sweep=True),
    Case("cli-input-missing", "CLI", "`evaluate --hyp` file does not exist",
         lambda f, s: ["evaluate", "--hyp", f.path("nohyp.txt"), "--ref", f.text("ref2.txt", "a\n")],
         ["nohyp.txt", "not found"]),
    # bounds: memory and time (issue 12, items 1-5) --------------------------------------------------
    Case("sweep-alias-bomb-seed", "bounds", "YAML alias bomb (9^9 scalars) as `seed`",
         run_case(bomb_sweep("bomb-seed.yaml", "seed")), ["bomb-seed.yaml", "alias"], sweep=True,
         memory_cap=4 * GIB, leaves_nothing=True, max_seconds=30),
    Case("sweep-alias-bomb-name", "bounds", "YAML alias bomb as `name`",
         run_case(bomb_sweep("bomb-name.yaml", "name")), ["bomb-name.yaml", "alias"], sweep=True,
         memory_cap=4 * GIB, max_seconds=30),
    Case("sweep-alias-bomb-steps", "bounds", "YAML alias bomb as `search.steps`",
         run_case(bomb_sweep("bomb-steps.yaml", "search.steps")), ["bomb-steps.yaml", "alias"], sweep=True,
         memory_cap=4 * GIB, max_seconds=30),
    Case("sweep-alias-bomb-values", "bounds", "YAML alias bomb as `space.splits.values`",
         run_case(bomb_sweep("bomb-values.yaml", "space.splits.values")), ["bomb-values.yaml", "alias"],
         sweep=True, memory_cap=4 * GIB, max_seconds=30),
    Case("sweep-alias-bomb-op-set", "bounds", "YAML alias bomb as an op set",
         run_case(bomb_sweep("bomb-ops.yaml", "op_sets.tiny.encoder")), ["bomb-ops.yaml", "alias"],
         sweep=True, memory_cap=4 * GIB, max_seconds=30),
    Case("sweep-alias-recursive", "bounds", "a recursive YAML alias (`&r [*r]`)",
         run_case(sweep_file("recursive.yaml", raw="name: x\nseed: &r [*r]\n")), ["recursive.yaml", "recursive"],
         sweep=True, memory_cap=4 * GIB),
    Case("sweep-dev-zero", "bounds", "`revsearch run /dev/zero`",
         run_case("/dev/zero"), ["/dev/zero", "character device"], sweep=True, memory_cap=4 * GIB,
         leaves_nothing=True, max_seconds=30),
    Case("sweep-dev-urandom", "bounds", "`revsearch run /dev/urandom`",
         run_case("/dev/urandom"), ["/dev/urandom", "character device"], sweep=True, memory_cap=4 * GIB,
         max_seconds=30),
    Case("sweep-fifo", "bounds", "a FIFO with no writer as the sweep file",
         run_case(fifo), ["fifo.yaml", "FIFO"], sweep=True, max_seconds=30),
    Case("sweep-too-large", "bounds", "a 2 MiB sweep file",
         run_case(lambda f: f.text("large.yaml", "name: x\n" + "# padding\n" * 210_000)),
         ["large.yaml", "KiB"], sweep=True, memory_cap=4 * GIB, max_seconds=30),
    Case("space-choice-100k", "bounds", "a `choice` of 100,000 values",
         run_case(lambda f: f.text("choice-100k.yaml", yaml.safe_dump(BASE, sort_keys=False)  # flow list: 0.6 MB
                                   + "space: {max_tokens: {type: choice, values: ["
                                   + ", ".join(map(str, range(256, 100_256))) + "]}}\n")),
         ["choice-100k.yaml", "space.max_tokens.values", "100,000 values"], sweep=True, memory_cap=4 * GIB,
         leaves_nothing=True, max_seconds=60),
    Case("sweep-num-samples-huge", "bounds", "`num_samples: 10^9`",
         run_case(sweep_file("samples.yaml", setter("num_samples", 10 ** 9))), ["samples.yaml", "num_samples"],
         sweep=True, memory_cap=4 * GIB, leaves_nothing=True, max_seconds=30),
    Case("sweep-hidden-huge", "bounds", "`search.hidden: 10^12` (validates, cannot be allocated)",
         run_case(sweep_file("hidden-huge.yaml", setter("search.hidden", 10 ** 12))),
         ["hidden-huge.yaml", "search", "supernet", "this machine has"], sweep=True, memory_cap=4 * GIB,
         leaves_nothing=True, max_seconds=60),
    Case("sweep-hidden-space-huge", "bounds", "a space that can sample `hidden: 2000000`",
         run_case(sweep_file("hidden-space.yaml", space({"hidden": {"type": "choice", "values": [16, 2_000_000]}}))),
         ["hidden-space.yaml", "hidden=2000000", "GiB"], sweep=True, memory_cap=4 * GIB, max_seconds=60),
    Case("sweep-synthetic-huge", "bounds", "`data.synthetic.train: 10^9`",
         run_case(sweep_file("train-huge.yaml", setter("data.synthetic.train", 10 ** 9))),
         ["train-huge.yaml", "data.synthetic.train", "GiB"], sweep=True, memory_cap=4 * GIB,
         leaves_nothing=True, max_seconds=60),
    Case("resources-cpu-too-many", "bounds", "`resources.cpu: 4096` (more than this machine has)",
         run_case(sweep_file("cpu.yaml", setter("resources", {"cpu": 4096}))),
         ["cpu.yaml", "resources.cpu", "4096", "this machine has"], sweep=True, leaves_nothing=True),
    Case("resources-workers-too-many", "bounds", "`resources.workers: 4096` (more workers than CPUs here)",
         run_case(sweep_file("workers.yaml", setter("resources", {"cpu": 1, "workers": 4096}))),
         ["workers.yaml", "resources.workers", "4096", "this machine has"], sweep=True, leaves_nothing=True),
    Case("resources-workers-zero", "bounds", "`resources.workers: 0`",
         run_case(sweep_file("workers0.yaml", setter("resources", {"workers": 0}))),
         ["workers0.yaml", "resources.workers"], sweep=True, leaves_nothing=True),
    Case("resources-gpu-too-many", "bounds", "`resources.gpu: 4096` (e.g. 1 on a machine without GPUs)",
         run_case(sweep_file("gpu.yaml", setter("resources", {"gpu": 4096}))),
         ["gpu.yaml", "resources.gpu", "this machine has"], sweep=True, leaves_nothing=True),
    Case("genotype-huge-splits", "bounds", "a genotype with 100,000 splits",
         lambda f, s: ["retrain", f.genotype("g-splits.json", lambda g: g.update(splits=100_000)), "--config",
                       f.sweep("base.yaml"), "--storage", s],
         ["g-splits.json", "splits", "64"], sweep=True, memory_cap=4 * GIB, leaves_nothing=True, max_seconds=60),
    Case("genotype-many-layers", "bounds", "a genotype cell of 1,000 layers",
         lambda f, s: ["retrain", big_genotype_file(f, "g-layers.json", layers=1000), "--config",
                       f.sweep("base.yaml"), "--storage", s],
         ["g-layers.json", "1,000 layers"], sweep=True, memory_cap=4 * GIB, leaves_nothing=True),
    Case("genotype-million-layers", "bounds", "a genotype cell of 10^6 layers (a 20 MB file)",
         lambda f, s: ["retrain", big_genotype_file(f, "g-million.json", layers=10 ** 6), "--config",
                       f.sweep("base.yaml"), "--storage", s],
         ["g-million.json", "KiB"], sweep=True, memory_cap=4 * GIB, max_seconds=60),
    Case("checkpoint-spec-oversized", "bounds", "small weights whose spec says hidden = 24,000",
         lambda f, s: ["translate", "--checkpoint", oversized_spec_checkpoint(f)],
         ["oversized-spec.pt", "does not match", "24000"], memory_cap=4 * GIB, max_seconds=60),
    # writing only where asked (issue 12, items 9-11) ------------------------------------------------
    Case("import-lang-traversal", "writing", "`data import --src-lang /../../x`",
         lambda f, s: ["data", "import", "--src", f.text("imp-ok.en", "a b\n" * 5), "--tgt",
                       f.text("imp-ok.de", "c d\n" * 5), "--src-lang", "/../../x", "--tgt-lang", "de",
                       "--out", s],
         ["--src-lang", "/../../x"], leaves_nothing=True),
    Case("import-out-is-input", "writing", "`data import --out` = the folder holding the input `train.en`",
         lambda f, s: ["data", "import", "--src", f.text("inplace/train.en", "a b\nc d\ne f\n"),
                       "--tgt", f.text("inplace/train.de", "g h\ni j\nk l\n"), "--src-lang", "en",
                       "--tgt-lang", "de", "--out", f.path("inplace"), "--valid-size", "1", "--test-size", "1"],
         ["--out", "would overwrite", "train.en"]),
    Case("nothing-broken-corpus", "writing", "sweep over a corpus without `test.de`: no storage, no mlflow.db",
         run_case(lambda f: f.sweep("broken-corpus.yaml", lambda d: d.update(data={
             "kind": "corpus", "path": f.corpus("c-broken", lambda c: os.remove(os.path.join(c, "test.de"))),
             "src_lang": "en", "tgt_lang": "de"}))),
         ["test.de", "not found"], sweep=True, leaves_nothing=True),
    Case("nothing-bad-genotype", "writing", "`retrain` of a bad genotype: no storage, no mlflow.db",
         lambda f, s: ["retrain", f.genotype("g-nothing.json", lambda g: g.update(splits=1)),
                       "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-nothing.json", "splits"], sweep=True, leaves_nothing=True),
    Case("nothing-garbage-run-state", "writing", "`--resume` of a run whose `run_state.json` is garbage",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", s, "--resume", garbage_run_dir(f)],
         ["run_state.json", "cannot resume"], sweep=True, leaves_nothing=True),
    Case("nothing-resume-no-run", "writing", "`--resume` with no earlier run: no empty storage folder",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", s, "--resume"],
         ["--resume", "no earlier run"], sweep=True, leaves_nothing=True),
    Case("nothing-report-fresh", "writing", "`report` on fresh storage: no mlflow.db created",
         lambda f, s: ["report", f.sweep("base.yaml"), "--storage", s],
         ["no MLflow database"], leaves_nothing=True),
    Case("nothing-sqlite-missing-folder", "writing", "`sqlite:` URI in a missing folder, then a broken corpus",
         lambda f, s: ["run", f.sweep("broken-corpus2.yaml", lambda d: d.update(data={
             "kind": "corpus", "path": f.corpus("c-broken2", lambda c: os.remove(os.path.join(c, "test.de"))),
             "src_lang": "en", "tgt_lang": "de"})), "--storage", s,
             "--tracking-uri", "sqlite:///" + os.path.join(s, "deep", "er", "mlflow.db")],
         ["test.de", "not found"], sweep=True, leaves_nothing=True),
    Case("tracking-sqlite-directory", "writing", "`--tracking-uri sqlite:////<a directory>`",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", s, "--tracking-uri", "sqlite:///" + f.cases],
         ["--tracking-uri", "names a directory"], sweep=True, leaves_nothing=True, max_seconds=30),
    # the right words (issue 12, items 14-15) --------------------------------------------------------
    Case("checkpoint-is-directory", "checkpoint", "`translate --checkpoint` names a directory",
         lambda f, s: ["translate", "--checkpoint", f.root], ["is a directory"]),
    Case("storage-symlink-loop", "storage", "`--storage` is a symbolic link loop",
         lambda f, s: ["run", f.sweep("base.yaml"), "--storage", symlink_loop(f)],
         ["--storage", "symbolic link loop"], sweep=True),
    Case("data-path-is-file", "data", "sweep `data.path` names a file, not a corpus directory",
         run_case(lambda f: f.sweep("corpus-file.yaml", lambda d: d.update(
             data={"kind": "corpus", "path": f.text("afile", "x\n"), "src_lang": "en", "tgt_lang": "de"}))),
         ["afile", "is a file"], sweep=True, leaves_nothing=True),
    Case("genotype-unknown-op-short-layer", "genotype", "a cell layer with a misspelt op and one op too few",
         lambda f, s: ["retrain", f.genotype("g-op2.json", lambda g: g["encoder"]["cell"].__setitem__(0, ["conv4"])),
                       "--config", f.sweep("base.yaml"), "--storage", s],
         ["g-op2.json", "unknown op 'conv4'"], sweep=True),
    # translate / evaluate options (issue 12) ---------------------------------------------------------
    Case("translate-stdin-non-utf8", "translate", "Latin-1 byte on line 2 of stdin",
         lambda f, s: ["translate", "--checkpoint", f.real_checkpoint()], ["<stdin>", "line 2", "UTF-8"],
         stdin=b"the house\ncaf\xe9 au lait\n"),
    Case("translate-line-too-long", "translate", "input line 2 longer than the model's `max_len` (refused, not truncated)",
         lambda f, s: ["translate", "--checkpoint", f.real_checkpoint(), "--input",
                       f.text("long.txt", "the house\n" + "the garden is green " * 20 + "\n")],
         ["long.txt", "line 2", "max_len 16"]),
    Case("translate-chunk-zero", "translate", "`--chunk 0`",
         lambda f, s: ["translate", "--checkpoint", f.path("any.pt"), "--chunk", "0"], ["--chunk", "'0'"]),
    Case("translate-output-missing-folder", "translate", "`--output` in a folder that does not exist",
         lambda f, s: ["translate", "--checkpoint", f.real_checkpoint(), "--output", f.path("no-folder/out.txt")],
         ["--output", "no-folder", "does not exist"]),
    Case("translate-device-cuda-missing", "translate", "`--device cuda:99` (no such CUDA device here)",
         lambda f, s: ["translate", "--checkpoint", f.real_checkpoint(), "--device", "cuda:99"],
         ["--device", "cuda:99"]),
    Case("translate-device-invalid", "translate", "`--device gpu` (not a torch device)",
         lambda f, s: ["translate", "--checkpoint", f.real_checkpoint(), "--device", "gpu"], ["--device", "'gpu'"]),
    Case("translate-max-tokens-zero", "translate", "`--max-tokens 0`",
         lambda f, s: ["translate", "--checkpoint", f.path("any.pt"), "--max-tokens", "0"], ["--max-tokens", "'0'"]),
    Case("translate-lenpen-nan", "translate", "`--lenpen nan`",
         lambda f, s: ["translate", "--checkpoint", f.path("any.pt"), "--lenpen", "nan"], ["--lenpen", "nan"]),
    # translate --model: the registry (issue 11, item 5) ---------------------------------------------
    Case("translate-model-not-a-uri", "translate", "`--model tiny` (not a `models:/` URI)",
         lambda f, s: ["translate", "--model", "tiny", "--tracking-uri", "sqlite:///" + f.path("none.db")],
         ["--model", "'tiny'", "models:/NAME@ALIAS"]),
    Case("translate-model-unknown", "translate", "`--model models:/nope@best`: no such registered model",
         lambda f, s: ["translate", "--model", "models:/nope@best", "--tracking-uri", f.registered_store()],
         ["--model", "no registered model 'nope'", "registered: tiny"]),
    Case("translate-model-alias-unknown", "translate", "`--model models:/tiny@bset`: the model has no such alias",
         lambda f, s: ["translate", "--model", "models:/tiny@bset", "--tracking-uri", f.registered_store()],
         ["--model", "no alias 'bset'", "its aliases: best"]),
    Case("translate-model-unreachable", "translate", f"`--model` with `--tracking-uri {UNREACHABLE}` (nothing listening)",
         lambda f, s: ["translate", "--model", "models:/tiny@best", "--tracking-uri", UNREACHABLE],
         ["--tracking-uri", "127.0.0.1:9", "cannot reach"]),
    Case("translate-model-no-database", "translate", "`--model` with a `sqlite:` database that does not exist",
         lambda f, s: ["translate", "--model", "models:/tiny@best", "--tracking-uri", "sqlite:///" + f.path("none.db")],
         ["--tracking-uri", "no MLflow database", "none.db"]),
    Case("translate-model-no-tracking-uri", "translate", "`--model` without `--tracking-uri` or `$MLFLOW_TRACKING_URI`",
         lambda f, s: ["translate", "--model", "models:/tiny@best"], ["--model", "--tracking-uri"]),
    Case("translate-model-and-checkpoint", "translate", "both `--checkpoint` and `--model`",
         lambda f, s: ["translate", "--checkpoint", f.path("any.pt"), "--model", "models:/tiny@best"],
         ["--model", "not allowed with argument --checkpoint"]),
    Case("evaluate-tokenize-unknown", "evaluate", "`--tokenize warp` (not a sacreBLEU tokenizer)",
         lambda f, s: ["evaluate", "--hyp", f.text("hyp3.txt", "a\n"), "--ref", f.text("ref3.txt", "a\n"),
                       "--tokenize", "warp"], ["--tokenize", "warp", "13a"]),
    Case("evaluate-limit-zero", "evaluate", "`--limit 0` (used to score everything)",
         lambda f, s: ["evaluate", "--checkpoint", f.real_checkpoint(), "--corpus", f.corpus("c-good"),
                       "--limit", "0"], ["--limit", "'0'"]),
]
#: every case runs in CI; these ~2.5 s each (torch import) also run without ``-m "not slow"`` only.
#: The others are variations of the same checks and run with the slow tests.
CORE = {"sweep-missing", "sweep-syntax", "sweep-unknown-key",
        "space-expr-code", "space-bad-combination",
        "data-missing-file", "data-line-mismatch", "data-non-utf8", "data-empty-line",
        "genotype-bad-json", "genotype-unknown-op", "genotype-node-count",
        "checkpoint-corrupt", "checkpoint-truncated", "checkpoint-pickle-translate",
        "tracking-unreachable", "tracking-file-cli", "ray-address-unreachable", "storage-is-file-cli", "storage-not-writable",
        "cli-unknown-command", "cli-unknown-option", "cli-missing-required", "cli-bad-int", "cli-bad-choice"}
CORE |= {"sweep-alias-bomb-seed", "sweep-dev-zero", "sweep-fifo", "space-choice-100k", "sweep-hidden-huge",
         "resources-cpu-too-many", "checkpoint-spec-oversized", "import-lang-traversal", "nothing-report-fresh",
         "tracking-sqlite-directory", "checkpoint-is-directory"}
CORE |= {"translate-chunk-zero", "translate-lenpen-nan", "translate-stdin-non-utf8"}
CORE |= {"translate-model-not-a-uri", "translate-model-alias-unknown"}   # issue 11, item 5
CORE |= {"data-one-training-pair", "data-nul-byte", "data-synthetic-out-file"}   # issue 12, items 8, 12, 13
CASE_IDS = [c.id for c in CASES]
assert CORE <= set(CASE_IDS)
assert len(set(CASE_IDS)) == len(CASE_IDS)


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    mlflow_runs: Optional[int]     # runs in <storage>/mlflow.db (None: no database)
    run_dirs: List[str]            # <storage>/runs/* (a started revsearch run)


def mlflow_runs(storage: str) -> Optional[int]:
    db = os.path.join(storage, "mlflow.db")
    if not os.path.exists(db):
        return None
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return con.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0


def _address_space_cap(nbytes: int):
    """preexec_fn: the child may map at most ``nbytes`` (a runaway allocation fails instead of swapping)."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    return apply


def execute(case: Case, files: Files) -> Outcome:
    storage = files.storage(case.id)
    argv = case.argv(files, storage)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "REVSEARCH_DEBUG"))}
    env["RAY_ADDRESS"] = ""
    env.update(case.env)
    start = time.perf_counter()
    stdin = subprocess.DEVNULL
    if case.stdin:   # raw bytes (they may be invalid UTF-8), through a file: text=True would encode a str
        stdin = open(files.text(f"stdin-{case.id}", case.stdin, "wb"), "rb")
    try:
        proc = subprocess.run([sys.executable, "-m", "revsearch.cli", *argv], cwd=files.cases, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT, stdin=stdin,
                              preexec_fn=_address_space_cap(case.memory_cap) if case.memory_cap else None)
    finally:
        if case.stdin:
            stdin.close()
    runs = os.path.join(storage, "runs")
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start, mlflow_runs(storage),
                   sorted(os.listdir(runs)) if os.path.isdir(runs) else [])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    f = Files(str(tmp_path_factory.mktemp("bad-inputs")))
    yield f
    readonly = f.path("readonly")
    if os.path.isdir(readonly):
        os.chmod(readonly, 0o700)


def _params():
    out = []
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.known_issue)] if c.known_issue else []
        if c.id not in CORE:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_bad_input_gives_one_line(case: Case, files: Files):
    out = execute(case, files)
    lines = out.stderr.splitlines()
    assert out.returncode != 0, f"exit 0 for a bad input; stderr: {out.stderr!r}"
    assert "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1, f"{len(lines)} stderr lines: {out.stderr!r}"
    line = lines[0]
    assert line.startswith("revsearch"), line
    assert "internal error" not in line, line
    for text in case.expect:
        assert text in line, f"{text!r} not in {line!r}"
    for text in case.forbid:
        assert text not in out.stderr + out.stdout, f"{text!r} leaked: {line!r}"
    assert out.returncode == 2, line
    assert not os.path.exists(files.marker), "a payload ran"
    if case.sweep:
        assert out.mlflow_runs in (None, 0), f"{out.mlflow_runs} MLflow run(s) recorded for a bad input"
        assert not out.run_dirs, f"run directories created for a bad input: {out.run_dirs}"
    if case.leaves_nothing:   # every check runs before the first byte is written
        assert not os.path.exists(files.storage(case.id)), \
            f"created for a bad input: {sorted(os.listdir(files.storage(case.id)))}"
    if case.max_seconds:
        assert out.seconds < case.max_seconds, f"took {out.seconds:.1f}s (bound: {case.max_seconds}s)"
    if case.id.startswith("ray-address"):  # found before the tracking store is even opened
        assert out.mlflow_runs is None, "a tracking database was created for a bad Ray address"
    if case.id.startswith(("tracking-unreachable", "ray-address")):
        assert out.seconds < 30, f"took {out.seconds:.1f}s to report an unreachable tracking server"


def test_tracking_probe_gives_up_on_a_silent_server(monkeypatch):
    """A server that accepts the connection but never answers: one line after the probe's timeout, not
    MLflow's minutes of retries. Any HTTP answer counts as reachable."""
    import http.server
    import socket
    import threading
    from revsearch.errors import ConfigError
    from revsearch.orchestration.tracking import probe_tracking_uri

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.setenv("REVSEARCH_TRACKING_CONNECT_TIMEOUT", "0.5")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"no answer within 0.5s"):
        probe_tracking_uri(f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert time.perf_counter() - start < 5
    silent.close()

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.handle_request, daemon=True).start()
    probe_tracking_uri(f"http://user:pw@127.0.0.1:{server.server_address[1]}/prefix")   # no exception
    server.server_close()


def test_doc_lists_every_case():
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/bad-inputs.md lacks {missing}; regenerate with python tests/test_bad_inputs.py --markdown"
    assert len(CASES) >= 25


# --- the doc's table --------------------------------------------------------------------------------
def markdown() -> str:
    root = tempfile.mkdtemp(prefix="revsearch-bad-inputs-")
    try:
        files = Files(root)
        rows = ["| case | area | bad input | exit | seconds | the one line on stderr |", "|---|---|---|---|---|---|"]
        for case in CASES:
            out = execute(case, files)
            line = " / ".join(out.stderr.splitlines()).replace(root, "<tmp>").replace("|", "\\|")
            note = f" **(known issue: {case.known_issue})**" if case.known_issue else ""
            rows.append(f"| `{case.id}` | {case.area} | {case.what} | {out.returncode} | {out.seconds:.1f} | "
                        f"`{line}`{note} |")
            print(f"{case.id}: {out.returncode} {out.seconds:.1f}s", file=sys.stderr)
        return "\n".join(rows)
    finally:
        if os.path.isdir(os.path.join(root, "readonly")):
            os.chmod(os.path.join(root, "readonly"), 0o700)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        sys.exit("usage: python tests/test_bad_inputs.py --markdown")
