"""Issue 6, items 1-3: the micro sweep, started through ``experiments/run_sweep.py`` as ``ray submit`` does,
on a real two-node Ray cluster (head and worker as separate
``ray start`` nodes with their own ports and temp dirs, token authentication on) tracking into a real
``mlflow server`` on 127.0.0.1. Trials must run on both nodes, and every run, metric, artifact and the
registered model must land in the server; nothing may fall back to a local store."""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from .local_cluster import LocalRayCluster, MlflowServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cluster"))
    server = MlflowServer(root)
    cluster = LocalRayCluster(root)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        server.wait()
        nodes = cluster.nodes()
        storage = os.path.join(root, "storage")
        # as `ray submit` runs it: the entry script copied alone into a home directory that is also the
        # working directory, the sweep named relative to the repository; the cluster comes from
        # RAY_ADDRESS, as in a `ray job submit` driver
        home = os.path.join(root, "home")
        os.makedirs(home)
        shutil.copy(os.path.join(REPO, "experiments", "run_sweep.py"), home)
        env = dict(cluster.env, RAY_DEDUP_LOGS="0", RAY_ADDRESS=cluster.address, HOME=home)
        proc = subprocess.run([sys.executable, "run_sweep.py", "tune_configs/micro.yaml", "--storage", storage,
                               "--tracking-uri", server.uri],
                              cwd=home, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        yield {"root": root, "storage": storage, "server": server, "cluster": cluster, "nodes": nodes,
               "proc": proc}
    finally:
        cluster.stop()
        server.stop()


@pytest.mark.slow
def test_two_nodes_are_up_with_their_own_temp_dirs(cluster_run):
    nodes, cluster = cluster_run["nodes"], cluster_run["cluster"]
    assert len(nodes) == 2
    assert sorted(nodes.values()) == sorted(cluster.temp_dirs)
    for temp_dir in cluster.temp_dirs:  # each node keeps its own session (logs, sockets) in its temp dir
        assert any(name.startswith("session_") for name in os.listdir(temp_dir))


@pytest.mark.slow
def test_micro_sweep_runs_trials_on_both_nodes_and_lands_in_the_server(cluster_run):
    from mlflow.tracking import MlflowClient

    server, nodes, storage = cluster_run["server"], cluster_run["nodes"], cluster_run["storage"]
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id])
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags["revsearch.kind"], []).append(run)
    assert {k: len(v) for k, v in by_kind.items()} == {"sweep": 1, "search": 2, "retrain": 2}
    parent = by_kind["sweep"][0]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if r is not parent)

    # two trials, one CPU per trial, one CPU per node: each stage used both nodes
    for kind in ("search", "retrain"):
        placed = {r.data.tags["revsearch.ray_node_id"] for r in by_kind[kind]}
        assert placed == set(nodes), (kind, placed, nodes)

    # metric curves from the workers are in the server
    for run in by_kind["search"]:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [10, 20]
    for run in by_kind["retrain"]:
        assert 0.0 <= run.data.metrics["test_bleu"] <= 100.0

    # artifacts were uploaded through the server (proxied mlflow-artifacts: URIs) into its destination
    # directory, from whichever node ran the trial
    expected = {"search": {"genotype.json", "alpha_heatmap.png", "derived_cell.png"},
                "retrain": {"test_hypotheses.txt", "training_curve.json"},
                "sweep": {"ranking.md", "ranking.csv", "resolved_config.json", "candidates.json"}}
    for kind, names in expected.items():
        for run in by_kind[kind]:
            assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
            listed = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert names <= listed, (kind, names - listed)
            on_disk = os.path.join(server.artifacts, experiment.experiment_id, run.info.run_id, "artifacts")
            assert names <= set(os.listdir(on_disk))
    worker_node = next(n for n, d in nodes.items() if not d.endswith("head"))
    from_worker = [r for r in by_kind["search"] if r.data.tags["revsearch.ray_node_id"] == worker_node]
    genotype = client.download_artifacts(from_worker[0].info.run_id, "genotype.json",
                                         os.path.join(cluster_run["root"], "download"))
    assert '"schema_version": 1' in open(genotype).read()

    # the best model is registered in the server's registry, with the alias
    version = client.get_model_version_by_alias("revsearch-micro", "best")
    assert version.run_id in {r.info.run_id for r in by_kind["retrain"]}
    assert version.tags["revsearch.label"] == parent.data.tags["revsearch.best"]

    # nothing fell back to a local store on the driver or the nodes
    for top in (storage, cluster_run["root"], cluster_run["cluster"].short_root):
        for dirpath, dirnames, filenames in os.walk(top):
            if dirpath.startswith(server.artifacts):
                continue
            assert "mlruns" not in dirnames, dirpath
            assert not any(f == "mlflow.db" for f in filenames), dirpath
    assert not os.path.exists(os.path.join(storage, "mlartifacts"))


