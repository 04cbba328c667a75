"""Cluster files: the Ray cluster launcher configs pass Ray's own validation (offline), and
experiments/run_sweep.py (the `ray submit` entry point) finds sweep files from any working directory."""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "run_sweep.py")
CLUSTER_FILES = ["cluster.yaml", "cluster_aws_gpu.yaml"]


def load_cluster(name: str) -> dict:
    with open(os.path.join(ROOT, "tune_configs", name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def prepared(config: dict) -> dict:
    """What `ray up` does to the YAML before using it, minus the cloud calls (AWS bootstrap needs
    credentials): defaults merged, node types filled, then Ray's JSON schema and consistency checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_config_passes_ray_validation(name):
    config = prepared(load_cluster(name))
    assert config["file_mounts"]["~/revsearch"] == "."
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = config["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch==2.13.0" in c)
    package_at = next(i for i, c in enumerate(setup) if "revsearch[cluster]" in c and "pip install -e" in c)
    assert torch_at < package_at, setup
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert config["head_node_type"] in config["available_node_types"]


def test_local_cluster_lists_head_and_workers():
    raw = load_cluster("cluster.yaml")
    config = prepared(raw)
    assert config["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    (node_type,) = config["available_node_types"].values()
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


def test_aws_cluster_has_gpu_workers_and_a_cpu_head():
    config = prepared(load_cluster("cluster_aws_gpu.yaml"))
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types)
    assert all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu_types)


def test_validation_catches_a_broken_cluster_file():
    import jsonschema
    config = load_cluster("cluster.yaml")
    config["setup_command"] = config.pop("setup_commands")     # a typo in a key
    with pytest.raises(jsonschema.ValidationError):
        prepared(config)


def test_cluster_extra_installs_ray_default():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(r.startswith("ray[default]") for r in extras["cluster"])


# --- experiments/run_sweep.py -----------------------------------------------------------------------
@pytest.fixture
def run_sweep():
    spec = importlib.util.spec_from_file_location("run_sweep_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python(args, cwd, home=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("RAY_ADDRESS", None)
    env.pop("REVSEARCH_REPO", None)
    if home:
        env["HOME"] = home
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_help_from_another_directory(tmp_path):
    proc = _python([SCRIPT, "--help"], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "ray submit" in proc.stdout and "--address" in proc.stdout


def test_as_ray_submit_runs_it_alone_in_the_home_directory(tmp_path):
    """`ray submit` copies the script to ~ and runs `python ~/run_sweep.py ARGS` with cwd ~."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(SCRIPT, home / "run_sweep.py")
    proc = _python(["run_sweep.py", "tune_configs/wmt14_en_de.yaml", "--dry-run", "--storage", "/shared/r",
                    "--tracking-uri", "http://10.0.0.1:5000"], cwd=str(home), home=str(home))
    assert proc.returncode == 0, proc.stderr
    sweep = os.path.join(ROOT, "tune_configs", "wmt14_en_de.yaml")
    assert proc.stdout.strip() == (f"revsearch run {sweep} --address auto --storage /shared/r "
                                   f"--tracking-uri http://10.0.0.1:5000")
    missing = _python(["run_sweep.py", "tune_configs/nope.yaml"], cwd=str(home), home=str(home))
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr


def test_resolve_sweep_path(run_sweep, tmp_path, monkeypatch):
    monkeypatch.delenv("REVSEARCH_REPO", raising=False)
    micro = os.path.join(ROOT, "tune_configs", "micro.yaml")
    # not under the working directory: found in the repository
    assert run_sweep.resolve_sweep_path("tune_configs/micro.yaml", cwd=str(tmp_path)) == micro
    # found under the working directory: that one wins
    local = tmp_path / "tune_configs" / "micro.yaml"
    local.parent.mkdir()
    local.write_text("name: local\n")
    assert run_sweep.resolve_sweep_path("tune_configs/micro.yaml", cwd=str(tmp_path)) == str(local)
    # absolute paths are taken as they are
    assert run_sweep.resolve_sweep_path(micro, cwd=str(tmp_path)) == micro
    # $REVSEARCH_REPO, then ~/revsearch (the file_mounts target)
    other = tmp_path / "other"
    (other / "tune_configs").mkdir(parents=True)
    (other / "tune_configs" / "only-here.yaml").write_text("name: x\n")
    monkeypatch.setenv("REVSEARCH_REPO", str(other))
    assert run_sweep.resolve_sweep_path("tune_configs/only-here.yaml", cwd="/") == \
        str(other / "tune_configs" / "only-here.yaml")
    monkeypatch.delenv("REVSEARCH_REPO")
    home = tmp_path / "home"
    (home / "revsearch" / "tune_configs").mkdir(parents=True)
    (home / "revsearch" / "tune_configs" / "shipped.yaml").write_text("name: x\n")
    monkeypatch.setenv("HOME", str(home))
    assert run_sweep.resolve_sweep_path("tune_configs/shipped.yaml", cwd="/") == \
        str(home / "revsearch" / "tune_configs" / "shipped.yaml")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        run_sweep.resolve_sweep_path("nowhere.yaml", cwd=str(tmp_path))


def test_main_calls_revsearch_run_on_the_cluster(run_sweep, tmp_path, monkeypatch):
    import revsearch.cli
    calls = []
    monkeypatch.setattr(revsearch.cli, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_sweep.main(["tune_configs/micro.yaml", "--storage", "/shared/r", "--resume"]) == 0
    micro = os.path.join(ROOT, "tune_configs", "micro.yaml")
    assert calls[-1] == ["run", micro, "--address", "auto", "--storage", "/shared/r", "--resume"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert run_sweep.main(["tune_configs/micro.yaml", "--command", "search"]) == 0
    assert calls[-1] == ["search", micro, "--address", "10.0.0.1:6379"]
