"""Ctrl-C and SIGTERM on the real CLI (issue 12, items 6 and 7): the command exits 130 (SIGINT) or 143
(SIGTERM) with one line saying how to continue, every MLflow run it opened ends KILLED (never RUNNING
forever, never FAILED), the Optuna study keeps unfinished trials for ``--resume`` to settle, and
``--resume`` after a Ctrl-C finishes the run.

The end-to-end scenarios start ``python -m revsearch.cli`` in a session of its own (``test_faults.Cli``)
and signal it the way a terminal does: SIGINT to the whole process group (the driver and its local Ray),
SIGTERM to the driver alone. They wait for evidence in files and databases, never for fixed times. The
first tests are quick ones of the signal handling itself, in this process."""
import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from revsearch.errors import Interrupted
from revsearch import interrupts
from tests.test_bad_inputs import GENOTYPE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tune_configs", "micro.yaml")


# ------------------------------------------------------------------------------ quick: the handlers
@pytest.fixture
def handlers():
    previous = interrupts.install()
    yield
    interrupts.restore(previous)


def test_sigterm_raises_interrupted_with_its_signal(handlers):
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)   # the handler runs at the next bytecode; never reached
    assert caught.value.signum == signal.SIGTERM and isinstance(caught.value, KeyboardInterrupt)


def test_shielded_holds_a_signal_back_until_the_block_ends(handlers):
    done = []
    with pytest.raises(Interrupted) as caught:
        with interrupts.shielded():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("the writes inside the block")
    assert done and caught.value.signum == signal.SIGINT
    with interrupts.shielded(deliver=False) as held:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    with pytest.raises(Interrupted):
        held.deliver()
    assert signal.getsignal(signal.SIGINT) is interrupts._on_signal   # handlers are back


def test_cli_exit_code_and_line_for_an_interrupt(monkeypatch, capsys):
    from revsearch import cli

    def interrupted(args):
        raise Interrupted("stage 1 stopped, the run is saved in /x", signal.SIGTERM)
    class Parser:  # the handler of a command that Ctrl-C / SIGTERM stopped after saving its state
        def parse_known_args(self, argv):
            return argparse.Namespace(handler=interrupted), []
    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main([]) == 143
    assert capsys.readouterr().err == ("revsearch: interrupted by SIGTERM; stage 1 stopped, the run is saved "
                                       "in /x\n")
    assert signal.getsignal(signal.SIGTERM) is not interrupts._on_signal   # main() put them back


# ------------------------------------------------------------------------------ slow: the real CLI
psutil = pytest.importorskip("psutil")
from tests.test_faults import (Cli, by_kind, checkpoint_steps, mlflow_runs, optuna_trials,  # noqa: E402
                               ray_leftovers, run_stage, the_run_dir, trial_dirs, write_sweep)


class Command(Cli):
    """``test_faults.Cli`` for any revsearch command line (``Cli`` runs ``revsearch run``)."""

    def __init__(self, storage, *argv):
        os.makedirs(storage, exist_ok=True)
        self.storage, self.n = str(storage), len(glob.glob(os.path.join(str(storage), "cli-*.err")))
        self.err_path = os.path.join(self.storage, f"cli-{self.n}.err")
        self.out, self.err = open(self.err_path[:-4] + ".out", "w"), open(self.err_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
        self.proc = subprocess.Popen([sys.executable, "-m", "revsearch.cli", *argv], cwd=self.storage, env=env,
                                     stdout=self.out, stderr=self.err, start_new_session=True)
        self.started = time.monotonic()
        self.known, self.leftovers = {}, []


def last_line(cli):
    lines = [line for line in cli.tail(10 ** 6).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def statuses(storage, name, kind=None):
    _, runs = mlflow_runs(storage, name)
    return sorted(r.info.status for r in runs if kind is None or r.data.tags.get("revsearch.kind") == kind)


@pytest.mark.slow
def test_ctrl_c_mid_search_exits_130_and_resume_finishes_the_run(tmp_path):
    name = "int-search"
    config = write_sweep(tmp_path, name, steps=60, num_samples=2, max_concurrent=2)
    storage = tmp_path / "storage"
    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))
        cli.wait_for("a checkpointed search trial", lambda: cli.trial_workers() and any(
            0 < max(checkpoint_steps(d) or [0]) < 60 for d in trial_dirs(run_dir, "search")))
        os.killpg(cli.proc.pid, signal.SIGINT)          # what Ctrl-C in the terminal does
        rc = cli.wait(timeout=300)
    finally:
        cli.close()
    text, line = cli.tail(10 ** 6), last_line(cli)
    print(f"\nCtrl-C in stage 1: exit {rc}; {line}")
    assert rc == 130, text
    assert line.startswith("revsearch: interrupted by SIGINT; stage 1 stopped") and "--resume" in line, line
    assert f"revsearch run {config} --storage {storage} --resume" in line and run_dir in line
    for wrong in ("Traceback", "no finished search trial", "Tuner.restore", "internal error"):
        assert wrong not in text, wrong
    assert run_stage(run_dir) == "search"
    assert statuses(storage, name, "sweep") == ["KILLED"]
    assert set(statuses(storage, name, "search")) <= {"KILLED", "FINISHED"}, statuses(storage, name)
    study = [t.state.name for t in optuna_trials(run_dir, name)]
    assert "FAIL" not in study, study           # unfinished trials stay for --resume to settle
    assert not ray_leftovers(cli)

    resumed = Cli(config, storage, "--resume")
    try:
        rc = resumed.wait(timeout=900)
    finally:
        resumed.close()
    print(f"--resume after Ctrl-C: exit {rc} after {resumed.elapsed():.0f}s")
    assert rc == 0, resumed.tail()
    assert run_stage(run_dir) == "done" and os.path.isfile(os.path.join(run_dir, "ranking.csv"))
    _, runs = mlflow_runs(storage, name)
    search = by_kind(runs, "search")
    assert [r.info.status for r in by_kind(runs, "sweep")] == ["FINISHED"]
    assert len(search) == 2 and {r.info.status for r in search} == {"FINISHED"}   # reopened, not duplicated
    assert [t.state.name for t in optuna_trials(run_dir, name)] == ["COMPLETE", "COMPLETE"]
    assert not ray_leftovers(resumed)


