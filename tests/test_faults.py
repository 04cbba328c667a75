"""Fault injection on the real pipeline (issue 6, item 4): a micro sweep through a real local Ray, Optuna
RDB study and MLflow SQLite store, killed at the worst moments.

(a) a search trial's worker process is SIGKILLed mid-search -> Tune restarts the trial from its last
    checkpoint (FailureConfig) and it continues its own MLflow run on the same step axis;
(b) the driver (with its local Ray) is SIGKILLed in stage 1 after a search trial finished -> ``--resume``
    does not rerun it, duplicates no MLflow run and leaves no stale state in the Optuna study;
(c) the driver is SIGKILLed in stage 2 after one retrain finished -> ``--resume`` retrains only the
    unfinished model and does not touch stage 1.

Every process a scenario starts is ended by its id (the CLI's process group, then every Ray process
that descended from it: Ray workers run in process groups of their own). Nothing else on the machine
is touched, so the tests can share it with other Ray users."""
import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")

pytestmark = pytest.mark.slow
psutil = pytest.importorskip("psutil")


# ------------------------------------------------------------------------------------------- helpers
def write_sweep(tmp_path, name, *, steps, num_samples, max_concurrent, retrain_steps=None, workers=1,
                retrain=None):
    """micro.yaml with a longer search (reports and checkpoints every 10 steps); ``workers`` per trial
    (1 CPU each), ``retrain``: keys that replace micro's."""
    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    sweep["name"] = name
    sweep["search"].update(steps=steps, report_every=10, checkpoint_every=10)
    if retrain_steps:
        sweep["retrain"]["steps"] = retrain_steps
    sweep["retrain"].update(retrain or {})
    sweep.update(num_samples=num_samples, max_concurrent=max_concurrent)
    if workers > 1:
        sweep["resources"] = {"cpu": 1, "gpu": 0, "workers": workers}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return str(path)


