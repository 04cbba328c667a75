"""The registry without pickles (issue 11, item 5), against a real MLflow SQLite store: a checkpoint
registered with ``register_checkpoint`` loads back through ``load_registered`` and ``revsearch translate
--model models:/NAME@best`` with weights, logits and translations identical to the checkpoint's, for the
Transformer and a derived model; the registered files load with ``weights_only=True`` and a version that
holds a pickle is refused without being unpickled. (The full pipeline's registration is checked in
test_pipeline_e2e.py.)"""
import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

pytest.importorskip("mlflow")

from revsearch import cli  # noqa: E402
from revsearch.data.tokenizer import SentencePieceConfig, train_tokenizer  # noqa: E402
from revsearch.errors import ConfigError  # noqa: E402
from revsearch.models.split_seq2seq import SplitSeq2SeqConfig  # noqa: E402
from revsearch.models.transformer import StandardTransformer, TransformerConfig  # noqa: E402
from revsearch.orchestration.registry import (META_FILE, SPEC_FILE, TOKENIZER_FILE, WEIGHTS_FILE,  # noqa: E402
                                              RegistryError, load_registered, register_checkpoint)
from revsearch.orchestration.tracking import KIND_TAG, Tracker  # noqa: E402
from revsearch.search.derive import build_derived_model, derived_spec  # noqa: E402
from revsearch.search.genotype import Genotype  # noqa: E402
from revsearch.train.checkpoint import load_for_inference, save_checkpoint  # noqa: E402
from revsearch.train.decoding import DecodeConfig, translate_ids  # noqa: E402

GENOTYPE = {"schema_version": 1, "splits": 3, "pooling": "mean",
            "encoder": {"candidates": ["conv3", "self_attn"], "cell": [["conv3", "self_attn", "conv3"]]},
            "decoder": {"candidates": ["conv5", "self_attn", "cross_attn", "ffn"],
                        "cell": [["conv5", "self_attn", "ffn"], ["cross_attn", "ffn", "self_attn"]]}}