@pytest.mark.slow
def test_ctrl_c_right_after_ray_starts_exits_130_without_a_crash(tmp_path):
    """Ctrl-C while the local Ray has just started and no trial exists yet. The signal is sent once the
    ``MLflow: ... run <id>`` line is out, the first point a test can observe that is certain to follow the
    sweep's parent run (``started a local Ray instance`` comes just before the run is created, so a signal
    sent on that line could land either side of it). From there the state is exact: the parent run alone,
    KILLED, and a run directory that ``--resume`` continues."""
    name = "int-early"
    config = write_sweep(tmp_path, name, steps=60, num_samples=2, max_concurrent=2)
    storage = tmp_path / "storage"
    cli = Cli(config, storage)
    started = re.compile(rf"^MLflow: .* \(experiment '{name}', run ([0-9a-f]{{32}})\)$", re.M)
    try:
        found = cli.wait_for("the sweep's MLflow run", lambda: started.search(cli.tail(10 ** 6)))
        os.killpg(cli.proc.pid, signal.SIGINT)
        rc = cli.wait(timeout=300)
    finally:
        cli.close()
    text, line = cli.tail(10 ** 6), last_line(cli)
    print(f"\nCtrl-C right after Ray started: exit {rc}; {line}")
    assert rc == 130, text                     # not -11 (SIGSEGV at exit)
    assert "started a local Ray instance" in text and "Traceback" not in text and "internal error" not in text
    run_dir = the_run_dir(storage)
    # "stage 1 stopped, " comes before "the run is saved" when the signal reaches Tune's loop itself
    assert line.startswith("revsearch: interrupted by SIGINT; ") and line.endswith(
        f"the run is saved in {run_dir}; continue it with: revsearch run {config} --storage {storage} --resume"), line
    _, runs = mlflow_runs(storage, name)
    assert [(r.info.run_id, r.data.tags.get("revsearch.kind"), r.info.status) for r in runs] == \
        [(found.group(1), "sweep", "KILLED")]
    assert run_stage(run_dir) == "search"
    assert not ray_leftovers(cli)


@pytest.mark.slow
def test_sigterm_during_search_ends_every_run_killed(tmp_path):
    name = "int-term"
    config = write_sweep(tmp_path, name, steps=60, num_samples=2, max_concurrent=2)
    storage = tmp_path / "storage"
    cli = Cli(config, storage)
    try:
        run_dir = cli.wait_for("the run directory", lambda: the_run_dir(storage))
        cli.wait_for("a search run logging metrics", lambda: cli.trial_workers() and any(
            checkpoint_steps(d) for d in trial_dirs(run_dir, "search")))
        cli.proc.send_signal(signal.SIGTERM)            # the driver only, as a scheduler or `kill` does
        rc = cli.wait(timeout=300)
    finally:
        cli.close()
    line = last_line(cli)
    print(f"\nSIGTERM in stage 1: exit {rc}; {line}")
    assert rc == 143, cli.tail()
    assert line.startswith("revsearch: interrupted by SIGTERM; stage 1 stopped") and "--resume" in line, line
    assert statuses(storage, name, "sweep") == ["KILLED"]
    assert set(statuses(storage, name, "search")) <= {"KILLED", "FINISHED"}, statuses(storage, name)
    assert "FAIL" not in [t.state.name for t in optuna_trials(run_dir, name)]
    assert not ray_leftovers(cli)


@pytest.mark.slow
def test_sigterm_during_retrain_command_ends_its_runs_killed(tmp_path):
    with open(MICRO, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    sweep["name"] = name = "int-retrain"
    sweep["op_sets"]["tiny"] = {"encoder": ["conv3", "self_attn"], "decoder": ["conv3", "cross_attn"]}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    genotype = tmp_path / "g.json"
    genotype.write_text(json.dumps(GENOTYPE), encoding="utf-8")
    storage = tmp_path / "storage"
    cli = Command(storage, "retrain", str(genotype), "--config", str(config), "--storage", str(storage),
                  "--steps", "100000", "--threads", "1")

    def training():  # the retrain run exists and has logged a training metric
        client, runs = mlflow_runs(storage, name)
        return [r for r in by_kind(runs, "retrain")
                if r.info.status == "RUNNING" and client.get_metric_history(r.info.run_id, "train_loss")]
    try:
        cli.wait_for("the retrain to log a metric", training)
        cli.proc.send_signal(signal.SIGTERM)
        rc = cli.wait(timeout=120)
    finally:
        cli.close()
    line = last_line(cli)
    print(f"\nSIGTERM in `revsearch retrain`: exit {rc}; {line}; runs {statuses(storage, name)}")
    assert rc == 143, cli.tail()
    assert line == "revsearch: interrupted by SIGTERM", line
    assert statuses(storage, name) == ["KILLED", "KILLED"]      # the retrain-cli parent and its retrain
