"""Stage 1's Optuna study: the objective a sweep names, the study's RDB storage next to the run, a Tune
searcher that survives a killed driver, and the reconciliation of the study with Tune's results once a
stage has ended."""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, Optional


TUNE_TRIAL_ATTR = "tune_trial_id"   # Optuna user attribute: the Tune trial a study trial belongs to


def objective_of(sweep):
    metric, mode = sweep.objective.metric, sweep.objective.mode
    return metric, mode


def study_storage(run_dir: str):
    import optuna
    return optuna.storages.RDBStorage("sqlite:///" + os.path.join(run_dir, "optuna.db"))


@functools.lru_cache(maxsize=None)
def resumable_optuna_search():
    """``OptunaSearch`` that survives a killed driver. Tune saves the searcher (a pickle) with its
    experiment state every 10 s or more, but the study in the RDB is written at once, so a restored
    searcher can be older than its study:

    * a trial that finished after the last save is COMPLETE in the study while Tune reruns it: reporting
      to it raised ``UpdateFinishedTrialError`` inside ``Tuner.fit()`` and the resume crashed;
    * a trial that errored was told FAIL at once; ``--resume`` (``resume_errored=True``) reruns and
      finishes it, but its completion is dropped, so the study kept a stale FAIL.

    Here an errored trial stays RUNNING in the study and reports to finished trials are skipped;
    :func:`reconcile_study` settles every trial once ``fit()`` has returned. Each study trial records its
    Tune trial id (user attribute ``tune_trial_id``). Built lazily (Ray and Optuna are imported on first
    use) and reachable as ``study.ResumableOptunaSearch``, so a pickled Tuner finds it again."""
    from optuna.exceptions import UpdateFinishedTrialError
    from ray.tune.search.optuna import OptunaSearch

    class ResumableOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if config is not None and ot_trial is not None:
                ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: Dict) -> None:
            if isinstance(self.metric, str) and self.metric not in result:
                return   # a proxy metric exists only in a trial's last result
            try:
                super().on_trial_result(trial_id, result)
            except UpdateFinishedTrialError:  # the study already holds this trial's end
                self._completed_trials.add(trial_id)

        def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False):
            if error:  # left RUNNING: a resume may still finish it; reconcile_study() decides
                return
            super().on_trial_complete(trial_id, result=result, error=error)

    ResumableOptunaSearch.__module__ = __name__
    ResumableOptunaSearch.__qualname__ = ResumableOptunaSearch.__name__
    return ResumableOptunaSearch


def __getattr__(name: str):  # PEP 562: the lazily built searcher class, for pickle
    if name == "ResumableOptunaSearch":
        return resumable_optuna_search()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def reconcile_study(sweep, run_dir: str, results, log: Callable[[str], None]) -> None:
    """After stage 1's ``fit()`` no trial runs any more, so no study trial may stay RUNNING: one whose Tune
    trial finished gets Tune's final value (COMPLETE), any other (its trial errored, or Tune lost it with a
    killed driver and sampled a replacement on ``--resume``) is marked FAIL."""
    import optuna
    from optuna.trial import TrialState

    metric, _ = objective_of(sweep)
    metrics = metric if isinstance(metric, list) else [metric]
    finished = {}
    for result in results:
        m = result.metrics or {}
        if result.error is None and m.get("trial_id") and all(k in m for k in metrics):
            finished[m["trial_id"]] = [float(m[k]) for k in metrics]
    study = optuna.load_study(study_name=f"{sweep.name}-search", storage=study_storage(run_dir))
    settled = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        values = finished.get(trial.user_attrs.get(TUNE_TRIAL_ATTR))
        if values is not None:
            study.tell(trial.number, values if len(values) > 1 else values[0])
        else:
            study.tell(trial.number, state=TrialState.FAIL)
        settled.append(f"#{trial.number} {'COMPLETE' if values is not None else 'FAIL'}")
    if settled:
        log("stage 1: Optuna study reconciled with Tune: " + ", ".join(settled))