SENTENCES = ["the house is small", "the garden is green and the house 3 is small", "green"]
KINDS = ("baseline", "derived")


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if anyone unpickles it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store with one finished "retrain" run; the Transformer registered as ``tiny-baseline``
    and a derived model as ``tiny-derived``, each with the alias ``best``."""
    root = tmp_path_factory.mktemp("registry")
    text = root / "spm.txt"
    text.write_text("".join(f"the house {i} is small and the garden is green\n" for i in range(40)))
    tok = train_tokenizer([str(text)], SentencePieceConfig(vocab_size=40, cache_dir=str(root / "spm")))
    torch.manual_seed(0)
    baseline = StandardTransformer(TransformerConfig(tok.vocab_size, embed_dim=16, hidden=16, encoder_layers=1,
                                                     decoder_layers=1, heads=2, ffn_dim=32, max_len=128))
    torch.manual_seed(1)
    config = SplitSeq2SeqConfig(tok.vocab_size, hidden=24, splits=3, embed_dim=16, heads=2, encoder_layers=1,
                                decoder_layers=2, max_len=128)
    derived = build_derived_model(Genotype.from_dict(GENOTYPE), config)
    with torch.no_grad():   # untrained models would end every line at once: make the end token unlikely
        for model in (baseline, derived):
            next(p for n, p in model.named_parameters() if n.endswith(("out_bias", "output_bias")))[3] = -20.0
    checkpoints = {}
    for kind, model, spec in (("baseline", baseline, baseline.spec()),
                              ("derived", derived, derived_spec(Genotype.from_dict(GENOTYPE), config))):
        checkpoints[kind] = str(save_checkpoint(root / f"{kind}.pt", {
            "model": model.state_dict(), "model_spec": spec, "spm_model": tok.model_proto, "step": 7}))
    uri = "sqlite:///" + str(root / "mlflow.db")
    tracker = Tracker(uri, "registry-test", artifact_root=str(root / "mlartifacts"))
    run_id = tracker.start_run("retrain-0", {KIND_TAG: "retrain"})
    tracker.end_run(run_id, "FINISHED")
    versions = {kind: register_checkpoint(tracker.client, tracker.experiment_id, run_id, path, f"tiny-{kind}",
                                          label=kind) for kind, path in checkpoints.items()}
    return dict(root=root, uri=uri, tracker=tracker, run_id=run_id, checkpoints=checkpoints, versions=versions,
                sentences_file=root / "in.txt")


def _sources(tokenizer):
    return [tokenizer.encode_src(s) for s in SENTENCES]


@pytest.mark.parametrize("kind", KINDS)
def test_registered_model_equals_the_checkpoint(store, kind, tmp_path):
    model, spec, tokenizer_path = load_registered(f"models:/tiny-{kind}@best", store["uri"], dst_path=str(tmp_path))
    reference, tokenizer, state = load_for_inference(store["checkpoints"][kind])
    assert spec == state["model_spec"]
    assert open(tokenizer_path, "rb").read() == state["spm_model"]
    assert not model.training
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    sources = _sources(tokenizer)
    src = torch.tensor([s + [0] * (max(map(len, sources)) - len(s)) for s in sources])
    tgt_in = torch.tensor([[2, 5, 6, 7]] * len(sources))
    with torch.no_grad():
        assert torch.equal(model(src, tgt_in), reference(src, tgt_in))
    for beam in (1, 3):
        cfg = DecodeConfig(beam_size=beam)
        hyps = translate_ids(model, sources, cfg)
        assert hyps == translate_ids(reference, sources, cfg)
        assert any(hyps)   # an untrained model still emits tokens: the comparison is not of empty lines
    # the same version by number
    numbered, _, _ = load_registered(f"models:/tiny-{kind}/{store['versions'][kind]}", store["uri"],
                                     dst_path=str(tmp_path / "by-number"))
    assert all(torch.equal(numbered.state_dict()[k], want[k]) for k in want)


def test_registered_files_are_weights_and_json_only(store, tmp_path):
    load_registered("models:/tiny-derived@best", store["uri"], dst_path=str(tmp_path))
    files = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs}
    assert files == {WEIGHTS_FILE, SPEC_FILE, TOKENIZER_FILE, META_FILE}   # no MLmodel, no *.pkl, no data/model.pth
    weights = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    assert spec["builder"] == "revsearch.search.derive:build_from_spec"
    assert spec["config"]["genotype"] == Genotype.from_dict(GENOTYPE).to_dict()   # the genotype, as JSON
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["format"] == "revsearch-registered-model" and meta["label"] == "derived" and meta["step"] == 7


def test_registration_records_lineage_and_leaves_the_run_finished(store):
    client = store["tracker"].client
    version = client.get_model_version_by_alias("tiny-derived", "best")
    assert version.run_id == store["run_id"] and version.tags["revsearch.label"] == "derived"
    assert version.source.startswith("models:/m-")            # an MLflow 3 logged model
    logged = client.get_logged_model(version.source[len("models:/"):])
    assert logged.source_run_id == store["run_id"] and logged.model_type == "revsearch-seq2seq"
    assert str(logged.status).rsplit(".", 1)[-1] == "READY"
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "tiny-derived", "version": version.version}]
    assert logged.model_id in [o.model_id for o in client.get_run(store["run_id"]).outputs.model_outputs]
    assert client.get_run(store["run_id"]).info.status == "FINISHED"   # the run was not reopened


def test_a_pickled_registration_is_refused_without_unpickling(store, tmp_path):
    """A version whose files hold a pickle (as ``mlflow.pytorch.log_model(serialization_format="pickle")``
    wrote them) is refused by name, and its payload never runs."""
    marker = tmp_path / "PWNED"
    client, tracker = store["tracker"].client, store["tracker"]
    files = tmp_path / "files"
    (files / "data").mkdir(parents=True)
    (files / "data" / "model.pth").write_bytes(pickle.dumps(Payload(str(marker))))
    (files / SPEC_FILE).write_text(json.dumps({"builder": "revsearch.models.transformer:build_from_config",
                                               "config": {}}))
    logged = client.create_logged_model(tracker.experiment_id, name="model", source_run_id=store["run_id"])
    client.log_model_artifacts(logged.model_id, str(files))
    client.finalize_logged_model(logged.model_id, "READY")
    client.create_registered_model("tiny-pickled")
    version = client.create_model_version("tiny-pickled", f"models:/{logged.model_id}", model_id=logged.model_id)
    client.set_registered_model_alias("tiny-pickled", "best", version.version)
    with pytest.raises(RegistryError, match=r"tiny-pickled@best .*data/model.pth \(a pickled model\)"):
        load_registered("models:/tiny-pickled@best", store["uri"], dst_path=str(tmp_path / "dl"))
    assert not marker.exists()


def test_cli_translate_with_the_registered_model_equals_the_checkpoint(store, monkeypatch, capsys):
    outputs = {}
    for source in (["--checkpoint", store["checkpoints"]["derived"]],
                   ["--model", "models:/tiny-derived@best", "--tracking-uri", store["uri"]]):
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(SENTENCES) + "\n"))
        assert cli.main(["translate", *source, "--beam", "2"]) == 0
        outputs[source[0]] = capsys.readouterr().out
    assert outputs["--model"] == outputs["--checkpoint"] and outputs["--model"].count("\n") == len(SENTENCES)
    # $MLFLOW_TRACKING_URI stands in for --tracking-uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(SENTENCES) + "\n"))
    assert cli.main(["translate", "--model", "models:/tiny-derived@best", "--beam", "2"]) == 0
    assert capsys.readouterr().out == outputs["--checkpoint"]


def test_cli_translate_model_in_a_fresh_process_creates_nothing(store, tmp_path):
    """A new process (no MLflow URI set globally, no $MLFLOW_* variables) in an empty directory: the
    translations equal the checkpoint's, stderr stays quiet, and no ./mlflow.db or ./mlruns appears."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    outputs = {}
    for source in (["--checkpoint", store["checkpoints"]["baseline"]],
                   ["--model", "models:/tiny-baseline@best", "--tracking-uri", store["uri"]]):
        proc = subprocess.run([sys.executable, "-m", "revsearch.cli", "translate", *source], cwd=tmp_path, env=env,
                              input="\n".join(SENTENCES) + "\n", capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs[source[0]] = proc.stdout
        assert "Downloading artifacts" not in proc.stderr and "Traceback" not in proc.stderr
    assert outputs["--model"] == outputs["--checkpoint"] and outputs["--model"].count("\n") == len(SENTENCES)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, line", [
    (["--model", "models:/nope@best"], "--model: models:/nope@best: no registered model 'nope' at sqlite:///"),
    (["--model", "models:/tiny-derived@bset"],
     "--model: models:/tiny-derived@bset: model 'tiny-derived' has no alias 'bset' (its aliases: best)"),
    (["--model", "models:/tiny-derived/99"],
     "--model: models:/tiny-derived/99: model 'tiny-derived' has no version 99"),
    (["--model", "tiny-derived"], "--model: 'tiny-derived': expected models:/NAME@ALIAS"),
    (["--model", "models:/tiny-derived@best", "--tracking-uri", "http://127.0.0.1:9"],
     "--tracking-uri: cannot reach the MLflow tracking server 'http://127.0.0.1:9'"),
    (["--model", "models:/tiny-derived@best", "--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"],
     "--tracking-uri: no MLflow database at /nonexistent/dir/mlflow.db"),
    (["--checkpoint", "x.pt", "--tracking-uri", "sqlite:///m.db"], "--tracking-uri: only used with --model"),
])
def test_cli_model_errors_are_one_line(store, argv, line, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if "--tracking-uri" not in argv:
        argv = [*argv, "--tracking-uri", store["uri"]]
    assert cli.main(["translate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"revsearch: error: {line}"), err


def test_cli_model_and_checkpoint_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["translate", "--checkpoint", "a.pt", "--model", "models:/x@best"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--model: not allowed with argument --checkpoint" in err


def test_load_registered_without_a_tracking_uri_is_one_line(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="no tracking URI given"):
        load_registered("models:/tiny-derived@best")


def test_no_artifact_progress_bar_is_scoped_and_leaves_a_users_setting_alone(monkeypatch):
    from revsearch.orchestration.tracking import no_artifact_progress_bar
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(KeyError), no_artifact_progress_bar():
        assert os.environ[variable] == "false"
        raise KeyError("a failed download")
    assert variable not in os.environ
    monkeypatch.setenv(variable, "true")
    with no_artifact_progress_bar():
        assert os.environ[variable] == "true"
    assert os.environ[variable] == "true"


@pytest.mark.slow
def test_register_and_load_through_an_mlflow_server(store, tmp_path):
    """The cluster set-up: a real ``mlflow server`` with proxied artifacts (``mlflow-artifacts:``); the
    registered files go through the server and come back identical."""
    from .local_cluster import MlflowServer
    server = MlflowServer(str(tmp_path), workers=1)
    try:
        server.wait()
        tracker = Tracker(server.uri, "registry-server")
        run_id = tracker.start_run("retrain-0", {KIND_TAG: "retrain"})
        tracker.end_run(run_id, "FINISHED")
        checkpoint = store["checkpoints"]["derived"]
        assert register_checkpoint(tracker.client, tracker.experiment_id, run_id, checkpoint, "tiny-served",
                                   label="derived") == "1"
        version = tracker.client.get_model_version_by_alias("tiny-served", "best")
        assert tracker.client.get_model_version_download_uri("tiny-served", "1").startswith("mlflow-artifacts:")
        model, _, _ = load_registered("models:/tiny-served@best", server.uri, dst_path=str(tmp_path / "dl"))
        want = load_for_inference(checkpoint)[0].state_dict()
        assert all(torch.equal(model.state_dict()[k], want[k]) for k in want) and version.run_id == run_id
        assert set(os.listdir(os.path.join(server.artifacts, tracker.experiment_id, "models"))) \
            == {version.source[len("models:/"):]}      # the files lie in the server's artifact store
        with pytest.raises(RegistryError, match="no alias 'bset'"):
            load_registered("models:/tiny-served@bset", server.uri)
    finally:
        server.stop()