@pytest.mark.slow
def test_driver_output_is_clean(cluster_run):
    proc = cluster_run["proc"]
    assert "best:" in proc.stdout
    driver_lines = [line for line in proc.stderr.splitlines()
                    if not re.match(r"^(\x1b\[\d+m)?\(\S+ pid=\d+", line)]
    assert not any("Traceback" in line for line in driver_lines), "\n".join(driver_lines[-40:])


@pytest.mark.slow
def test_wrong_cluster_token_is_one_line_and_records_nothing(cluster_run):
    from mlflow.tracking import MlflowClient

    server, cluster = cluster_run["server"], cluster_run["cluster"]
    client = MlflowClient(server.uri)
    before = len(client.search_runs([client.get_experiment_by_name("micro").experiment_id]))
    env = dict(cluster.env, RAY_AUTH_TOKEN="0" * 32)
    proc = subprocess.run([sys.executable, "-m", "revsearch.cli", "run", MICRO, "--storage",
                           os.path.join(cluster_run["root"], "storage-bad-token"), "--address", cluster.address,
                           "--tracking-uri", server.uri],
                          cwd=cluster_run["root"], env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"revsearch: error: --address {cluster.address}: cannot join the Ray cluster")
    assert "token authentication" in lines[0] and "0" * 32 not in lines[0]
    assert len(client.search_runs([client.get_experiment_by_name("micro").experiment_id])) == before


# ----------------------------------------------------------------------------------------- node loss
@pytest.mark.slow
def test_lost_worker_node_trial_restarts_on_the_head_from_its_checkpoint(tmp_path):
    """SIGKILL every process of the worker node while its search trial is past its step-20 checkpoint
    (a machine lost mid-search): Tune restarts that trial from the checkpoint on the surviving node, its
    MLflow run (in the server) continues on the same step axis, and the sweep still finishes."""
    import time
    import yaml
    from mlflow.tracking import MlflowClient
    from .test_faults import checkpoint_steps, steps_of, trial_dirs, trial_id

    steps = 60
    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    sweep["name"] = "nodeloss"
    sweep["search"].update(steps=steps, report_every=10, checkpoint_every=10)
    config = tmp_path / "nodeloss.yaml"
    config.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    root = str(tmp_path)
    server, cluster = MlflowServer(root), LocalRayCluster(root)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        server.wait()
        nodes = cluster.nodes()
        head_node = next(n for n, d in nodes.items() if d.endswith("head"))
        worker_node, worker_dir = next((n, d) for n, d in nodes.items() if n != head_node)
        storage = os.path.join(root, "storage")
        log = open(os.path.join(root, "driver.err"), "w")
        driver = subprocess.Popen([sys.executable, "-m", "revsearch.cli", "run", str(config), "--storage", storage,
                                   "--address", cluster.address, "--tracking-uri", server.uri],
                                  cwd=root, env=cluster.env, stdout=subprocess.DEVNULL, stderr=log)
        client = MlflowClient(server.uri)

        def victim():
            """(trial id, checkpoint step) of the worker node's search trial once it has a checkpoint >= 20."""
            experiment = client.get_experiment_by_name("nodeloss")
            if experiment is None:
                return None
            runs = client.search_runs([experiment.experiment_id], "tags.`revsearch.kind` = 'search'")
            on_worker = {r.data.tags["revsearch.trial_id"] for r in runs
                         if r.data.tags.get("revsearch.ray_node_id") == worker_node}
            for run_dir in glob.glob(os.path.join(storage, "runs", "*")):
                for d in trial_dirs(run_dir, "search"):
                    done = checkpoint_steps(d)
                    if trial_id(d) in on_worker and done and 20 <= max(done) < steps:
                        return trial_id(d), max(done)
            return None

        deadline, found = time.time() + 600, None
        while found is None and time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
            found = victim()
        assert found, "the worker node's trial never reached its step-20 checkpoint"
        trial, at_kill = found
        cluster.kill_node(worker_dir)
        rc = driver.wait(timeout=900)
        assert rc == 0, open(os.path.join(root, "driver.err")).read()[-5000:]

        experiment = client.get_experiment_by_name("nodeloss")
        runs = client.search_runs([experiment.experiment_id], "tags.`revsearch.kind` = 'search'")
        assert sorted(r.data.tags["revsearch.trial_id"] for r in runs).count(trial) == 1  # no second run
        assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 2
        lost = next(r for r in runs if r.data.tags["revsearch.trial_id"] == trial)
        logged = steps_of(client, lost.info.run_id)
        print(f"\nnode loss: trial {trial} killed with checkpoint {at_kill}; valid_loss steps {logged}; "
              f"now on {lost.data.tags['revsearch.ray_node_id'][:8]} (head {head_node[:8]})")
        assert sorted(set(logged)) == list(range(10, steps + 1, 10))  # continuous step axis
        before = [s for s in logged if s < at_kill]
        assert len(before) == len(set(before)), logged  # resumed from the checkpoint, not from scratch
        assert lost.data.tags["revsearch.ray_node_id"] == head_node  # restarted on the surviving node
        retrains = client.search_runs([experiment.experiment_id], "tags.`revsearch.kind` = 'retrain'")
        assert len(retrains) == 2 and all("test_bleu" in r.data.metrics for r in retrains)
    finally:
        cluster.stop()
        server.stop()


