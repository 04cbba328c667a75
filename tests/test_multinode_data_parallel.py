"""A data-parallel trial across two Ray nodes: the micro sweep with ``resources.workers: 2`` on a real
two-node cluster (one CPU per node, so each trial's two Train workers must sit on different nodes and
talk gloo between them), tracking into a real ``mlflow server``. The run's tags must name both nodes,
and the work after each Train run (proxy retrain, scoring) must find a CPU on the cluster."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from .local_cluster import LocalRayCluster, MlflowServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")


@pytest.mark.slow
def test_two_worker_trials_span_both_nodes(tmp_path):
    from mlflow.tracking import MlflowClient

    root = str(tmp_path)
    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    sweep.update(name="microdp2n", num_samples=1, max_concurrent=1,
                 resources={"cpu": 1, "gpu": 0, "workers": 2})
    sweep["retrain"].update(baseline=False, top_k=1, steps=10, validate_every=10)
    sweep["search"]["proxy_retrain"] = {"steps": 5, "valid_sentences": 10, "beam": 1}
    home = os.path.join(root, "home")
    os.makedirs(os.path.join(home, "tune_configs"))
    with open(os.path.join(home, "tune_configs", "microdp2n.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(sweep, f, sort_keys=False)
    shutil.copy(os.path.join(REPO, "experiments", "run_sweep.py"), home)

    server = MlflowServer(root)
    cluster = LocalRayCluster(root)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        server.wait()
        nodes = cluster.nodes()
        env = dict(cluster.env, RAY_DEDUP_LOGS="0", RAY_ADDRESS=cluster.address, HOME=home)
        proc = subprocess.run([sys.executable, "run_sweep.py", "tune_configs/microdp2n.yaml",
                               "--storage", os.path.join(root, "storage"), "--tracking-uri", server.uri],
                              cwd=home, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("microdp2n")
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.tags["revsearch.kind"] for r in runs) == ["retrain", "search", "sweep"]
        for run in (r for r in runs if r.data.tags["revsearch.kind"] != "sweep"):
            assert run.info.status == "FINISHED"
            assert run.data.tags["revsearch.workers"] == "2"
            # one CPU per node: the two workers ran on the two nodes
            assert sorted(run.data.tags["revsearch.worker_node_ids"].split(",")) == sorted(nodes), run.data.tags
        search = next(r for r in runs if r.data.tags["revsearch.kind"] == "search")
        assert [m.step for m in client.get_metric_history(search.info.run_id, "valid_loss")] == [10, 20]
        assert search.data.metrics["proxy_params"] > 0
        retrain = next(r for r in runs if r.data.tags["revsearch.kind"] == "retrain")
        assert 0.0 <= retrain.data.metrics["valid_bleu"] <= 100.0
    finally:
        cluster.stop()
        server.stop()