class Cli:
    """``revsearch run`` in a session of its own, so the driver and its local Ray can be killed at once."""

    def __init__(self, config, storage, *args):
        os.makedirs(storage, exist_ok=True)
        self.storage, self.n = str(storage), len(glob.glob(os.path.join(str(storage), "cli-*.err")))
        self.err_path = os.path.join(self.storage, f"cli-{self.n}.err")
        self.out, self.err = open(self.err_path[:-4] + ".out", "w"), open(self.err_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
        self.proc = subprocess.Popen([sys.executable, "-m", "revsearch.cli", "run", config,
                                      "--storage", self.storage, *args],
                                     cwd=self.storage, env=env, stdout=self.out, stderr=self.err,
                                     start_new_session=True)
        self.started = time.monotonic()
        self.known = {}   # pid -> psutil.Process: everything seen descending from the CLI
        self.leftovers = []

    def elapsed(self):
        return time.monotonic() - self.started

    def tail(self, n=4000):
        if not self.err.closed:
            self.err.flush()
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-n:]

    def descendants(self):
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for p in found:
            self.known.setdefault(p.pid, p)
        return found

    def trial_workers(self):
        """Ray worker processes running a Tune function trainable (its proctitle is ``ray::ImplicitFunc.*``)."""
        workers = []
        for p in self.descendants():
            try:
                title = " ".join(p.cmdline()) or p.name()
            except psutil.Error:
                continue
            if title.startswith(("ray::ImplicitFunc", "ray::search_trainable")):
                workers.append(p)
        return workers

    def trial_of(self, worker):
        """The Tune trial a worker runs: Tune moves it into the trial directory."""
        try:
            return trial_id(worker.cwd())
        except (psutil.Error, IndexError):
            return None

    def wait_for(self, what, condition, timeout=400):
        """Poll ``condition`` (also recording the process tree) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.descendants()
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"revsearch exited ({self.proc.returncode}) before {what}:\n{self.tail()}")
            time.sleep(0.25)
        pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{self.tail()}")

    def finish(self, label=""):
        """Wait for the run to end, require exit 0, close; the exit printed with ``label``."""
        try:
            rc = self.wait()
            print(f"{label}exited {rc} after {self.elapsed():.0f}s")
            assert rc == 0, self.tail()
        finally:
            self.close()

    def wait(self, timeout=600):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"revsearch still running after {timeout}s:\n{self.tail()}")

    def kill_all(self):
        """SIGKILL the CLI's process group (driver, GCS, raylet, agents) and every process ever seen
        below it (Ray workers live in process groups of their own), by id."""
        self.descendants()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        procs = list(self.known.values())
        for p in procs:
            try:
                if p.is_running():  # is_running() also checks the pid was not reused
                    p.kill()
            except psutil.Error:
                pass
        self.proc.wait(timeout=60)
        _, alive = psutil.wait_procs(procs, timeout=30)
        self.out.close()
        self.err.close()
        return [p.pid for p in alive if _alive(p)]

    def close(self):
        """End whatever is left: the whole tree of a CLI still running; of a CLI that exited, the Ray
        processes that did not exit with it within 20 s (recorded in ``leftovers``)."""
        if self.proc.poll() is None:
            self.kill_all()
            return
        _, alive = psutil.wait_procs(list(self.known.values()), timeout=20)
        self.leftovers = sorted((p.pid, p.name()) for p in alive if _alive(p))
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.leftovers:
            print(f"killed Ray processes left by an exited revsearch: {self.leftovers}")
        self.out.close()
        self.err.close()


def _alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def the_run_dir(storage):
    dirs = glob.glob(os.path.join(str(storage), "runs", "*", "run_state.json"))
    return os.path.dirname(dirs[0]) if len(dirs) == 1 else None


def run_stage(run_dir):
    try:
        with open(os.path.join(run_dir, "run_state.json"), encoding="utf-8") as f:
            return json.load(f)["stage"]
    except (OSError, ValueError, KeyError):
        return None


def trial_dirs(run_dir, stage):
    return sorted(glob.glob(os.path.join(run_dir, stage, f"{stage}_trainable_*")))


def trial_id(trial_dir):
    """``.../search_trainable_<id>_<n>_<config>_<date>`` -> ``<id>``."""
    return os.path.basename(trial_dir.rstrip("/")).split("_")[2]


def checkpoint_steps(trial_dir, every=10):
    """Search steps of the Tune checkpoints present in a trial directory (checkpoint_00000k = step 10(k+1))."""
    return sorted(every * (int(os.path.basename(p).split("_")[1]) + 1)
                  for p in glob.glob(os.path.join(trial_dir, "checkpoint_*")))


def experiment_state(experiment):
    """{trial_id: (status, runtime metadata)} from Tune's latest saved experiment state."""
    files = sorted(glob.glob(os.path.join(experiment, "experiment_state-*.json")))
    if not files:
        return {}
    try:
        with open(files[-1], encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    out = {}
    for trial_json, runtime_json in data["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        runtime = json.loads(runtime_json) if isinstance(runtime_json, str) else runtime_json
        out[trial["trial_id"]] = (trial["status"], runtime)
    return out


def checkpointed_train_step(run_dir):
    """Newest search step checkpointed by a data-parallel trial's Ray Train run (``train_runs/search-*``)."""
    import torch
    found = []
    for path in glob.glob(os.path.join(run_dir, "train_runs", "search-*", "checkpoint_*", "search_state.pt")):
        try:
            found.append(int(torch.load(path, weights_only=True)["step"]))
        except Exception:  # noqa: BLE001 - a checkpoint still being written
            pass
    return max(found, default=0)


def trainer_checkpoint(run_dir, label):
    """Step of the newest numbered trainer checkpoint of a retrain
    (``retrain/<label>/seed<seed>/checkpoint_<step>.pt``: one directory per retrain seed)."""
    steps = [int(os.path.basename(p)[len("checkpoint_"):-3])
             for p in glob.glob(os.path.join(run_dir, "retrain", label, "seed*", "checkpoint_*.pt"))
             if os.path.basename(p)[len("checkpoint_"):-3].isdigit()]
    return max(steps, default=0)


def result_lines(trial_dir):
    try:
        with open(os.path.join(trial_dir, "result.json"), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def mlflow_client(storage):
    from mlflow.tracking import MlflowClient
    return MlflowClient("sqlite:///" + os.path.join(str(storage), "mlflow.db"))


def mlflow_runs(storage, experiment):
    client = mlflow_client(storage)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client, []
    return client, client.search_runs([found.experiment_id], max_results=1000)


def by_kind(runs, kind):
    return [r for r in runs if r.data.tags.get("revsearch.kind") == kind]


def steps_of(client, run_id, metric="valid_loss"):
    return [m.step for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.timestamp, m.step))]


def optuna_trials(run_dir, name):
    import optuna
    study = optuna.load_study(study_name=f"{name}-search",
                              storage="sqlite:///" + os.path.join(run_dir, "optuna.db"))
    return study.trials


def ray_leftovers(cli):
    """Processes of the run still alive after ``close()`` (none may be: they were ended by id)."""
    return [p.pid for p in cli.known.values() if _alive(p)]


# ----------------------------------------------------------------------------------------- (a) worker
def test_killed_search_worker_restarts_from_checkpoint_in_the_same_mlflow_run(tmp_path):
    name, steps = "faults-worker", 60
    config = write_sweep(tmp_path, name, steps=steps, num_samples=2, max_concurrent=2)
    storage = tmp_path / "storage"
    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))

        def both_checkpointed():  # both trials past their second checkpoint (step 20), still training
            dirs = trial_dirs(run_dir, "search")
            ok = len(dirs) == 2 and all(max(checkpoint_steps(d) or [0]) >= 20 for d in dirs)
            return ok and cli.trial_workers()

        workers = cli.wait_for("a checkpoint in both search trials", both_checkpointed)
        at_kill = {trial_id(d): max(checkpoint_steps(d)) for d in trial_dirs(run_dir, "search")}
        killed = {cli.trial_of(w) for w in workers}
        killed_at = cli.elapsed()
        for w in workers:
            w.kill()
        print(f"\n(a) SIGKILLed the workers of trials {sorted(killed)} at {killed_at:.0f}s; "
              f"newest checkpoint then: {at_kill}")
        rc = cli.wait()
        print(f"(a) pipeline exited {rc} after {cli.elapsed():.0f}s")
        assert rc == 0, cli.tail()
    finally:
        cli.close()

    # Tune restarted every killed trial (FailureConfig) instead of failing it
    state = experiment_state(os.path.join(run_dir, "search"))
    assert {s for s, _ in state.values()} == {"TERMINATED"}
    failures = {t: rt["num_failures"] for t, (_, rt) in state.items()}
    print(f"(a) Tune num_failures per trial: {failures}")
    assert all(failures[t] >= 1 for t in killed if t)

    client, runs = mlflow_runs(storage, name)
    search = by_kind(runs, "search")
    assert sorted(r.data.tags["revsearch.trial_id"] for r in search) == sorted(state)  # one run per trial
    for run in search:
        trial = run.data.tags["revsearch.trial_id"]
        assert run.info.status == "FINISHED"
        logged = steps_of(client, run.info.run_id)
        print(f"(a) trial {trial}: valid_loss steps {logged}")
        # no gap, each step once (a step run again after the restore is not logged twice)
        assert sorted(logged) == list(range(10, steps + 1, 10)), logged
        if trial in killed:   # resumed from a checkpoint, not from scratch
            assert int(run.data.tags["revsearch.resumed_at_step"]) >= 10, run.data.tags
    assert len(by_kind(runs, "sweep")) == 1 and by_kind(runs, "sweep")[0].info.status == "FINISHED"
    assert [t.state.name for t in optuna_trials(run_dir, name)] == ["COMPLETE", "COMPLETE"]
    assert os.path.isfile(os.path.join(run_dir, "ranking.csv"))
    assert not ray_leftovers(cli)


