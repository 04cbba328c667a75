"""What one Ray Tune trial does: a supernet search (stage 1) or a retrain of a genotype (stage 2).

Both are function trainables. Static context (the resolved sweep, where the data is, the MLflow parent
run) arrives through ``tune.with_parameters``; the sampled hyperparameters arrive as ``config``. Each
trial logs into its own MLflow child run, found again by a stable key when Tune restarts the trial from
its checkpoint, so a restart continues the run on the same step axis instead of opening a second one.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional

import torch

from ..models.transformer import count_parameters
from ..search import Genotype
from ..search.loop import SearchLoop
from ..search.plots import plot_alpha_heatmap, plot_alpha_trajectories, plot_cell
from .candidates import build_retrain_model
from .data_prep import PreparedData, encoded_data
from .search_trial import (STATE_FILE, build_search_loop, device_tags, log_new_steps, placement_tags,
                           report_search, trial_device)
from .tracking import KEY_TAG, KIND_TAG, PARENT_TAG, Tracker, no_artifact_progress_bar


def _tracker(context: Dict[str, Any]) -> Tracker:
    return Tracker(context["tracking_uri"], context["experiment"], context.get("artifact_root"))


def _trial_id() -> str:
    from ray import tune
    return tune.get_context().get_trial_id()


def _finished_run(tracker: Tracker, key: str, parent: str):
    """The MLflow run of this trial if it already ended FINISHED, else None. Tune reruns a trial whose end
    it had not saved yet when the driver was killed (its experiment state is saved every 10 s or more);
    such a trial reports what its run holds instead of training, evaluating and logging a second time."""
    run_id = tracker.find_run({KEY_TAG: key, PARENT_TAG: parent}) if parent else None
    if run_id is None:
        return None
    run = tracker.client.get_run(run_id)
    return run if run.info.status == "FINISHED" else None


# ----------------------------------------------------------------------------------------- stage 1
def search_trainable(config: Dict[str, Any], context: Dict[str, Any]) -> None:
    from ray import tune
    from .space import resolve_trial
    from .sweep import validate_sweep_dict

    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    sweep = validate_sweep_dict(context["sweep"], source=context.get("sweep_source", "sweep"))
    settings = resolve_trial(sweep, dict(config))
    trial_id = _trial_id()
    tracker = _tracker(context)
    done = _finished_run(tracker, f"search:{trial_id}", context["parent_run_id"])
    if done is not None:
        with tempfile.TemporaryDirectory() as directory, no_artifact_progress_bar():
            genotype = Genotype.load(tracker.client.download_artifacts(done.info.run_id, "genotype.json", directory))
        tune.report(dict(done.data.metrics, genotype=genotype.to_json(), genotype_key=genotype.key(),
                         mlflow_run_id=done.info.run_id))
        return
    run_id = tracker.start_run(f"search-{trial_id}", {KIND_TAG: "search", "revsearch.trial_id": trial_id,
                                                      "revsearch.op_set": settings.op_set},
                               parent=context["parent_run_id"], key=f"search:{trial_id}")
    tracker.set_tags(run_id, placement_tags())
    status = "FAILED"
    try:
        tracker.log_params(run_id, {"sampled": dict(config), "supernet": settings.supernet,
                                    "search": asdict(settings.search), "data": settings.data,
                                    "steps": settings.steps})
        if sweep.resources.workers > 1:   # a Ray Train run of N workers; rank 0 logs into this run
            from .data_parallel_trial import run_search_workers
            genotype, trajectory = run_search_workers(sweep, dict(config), context, run_id, trial_id)
        else:
            device = trial_device(sweep.resources.gpu)   # the GPU Ray gave this trial, if it asked for one
            loop, data, derived_config = build_search_loop(sweep, settings, context, device=device)
            tracker.set_tags(run_id, {"revsearch.supernet_params": sum(p.numel() for p in loop.model.parameters())}
                             | device_tags(device))
            checkpoint = tune.get_checkpoint()
            if checkpoint is not None:
                with checkpoint.as_directory() as directory:
                    loop.load_state_dict(torch.load(os.path.join(directory, STATE_FILE), map_location="cpu",
                                                    weights_only=True))
                tracker.set_tags(run_id, {"revsearch.resumed_at_step": str(loop.step)})   # the last restore
            start, log = time.perf_counter(), log_new_steps(tracker, run_id)

            def on_report(step: int, metrics: Dict[str, float], loop: SearchLoop) -> None:
                report_search(step, metrics, loop, settings, derived_config, start, run_id,
                              log, tune.report, tune.Checkpoint)

            if loop.step < settings.steps:
                loop.run(settings.steps, settings.report_every, on_report)
            genotype, trajectory = loop.genotype(), loop.trajectory
            del loop   # the supernet and its optimizer state leave the GPU before the proxy retrain
            if device is not None:
                torch.cuda.empty_cache()
        if sweep.search.proxy_retrain is not None:
            from .proxy import proxy_retrain, proxy_retrain_task
            if sweep.resources.workers > 1:   # the trial holds no CPU of its own: a task holding a worker's
                from .data_parallel_trial import run_with_worker_resources
                proxy = run_with_worker_resources(sweep.resources, proxy_retrain_task, context, dict(config),
                                                  genotype.to_json(), trial_id)
            else:
                proxy = proxy_retrain(sweep, config, genotype, data, trial_id, device)
            tracker.log_metrics(run_id, proxy, settings.steps)
            # the trial's last result: every metric it reported last (read back, so a trial restored after
            # its search finished has them too) plus the proxy's, which the objective may name
            last = dict(tracker.client.get_run(run_id).data.metrics, **proxy)
            tune.report(dict(last, genotype=genotype.to_json(), genotype_key=genotype.key(), mlflow_run_id=run_id))
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "genotype.json")
            genotype.save(path)
            tracker.log_artifact(run_id, path)
            tracker.log_artifact(run_id, plot_alpha_heatmap(genotype, os.path.join(directory, "alpha_heatmap.png"),
                                                            title=f"softmax(α), trial {trial_id}"))
            tracker.log_artifact(run_id, plot_alpha_trajectories(
                trajectory, genotype, os.path.join(directory, "alpha_trajectories.png"),
                title=f"softmax(α) over the search, trial {trial_id}",
                alpha_warmup_steps=settings.search.alpha_warmup_steps))
            tracker.log_artifact(run_id, plot_cell(genotype, os.path.join(directory, "derived_cell.png")))
        tracker.set_tags(run_id, {"revsearch.genotype": genotype.describe()[:5000]})
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Tune stopping the trial (sys.exit in report()), Ctrl-C
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)


# ----------------------------------------------------------------------------------------- stage 2
def retrain_trainable(config: Dict[str, Any], context: Dict[str, Any]) -> None:
    """Stage 2 as a Tune trial, one (candidate, seed) pair: every metric dict goes to ``tune.report``."""
    from ray import tune
    run_retrain(config["candidate"], context, tune.report, seed=config.get("seed"))


#: metrics a finished retrain run reports (read back from MLflow when Tune reruns a finished trial)
RETRAIN_FINAL_METRICS = ("valid_bleu", "valid_chrf", "test_bleu", "test_chrf", "params", "target_params",
                         "train_seconds", "train_steps", "tokens_per_s", "best_valid_nll", "decode_seconds",
                         "decode_sentences_per_s", "seed")


def describe_genotype(genotype_json: str) -> str:
    """The one-line architecture text of rankings and MLflow tags (bounded: tags hold 5,000 chars)."""
    from ..search.collapse import decoder_lacks_target_context
    genotype = Genotype.from_dict(json.loads(genotype_json))
    flag = " (decoder mixes no target positions)" if decoder_lacks_target_context(genotype) else ""
    return (genotype.describe() + flag)[:5000]


def retrain_key(label: str, seed: int) -> str:
    """The MLflow key of one (candidate, seed) retrain: a restarted trial finds its run again by it."""
    return f"retrain:{label}:seed{seed}"


def run_retrain(candidate: Dict[str, Any], context: Dict[str, Any],
                report: Callable[[Dict[str, Any]], None], seed: int = None,
                on_step: Optional[Callable[[int, float, float], None]] = None) -> Dict[str, Any]:
    """Train a candidate from scratch with one seed, score it with sacreBLEU on the validation set (what
    rankings and the registry decide on) and on the test set (reported only), log everything to its
    MLflow run. Used by the Tune trial and by ``revsearch retrain`` (which passes a printer as ``report``
    and a progress bar as ``on_step``, see ``Trainer``)."""
    from ..train.trainer import TrainConfig, Trainer, load_evaluated_weights
    from .scoring import score_retrained

    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    seed = int(context["seed"] if seed is None else seed)
    retrain = context["retrain"]
    label = candidate["label"]
    tracker = _tracker(context)
    tags = {KIND_TAG: "retrain", "revsearch.candidate": label, "revsearch.model_kind": candidate["kind"],
            "revsearch.seed": str(seed)}
    for key in ("search_trial_id", "search_run_id", "genotype_key"):
        if candidate.get(key):
            tags[f"revsearch.{key}"] = candidate[key]
    if candidate["kind"] != "baseline":  # random genotypes have no search run to describe them
        tags["revsearch.genotype_description"] = describe_genotype(candidate["genotype"])
    key = retrain_key(label, seed)
    done = _finished_run(tracker, key, context["parent_run_id"])
    if done is not None and "test_bleu" in done.data.metrics and "valid_bleu" in done.data.metrics:
        final = {k: v for k, v in done.data.metrics.items() if k in RETRAIN_FINAL_METRICS}
        final.update(label=label, seed=seed, mlflow_run_id=done.info.run_id,
                     bleu_signature=done.data.tags.get("revsearch.bleu_signature", ""),
                     checkpoint_path=done.data.tags.get("revsearch.checkpoint", ""))
        report(final)
        return final
    workers = int(context.get("workers", 1))
    device = trial_device(float(context.get("gpu", 0))) if workers == 1 else None
    run_id = tracker.start_run(f"retrain-{label}-seed{seed}", tags, parent=context["parent_run_id"], key=key)
    tracker.set_tags(run_id, placement_tags() | (device_tags(device) if workers == 1 else {}))
    status = "FAILED"
    try:
        prepared = PreparedData(**context["prepared"])
        if workers > 1:   # the workers encode the corpus and build the model; this process only counts
            from .data_prep import tokenizer_for
            vocab = tokenizer_for(prepared, candidate["vocab_size"], candidate["spm_model_type"]).vocab_size
            with torch.device("meta"):   # shapes only
                model, spec = build_retrain_model(candidate, vocab)
        else:
            data = encoded_data(prepared, candidate["vocab_size"], candidate["spm_model_type"], candidate["max_len"])
            torch.manual_seed(seed)
            model, spec = build_retrain_model(candidate, data.tokenizer.vocab_size)
        params = count_parameters(model)
        tracker.log_params(run_id, {"model": candidate["model"], "kind": candidate["kind"],
                                    "retrain": retrain, "params": params, "seed": seed})
        save_dir = os.path.join(context["run_dir"], "retrain", label, f"seed{seed}")
        train_config = TrainConfig(
            lr=retrain["lr"], warmup_steps=retrain["warmup_steps"], max_tokens=retrain["max_tokens"],
            label_smoothing=retrain["label_smoothing"],
            max_steps=retrain.get("steps"),
            time_budget_s=(retrain["budget_minutes"] * 60) if retrain.get("budget_minutes") else None,
            valid_every=retrain["validate_every"], log_every=max(1, retrain["validate_every"] // 4),
            average_last=retrain["average_last"], keep_last=max(retrain["average_last"], 2),
            save_dir=save_dir, resume=True, quiet=True, seed=seed,
            max_positions=candidate["max_len"], precision=retrain["precision"], device=str(device or "cpu"))

        # how long the training runs, for a progress view's time left (not logged to MLflow)
        extent = {k: v for k, v in (("total_steps", train_config.max_steps),
                                    ("budget_s", train_config.time_budget_s)) if v}

        def on_report(step: int, metrics: Dict[str, float]) -> None:
            tracker.log_metrics(run_id, metrics, step)
            report({k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {"step": step} | extent)

        if workers > 1:   # a Ray Train run of N workers (rank 0 logs into this run), then scoring in a
            # Ray task holding one worker's resources: this trial process holds none (stages.py)
            from .data_parallel_trial import run_retrain_workers, run_with_worker_resources
            from .scoring import score_candidate_task
            from .sweep import validate_sweep_dict
            sweep = validate_sweep_dict(context["sweep"], source=context.get("sweep_source", "sweep"))
            result = run_retrain_workers(sweep, context, candidate, seed, train_config, run_id, extent)
            checkpoint, validation, evaluation = run_with_worker_resources(
                sweep.resources, score_candidate_task, context, candidate, result)
        else:
            trainer = Trainer(model, data.train, data.valid, train_config,
                              spm_model=data.tokenizer.model_proto, model_spec=spec, on_report=on_report,
                              on_step=on_step)
            result = trainer.train()
            # average_last > 1: the average of the last k checkpoints is what is scored and registered
            checkpoint = load_evaluated_weights(model, result)
            # one decoder setting for both sets: validation decides, test only reports
            validation, evaluation = score_retrained(model, data, retrain, device)
        final = {"valid_bleu": validation.bleu, "valid_chrf": validation.chrf,
                 "test_bleu": evaluation.bleu, "test_chrf": evaluation.chrf, "params": params,
                 "train_seconds": result.elapsed_s, "train_steps": result.steps,
                 "tokens_per_s": result.tokens_per_s, "best_valid_nll": result.best_valid_nll,
                 "decode_seconds": validation.seconds + evaluation.seconds, "seed": seed,
                 # decoding speed of both sets together (cached beam search unless configured otherwise)
                 "decode_sentences_per_s": (validation.sentences + evaluation.sentences)
                 / max(validation.seconds + evaluation.seconds, 1e-9)}
        if candidate.get("target_params"):
            final["target_params"] = candidate["target_params"]
        tracker.log_metrics(run_id, final, result.steps)
        tracker.set_tags(run_id, {"revsearch.bleu_signature": evaluation.bleu_signature,
                                  "revsearch.chrf_signature": evaluation.chrf_signature,
                                  "revsearch.checkpoint": checkpoint,
                                  "revsearch.evaluated_weights": "avg" if "avg" in result.checkpoints else "best"})
        with tempfile.TemporaryDirectory() as directory:
            for name, ev in (("valid_hypotheses.txt", validation), ("test_hypotheses.txt", evaluation)):
                hyp = os.path.join(directory, name)
                with open(hyp, "w", encoding="utf-8") as f:
                    f.write("\n".join(ev.hypotheses) + "\n")
                tracker.log_artifact(run_id, hyp)
            if candidate["kind"] != "baseline":
                genotype = Genotype.from_dict(json.loads(candidate["genotype"]))
                tracker.log_artifact(run_id, plot_cell(genotype, os.path.join(directory, "derived_cell.png")))
                path = os.path.join(directory, "genotype.json")
                genotype.save(path)
                tracker.log_artifact(run_id, path)
        tracker.log_json(run_id, result.history, "training_curve.json")
        final = dict(final, label=label, mlflow_run_id=run_id, bleu_signature=evaluation.bleu_signature,
                     checkpoint_path=checkpoint)
        report(final)
        status = "FINISHED"
        return final
    except (KeyboardInterrupt, SystemExit):  # Tune stopping the trial, Ctrl-C or SIGTERM: resumable
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)
