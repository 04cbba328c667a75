"""``revsearch run``: sweep YAML -> searched, retrained, BLEU-ranked and registered architectures.

Stage 1: a Tuner over ``search_trainable`` with OptunaSearch (define-by-run space from the YAML, study in
an RDB storage next to the results, seeded TPE). Stage 2: the top-k distinct genotypes (and optionally a
standard Transformer of the same size) are retrained from scratch as Tune trials and scored with
sacreBLEU. Then a ranking (Markdown + CSV), and the best model logged to MLflow and registered with the
alias ``best``. Every run lives in ``<storage>/runs/<name>-<timestamp>/``; ``--resume`` continues the
latest one: finished trials are not rerun and MLflow runs are reopened, not duplicated.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..errors import Interrupted, RevsearchError
from ..interrupts import fit_interruptibly, shielded
from .data_prep import PreparedData, prepare_data, shortest_max_len
from .ray_connect import cluster_address, init_ray
from .ranking import (RankRow, SeedResult, aggregate, pareto_front, plot_pareto, summary, write_ranking,
                      to_markdown)
from .tracking import KIND_TAG, Tracker, mask_secrets

STATE_FILE = "run_state.json"
TUNE_TRIAL_ATTR = "tune_trial_id"   # Optuna user attribute: the Tune trial a study trial belongs to


@dataclass
class RunState:
    """What a resumed run needs to know; rewritten atomically after every stage."""
    run_dir: str
    parent_run_id: str = ""
    stage: str = "search"                     # search | retrain | done
    candidates: List[Dict[str, Any]] = field(default_factory=list)

    def save(self) -> None:
        tmp = os.path.join(self.run_dir, STATE_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.__dict__, f, indent=2)
        os.replace(tmp, os.path.join(self.run_dir, STATE_FILE))

    @staticmethod
    def load(run_dir: str) -> "RunState":
        path = os.path.join(run_dir, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return RunState(**json.load(f))
        except (OSError, ValueError, TypeError) as err:
            raise RevsearchError(f"{path}: cannot resume this run ({err})") from None


def choose_run_dir(storage: str, name: str, resume: Optional[str]) -> str:
    runs = os.path.join(storage, "runs")
    if resume in (None, ""):
        return os.path.join(runs, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, STATE_FILE)):
            raise RevsearchError(f"--resume {resume}: not a revsearch run directory (no {STATE_FILE})")
        return os.path.abspath(resume)
    candidates = sorted(d for d in (os.listdir(runs) if os.path.isdir(runs) else [])
                        if d.startswith(name + "-") and os.path.isfile(os.path.join(runs, d, STATE_FILE)))
    if not candidates:
        raise RevsearchError(f"--resume: no earlier run of '{name}' under {runs}")
    return os.path.join(runs, candidates[-1])


def _objective(sweep):
    metric, mode = sweep.objective.metric, sweep.objective.mode
    return metric, mode


def _study_storage(run_dir: str):
    import optuna
    return optuna.storages.RDBStorage("sqlite:///" + os.path.join(run_dir, "optuna.db"))


@functools.lru_cache(maxsize=None)
def _resumable_optuna_search():
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
    use) and reachable as ``pipeline.ResumableOptunaSearch``, so a pickled Tuner finds it again."""
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
        return _resumable_optuna_search()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def reconcile_study(sweep, run_dir: str, results, log: Callable[[str], None]) -> None:
    """After stage 1's ``fit()`` no trial runs any more, so no study trial may stay RUNNING: one whose Tune
    trial finished gets Tune's final value (COMPLETE), any other (its trial errored, or Tune lost it with a
    killed driver and sampled a replacement on ``--resume``) is marked FAIL."""
    import optuna
    from optuna.trial import TrialState

    metric, _ = _objective(sweep)
    metrics = metric if isinstance(metric, list) else [metric]
    finished = {}
    for result in results:
        m = result.metrics or {}
        if result.error is None and m.get("trial_id") and all(k in m for k in metrics):
            finished[m["trial_id"]] = [float(m[k]) for k in metrics]
    study = optuna.load_study(study_name=f"{sweep.name}-search", storage=_study_storage(run_dir))
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


