"""Security properties: no code runs when loading checkpoints, search states or genotypes; nothing
secret reaches MLflow; every server we start or document binds 127.0.0.1."""
from __future__ import annotations

import ast
import glob
import json
import os
import pickle
import re

import pytest
import torch

from revsearch.cli import main as cli_main
from revsearch.errors import ConfigError, RevsearchError
from revsearch.orchestration.tracking import (Tracker, flatten_params, is_secret_key, mask_secrets,
                                              probe_tracking_uri, redact)
from revsearch.search.genotype import Genotype, uniform_genotype
from revsearch.train.checkpoint import load_checkpoint, load_for_inference, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "revsearch")
SOURCES = sorted(glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True))
SECRET = "s3cretPW"


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears iff someone unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def revsearch_state(extra=None) -> dict:
    state = {"model": {"w": torch.zeros(2)},
             "model_spec": {"builder": "revsearch.models.transformer:build", "config": {}},
             "spm_model": b"x"}
    state.update(extra or {})
    return state


@pytest.fixture
def payload_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    path = save_checkpoint(tmp_path / "evil.pt", revsearch_state({"evil": Payload(marker)}))
    return path, marker


# --- checkpoints ------------------------------------------------------------------------------------
def test_the_payload_is_live(tmp_path):
    """Sanity: an unsafe load of the same kind of file does run the payload (so the refusals below mean
    something)."""
    marker = tmp_path / "LIVE"
    path = save_checkpoint(tmp_path / "live.pt", revsearch_state({"evil": Payload(marker)}))
    state = torch.load(path, weights_only=False)
    state["evil"].close()
    assert marker.exists()


def test_load_checkpoint_refuses_a_pickle_payload(payload_checkpoint):
    path, marker = payload_checkpoint
    for load in (load_checkpoint, load_for_inference):
        with pytest.raises(RevsearchError) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "weights_only" in msg, msg
    assert not marker.exists()


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_cli_refuses_a_pickle_payload(command, payload_checkpoint, tmp_path, capsys, monkeypatch):
    path, marker = payload_checkpoint
    argv = [command, "--checkpoint", str(path)]
    if command == "evaluate":
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        for split in ("train", "valid", "test"):
            for lang in ("en", "de"):
                (corpus / f"{split}.{lang}").write_text("a b\n", encoding="utf-8")
        argv += ["--corpus", str(corpus), "--src-lang", "en", "--tgt-lang", "de"]
    else:
        monkeypatch.setattr("sys.stdin", open(os.devnull))
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and "weights_only" in err, err
    assert not marker.exists()


