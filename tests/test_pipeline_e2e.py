"""End to end: the micro sweep through a real local Ray (2 CPUs), a real Optuna RDB study, a real MLflow
SQLite store, real SentencePiece and sacreBLEU. Asserts what a user would look at afterwards."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")


def revsearch(*args, cwd, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    return subprocess.run([sys.executable, "-m", "revsearch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("micro")
    proc = revsearch("run", MICRO, "--storage", str(storage), cwd=str(storage))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return storage, proc


@pytest.mark.slow
def test_micro_run_produces_ranking_registry_and_mlflow_tree(micro_run):
    from mlflow.tracking import MlflowClient
    import optuna

    storage, proc = micro_run
    assert "best:" in proc.stdout
    # the driver never prints a traceback; Ray worker lines (prefixed "(name pid=N)") are excluded because
    # a worker torn down at the end may print interpreter-shutdown noise of Ray's, seen once in CI runs
    driver_lines = [line for line in proc.stderr.splitlines()
                    if not re.match(r"^(\x1b\[\d+m)?\(\S+ pid=\d+", line)]
    assert not any("Traceback" in line for line in driver_lines)
    # the console is the live view, not Ray's: no worker lines, checkpoint paths, trial tables, INFO lines
    # or ANSI codes when the output is not a terminal (--verbose brings Ray's output back)
    console = proc.stdout + proc.stderr
    for ray_output in ("Checkpoint successfully created", "pid=", "Trial status:", " INFO ", "\x1b["):
        assert ray_output not in console, ray_output
    assert "stage 1 search: 2 done" in proc.stderr and "stage 2 retrain: 2 done" in proc.stderr
    runs_dir = os.path.join(storage, "runs")
    (run_name,) = os.listdir(runs_dir)
    run_dir = os.path.join(runs_dir, run_name)

    # ranking files: the derived model and the baseline, scored with sacreBLEU
    with open(os.path.join(run_dir, "ranking.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["kind"] for r in rows} == {"derived", "baseline"}
    assert all(0.0 <= float(r[k]) <= 100.0 for r in rows for k in ("valid_bleu", "test_bleu"))
    assert all(int(r["params"]) > 0 for r in rows)
    # ranked by validation BLEU, never by test BLEU
    assert [float(r["valid_bleu"]) for r in rows] == sorted((float(r["valid_bleu"]) for r in rows), reverse=True)
    assert "nrefs:1|case:mixed" in open(os.path.join(run_dir, "ranking.md")).read()
    state = json.load(open(os.path.join(run_dir, "run_state.json")))
    assert state["stage"] == "done"

    # Optuna study in an RDB next to the results: 2 finished trials with values
    study = optuna.load_study(study_name="micro-search",
                              storage="sqlite:///" + os.path.join(run_dir, "optuna.db"))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:  # derived parameter recorded beside the sampled ones
        assert t.user_attrs["hidden"] == t.params["splits"] * t.params["per_split_width"]
        assert t.values[0] > 0

    # MLflow: one parent, two search children, two retrain children, all linked
    client = MlflowClient("sqlite:///" + os.path.join(storage, "mlflow.db"))
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted(r.data.tags.get("revsearch.kind") for r in runs)
    assert kinds == ["retrain", "retrain", "search", "search", "sweep"]
    parent = next(r for r in runs if r.data.tags["revsearch.kind"] == "sweep")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.steps"] == "20" and parent.data.params["num_samples"] == "2"
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "ranking.md", "ranking.csv", "resolved_config.json", "candidates.json"}
    search_ids = set()
    for run in (r for r in children if r.data.tags["revsearch.kind"] == "search"):
        search_ids.add(run.data.tags["revsearch.trial_id"])
        history = client.get_metric_history(run.info.run_id, "valid_loss")
        assert [m.step for m in history] == [10, 20]  # a curve over search steps
        assert {"alpha_entropy", "param_free_share", "alpha_margin", "steps_per_s", "peak_rss_bytes",
                "params"} <= set(run.data.metrics)
        assert {"sampled.splits", "supernet.hidden", "search.alpha_lr"} <= set(run.data.params)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"genotype.json", "alpha_heatmap.png", "alpha_trajectories.png", "derived_cell.png"} <= artifacts
    retrains = [r for r in children if r.data.tags["revsearch.kind"] == "retrain"]
    derived = next(r for r in retrains if r.data.tags["revsearch.model_kind"] == "derived")
    assert derived.data.tags["revsearch.search_trial_id"] in search_ids  # retrain -> search link
    assert {"valid_bleu", "test_bleu", "test_chrf"} <= set(derived.data.metrics)
    assert derived.data.metrics["decode_seconds"] > 0 and derived.data.metrics["decode_sentences_per_s"] > 0
    assert {"valid_hypotheses.txt", "test_hypotheses.txt"} <= {a.path for a in client.list_artifacts(derived.info.run_id)}
    assert derived.data.tags["revsearch.bleu_signature"].startswith("nrefs:1")

    # the registered best model
    version = client.get_model_version_by_alias("revsearch-micro", "best")
    best_label = rows[0]["label"]
    assert version.tags["revsearch.label"] == best_label
    assert version.run_id == rows[0]["mlflow_run_id"]    # the seed chosen on validation BLEU


@pytest.mark.slow
def test_registered_best_model_loads_without_pickle_and_equals_its_checkpoint(micro_run, tmp_path):
    """The registry holds weights + JSON spec + SentencePiece model (no pickle): ``load_registered`` and
    ``revsearch translate --model models:/revsearch-micro@best`` give exactly the checkpoint's outputs."""
    import torch
    from mlflow.tracking import MlflowClient
    from revsearch.orchestration.registry import PICKLED_FILES, load_registered
    from revsearch.train.checkpoint import load_for_inference
    from revsearch.train.decoding import DecodeConfig, translate_ids

    storage, _ = micro_run
    uri = "sqlite:///" + os.path.join(storage, "mlflow.db")
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("revsearch-micro", "best")
    checkpoint = client.get_run(version.run_id).data.tags["revsearch.checkpoint"]
    downloaded = tmp_path / "dl"
    model, spec, tokenizer_path = load_registered("models:/revsearch-micro@best", uri, dst_path=str(downloaded))
    reference, tokenizer, state = load_for_inference(checkpoint)
    assert spec == state["model_spec"] and open(tokenizer_path, "rb").read() == state["spm_model"]
    want = reference.state_dict()
    assert model.state_dict().keys() == want.keys()
    assert all(torch.equal(model.state_dict()[k], want[k]) for k in want)
    files = {os.path.relpath(os.path.join(d, f), downloaded) for d, _, fs in os.walk(downloaded) for f in fs}
    assert files == {"model.pt", "model_spec.json", "tokenizer.model", "revsearch.json"}
    assert not files & set(PICKLED_FILES) and not any(f.endswith(".pkl") for f in files)
    assert isinstance(torch.load(downloaded / "model.pt", weights_only=True), dict)

    (corpus,) = [os.path.join(storage, "data", d) for d in os.listdir(os.path.join(storage, "data"))]
    src_lang = json.load(open(os.path.join(corpus, "meta.json")))["src_lang"]
    sources = [line.strip() for line in open(os.path.join(corpus, f"test.{src_lang}"), encoding="utf-8")][:8]
    ids = [tokenizer.encode_src(s) for s in sources]
    beam = DecodeConfig(beam_size=2)
    assert translate_ids(model, ids, beam) == translate_ids(reference, ids, beam)
    (tmp_path / "in.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    outputs = []
    for source in (["--checkpoint", checkpoint], ["--model", "models:/revsearch-micro@best", "--tracking-uri", uri]):
        proc = revsearch("translate", *source, "--input", str(tmp_path / "in.txt"), cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == len(sources)


@pytest.mark.slow
def test_report_rebuilds_ranking_from_mlflow(micro_run, tmp_path):
    storage, _ = micro_run
    proc = revsearch("report", MICRO, "--storage", str(storage), "--out", str(tmp_path), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rebuilt = list(csv.DictReader(open(tmp_path / "ranking.csv")))
    (run_name,) = os.listdir(os.path.join(storage, "runs"))
    original = list(csv.DictReader(open(os.path.join(storage, "runs", run_name, "ranking.csv"))))
    columns = ("label", "kind", "seeds", "valid_bleu", "test_bleu", "test_chrf", "params", "target_params",
               "delta_vs_baseline", "p_value", "genotype", "search_trial", "mlflow_run_id")
    assert [[r[c] for c in columns] for r in rebuilt] == [[r[c] for c in columns] for r in original]


@pytest.mark.slow
def test_multi_objective_sweep_retrains_the_pareto_front(tmp_path):
    """objective {metric: [valid_loss, params], mode: [min, min]}: a two-direction Optuna study, the
    retrain candidates taken from its Pareto front, and the front's picture in the parent run."""
    import yaml
    import optuna
    from mlflow.tracking import MlflowClient

    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    sweep.update(name="micromo", num_samples=3, objective={"metric": ["valid_loss", "params"], "mode": ["min", "min"]})
    sweep["retrain"]["top_k"] = 2
    config = tmp_path / "micromo.yaml"
    config.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    storage = tmp_path / "storage"
    proc = revsearch("run", str(config), "--storage", str(storage), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]

    (run_name,) = os.listdir(storage / "runs")
    run_dir = storage / "runs" / run_name
    study = optuna.load_study(study_name="micromo-search", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # (valid loss, parameter count of the derived model): a positive loss and a whole positive count
    assert all(len(t.values) == 2 and t.values[0] > 0 and t.values[1] > 0 and float(t.values[1]).is_integer()
               for t in study.trials)
    front = {t.user_attrs["tune_trial_id"] for t in study.best_trials}
    candidates = json.load(open(run_dir / "run_state.json"))["candidates"]
    chosen = {c["search_trial_id"] for c in candidates if c["kind"] == "derived"}
    assert chosen and (chosen <= front if len(front) >= 2 else front <= chosen), (chosen, front)
    assert {c["kind"] for c in candidates} == {"derived", "baseline"}

    client = MlflowClient("sqlite:///" + str(storage / "mlflow.db"))
    experiment = client.get_experiment_by_name("micromo")
    parent = next(r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags["revsearch.kind"] == "sweep")
    assert "pareto.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    with open(run_dir / "pareto.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(run_dir / "ranking.csv") as f:
        assert len(list(csv.DictReader(f))) == len(candidates)
