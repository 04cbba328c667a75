"""The console of ``revsearch run``: one live view per stage instead of Ray Tune's own output.

What a person wants to see while a sweep runs: the stage, how many trials are done / running / pending,
each running trial's step, steps/s and time left, the stage's time left, and the best result so far.
:class:`StageView` holds that state and :meth:`StageView.render` turns it into lines (pure: no Ray, no
clock of its own, so tests give it states and a time and compare the exact lines). A Tune callback
(:func:`live_view_callback`) feeds it from the driver's event loop, and a :class:`~revsearch.console.StatusBlock`
draws it: redrawn in place on a terminal, printed every 30 s as plain lines elsewhere.

Ray's own console (trial tables every 30 s, "Checkpoint successfully created" from every worker, INFO
log lines, ANSI colours) is switched off by :func:`quiet_tune` and ``init_ray(verbose=False)``; ``revsearch
run --verbose`` brings all of it back. A trial's error still reaches the user: as one line here.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from ..console import StatusBlock, format_duration, remaining_seconds

PENDING, RUNNING, DONE, FAILED = "PENDING", "RUNNING", "DONE", "FAILED"


@dataclass
class ConsoleConfig:
    """How ``revsearch run`` talks: ``verbose`` gives Ray Tune's and Ray's own output back (tables,
    worker logs, INFO lines) instead of the live view; ``live=False`` keeps only the one-line events."""
    verbose: bool = False
    live: bool = True


@dataclass
class TrialProgress:
    """What the view knows of one trial. Times are seconds of the clock the view is rendered with."""
    name: str
    status: str = PENDING
    started: Optional[float] = None          # when this attempt started
    finished: Optional[float] = None
    step: Optional[int] = None
    total_steps: Optional[int] = None
    budget_s: Optional[float] = None         # a training-time budget instead of (or besides) a step count
    trained_s: Optional[float] = None        # training time so far, for the budget
    steps_per_s: Optional[float] = None
    value: Optional[float] = None            # the stage's metric in the last report
    first_report: Optional[tuple] = None     # (time, step) of this attempt's first report

    def remaining(self) -> Optional[float]:
        return remaining_seconds(self.step, self.total_steps, self.steps_per_s, self.budget_s, self.trained_s)


@dataclass
class StageView:
    """One stage's trials. ``metric``/``mode``: what "best so far" means (``metric_label`` is how it is
    shown); ``total``: how many trials the stage runs, created or not yet."""
    title: str
    total: int
    max_concurrent: int
    metric: str
    mode: str = "min"
    metric_label: str = ""
    started: float = 0.0
    trials: Dict[str, TrialProgress] = field(default_factory=dict)

    # ------------------------------------------------------------------ state
    def trial(self, key: str, name: Optional[str] = None) -> TrialProgress:
        if key not in self.trials:
            self.trials[key] = TrialProgress(name or key)
        return self.trials[key]

    def start(self, key: str, name: str, now: float) -> None:
        t = self.trial(key, name)
        t.status, t.started, t.finished, t.first_report, t.steps_per_s = RUNNING, now, None, None, None

    def result(self, key: str, result: Dict[str, Any], now: float) -> None:
        t = self.trial(key)
        if t.status == PENDING:   # restored trials report without a start event
            t.status, t.started = RUNNING, now
        step = result.get("step")
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            t.step = int(step)
            if t.first_report is None:   # the rate is measured between reports: start-up is not training
                t.first_report = (now, t.step)
            first_time, first_step = t.first_report
            if now > first_time and t.step > first_step:
                t.steps_per_s = (t.step - first_step) / (now - first_time)
            elif isinstance(result.get("steps_per_s"), (int, float)) and result["steps_per_s"] > 0:
                t.steps_per_s = float(result["steps_per_s"])   # the trial's own measure, until then
        for attr, key_ in (("total_steps", "total_steps"), ("budget_s", "budget_s"), ("trained_s", "elapsed_s")):
            value = result.get(key_)
            if isinstance(value, (int, float)) and value:
                setattr(t, attr, int(value) if attr == "total_steps" else float(value))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            t.value = float(value)

    def finish(self, key: str, now: float, failed: bool = False) -> None:
        t = self.trial(key)
        t.status, t.finished = (FAILED if failed else DONE), now

    def retry(self, key: str, now: float) -> None:
        t = self.trial(key)
        t.status, t.started, t.first_report, t.steps_per_s = RUNNING, now, None, None

    # ------------------------------------------------------------------ reading
    def counts(self) -> Dict[str, int]:
        states = [t.status for t in self.trials.values()]
        done, running, failed = states.count(DONE), states.count(RUNNING), states.count(FAILED)
        return {"done": done, "running": running, "failed": failed,
                "pending": max(0, self.total - done - running - failed)}

    def best(self) -> Optional[TrialProgress]:
        finished = [t for t in self.trials.values() if t.status == DONE and t.value is not None]
        if not finished:
            return None
        return (min if self.mode == "min" else max)(finished, key=lambda t: t.value)

    def remaining(self, now: float) -> Optional[float]:
        """The stage's time left: its running trials' longest time left, plus the pending trials run
        ``max_concurrent`` at a time, each as long as the finished ones took on average (or as the
        running ones will take). Rough on purpose; None until there is something to go on."""
        counts = self.counts()
        running = [t for t in self.trials.values() if t.status == RUNNING]
        left = [t.remaining() for t in running]
        if any(x is None for x in left):
            return None
        durations = [t.finished - t.started for t in self.trials.values()
                     if t.status == DONE and t.started is not None and t.finished is not None]
        if not durations:
            durations = [now - t.started + x for t, x in zip(running, left) if t.started is not None]
        waves = math.ceil(counts["pending"] / max(1, self.max_concurrent))
        if waves and not durations:
            return None
        per_trial = sum(durations) / len(durations) if durations else 0.0
        return max(left, default=0.0) + waves * per_trial

    def render(self, now: float) -> List[str]:
        """The live block: a summary line, then one line per running trial."""
        c = self.counts()
        parts = [f"{c['done']} done", f"{c['running']} running", f"{c['pending']} pending"]
        if c["failed"]:
            parts.append(f"{c['failed']} failed")
        head = f"{self.title}: {', '.join(parts)} | {format_duration(now - self.started)} elapsed"
        eta = self.remaining(now)
        if eta is not None and (c["running"] or c["pending"]):
            head += f" | ETA {format_duration(eta)}"
        best = self.best()
        if best is not None:
            head += f" | best {self.metric_label or self.metric} {best.value:.4g} ({best.name})"
        lines = [head]
        for t in sorted((t for t in self.trials.values() if t.status == RUNNING), key=lambda t: t.name):
            lines.append("  " + self.trial_line(t, now))
        return lines

    def trial_line(self, t: TrialProgress, now: float) -> str:
        elapsed = format_duration(now - t.started) if t.started is not None else "?"
        if t.step is None:   # no report yet: data loading, tokenizer, model building, first steps
            return f"{t.name}: starting ({elapsed})"
        step = f"step {t.step}/{t.total_steps}" if t.total_steps else f"step {t.step}"
        parts = [step]
        if t.steps_per_s:
            parts.append(f"{t.steps_per_s:.2f} steps/s" if t.steps_per_s < 10 else f"{t.steps_per_s:.0f} steps/s")
        remaining = t.remaining()
        if remaining is not None:
            parts.append(f"ETA {format_duration(remaining)}")
        if t.value is not None:
            parts.append(f"{self.metric_label or self.metric} {t.value:.4g}")
        return f"{t.name}: {', '.join(parts)} ({elapsed})"

    def done_line(self, key: str) -> str:
        t = self.trials[key]
        took = format_duration(t.finished - t.started) if t.started is not None and t.finished is not None else "?"
        value = f": {self.metric_label or self.metric} {t.value:.4g}" if t.value is not None else ""
        return f"{self.title}: {t.name} done in {took}{value}"

    def summary_line(self, now: float) -> str:
        c = self.counts()
        failed = f", {c['failed']} failed" if c["failed"] else ""
        unfinished = f", {c['pending'] + c['running']} unfinished" if c["pending"] + c["running"] else ""
        return f"{self.title}: {c['done']} done{failed}{unfinished} in {format_duration(now - self.started)}"


def error_summary(text: Optional[str], limit: int = 300) -> str:
    """The last line of a trial's error trace (``ValueError: ...``): what went wrong, in one line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last if len(last) <= limit else last[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------- Ray side