def test_search_state_checkpoint_refuses_a_pickle_payload(tmp_path):
    """What the search trainable does on restore: ``torch.load(<ckpt>/search_state.pt, weights_only=True)``
    (that the trainable passes weights_only=True is checked for every torch.load below)."""
    from revsearch.orchestration.search_trial import STATE_FILE
    marker = tmp_path / "PWNED"
    path = tmp_path / STATE_FILE
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3, "rng": torch.get_rng_state(),
                "weight_stream": {"epoch": 0, "position": 1}, "evil": Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def _calls(tree: ast.AST, dotted: str):
    module, _, attr = dotted.rpartition(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == module:
            yield node


def _parsed():
    for path in SOURCES:
        with open(path, encoding="utf-8") as f:
            yield os.path.relpath(path, ROOT), ast.parse(f.read(), path)


def test_every_torch_load_is_weights_only():
    found = []
    for rel, tree in _parsed():
        for call in _calls(tree, "torch.load"):
            kw = {k.arg: k.value for k in call.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            assert ok, f"{rel}:{call.lineno}: torch.load without weights_only=True"
            found.append(rel)
    assert "revsearch/orchestration/trainables.py" in found      # the search-state restore
    assert "revsearch/train/checkpoint.py" in found              # model checkpoints


def test_no_unsafe_deserializers_in_the_package():
    from revsearch.orchestration.sweep_yaml import SweepYamlLoader
    import yaml
    assert issubclass(SweepYamlLoader, yaml.SafeLoader)
    for rel, tree in _parsed():
        for name in ("pickle.load", "pickle.loads", "marshal.loads", "yaml.unsafe_load", "yaml.full_load",
                     "dill.loads", "cloudpickle.loads", "shelve.open"):
            assert not list(_calls(tree, name)), f"{rel}: {name}"
        for call in _calls(tree, "yaml.load"):
            loader = {k.arg: k.value for k in call.keywords}.get("Loader")
            assert isinstance(loader, ast.Name) and loader.id in ("SweepYamlLoader", "SafeLoader", "CSafeLoader"), \
                f"{rel}:{call.lineno}: yaml.load without a safe Loader"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "__import__"), f"{rel}:{node.lineno}: {node.func.id}()"


# --- genotypes: JSON only ---------------------------------------------------------------------------
def test_genotype_files_are_json_only(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "genotype.json"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ConfigError) as err:
        Genotype.load(str(evil))
    assert str(evil) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # what save() writes is plain JSON
    good = tmp_path / "good.json"
    uniform_genotype(2, "conv3", "conv3").save(str(good))
    assert json.loads(good.read_text(encoding="utf-8"))["schema_version"] == 1
    with open(os.path.join(PACKAGE, "search", "genotype.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "dill", "cloudpickle", "marshal", "shelve"}
    assert not list(_calls(tree, "torch.load"))


def test_genotype_json_cannot_name_arbitrary_code(tmp_path):
    """Op names are looked up in the registry, never imported: a dotted path is just an unknown op."""
    data = uniform_genotype(2, "conv3", "conv3").to_dict()
    data["encoder"]["cell"][0][0] = "os.system"
    with pytest.raises(ConfigError, match="unknown op 'os.system'"):
        Genotype.from_dict(data, source="g.json")


# --- secrets never reach MLflow ---------------------------------------------------------------------
def test_flatten_params_masks_uri_credentials_and_drops_secret_keys():
    flat = flatten_params({
        "tracking": {"uri": f"postgresql://user:{SECRET}@host/db", "api_token": SECRET, "experiment": "x"},
        "storage": {"password": SECRET, "awsSecretAccessKey": SECRET, "db": {"PRIVATE_KEY": SECRET}},
        "urls": [f"https://u:{SECRET}@h/x", f"https://h/x?token={SECRET}&page=2"],
        "dsn": f"host=h password={SECRET} dbname=x",
        "data": {"max_tokens": 512, "vocab_size": 8000},
    })
    assert flat["tracking.uri"] == "postgresql://***@host/db"
    assert flat["tracking.experiment"] == "x"
    assert "tracking.api_token" not in flat and not any("password" in k.lower() for k in flat)
    assert flat["urls"] == "https://***@h/x,https://h/x?token=***&page=2"
    assert flat["dsn"] == "host=h password=*** dbname=x"
    assert flat["data.max_tokens"] == "512"          # "tokens" is not a secret word
    assert SECRET not in json.dumps(flat)


@pytest.mark.parametrize("uri, masked", [
    (f"postgresql://user:{SECRET}@host/db", "postgresql://***@host/db"),
    (f"postgresql://user:p@ss{SECRET}@host:5432/db", "postgresql://***@host:5432/db"),   # '@' in the password
    (f"https://{SECRET}@mlflow.example.com", "https://***@mlflow.example.com"),
    (f"mysql+pymysql://:{SECRET}@h/db", "mysql+pymysql://***@h/db"),
    (f"https://h/api?api_key={SECRET}", "https://h/api?api_key=***"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("s3://bucket/a@b", "s3://bucket/a@b"),
])
def test_mask_secrets(uri, masked):
    assert mask_secrets(uri) == masked


def test_secret_key_names():
    for key in ("api_token", "password", "DB_PASSWORD", "mlflowTrackingPassword", "aws_secret_access_key",
                "private-key", "client_secret", "apiKey", "credentials"):
        assert is_secret_key(key), key
    for key in ("max_tokens", "tokenizer", "vocab_size", "author", "keys", "hidden", "uri"):
        assert not is_secret_key(key), key


def test_tracker_masks_json_artifacts_tags_and_errors(tmp_path):
    # a real MLflow store: what a user would read back in the UI must not hold the secret
    tracker = Tracker("sqlite:///" + str(tmp_path / "mlflow.db"), "secrets", artifact_root=str(tmp_path / "art"))
    run_id = tracker.start_run("r", {})
    tracker.log_json(run_id, {"tracking": {"uri": f"postgresql://u:{SECRET}@h/db", "api_token": SECRET}},
                     "resolved_config.json")
    tracker.set_tags(run_id, {"revsearch.uri": f"http://u:{SECRET}@h", "my_token": SECRET})
    tags = tracker.client.get_run(run_id).data.tags
    config_text = open(tracker.client.download_artifacts(run_id, "resolved_config.json", str(tmp_path))).read()
    assert SECRET not in json.dumps(tags) and SECRET not in config_text
    assert tags["revsearch.uri"] == "http://***@h" and tags["my_token"] == "***"
    assert json.loads(config_text)["tracking"] == {"uri": "postgresql://***@h/db", "api_token": "***"}
    # an unreachable server with credentials in its URI: the error line masks them
    with pytest.raises(ConfigError) as err:
        probe_tracking_uri(f"http://user:{SECRET}@127.0.0.1:9")
    assert SECRET not in str(err.value) and "http://***@127.0.0.1:9" in str(err.value)
    assert redact({"a": [{"password": "x", "ok": 1}]}) == {"a": [{"password": "***", "ok": 1}]}


# --- servers bind 127.0.0.1 -------------------------------------------------------------------------
def test_local_ray_starts_without_a_dashboard(monkeypatch):
    import ray
    from revsearch.orchestration import pipeline
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    pipeline.init_ray(None, num_cpus=1)  # re-exported from ray_connect
    (kw,) = calls
    assert kw.get("include_dashboard") is False or kw.get("dashboard_host") == "127.0.0.1", kw


def _documents():
    paths = [os.path.join(ROOT, "README.md"), os.path.join(PACKAGE, "commands", "run.py")]
    paths += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    paths += sorted(glob.glob(os.path.join(ROOT, "tune_configs", "cluster*.yaml")))
    return [p for p in paths if os.path.isfile(p)]


SERVER_COMMAND = re.compile(r"(mlflow (ui|server)|optuna-dashboard|tensorboard|ray start --head|ray dashboard)")


def test_documented_servers_bind_localhost():
    """A supplement to the checks above: every server command we document either uses its 127.0.0.1
    default or says --host 127.0.0.1 / a private-address placeholder, and nothing binds 0.0.0.0."""
    seen = 0
    for path in _documents():
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                where = f"{os.path.relpath(path, ROOT)}:{n}"
                assert "0.0.0.0" not in line, f"{where}: binds every interface: {line.strip()}"
                if not SERVER_COMMAND.search(line):
                    continue
                seen += 1
                host = re.search(r"--(?:host|dashboard-host)[ =]([^\s`'\")]+)", line)
                if host:
                    assert host.group(1) in ("127.0.0.1", "localhost", "$HEAD_PRIVATE_IP"), \
                        f"{where}: {line.strip()}"
    assert seen >= 2


def test_metric_signatures_are_not_mistaken_for_secrets():
    from revsearch.orchestration.tracking import flatten_params
    signature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    assert flatten_params({"eval": {"bleu_signature": signature}})["eval.bleu_signature"] == signature
