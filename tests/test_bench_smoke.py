"""Smoke tests for the benchmark scripts in experiments/: they run end to end (tiny settings, as
subprocesses, the way they are used) and write JSON of the documented shape with positive numbers."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")


def run_script(name, *args, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_bench_search_memory_quick(tmp_path):
    out = tmp_path / "search_memory.json"
    stdout = run_script("bench_search_memory.py", "--quick", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["budget_bytes"] == 3 * 2 ** 30
    assert "peak RSS" in data["method"] and "peak RSS" in stdout
    assert set(data["max_hidden"]) == {"plain", "reversible"}
    records = data["records"]
    assert {(r["mode"], r["hidden"]) for r in records} == {
        (mode, hidden) for mode in ("plain", "reversible") for hidden in (32, 64)}
    for r in records:
        assert r["fits"] is True and r["status"] == "ok"
        assert r["peak_rss_bytes"] > 0 and r["step_increment_bytes"] > 0 and r["step_seconds"] > 0
        assert r["peak_rss_bytes"] <= data["budget_bytes"]
        assert r["step_increment_bytes"] < r["peak_rss_bytes"]
    # the tiny quick models fit everywhere: the max is the largest size tried, flagged as a lower bound
    assert data["max_hidden"] == {"plain": 64, "reversible": 64}
    assert data["max_hidden_capped"] == {"plain": True, "reversible": True}
    assert set(data["step_time_ratio"]) == {"32", "64"}
    assert all(v > 0 for v in data["step_time_ratio"].values())
    assert "max hidden reversible / plain" in stdout


def test_bench_search_memory_kills_a_child_over_budget(tmp_path):
    """A budget below what importing torch takes: every child is stopped, nothing fits."""
    out = tmp_path / "over.json"
    stdout = run_script("bench_search_memory.py", "--quick", "--hiddens", "32", "--budget-gib", "0.05",
                        "--json", str(out))
    data = json.loads(out.read_text())
    assert data["max_hidden"] == {"plain": 0, "reversible": 0}
    assert data["max_hidden_capped"] == {"plain": False, "reversible": False}
    assert len(data["records"]) == 2
    for r in data["records"]:
        assert r["fits"] is False and r["status"] == "over budget"
        assert r["peak_rss_bytes"] > data["budget_bytes"]
        assert r["step_seconds"] is None
    assert "over budget" in stdout


def test_bench_reversible_tiny(tmp_path):
    out = tmp_path / "reversible.json"
    run_script("bench_reversible.py", "--depths", "2", "--steps", "1", "--hidden", "32", "--batch", "2",
               "--length", "8", "--threads", "1", "--json", str(out))
    data = json.loads(out.read_text())
    records = data["records"]
    assert {r["mode"] for r in records} == {"plain", "checkpoint", "reversible"}
    for r in records:
        assert r["depth"] == 2
        assert r["forward_saved_bytes"] > 0 and r["peak_activation_bytes"] > 0 and r["step_seconds"] > 0
        assert r["grad_rel_err"] < 1e-4


def test_bench_decoding_tiny(tmp_path):
    out = tmp_path / "decoding.json"
    stdout = run_script("bench_decoding.py", "--synthetic", "6", "--hidden", "32", "--embed-dim", "16",
                        "--layers", "1", "--heads", "2", "--vocab-size", "60", "--cache-dir", str(tmp_path / "spm"),
                        "--json", str(out))
    data = json.loads(out.read_text())
    records = data["records"]
    assert {(r["model"], r["beam"], r["cached"]) for r in records} == {
        (m, b, c) for m in ("derived", "transformer") for b in (4, 1) for c in (True, False)}
    for r in records:
        assert r["sentences_per_s"] > 0 and r["tokens_per_s"] > 0
        assert r["identical_to_uncached"] is True
    assert abs(data["params"]["transformer"] / data["params"]["derived"] - 1) <= 0.03
    assert "| model | beam |" in stdout


def test_bench_decoding_skips_without_data(tmp_path):
    out = tmp_path / "skipped.json"
    stdout = run_script("bench_decoding.py", "--data", str(tmp_path / "nowhere"), "--json", str(out))
    assert "skipped" in stdout
    assert json.loads(out.read_text())["records"] == []


@pytest.mark.slow  # ~30 s: generates the synthetic pair and trains its tokenizer
def test_search_levers_tiny(tmp_path):
    out = tmp_path / "levers.json"
    stdout = run_script("search_levers.py", "--steps", "3", "--report-every", "3", "--warmups", "0", "2",
                        "--alpha-lrs", "1e-2", "--storage", str(tmp_path / "storage"),
                        "--plots", str(tmp_path / "plots"), "--json", str(out), timeout=300)
    data = json.loads(out.read_text())
    assert [r["settings"]["alpha_warmup_steps"] for r in data["results"]] == [0, 2]
    for r in data["results"]:
        assert r["valid_loss"] > 0 and 0 <= r["param_free_share"] <= 1 and r["alpha_margin"] >= 0
        assert r["genotype"].startswith("enc[")
    assert len(list((tmp_path / "plots").glob("alpha_trajectories_*.png"))) == 2
    assert "| alpha_warmup_steps | alpha_lr |" in stdout


@pytest.mark.slow  # ~20 s: two gloo worker processes, and bench_precision --quick when its JSON is absent
def test_bench_parallel_quick(tmp_path):
    out = tmp_path / "parallel.json"
    stdout = run_script("bench_parallel.py", "--quick", "--json", str(out),
                        "--precision-json", str(tmp_path / "absent.json"), timeout=300)
    data = json.loads(out.read_text())
    assert [(r["what"], r["workers"]) for r in data["equality"]] == [
        ("search", 2), ("search_second_order", 2), ("retrain", 2)]
    assert all(r["max_rel_err"] <= 1e-10 for r in data["equality"])
    assert {(r["what"], r["workers"], r["threads"]) for r in data["throughput"]} == {
        (w, n, t) for w in ("search", "retrain") for n, t in ((1, 1), (1, 2), (2, 1))}
    assert all(r["tokens_per_s"] > 0 for r in data["throughput"])
    assert {r["dtype"] for r in data["precision"]} >= {"fp32"}
    assert all(r["recon_err"] >= 0 and r["step_seconds"] > 0 for r in data["precision"])
    assert "scaling eff." in stdout