# ------------------------------------------------------------------------------------ ray job submit
@pytest.mark.slow
def test_ray_job_submit_with_working_dir_runs_the_sweep(tmp_path):
    """The documented ``ray job submit --working-dir .`` path: the job server (dashboard on 127.0.0.1,
    token auth) uploads the working tree and runs ``experiments/run_sweep.py`` as the job's driver."""
    import json
    from mlflow.tracking import MlflowClient

    root = str(tmp_path)
    server, cluster = MlflowServer(root), LocalRayCluster(root)
    try:
        cluster.start_head(num_cpus=2, dashboard=True)
        server.wait()
        storage = os.path.join(root, "storage")
        runtime_env = {"excludes": [".git", ".venv", "runs", "results", "mlruns", "*.db", "__pycache__",
                                    ".pytest_cache", ".hypothesis"],
                       "env_vars": {"PYTHONUNBUFFERED": "1"}}
        proc = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit",
             "--address", cluster.dashboard_url, "--working-dir", REPO, "--submission-id", "revsearch-micro-job",
             "--runtime-env-json", json.dumps(runtime_env), "--",
             "python", "experiments/run_sweep.py", "tune_configs/micro.yaml", "--storage", storage,
             "--tracking-uri", server.uri],
            cwd=root, env=cluster.env, capture_output=True, text=True, timeout=1200)
        # the job server wants the token too: ask it through the CLI with the cluster's environment
        status = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "status", "--address",
             cluster.dashboard_url, "revsearch-micro-job"], env=cluster.env, capture_output=True, text=True,
            timeout=120)
        logs = proc.stdout  # `ray job submit` follows the job's logs until it ends
        assert status.returncode == 0 and "job 'revsearch-micro-job' succeeded" in status.stdout.lower(), \
            status.stdout[-2000:] + status.stderr[-2000:] + logs[-5000:] + proc.stderr[-3000:]
        assert "best:" in logs and "ranking:" in logs

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("micro")
        runs = client.search_runs([experiment.experiment_id])
        kinds = sorted(r.data.tags["revsearch.kind"] for r in runs)
        assert kinds == ["retrain", "retrain", "search", "search", "sweep"]
        assert all(r.info.status == "FINISHED" for r in runs)
        assert client.get_model_version_by_alias("revsearch-micro", "best")
        # the job ran the uploaded tree: its driver imported revsearch from the job's working directory
        # (unpacked under the head's temp dir), not from this checkout
        line = next(l for l in logs.splitlines() if "revsearch from" in l)
        assert cluster.short_root in line and "working_dir_files" in line and REPO + "/" not in line, line
    finally:
        cluster.stop()
        server.stop()
