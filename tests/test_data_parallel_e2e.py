"""End to end with ``resources.workers: 2``: the micro sweep through a real local Ray, each search and
retrain trial a Ray Train run of two gloo workers launched from its Tune trial; exactly one MLflow child
run per trial (rank 0 logs), tagged with where the workers ran."""
import os
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")
SHORT_RETRAIN = {"baseline": False, "top_k": 1, "steps": 10, "validate_every": 10}   # stage 2 only has to run


@pytest.mark.slow
def test_micro_sweep_on_two_workers_per_trial(tmp_path):
    from mlflow.tracking import MlflowClient

    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    sweep.update(name="microdp", num_samples=1, max_concurrent=1, resources={"cpu": 1, "gpu": 0, "workers": 2})
    sweep["retrain"].update(baseline=False, top_k=1)
    # the proxy retrain and the retrain's scoring run after the Train run, in a Ray task holding one
    # worker's CPU (the trial process holds none): the objective must still come back from it
    sweep["search"]["proxy_retrain"] = {"steps": 5, "valid_sentences": 10, "beam": 1}
    sweep["objective"] = {"metric": "proxy_valid_loss", "mode": "min"}
    config = tmp_path / "microdp.yaml"
    config.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    storage = tmp_path / "storage"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    proc = subprocess.run([sys.executable, "-m", "revsearch.cli", "run", str(config), "--storage", str(storage)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = MlflowClient("sqlite:///" + str(storage / "mlflow.db"))
    experiment = client.get_experiment_by_name("microdp")
    runs = client.search_runs([experiment.experiment_id])
    # one child run per trial, never one per worker
    assert sorted(r.data.tags.get("revsearch.kind") for r in runs) == ["retrain", "search", "sweep"]
    for run in (r for r in runs if r.data.tags["revsearch.kind"] != "sweep"):
        assert run.info.status == "FINISHED"
        assert run.data.tags["revsearch.workers"] == "2"
        assert len(run.data.tags["revsearch.worker_nodes"].split(",")) == 2
        assert run.data.tags["revsearch.worker_group_starts"] == "1"
        assert run.data.tags["revsearch.worker_devices"] == "cpu,cpu"
    search = next(r for r in runs if r.data.tags["revsearch.kind"] == "search")
    assert search.data.metrics["proxy_valid_loss"] > 0 and search.data.metrics["proxy_params"] > 0
    assert [m.step for m in client.get_metric_history(search.info.run_id, "valid_loss")] == [10, 20]
    assert {"genotype.json", "alpha_trajectories.png"} <= {a.path for a in client.list_artifacts(search.info.run_id)}
    retrain = next(r for r in runs if r.data.tags["revsearch.kind"] == "retrain")
    assert retrain.data.metrics["train_steps"] == 30 and "valid_bleu" in retrain.data.metrics


@pytest.mark.slow
def test_killed_data_parallel_worker_restarts_from_the_last_checkpoint(tmp_path):
    """A Ray Train worker of a 2-worker search trial SIGKILLed mid-search: Ray Train restarts the worker
    group from its last checkpoint (FailureConfig), and the trial's one MLflow run continues without a
    gap and without starting over."""
    psutil = pytest.importorskip("psutil")
    from tests.test_faults import (Cli, by_kind, checkpointed_train_step, mlflow_runs, steps_of, the_run_dir,
                                   write_sweep)

    name, steps = "dpfault", 60
    config = write_sweep(tmp_path, name, steps=steps, num_samples=1, max_concurrent=1, workers=2,
                         retrain=SHORT_RETRAIN)
    storage = tmp_path / "storage"

    def train_workers(cli):
        out = []
        for p in cli.descendants():
            try:
                if " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))
        workers = cli.wait_for("a search checkpoint at step >= 20",
                               lambda: checkpointed_train_step(run_dir) >= 20 and train_workers(cli))
        at_kill = checkpointed_train_step(run_dir)
        workers[-1].kill()
        print(f"\nSIGKILLed Train worker {workers[-1].pid} with the newest checkpoint at step {at_kill}")
        rc = cli.wait()
        assert rc == 0, cli.tail()
    finally:
        cli.close()

    client, runs = mlflow_runs(storage, name)
    (search,) = by_kind(runs, "search")                      # still one run for the trial
    assert search.info.status == "FINISHED" and search.data.tags["revsearch.workers"] == "2"
    assert search.data.tags["revsearch.worker_group_starts"] == "2"   # Ray Train restarted the group once
    logged = steps_of(client, search.info.run_id)
    print(f"valid_loss steps logged: {logged}")
    assert sorted(logged) == list(range(10, steps + 1, 10)), logged   # no gap, each step once
    assert int(search.data.tags["revsearch.resumed_at_step"]) >= 10   # from a checkpoint, not started over


@pytest.mark.slow
def test_driver_killed_in_data_parallel_search_resumes_from_the_train_checkpoint(tmp_path):
    """The driver and its local Ray SIGKILLed while a 2-worker search trial runs: ``--resume`` restores the
    Tune trial, which starts its Ray Train run under the same name; Train V2 restores that run from its
    storage, so the search continues from its last checkpoint, in the trial's same MLflow run, with no gap."""
    from tests.test_faults import (Cli, by_kind, checkpointed_train_step, experiment_state, mlflow_runs,
                                   ray_leftovers, run_stage, steps_of, the_run_dir, write_sweep)

    name, steps = "dpresume", 60
    config = write_sweep(tmp_path, name, steps=steps, num_samples=1, max_concurrent=1, workers=2,
                         retrain=SHORT_RETRAIN)
    storage = tmp_path / "storage"

    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))
        experiment = os.path.join(run_dir, "search")
        cli.wait_for("a saved RUNNING trial with a search checkpoint at step >= 20", lambda: (
            checkpointed_train_step(run_dir) >= 20
            and "RUNNING" in {s for s, _ in experiment_state(experiment).values()}))
        at_kill = checkpointed_train_step(run_dir)
        left = cli.kill_all()
        assert not left, f"processes survived SIGKILL: {left}"
        print(f"\nkilled the driver with the newest Train checkpoint at step {at_kill}")
    finally:
        cli.close()
    assert run_stage(run_dir) == "search"
    client, runs = mlflow_runs(storage, name)
    (before,) = by_kind(runs, "search")
    assert before.info.status == "RUNNING"   # the driver died before it could end the run

    resumed = Cli(config, storage, "--resume")
    resumed.finish("--resume ")
    assert run_stage(run_dir) == "done" and os.path.isfile(os.path.join(run_dir, "ranking.csv"))
    client, runs = mlflow_runs(storage, name)
    (search,) = by_kind(runs, "search")                 # the same run, continued
    assert search.info.run_id == before.info.run_id and search.info.status == "FINISHED"
    assert search.data.tags["revsearch.worker_group_starts"] == "2"   # one group before, one after
    logged = steps_of(client, search.info.run_id)
    print(f"valid_loss steps logged: {logged}")
    # no gap, and each step once: the newest checkpoint may have been written to storage but not yet
    # registered by the Train controller the kill took, so that step can run again; the resumed search
    # replays it exactly and the run does not log it a second time (search_trial.log_new_steps)
    assert sorted(logged) == list(range(10, steps + 1, 10)), logged
    assert int(search.data.tags["revsearch.resumed_at_step"]) >= 10   # from a checkpoint, not started over
    (retrain,) = by_kind(runs, "retrain")
    assert retrain.info.status == "FINISHED" and "valid_bleu" in retrain.data.metrics
    assert not ray_leftovers(resumed)