def _stage_tuner(sweep, trainable_fn, context: Dict[str, Any], experiment: str, resume: bool, stage: str,
                 log: Callable[[str], None], build: Callable[[Any], Any]):
    """Restore the stage's Tune experiment when resuming (finished trials are kept, errored ones rerun),
    else ``build(trainable)`` a new Tuner. Both stages give trials the sweep's resources and context."""
    from ray import tune
    trainable = tune.with_resources(tune.with_parameters(trainable_fn, context=context),
                                    {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    if resume and tune.Tuner.can_restore(experiment):
        log(f"{stage}: resuming the experiment in {experiment}")
        return tune.Tuner.restore(experiment, trainable, resume_errored=True)
    return build(trainable)


def search_stage(sweep, context: Dict[str, Any], run_dir: str, resume: bool, log: Callable[[str], None]):
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from .space import define_by_run
    from .trainables import search_trainable

    metric, mode = _objective(sweep)
    from .sweep import PROXY_METRICS
    if set(metric if isinstance(metric, list) else [metric]) & set(PROXY_METRICS):
        # Tune refuses a result without the objective; a proxy metric is only in a trial's last result
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    def build(trainable):
        searcher = _resumable_optuna_search()(space=define_by_run(sweep), metric=metric, mode=mode,
                                              storage=_study_storage(run_dir), study_name=f"{sweep.name}-search",
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

    tuner = _stage_tuner(sweep, search_trainable, context, os.path.join(run_dir, "search"), resume,
                         "stage 1", log, build)
    log(f"stage 1: {sweep.num_samples} search trial(s), at most {sweep.max_concurrent} at a time")
    results, interrupted = fit_interruptibly(tuner.fit)
    if interrupted:  # unfinished, not failed: the study keeps them RUNNING for --resume to settle
        raise Interrupted("stage 1 stopped", interrupted)
    reconcile_study(sweep, run_dir, results, log)
    return results


def select_candidates(sweep, results, log: Callable[[str], None]):
    """Top-k distinct genotypes by the (first) objective, Pareto-front members first for several
    objectives; identical genotypes are merged. Returns (candidates, finished results, their objective
    points, indices of the Pareto front)."""
    metric, mode = _objective(sweep)
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


def retrain_candidates(sweep, chosen: List[Dict[str, Any]], partial: bool = False,
                       vocab_size_of: Optional[Callable[[int, str], int]] = None) -> List[Dict[str, Any]]:
    """Turn chosen genotypes into retrain trial configs, plus the Transformer baseline and
    ``retrain.random_genotypes`` random genotypes of the first one's space (the sampling baseline). With
    ``retrain.size.match: params`` every model's width is chosen so that all have the same parameter
    count (search/sizing.py); each candidate carries ``params`` (its exact count), ``target_params`` and
    ``param_deviation``. ``partial``: the configs are hand-made (``revsearch retrain``), not Tune trial
    configs. ``vocab_size_of(requested, spm_model_type)``: the vocabulary SentencePiece really gives
    (it may give fewer pieces than asked), so the counts are those of the trained models."""
    from ..search import Genotype
    from ..search.sampling import sample_genotypes
    from ..search.sizing import (FFN_RATIO, baseline_heads, derived_param_count, size_derived,
                                 size_transformer, transformer_param_count)
    from .space import resolve_trial
    r = sweep.retrain
    out = []
    allow_zero = sweep.search.derive_allow_zero
    for c in chosen:
        settings = resolve_trial(sweep, c["config"], partial=partial)
        s = settings.supernet
        model = {"hidden": r.hidden or s["hidden"], "splits": s["splits"], "embed_dim": s["embed_dim"],
                 "encoder_layers": r.encoder_layers, "decoder_layers": r.decoder_layers,
                 "heads": s["heads"], "pooling": s["pooling"],
                 "dropout": r.dropout if r.dropout is not None else s["dropout"],
                 "tie_embeddings": s["tie_embeddings"]}
        if model["hidden"] % model["splits"]:
            model["hidden"] -= model["hidden"] % model["splits"]
        if not out:   # the random genotypes are drawn as the first candidate's trial derives
            allow_zero = settings.search.derive_allow_zero
        out.append({"kind": "derived", "label": f"derived-{c['rank_in_search']}-{c['trial_id']}",
                    "genotype": c["genotype"], "genotype_key": c["genotype_key"],
                    "search_trial_id": c["trial_id"], "search_run_id": c["search_run_id"],
                    "search_seconds": c["search_seconds"], "model": model,
                    "vocab_size": settings.data["vocab_size"], "spm_model_type": settings.data["spm_model_type"],
                    "max_len": settings.data["max_len"]})
    if not out:
        return out
    first = out[0]
    m = first["model"]
    data_keys = {k: first[k] for k in ("vocab_size", "spm_model_type", "max_len")}
    template = Genotype.from_dict(json.loads(first["genotype"]), source=first["label"])
    randoms = sample_genotypes(template, r.random_genotypes, sweep.seed, allow_zero=allow_zero,
                               avoid=[c["genotype_key"] for c in out],
                               what=f"{sweep.source}: retrain.random_genotypes")
    for i, genotype in enumerate(randoms, 1):
        out.append({"kind": "random", "label": f"random-{i}", "genotype": genotype.to_json(),
                    "genotype_key": genotype.key(), "search_seconds": 0.0,
                    "model": dict(m, splits=genotype.splits, pooling=genotype.pooling), **data_keys})
    # the Transformer at the reference width (the first candidate's): also what sets the default target
    baseline = {"hidden": m["hidden"], "embed_dim": m["embed_dim"], "heads": baseline_heads(m["hidden"]),
                "encoder_layers": m["encoder_layers"], "decoder_layers": m["decoder_layers"],
                "dropout": m["dropout"], "ffn_dim": FFN_RATIO * m["hidden"]}
    if r.baseline:   # first in the grid: the baseline is the slowest model, so it overlaps the derived ones
        out.insert(0, {"kind": "baseline", "label": "transformer-baseline", "genotype": "",
                       "search_seconds": 0.0, "model": baseline, **data_keys})

    vocab = vocab_size_of or (lambda requested, model_type: requested)
    size = r.size
    target = None
    if size["match"] == "params":
        target = size["params"] or transformer_param_count(baseline, vocab(first["vocab_size"],
                                                                           first["spm_model_type"]))
    for c in out:
        v = vocab(c["vocab_size"], c["spm_model_type"])
        genotype = None if c["kind"] == "baseline" else Genotype.from_dict(json.loads(c["genotype"]),
                                                                           source=c["label"])
        if target is None:   # match: width, the models keep the reference width
            c.update(params=(transformer_param_count(c["model"], v) if genotype is None
                             else derived_param_count(genotype, c["model"], v)),
                     target_params=None, param_deviation=None)
            continue
        what = f"{sweep.source}: retrain.size"
        sized = (size_transformer(c["label"], c["model"], v, target, size["tolerance"], what) if genotype is None
                 else size_derived(c["label"], genotype, c["model"], v, target, size["tolerance"], what))
        c.update(model=sized.model, params=sized.params, target_params=target, param_deviation=sized.deviation)
    return out


def retrain_stage(sweep, context: Dict[str, Any], candidates, run_dir: str, resume: bool,
                  log: Callable[[str], None]):
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

    tuner = _stage_tuner(sweep, retrain_trainable, context, os.path.join(run_dir, "retrain"), resume,
                         "stage 2", log, build)
    log(f"stage 2: retraining {len(candidates)} model(s) x {len(seeds)} seed(s): "
        + ", ".join(c["label"] for c in candidates))
    results, interrupted = fit_interruptibly(tuner.fit)
    if interrupted:
        raise Interrupted("stage 2 stopped", interrupted)
    return results


def retrain_seeds(sweep) -> List[int]:
    return list(sweep.retrain.seeds or [sweep.seed])


def describe_candidates(candidates) -> Dict[str, Dict[str, Any]]:
    """label -> what the ranking shows about a candidate besides its scores."""
    from .trainables import describe_genotype
    described = {}
    for c in candidates:
        if c["kind"] == "baseline":
            m = c["model"]
            text = f"Transformer e={m['embed_dim']} d={m['hidden']}" + (f" ffn={m['ffn_dim']}" if m.get("ffn_dim") else "")
        else:
            text = describe_genotype(c["genotype"])
        described[c["label"]] = {"genotype": text, "search_trial": c.get("search_trial_id", ""),
                                 "search_seconds": float(c.get("search_seconds", 0.0))}
    return described


def seed_results(results, candidates) -> List[SeedResult]:
    """The scored (candidate, seed) retrains of stage 2's Tune results."""
    by_label = {c["label"]: c for c in candidates}
    out = []
    for result in results:
        m = result.metrics or {}
        config = result.config or {}
        label = m.get("label") or config.get("candidate", {}).get("label")
        if label not in by_label or "test_bleu" not in m or "valid_bleu" not in m:
            continue
        c = by_label[label]
        out.append(SeedResult(label=label, kind=c["kind"], seed=int(m.get("seed", config.get("seed", 0))),
                              valid_bleu=float(m["valid_bleu"]), test_bleu=float(m["test_bleu"]),
                              test_chrf=float(m["test_chrf"]), params=int(m["params"]),
                              target_params=int(m.get("target_params") or c.get("target_params") or 0),
                              train_seconds=float(m.get("train_seconds", 0.0)),
                              mlflow_run_id=m.get("mlflow_run_id", ""), bleu_signature=m.get("bleu_signature", "")))
    return out


def hypotheses_from_mlflow(tracker: Tracker, name: str = "test_hypotheses.txt"):
    """A reader of each retrain run's logged hypotheses (through the tracking server on a cluster)."""
    import tempfile
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one bar per file otherwise

    def read(result: SeedResult) -> Optional[List[str]]:
        if not result.mlflow_run_id:
            return None
        with tempfile.TemporaryDirectory() as directory:
            try:
                path = tracker.client.download_artifacts(result.mlflow_run_id, name, directory)
            except Exception:  # noqa: BLE001 - a missing file only drops the significance test
                return None
            with open(path, encoding="utf-8") as f:
                text = f.read()
        return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    return read


def test_references(prepared: PreparedData, candidates) -> Optional[List[str]]:
    """The test references exactly as the retrains scored them."""
    from .data_prep import _load
    if not candidates:
        return None
    corpus = _load(prepared.corpus_dir, prepared.src_lang, prepared.tgt_lang, candidates[0]["max_len"])
    return [t for _, t in corpus.test]


REFERENCES_FILE = "test_references.txt"   # on the parent run: what the paired tests compare against


def rows_from_results(results, candidates, tracker: Optional[Tracker] = None,
                      references: Optional[List[str]] = None) -> List[RankRow]:
    hypotheses = hypotheses_from_mlflow(tracker) if tracker is not None and references is not None else None
    return aggregate(seed_results(results, candidates), describe_candidates(candidates),
                     hypotheses=hypotheses, references=references)


def register_best(tracker: Tracker, row: RankRow, model_name: str, log: Callable[[str], None]) -> str:
    """Log the best model (pickled torch module + weights-only checkpoint) to its retrain run and
    register it with the alias ``best``; ``row`` is chosen on validation BLEU and its run is the seed with
    the best validation BLEU. Returns the registered version."""
    import mlflow
    import mlflow.pytorch
    from ..train.checkpoint import load_for_inference

    checkpoint = tracker.client.get_run(row.mlflow_run_id).data.tags.get("revsearch.checkpoint", "")
    if not checkpoint or not os.path.isfile(checkpoint):
        raise RevsearchError(f"best model {row.label}: checkpoint {checkpoint!r} not found")
    model, _, _ = load_for_inference(checkpoint)
    with mlflow.start_run(run_id=row.mlflow_run_id):
        try:
            info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                            pip_requirements=["torch", "revsearch"])
            mlflow.log_artifact(checkpoint, "checkpoint")
        except KeyboardInterrupt:  # the retrain had finished; a Ctrl-C here must not leave it FAILED
            mlflow.end_run("FINISHED")
            raise
    version = mlflow.register_model(info.model_uri, model_name)
    tracker.client.set_registered_model_alias(model_name, "best", version.version)
    tracker.client.set_model_version_tag(model_name, version.version, "revsearch.label", row.label)
    log(f"registered {model_name} version {version.version} (alias 'best'): {row.label}, "
        f"validation BLEU {row.valid_bleu:.2f} (chosen on validation only)")
    return str(version.version)


def aggregate_metrics(rows: List[RankRow]) -> Dict[str, float]:
    """The parent run's view of stage 2: each candidate's mean/std over seeds, its comparison with the
    Transformer, and the verdict (best derived vs Transformer and vs random)."""
    metrics: Dict[str, float] = {"best_valid_bleu": rows[0].valid_bleu, "best_test_bleu": rows[0].test_bleu}
    for r in rows:
        for name in ("valid_bleu", "valid_bleu_std", "test_bleu", "test_bleu_std", "params",
                     "delta_vs_baseline", "p_value"):
            value = float(getattr(r, name))
            if not math.isnan(value):
                metrics[f"{r.label}.{name}"] = value
    metrics.update({k: v for k, v in summary(rows).items() if not math.isnan(v)})
    return metrics


def write_genotypes(candidates: List[Dict[str, Any]], run_dir: str) -> None:
    from ..search import Genotype
    directory = os.path.join(run_dir, "genotypes")
    os.makedirs(directory, exist_ok=True)
    for c in candidates:
        if c["kind"] != "baseline":  # derived and random genotypes
            c["genotype_file"] = os.path.join(directory, f"{c['label']}.json")
            Genotype.from_dict(json.loads(c["genotype"])).save(c["genotype_file"])


def run_pipeline(sweep, address: Optional[str] = None, resume: Optional[str] = None,
                 log: Callable[[str], None] = print, search_only: bool = False) -> Dict[str, Any]:
    """The whole job (or stage 1 alone). Returns paths and the ranking; raises RevsearchError for
    user-fixable problems."""
    wall_start = time.perf_counter()
    storage = sweep.storage
    run_dir = choose_run_dir(storage, sweep.name, resume)
    resuming = resume not in (None, "")
    state = RunState.load(run_dir) if resuming else RunState(run_dir)
    if state.stage == "done":
        raise RevsearchError(f"--resume: {run_dir} already finished (ranking: "
                             f"{os.path.join(run_dir, 'ranking.md')}); run without --resume for a new one")
    remote = cluster_address(address)[0] is not None
    if remote:  # a cluster that cannot be joined (wrong token, ...) is reported before minutes of data work
        init_ray(address)
        from .capacity import check_cluster_capacity
        check_cluster_capacity(sweep, cluster_address(address)[0])   # trials fit its largest node
    # the data is checked before anything is recorded: a bad corpus leaves no run behind
    d = sweep.data
    prepared: PreparedData = prepare_data(d.kind, storage, synthetic=d.synthetic, path=d.path,
                                          src_lang=d.src_lang, tgt_lang=d.tgt_lang, pair=d.pair, log=log,
                                          max_words=shortest_max_len(sweep))
    tracker = Tracker(sweep.tracking_uri, sweep.experiment_name,
                      artifact_root=os.path.join(storage, "mlartifacts"))
    if not remote:
        init_ray(None)
    os.makedirs(run_dir, exist_ok=True)
    run_name = os.path.basename(run_dir)
    # a Ctrl-C in here would leave a parent run RUNNING and no run_state.json: held back until the try
    with shielded(deliver=False) as held:
        if not state.parent_run_id:
            state.parent_run_id = tracker.start_run(run_name, {KIND_TAG: "sweep", "revsearch.run_dir": run_dir},
                                                    key=f"sweep:{run_dir}")
            tracker.log_params(state.parent_run_id, sweep.to_dict())
            tracker.log_json(state.parent_run_id, sweep.to_dict(), "resolved_config.json")
            state.save()
        else:
            tracker.client.update_run(state.parent_run_id, status="RUNNING")
    log(f"run directory: {run_dir}")
    log(f"MLflow: {mask_secrets(sweep.tracking_uri)} (experiment '{sweep.experiment_name}', "
        f"run {state.parent_run_id})")
    status = "FAILED"
    try:
        held.deliver()
        threads = max(1, int(sweep.resources.cpu))
        context = {"sweep": sweep.to_dict(), "sweep_source": sweep.source, "prepared": prepared.to_dict(),
                   "tracking_uri": sweep.tracking_uri, "experiment": sweep.experiment_name,
                   "artifact_root": os.path.join(storage, "mlartifacts"),
                   "parent_run_id": state.parent_run_id, "run_dir": run_dir, "seed": sweep.seed,
                   "threads": threads, "retrain": sweep.retrain.to_dict()}
        # warm the tokenizer cache once here instead of racing in every trial
        from .data_prep import tokenizer_for
        tokenizer_for(prepared, d.vocab_size, d.spm_model_type, log=log)

        stage_times = {}
        t = time.perf_counter()
        if state.stage == "search":
            results = search_stage(sweep, context, run_dir, resuming, log)
            close_dead_runs(tracker, state.parent_run_id, "search", results, log)
            chosen, finished, points, front = select_candidates(sweep, results, log)
            if len(points[0]) > 1:
                names = sweep.objective.metric
                labels = [r.metrics["trial_id"] for r in finished]
                path = plot_pareto(points, sorted(front), labels, names, os.path.join(run_dir, "pareto.png"))
                tracker.log_artifact(state.parent_run_id, path)
            state.candidates = retrain_candidates(
                sweep, chosen, vocab_size_of=lambda size, kind: tokenizer_for(prepared, size, kind).vocab_size)
            for c in state.candidates:
                if c.get("target_params"):
                    log(f"  {c['label']}: {c['params']:,} params ({100 * c['param_deviation']:+.2f}% of the "
                        f"target {c['target_params']:,}), hidden {c['model']['hidden']}")
            write_genotypes(state.candidates, run_dir)
            state.stage = "retrain"
            state.save()
            tracker.log_json(state.parent_run_id, state.candidates, "candidates.json")
        stage_times["search_stage_seconds"] = time.perf_counter() - t
        if search_only:
            status = "FINISHED"
            return {"run_dir": run_dir, "candidates": state.candidates, "parent_run_id": state.parent_run_id,
                    **stage_times}

        t = time.perf_counter()
        results = retrain_stage(sweep, context, state.candidates, run_dir,
                                resuming and os.path.isdir(os.path.join(run_dir, "retrain")), log)
        stage_times["retrain_stage_seconds"] = time.perf_counter() - t
        close_dead_runs(tracker, state.parent_run_id, "retrain", results, log)
        references = test_references(prepared, state.candidates)
        rows = rows_from_results(results, state.candidates, tracker, references)
        if not rows:
            raise RevsearchError("stage 2 produced no scored model; see the trial errors above")
        md, csv_path = write_ranking(rows, run_dir, title=f"revsearch ranking: {sweep.name}")
        if references is not None:
            references_path = os.path.join(run_dir, REFERENCES_FILE)
            with open(references_path, "w", encoding="utf-8") as f:
                f.write("\n".join(references) + "\n")
            tracker.log_artifact(state.parent_run_id, references_path)
        tracker.log_artifact(state.parent_run_id, md)
        tracker.log_artifact(state.parent_run_id, csv_path)
        log("\n" + to_markdown(rows))
        best = rows[0]
        version = register_best(tracker, best, sweep.registered_model_name, log)
        stage_times["wall_seconds"] = time.perf_counter() - wall_start
        tracker.log_metrics(state.parent_run_id, dict(stage_times, **aggregate_metrics(rows)), 0)
        tracker.set_tags(state.parent_run_id, {"revsearch.best": best.label, "revsearch.best_version": version})
        state.stage = "done"
        state.save()
        status = "FINISHED"
        log(f"ranking: {md}")
        return {"run_dir": run_dir, "ranking_md": md, "ranking_csv": csv_path, "rows": rows,
                "best": best, "model_version": version,
                "seed_results": seed_results(results, state.candidates), "parent_run_id": state.parent_run_id,
                **stage_times}
    except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: the run stays resumable, its runs end KILLED
        status = "KILLED"
        with shielded():
            tracker.end_running_children(state.parent_run_id, "KILLED")
        stopped = f"{err}, " if str(err) else ""
        raise Interrupted(f"{stopped}the run is saved in {run_dir}", getattr(err, "signum", 2)) from None
    finally:
        with shielded():
            tracker.end_run(state.parent_run_id, status)