# ----------------------------------------------------------------------------------- (b) driver, stage 1
def test_driver_killed_in_search_resumes_without_rerunning_finished_trials(tmp_path):
    """Also the Optuna-after-restore trap: one trial's worker is killed max_failures + 1 times, so the trial
    ends ERROR before the driver dies; ``--resume`` (resume_errored) finishes it and the study must say so."""
    name, steps, samples = "faults-search", 40, 3
    config = write_sweep(tmp_path, name, steps=steps, num_samples=samples, max_concurrent=2)
    storage = tmp_path / "storage"
    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))
        experiment = os.path.join(run_dir, "search")
        def checkpointed_worker():  # a worker whose trial has a checkpoint and is still training
            for w in cli.trial_workers():
                done = [checkpoint_steps(d) for d in trial_dirs(run_dir, "search") if trial_id(d) == cli.trial_of(w)]
                if done and done[0] and max(done[0]) < steps:
                    return [w]
            return None

        first = cli.wait_for("a checkpointed search trial", checkpointed_worker)
        victim, killed = cli.trial_of(first[0]), set()
        for attempt in range(3):  # FailureConfig(max_failures=2): the third failure is final
            worker = first[0] if attempt == 0 else cli.wait_for(f"restart {attempt} of trial {victim}", lambda: [
                w for w in cli.trial_workers() if w.pid not in killed and cli.trial_of(w) == victim])[0]
            killed.add(worker.pid)
            worker.kill()
        print(f"\n(b) killed trial {victim}'s worker 3 times, the last at {cli.elapsed():.0f}s")

        def errored_and_terminated():  # Tune saved the errored trial and a finished one
            state = experiment_state(experiment)
            statuses = {t: s for t, (s, _) in state.items()}
            done = [t for t, s in statuses.items() if s == "TERMINATED"]
            return done if statuses.get(victim) == "ERROR" and done and run_stage(run_dir) == "search" else None

        cli.wait_for("an ERROR and a TERMINATED search trial", errored_and_terminated)
        killed_at = cli.elapsed()
        left = cli.kill_all()
        assert not left, f"processes survived SIGKILL: {left}"
    finally:
        cli.close()
    assert run_stage(run_dir) == "search"
    state = experiment_state(experiment)
    finished = sorted(t for t, (s, _) in state.items() if s == "TERMINATED")
    client, runs = mlflow_runs(storage, name)
    before = {r.data.tags["revsearch.trial_id"]: (r.info.run_id, r.info.status, steps_of(client, r.info.run_id))
              for r in by_kind(runs, "search")}
    lines = {trial_id(d): len(result_lines(d)) for d in trial_dirs(run_dir, "search")}
    study_before = [(t.number, t.state.name) for t in optuna_trials(run_dir, name)]
    print(f"(b) killed the driver at {killed_at:.0f}s; Tune {({t: s for t, (s, _) in state.items()})}; "
          f"MLflow {({t: (st, len(h)) for t, (_, st, h) in before.items()})}; Optuna {study_before}")
    assert "FAIL" not in dict(study_before).values()  # the errored trial is left RUNNING until stage 1 ends

    resumed = Cli(config, storage, "--resume")
    resumed.finish("(b) --resume ")
    assert run_stage(run_dir) == "done" and os.path.isfile(os.path.join(run_dir, "ranking.csv"))
    final = experiment_state(experiment)
    assert {s for s, _ in final.values()} == {"TERMINATED"} and len(final) == samples
    assert final[victim][1]["num_failures_after_restore"] == 0 and final[victim][0] == "TERMINATED"

    client, runs = mlflow_runs(storage, name)
    search = [r for r in by_kind(runs, "search") if "revsearch.orphaned" not in r.data.tags]
    orphans = [r for r in by_kind(runs, "search") if "revsearch.orphaned" in r.data.tags]
    # a trial Tune created after its last saved state is lost with the driver and sampled anew on
    # --resume; its run (if it got that far) is closed as KILLED, never left RUNNING or counted
    assert all(r.info.status == "KILLED" and r.data.tags["revsearch.trial_id"] not in final for r in orphans)
    ids = [r.data.tags["revsearch.trial_id"] for r in search]
    assert sorted(ids) == sorted(final), ids   # one run per Tune trial: none duplicated
    assert len(by_kind(runs, "sweep")) == 1 and by_kind(runs, "sweep")[0].info.status == "FINISHED"
    assert len(by_kind(runs, "retrain")) == 2
    for run in search:
        trial = run.data.tags["revsearch.trial_id"]
        logged = steps_of(client, run.info.run_id)
        assert run.info.status == "FINISHED"
        assert sorted(set(logged)) == list(range(10, steps + 1, 10)), (trial, logged)
        if trial in finished:  # not rerun: same run, step history not extended
            assert (run.info.run_id, logged) == (before[trial][0], before[trial][2])
        elif trial in before:
            assert run.info.run_id == before[trial][0]
    for d in trial_dirs(run_dir, "search"):
        if trial_id(d) in finished:
            assert len(result_lines(d)) == lines[trial_id(d)], d

    # the Optuna study: every Tune trial COMPLETE with Tune's final value (the errored-then-finished one
    # included), nothing left RUNNING; a trial lost with the driver (if any) is FAIL
    trials = optuna_trials(run_dir, name)
    print(f"(b) Optuna after resume: {[(t.number, t.state.name, t.user_attrs.get('tune_trial_id')) for t in trials]}"
          f"; {len(orphans)} orphaned MLflow run(s)")
    by_tune = {t.user_attrs.get("tune_trial_id"): t for t in trials}
    for trial, (_, runtime) in final.items():
        assert by_tune[trial].state.name == "COMPLETE", (trial, by_tune[trial].state)
        assert by_tune[trial].values[0] == pytest.approx(runtime["last_result"]["valid_loss"])
    assert all(t.state.name == "FAIL" for t in trials if t.user_attrs.get("tune_trial_id") not in final)
    assert not ray_leftovers(resumed)


