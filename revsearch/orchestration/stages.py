"""The two Tune stages of ``revsearch run``: stage 1 searches (Optuna samples each trial's settings),
stage 2 retrains every (candidate, seed) pair; both restore their Tune experiment on ``--resume``, run
under the live console and end the MLflow runs of trials that died with a killed process."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from ..errors import Interrupted, RevsearchError
from ..interrupts import fit_interruptibly
from .live_view import ConsoleConfig, StageView, configure_tuner, live_view_callback, quiet_tune
from .ranking import pareto_front
from .study import objective_of, reconcile_study, resumable_optuna_search, study_storage
from .tracking import Tracker


def close_dead_runs(tracker: Tracker, parent: str, kind: str, results, log: Callable[[str], None]) -> None:
    """Once a stage's ``fit()`` returned, a child run still RUNNING belongs to a killed process: FAILED if
    Tune knows its trial (a worker killed for good), KILLED and tagged ``revsearch.orphaned`` if not (Tune
    lost the trial with a killed driver and, on ``--resume``, sampled another one in its place)."""
    tag = "revsearch.trial_id" if kind == "search" else "revsearch.candidate"
    known = set()
    for result in results:
        m, config = result.metrics or {}, result.config or {}
        known.update(str(v) for v in (m.get("trial_id"), m.get("label"),
                                      (config.get("candidate") or {}).get("label")) if v)
        path = os.path.basename(str(result.path or ""))
        known.update(part for part in path.split("_") if part)
    for run in tracker.children(parent, kind):
        if run.info.status != "RUNNING":
            continue
        name = run.data.tags.get(tag, "")
        if name in known:
            tracker.end_run(run.info.run_id, "FAILED")
        else:
            tracker.set_tags(run.info.run_id, {"revsearch.orphaned": "trial lost by Tune with a killed driver"})
            tracker.end_run(run.info.run_id, "KILLED")
            log(f"{kind} run {run.info.run_id} ({name}): its Tune trial was lost, marked KILLED")


def stage_tuner(sweep, trainable_fn, context: Dict[str, Any], experiment: str, resume: bool, stage: str,
                 log: Callable[[str], None], build: Callable[[Any], Any], view: StageView,
                 name_of: Callable[[Any], str], console: ConsoleConfig):
    """Restore the stage's Tune experiment when resuming (finished trials are kept, errored ones rerun),
    else ``build(trainable)`` a new Tuner. Both stages give trials the sweep's resources and context, and
    the console of this invocation (the live ``view``, or Tune's own output with ``--verbose``)."""
    from ray import tune
    # resources.workers > 1: the trial only launches a Ray Train run whose workers ask for cpu/gpu each
    # (data_parallel_trial.py); the trial function holds no CPU or GPU while it waits (Ray refuses an
    # empty request, so it asks for a token 1 MiB of memory)
    per_trial = ({"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu} if sweep.resources.workers == 1
                 else {"cpu": 0, "gpu": 0, "memory": 2 ** 20})
    trainable = tune.with_resources(tune.with_parameters(trainable_fn, context=context), per_trial)
    if resume and tune.Tuner.can_restore(experiment):
        log(f"{stage}: resuming the experiment in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        tuner = build(trainable)
    configure_tuner(tuner, live_view_callback(view, name_of, console), console)
    return tuner


def fit_stage(tuner, console: ConsoleConfig):
    """``fit_interruptibly(tuner.fit)`` with Tune's own console off unless ``--verbose``."""
    def fit():
        with quiet_tune(console):
            return tuner.fit()
    return fit_interruptibly(fit)


def search_stage(sweep, context: Dict[str, Any], run_dir: str, resume: bool, log: Callable[[str], None],
                 console: Optional[ConsoleConfig] = None):
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from .space import define_by_run
    from .trainables import search_trainable

    metric, mode = objective_of(sweep)
    from .sweep import PROXY_METRICS
    if set(metric if isinstance(metric, list) else [metric]) & set(PROXY_METRICS):
        # Tune refuses a result without the objective; a proxy metric is only in a trial's last result
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    def build(trainable):
        searcher = resumable_optuna_search()(space=define_by_run(sweep), metric=metric, mode=mode,
                                              storage=study_storage(run_dir), study_name=f"{sweep.name}-search",
                                              sampler=optuna.samplers.TPESampler(seed=sweep.seed))
        scheduler = None
        if sweep.scheduler.type == "asha":
            from ray.tune.schedulers import ASHAScheduler
            single = metric[0] if isinstance(metric, list) else metric
            single_mode = mode[0] if isinstance(mode, list) else mode
            scheduler = ASHAScheduler(metric=single, mode=single_mode, time_attr="training_iteration",
                                      grace_period=sweep.scheduler.grace_period,
                                      reduction_factor=sweep.scheduler.reduction_factor,
                                      max_t=sweep.max_reports)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, sweep.max_concurrent),
                                        scheduler=scheduler, num_samples=sweep.num_samples),
            run_config=tune.RunConfig(
                name="search", storage_path=run_dir, verbose=1,
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))

    console = console or ConsoleConfig()
    view = StageView("stage 1 search", total=sweep.num_samples, max_concurrent=sweep.max_concurrent,
                     metric=metric[0] if isinstance(metric, list) else metric,
                     mode=mode[0] if isinstance(mode, list) else mode)
    tuner = stage_tuner(sweep, search_trainable, context, os.path.join(run_dir, "search"), resume,
                         "stage 1", log, build, view, lambda trial: f"trial {trial.trial_id}", console)
    log(f"stage 1: {sweep.num_samples} search trial(s), at most {sweep.max_concurrent} at a time")
    results, interrupted = fit_stage(tuner, console)
    if interrupted:  # unfinished, not failed: the study keeps them RUNNING for --resume to settle
        raise Interrupted("stage 1 stopped", interrupted)
    reconcile_study(sweep, run_dir, results, log)
    return results