def live_view_callback(view: StageView, name_of: Callable[[Any], str], console: ConsoleConfig,
                       block: Optional[StatusBlock] = None, clock: Callable[[], float] = time.monotonic):
    """A ``tune.Callback`` that keeps ``view`` up to date and draws it. ``name_of(trial)``: the name a
    person knows the trial by. Runs in the driver, inside ``Tuner.fit()``'s event loop."""
    from ray.tune import Callback

    block = block or StatusBlock()

    class LiveView(Callback):
        def _show(self, force: bool = False) -> None:
            counts = view.counts()
            if console.live and (counts["running"] or counts["pending"]):   # the end has its summary line
                block.quoted_value(view.render(clock()), force=force)

        def _sync(self, trials) -> None:
            """Trials a restored experiment already finished, and ones Tune created but not started."""
            for trial in trials:
                t = view.trial(trial.trial_id, name_of(trial))
                if t.status == PENDING and trial.status == "TERMINATED":   # finished before a --resume
                    view.result(trial.trial_id, trial.last_result or {}, clock())
                    t.status, t.started = DONE, None
                elif t.status == PENDING and trial.status == "ERROR":
                    t.status = FAILED

        def setup(self, **info) -> None:
            view.started = clock()

        def on_step_end(self, iteration: int, trials, **info) -> None:
            self._sync(trials)
            self._show()

        def on_trial_start(self, iteration: int, trials, trial, **info) -> None:
            view.start(trial.trial_id, name_of(trial), clock())
            self._show(force=True)

        def on_trial_result(self, iteration: int, trials, trial, result, **info) -> None:
            view.result(trial.trial_id, result, clock())
            self._show()

        def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
            view.trial(trial.trial_id, name_of(trial))
            view.result(trial.trial_id, trial.last_result or {}, clock())
            view.finish(trial.trial_id, clock())
            block.line(view.done_line(trial.trial_id))
            self._show(force=True)

        def _error_line(self, trial) -> str:
            try:
                text = trial.get_error()
            except Exception:  # noqa: BLE001 - the error file is informative; never fail the run for it
                text = None
            where = f" (trace: {trial.error_file})" if getattr(trial, "error_file", None) else ""
            return f"{error_summary(text)}{where}"

        def on_trial_recover(self, iteration: int, trials, trial, **info) -> None:
            view.retry(trial.trial_id, clock())
            block.line(f"{view.title}: {name_of(trial)} failed, Tune restarts it from its last checkpoint "
                       f"(failure {trial.num_failures}): {self._error_line(trial)}")
            self._show(force=True)

        def on_trial_error(self, iteration: int, trials, trial, **info) -> None:
            view.trial(trial.trial_id, name_of(trial))
            view.finish(trial.trial_id, clock(), failed=True)
            block.line(f"{view.title}: {name_of(trial)} failed: {self._error_line(trial)}")
            self._show(force=True)

        def on_experiment_end(self, trials, **info) -> None:
            self._sync(trials)
            block.close()
            block.line(view.summary_line(clock()))

    return LiveView()


