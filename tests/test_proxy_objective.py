"""The proxy objective (issue 10, item 7): every search trial ends with a short equal-size retrain of its
genotype and reports ``proxy_valid_bleu`` / ``proxy_valid_loss``, which Optuna optimises."""
import os
import subprocess
import sys

import pytest
import yaml

from revsearch.errors import ConfigError
from revsearch.orchestration.sweep import validate_sweep_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")


def micro(**changes):
    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = sweep
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    return sweep


def test_proxy_keys_validate_and_default():
    sweep = validate_sweep_dict(micro(**{"search.proxy_retrain": {"steps": 7}}), "s.yaml", REPO)
    assert sweep.search.proxy_retrain == {"steps": 7, "max_tokens": None, "lr": None, "valid_sentences": 200,
                                          "beam": 1}
    assert validate_sweep_dict(micro(), "s.yaml", REPO).search.proxy_retrain is None


@pytest.mark.parametrize("changes, words", [
    ({"objective": {"metric": "proxy_valid_bleu", "mode": "max"}},
     "s.yaml: objective.metric: proxy_valid_bleu needs search.proxy_retrain"),
    ({"objective": {"metric": "proxy_valid_loss", "mode": "min"}, "search.proxy_retrain": {"steps": 5},
      "scheduler": {"type": "asha"}}, "s.yaml: scheduler.type: asha stops trials on intermediate reports"),
    ({"search.proxy_retrain": {"steps": 0}}, "s.yaml: search.proxy_retrain.steps:"),
    ({"search.proxy_retrain": {"stepz": 5}}, "s.yaml: search.proxy_retrain.stepz: unknown key (did you mean 'steps'?)"),
    ({"search.proxy_retrain": [5]}, "s.yaml: search.proxy_retrain: must be a mapping"),
])
def test_bad_proxy_settings_give_one_line(changes, words):
    with pytest.raises(ConfigError) as err:
        validate_sweep_dict(micro(**changes), "s.yaml", REPO)
    assert str(err.value).startswith(words) and "\n" not in str(err.value)


def test_proxy_cannot_be_a_space_parameter():
    with pytest.raises(ConfigError) as err:
        validate_sweep_dict(micro(**{"space.proxy_retrain": {"type": "choice", "values": [1, 2]}}), "s.yaml", REPO)
    assert "space.proxy_retrain" in str(err.value)


@pytest.mark.slow
def test_optuna_optimises_the_proxy_bleu_of_equal_size_models(tmp_path):
    """Micro sweep through real Ray/Optuna/MLflow with ``objective: proxy_valid_bleu, max``: each study
    value is the BLEU its trial's proxy retrain logged, and the proxy models of trials with different
    widths have the same parameter count (within retrain.size.tolerance)."""
    import optuna
    from mlflow.tracking import MlflowClient

    sweep = micro(name="microproxy", **{"search.proxy_retrain": {"steps": 5, "valid_sentences": 10},
                                         "objective": {"metric": "proxy_valid_bleu", "mode": "max"},
                                         "space.splits": {"type": "choice", "values": [2, 3]},
                                         "retrain.steps": 5})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    storage = tmp_path / "storage"
    proc = subprocess.run([sys.executable, "-m", "revsearch.cli", "run", str(config), "--storage", str(storage)],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_name,) = os.listdir(storage / "runs")
    study = optuna.load_study(study_name="microproxy-search",
                              storage=f"sqlite:///{storage / 'runs' / run_name / 'optuna.db'}")
    assert study.direction.name == "MAXIMIZE"
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient("sqlite:///" + str(storage / "mlflow.db"))
    experiment = client.get_experiment_by_name("microproxy")
    searches = {r.data.tags["revsearch.trial_id"]: r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("revsearch.kind") == "search"}
    for trial in study.trials:
        run = searches[trial.user_attrs["tune_trial_id"]]
        assert trial.values[0] == pytest.approx(run.data.metrics["proxy_valid_bleu"], abs=1e-9)
        assert {"proxy_valid_loss", "proxy_params", "proxy_seconds", "valid_loss"} <= set(run.data.metrics)
    counts = sorted(r.data.metrics["proxy_params"] for r in searches.values())
    assert (counts[-1] - counts[0]) / counts[-1] <= 2 * 0.03, counts