def select_candidates(sweep, results, log: Callable[[str], None]):
    """Top-k distinct genotypes by the (first) objective, Pareto-front members first for several
    objectives; identical genotypes are merged. Returns (candidates, finished results, their objective
    points, indices of the Pareto front)."""
    metric, mode = objective_of(sweep)
    metrics = metric if isinstance(metric, list) else [metric]
    modes = mode if isinstance(mode, list) else [mode]
    finished = []
    for result in results:
        m = result.metrics or {}
        if result.error is None and m.get("genotype") and all(k in m for k in metrics):
            finished.append(result)
    if not finished:
        raise RevsearchError("stage 1 produced no finished search trial; see the trial errors above")
    points = [tuple(float(r.metrics[k]) for k in metrics) for r in finished]
    front = set(pareto_front(points, modes)) if len(metrics) > 1 else set()
    sign = 1.0 if modes[0] == "min" else -1.0
    order = sorted(range(len(finished)), key=lambda i: (i not in front if front else 0, sign * points[i][0]))
    seen, candidates = set(), []
    for i in order:
        r = finished[i]
        key = r.metrics["genotype_key"]
        if key in seen:
            log(f"  trial {r.metrics['trial_id']}: same genotype as a better trial, merged")
            continue
        seen.add(key)
        candidates.append({"rank_in_search": len(candidates) + 1, "trial_id": r.metrics["trial_id"],
                           "config": dict(r.config), "genotype": r.metrics["genotype"], "genotype_key": key,
                           "search_run_id": r.metrics.get("mlflow_run_id", ""),
                           "search_seconds": float(r.metrics.get("search_seconds", 0.0)),
                           "objective": {k: float(r.metrics[k]) for k in metrics},
                           "pareto": i in front})
        if len(candidates) == sweep.retrain.top_k:
            break
    return candidates, finished, points, front


def retrain_stage(sweep, context: Dict[str, Any], candidates, run_dir: str, resume: bool,
                  log: Callable[[str], None], console: Optional[ConsoleConfig] = None):
    from ray import tune
    from .trainables import retrain_trainable

    seeds = retrain_seeds(sweep)

    def build(trainable):
        # one trial per (candidate, seed); candidates vary slowest, so the seeds of a model run side by side
        return tune.Tuner(
            trainable, param_space={"candidate": tune.grid_search(candidates), "seed": tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=sweep.max_concurrent),
            run_config=tune.RunConfig(name="retrain", storage_path=run_dir, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=2)))

    console = console or ConsoleConfig()
    view = StageView("stage 2 retrain", total=len(candidates) * len(seeds), max_concurrent=sweep.max_concurrent,
                     metric="valid_bleu", mode="max", metric_label="valid BLEU")

    def name_of(trial) -> str:
        config = trial.config or {}
        label = (config.get("candidate") or {}).get("label", trial.trial_id)
        return f"{label} seed {config['seed']}" if len(seeds) > 1 and "seed" in config else label

    tuner = stage_tuner(sweep, retrain_trainable, context, os.path.join(run_dir, "retrain"), resume,
                         "stage 2", log, build, view, name_of, console)
    log(f"stage 2: retraining {len(candidates)} model(s) x {len(seeds)} seed(s): "
        + ", ".join(c["label"] for c in candidates))
    results, interrupted = fit_stage(tuner, console)
    if interrupted:
        raise Interrupted("stage 2 stopped", interrupted)
    return results


def retrain_seeds(sweep) -> List[int]:
    return list(sweep.retrain.seeds or [sweep.seed])