#: environment of ``Tuner.fit()`` for the live view: Tune's legacy output engine, which prints nothing at
#: ``verbose=0`` (Ray 2.60's default engine prints its configuration table even then, and a result table
#: for every failed trial), and no driver-side traceback per failed trial (the view prints one line)
QUIET_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}


@contextlib.contextmanager
def quiet_tune(console: ConsoleConfig) -> Iterator[None]:
    """Around ``Tuner.fit()``: :data:`QUIET_TUNE_ENV` unless verbose (both are read when ``fit()`` starts)."""
    if console.verbose:
        yield
        return
    previous = {name: os.environ.get(name) for name in QUIET_TUNE_ENV}
    os.environ.update(QUIET_TUNE_ENV)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def quiet_libraries() -> None:
    """The driver's Optuna and MLflow loggers at WARNING: no "[I ...] A new study created", "Trial 3
    finished with value", "Successfully registered model" (revsearch says what matters in its own
    lines). Warnings and errors still show."""
    import logging
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:   # Optuna is only needed by stage 1
        pass


def configure_tuner(tuner, callback, console: ConsoleConfig) -> None:
    """Give a new or a restored Tuner the live view and the verbosity of this invocation. A restored
    Tuner brings its run config back from the experiment directory, without callbacks (Tune does not
    save them) and with the verbosity of the run that created it, so both are set here, on the run config
    the Tuner will use (Tune has no public setter for a restored Tuner's run config)."""
    run_config = tuner._local_tuner.get_run_config()   # noqa: SLF001 - see above
    run_config.verbose = 1 if console.verbose else 0
    others = [c for c in (run_config.callbacks or []) if type(c).__name__ != "LiveView"]
    run_config.callbacks = others if console.verbose else others + [callback]
