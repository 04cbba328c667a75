"""``revsearch run``: sweep YAML -> searched, retrained, BLEU-ranked and registered architectures.

Stage 1: a Tuner over ``search_trainable`` with OptunaSearch (define-by-run space from the YAML, study in
an RDB storage next to the results, seeded TPE). Stage 2: the top-k distinct genotypes (and optionally a
standard Transformer of the same size) are retrained from scratch as Tune trials and scored with
sacreBLEU. Then a ranking (Markdown + CSV), and the best model logged to MLflow and registered with the
alias ``best``. Every run lives in ``<storage>/runs/<name>-<timestamp>/``; ``--resume`` continues the
latest one: finished trials are not rerun and MLflow runs are reopened, not duplicated.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..errors import Interrupted, RevsearchError
from ..interrupts import shielded
from .data_prep import PreparedData, prepare_data, shortest_max_len
from .live_view import ConsoleConfig, quiet_libraries
from .ray_connect import cluster_address, init_ray
from .ranking import RankRow, plot_pareto, to_markdown, write_ranking
from .results import (REFERENCES_FILE, aggregate_metrics, rows_from_results, seed_results, test_references,
                      write_genotypes)
from .stages import close_dead_runs, retrain_stage, search_stage, select_candidates
from .tracking import KIND_TAG, Tracker, mask_secrets

STATE_FILE = "run_state.json"


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
    candidates = sorted(entry for entry in (os.listdir(runs) if os.path.isdir(runs) else [])
                        if entry.startswith(name + "-") and os.path.isfile(os.path.join(runs, entry, STATE_FILE)))
    if not candidates:
        raise RevsearchError(f"--resume: no earlier run of '{name}' under {runs}")
    return os.path.join(runs, candidates[-1])


def register_best(tracker: Tracker, row: RankRow, model_name: str, log: Callable[[str], None]) -> str:
    """Log the best model to its retrain run as weights + JSON spec + SentencePiece model (no pickle; see
    ``registry.py``), plus its weights-only checkpoint, and register it with the alias ``best``; ``row``
    is chosen on validation BLEU and its run is the seed with the best validation BLEU. Returns the
    registered version (``revsearch translate --model models:/NAME@best`` loads it)."""
    from .registry import register_checkpoint

    checkpoint = tracker.client.get_run(row.mlflow_run_id).data.tags.get("revsearch.checkpoint", "")
    if not checkpoint or not os.path.isfile(checkpoint):
        raise RevsearchError(f"best model {row.label}: checkpoint {checkpoint!r} not found")
    version = register_checkpoint(tracker.client, tracker.experiment_id, row.mlflow_run_id, checkpoint,
                                  model_name, row.label, alias="best")
    tracker.log_artifact(row.mlflow_run_id, checkpoint, "checkpoint")
    log(f"registered {model_name} version {version} (alias 'best'): {row.label}, "
        f"validation BLEU {row.valid_bleu:.2f} (chosen on validation only)")
    return version


def run_pipeline(sweep, address: Optional[str] = None, resume: Optional[str] = None,
                 log: Callable[[str], None] = print, search_only: bool = False,
                 console: Optional[ConsoleConfig] = None) -> Dict[str, Any]:
    """The whole job (or stage 1 alone). Returns paths and the ranking; raises RevsearchError for
    user-fixable problems. ``console``: the live view (default) or Ray's own output (``verbose``)."""
    console = console or ConsoleConfig()
    if not console.verbose:
        quiet_libraries()
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
        init_ray(address, verbose=console.verbose)
        from .capacity import check_cluster_capacity
        check_cluster_capacity(sweep, cluster_address(address)[0])   # trials fit its largest node
    # the data is checked before anything is recorded: a bad corpus leaves no run behind
    data = sweep.data
    prepared: PreparedData = prepare_data(data.kind, storage, synthetic=data.synthetic, path=data.path,
                                          src_lang=data.src_lang, tgt_lang=data.tgt_lang, pair=data.pair,
                                          log=log, max_words=shortest_max_len(sweep))
    tracker = Tracker(sweep.tracking_uri, sweep.experiment_name,
                      artifact_root=os.path.join(storage, "mlartifacts"))
    if not remote:
        init_ray(None, verbose=console.verbose)
        log(f"started a local Ray instance ({os.cpu_count()} CPUs)")
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
                   "threads": threads, "retrain": sweep.retrain.to_dict(), "workers": sweep.resources.workers,
                   "gpu": sweep.resources.gpu}
        # warm the tokenizer cache once here instead of racing in every trial
        from .candidates import retrain_candidates
        from .data_prep import tokenizer_for
        tokenizer_for(prepared, data.vocab_size, data.spm_model_type, log=log)

        stage_times = {}
        stage_start = time.perf_counter()
        if state.stage == "search":
            results = search_stage(sweep, context, run_dir, resuming, log, console)
            close_dead_runs(tracker, state.parent_run_id, "search", results, log)
            chosen, finished, points, front = select_candidates(sweep, results, log)
            if len(points[0]) > 1:
                names = sweep.objective.metric
                labels = [result.metrics["trial_id"] for result in finished]
                path = plot_pareto(points, sorted(front), labels, names, os.path.join(run_dir, "pareto.png"))
                tracker.log_artifact(state.parent_run_id, path)
            state.candidates = retrain_candidates(
                sweep, chosen, vocab_size_of=lambda size, kind: tokenizer_for(prepared, size, kind).vocab_size)
            for candidate in state.candidates:
                if candidate.get("target_params"):
                    log(f"  {candidate['label']}: {candidate['params']:,} params "
                        f"({100 * candidate['param_deviation']:+.2f}% of the target {candidate['target_params']:,}), "
                        f"hidden {candidate['model']['hidden']}")
            write_genotypes(state.candidates, run_dir)
            state.stage = "retrain"
            state.save()
            tracker.log_json(state.parent_run_id, state.candidates, "candidates.json")
        stage_times["search_stage_seconds"] = time.perf_counter() - stage_start
        if search_only:
            status = "FINISHED"
            return {"run_dir": run_dir, "candidates": state.candidates, "parent_run_id": state.parent_run_id,
                    **stage_times}

        stage_start = time.perf_counter()
        results = retrain_stage(sweep, context, state.candidates, run_dir,
                                resuming and os.path.isdir(os.path.join(run_dir, "retrain")), log, console)
        stage_times["retrain_stage_seconds"] = time.perf_counter() - stage_start
        close_dead_runs(tracker, state.parent_run_id, "retrain", results, log)
        references = test_references(prepared, state.candidates)
        rows = rows_from_results(results, state.candidates, tracker, references)
        if not rows:
            raise RevsearchError("stage 2 produced no scored model; see the trial errors above")
        markdown_path, csv_path = write_ranking(rows, run_dir, title=f"revsearch ranking: {sweep.name}")
        if references is not None:
            references_path = os.path.join(run_dir, REFERENCES_FILE)
            with open(references_path, "w", encoding="utf-8") as f:
                f.write("\n".join(references) + "\n")
            tracker.log_artifact(state.parent_run_id, references_path)
        tracker.log_artifact(state.parent_run_id, markdown_path)
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
        log(f"ranking: {markdown_path}")
        return {"run_dir": run_dir, "ranking_md": markdown_path, "ranking_csv": csv_path, "rows": rows,
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