# ----------------------------------------------------------------------------------- (c) driver, stage 2
def test_driver_killed_in_retrain_resumes_only_the_unfinished_retrain(tmp_path):
    # long enough that Tune saves its experiment state (every ~10 s) between the two retrains' ends: at
    # 150 steps both finished within 5 s of each other once the ops got faster, and the window closed
    name, retrain_steps = "faults-retrain", 500
    # one trial at a time, so that one retrain finishes while the other one is still training
    config = write_sweep(tmp_path, name, steps=20, num_samples=2, max_concurrent=1, retrain_steps=retrain_steps)
    storage = tmp_path / "storage"
    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))
        experiment = os.path.join(run_dir, "retrain")

        def one_retrained():  # Tune saved one retrain as finished; the other one has a trainer checkpoint
            if run_stage(run_dir) != "retrain":
                return None
            state = experiment_state(experiment)
            if [s for s, _ in state.values()].count("TERMINATED") != 1:
                return None
            client, runs = mlflow_runs(storage, name)
            return [r for r in by_kind(runs, "retrain") if r.info.status == "RUNNING"
                    and trainer_checkpoint(run_dir, r.data.tags["revsearch.candidate"])]

        cli.wait_for("a finished retrain and one in training", one_retrained)
        killed_at = cli.elapsed()
        left = cli.kill_all()
        assert not left, f"processes survived SIGKILL: {left}"
    finally:
        cli.close()
    assert run_stage(run_dir) == "retrain"
    client, runs = mlflow_runs(storage, name)
    search_before = {r.info.run_id: len(steps_of(client, r.info.run_id)) for r in by_kind(runs, "search")}
    retrain_before = {r.data.tags["revsearch.candidate"]: r for r in by_kind(runs, "retrain")}
    curves = {label: steps_of(client, r.info.run_id, "train_loss") for label, r in retrain_before.items()}
    finished = [label for label, r in retrain_before.items() if r.info.status == "FINISHED"]
    saved = {label: trainer_checkpoint(run_dir, label) for label in retrain_before}
    study_before = [(t.number, t.state.name) for t in optuna_trials(run_dir, name)]
    print(f"\n(c) killed the driver at {killed_at:.0f}s; retrain runs "
          f"{({k: (r.info.status, curves[k][-1:], 'test_bleu' in r.data.metrics) for k, r in retrain_before.items()})}"
          f"; trainer checkpoints at steps {saved}")
    assert len(finished) == 1 and len(retrain_before) == 2

    resumed = Cli(config, storage, "--resume")
    resumed.finish("(c) --resume ")
    log = resumed.tail(10 ** 6)
    assert "stage 2: resuming" in log and "stage 1" not in log
    assert run_stage(run_dir) == "done"
    with open(os.path.join(run_dir, "ranking.csv"), encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2

    client, runs = mlflow_runs(storage, name)
    # stage 1 untouched: same search runs, same histories, same study
    assert {r.info.run_id: len(steps_of(client, r.info.run_id)) for r in by_kind(runs, "search")} == search_before
    assert [(t.number, t.state.name) for t in optuna_trials(run_dir, name)] == study_before
    retrains = by_kind(runs, "retrain")
    labels = [r.data.tags["revsearch.candidate"] for r in retrains]
    assert sorted(labels) == sorted(retrain_before), labels   # no duplicated retrain run
    for run in retrains:
        label = run.data.tags["revsearch.candidate"]
        assert run.info.status == "FINISHED" and run.info.run_id == retrain_before[label].info.run_id
        bleu = client.get_metric_history(run.info.run_id, "test_bleu")
        curve = steps_of(client, run.info.run_id, "train_loss")
        print(f"(c) {label}: test_bleu logged {len(bleu)}x, train_loss steps {curve}")
        assert len(bleu) == 1, (label, bleu)
        if label in finished:  # not retrained: its training curve is what it was
            assert curve == curves[label]
            assert run.data.metrics["test_bleu"] == retrain_before[label].data.metrics["test_bleu"]
        else:  # continued from its trainer checkpoint, not from step 0
            assert curve[:len(curves[label])] == curves[label] and sorted(set(curve)) == list(range(3, retrain_steps + 1, 3))
            upto = [step for step in curve if step <= saved[label]]
            assert len(upto) == len(set(upto)), curve
    assert not ray_leftovers(resumed)
