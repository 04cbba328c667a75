"""A trial on N workers (``resources.workers: N > 1``): the Tune trial launches a Ray Train
``TorchTrainer`` (Ray 2.60, Train V2) whose workers run the data-parallel search
(learning/data_parallel.py: token-weighted all-reduce, sharded global batches, per-shard RNG streams).

* The Tune trial keeps its MLflow child run (one per trial, opened before the Train run starts); rank 0
  logs the metrics into it by run id, the other workers log nothing.
* Every worker calls ``ray.train.report`` at each report (Train V2 requires all of them); rank 0 attaches
  the checkpoint. ``TuneReportCallback`` forwards rank 0's metrics to the Tune trial.
* The Train run is named after the trial and stored under the sweep's run directory: a worker that dies
  restarts the worker group from the last checkpoint (``FailureConfig``), and a Tune trial that restarts
  (driver killed, ``--resume``) starts a Train run of the same name, which Train V2 restores from its
  storage; the stream positions in the checkpoint do not depend on the worker count.
* gloo on CPU, NCCL when the workers have GPUs. ``workers: 1`` never comes here.
* What the trial does after its Train run (a search trial's proxy retrain, a retrain trial's decoding and
  scoring) runs in a Ray task asking for one worker's ``cpu``/``gpu`` (``run_with_worker_resources``):
  the trial process itself holds almost nothing (stages.py), and the Train workers have released theirs.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict

import torch

from .search_trial import GENOTYPE_FILE, STATE_FILE, read_search_outcome


def scaling(sweep):
    """Ray Train's scaling of a trial's workers, and the torch.distributed backend."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig
    r = sweep.resources
    resources = {"CPU": float(r.cpu)} | ({"GPU": float(r.gpu)} if r.gpu else {})
    return (ScalingConfig(num_workers=int(r.workers), use_gpu=r.gpu > 0, resources_per_worker=resources),
            TorchConfig(backend="nccl" if r.gpu > 0 else "gloo"))   # workers with a GPU hold CUDA tensors


def run_with_worker_resources(resources, fn, *args):
    """``fn(*args)`` in a Ray task holding one worker's ``cpu``/``gpu``, and its return value. The task is
    scheduled outside the trial's placement group: Tune makes a trial's child tasks inherit its group,
    whose only bundle is the trial function's token request, and Ray refuses a CPU task there
    (ValueError: no bundle fits)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    task = ray.remote(fn).options(
        num_cpus=float(resources.cpu), num_gpus=float(resources.gpu), max_retries=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    return ray.get(task.remote(*args))


def tag_workers(tracker, run_id: str, parallel, device=None) -> None:
    """Every worker's placement and device gathered to rank 0, which tags the trial's run with where
    they ran."""
    import torch.distributed as dist
    from .search_trial import placement_tags
    gathered = [None] * parallel.num_shards
    dist.all_gather_object(gathered, placement_tags() | {"revsearch.device": str(device or "cpu")})
    if tracker is not None:
        where = [t.get("revsearch.ray_node_ip") or t["revsearch.host"] for t in gathered]
        # 1 + the restarts of the worker group after a lost worker (Ray Train's FailureConfig)
        starts = int(tracker.client.get_run(run_id).data.tags.get("revsearch.worker_group_starts", "0")) + 1
        tracker.set_tags(run_id, {"revsearch.worker_group_starts": str(starts),
                                  "revsearch.workers": str(parallel.num_shards),
                                  "revsearch.worker_nodes": ",".join(where),
                                  "revsearch.worker_devices": ",".join(t["revsearch.device"] for t in gathered),
                                  "revsearch.worker_node_ids": ",".join(t.get("revsearch.ray_node_id", "")
                                                                        for t in gathered)})


def run_search_workers(sweep, config: Dict[str, Any], context: Dict[str, Any], run_id: str,
                       trial_id: str):
    """Run the trial's search on ``sweep.resources.workers`` workers; returns its (genotype, α trajectory),
    read from the last checkpoint, so the trial process never builds the supernet."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    scaling_config, torch_config = scaling(sweep)
    trainer = TorchTrainer(
        search_worker,
        train_loop_config={"config": config, "context": context, "run_id": run_id},
        scaling_config=scaling_config, torch_config=torch_config,
        run_config=ray.train.RunConfig(
            name=f"search-{trial_id}", storage_path=os.path.join(context["run_dir"], "train_runs"),
            failure_config=ray.train.FailureConfig(max_failures=2),   # as the Tune trials (stages.py)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()]))
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        return read_search_outcome(directory)


def search_worker(train_config: Dict[str, Any]) -> None:
    """One worker of a trial's search (runs inside a Ray Train worker, process group initialised)."""
    import ray.train
    from ..learning.data_parallel import DataParallel
    from .space import resolve_trial
    from .sweep import validate_sweep_dict
    from .search_trial import build_search_loop, log_new_steps, report_search
    from .tracking import Tracker

    context, run_id = train_config["context"], train_config["run_id"]
    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    sweep = validate_sweep_dict(context["sweep"], source=context.get("sweep_source", "sweep"))
    settings = resolve_trial(sweep, dict(train_config["config"]))
    device = None
    if sweep.resources.gpu > 0 and torch.cuda.is_available():   # NCCL reduces CUDA tensors
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    parallel = DataParallel.worker(sweep.seed)
    loop, _, derived_config = build_search_loop(sweep, settings, context, parallel, device)
    checkpoint = ray.train.get_checkpoint()
    outcome_saved = False
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            # map_location: rank 0 saved tensors of its cuda:0; every worker loads onto the CPU first and
            # load_state_dict copies to its own device
            loop.load_state_dict(torch.load(os.path.join(directory, STATE_FILE), map_location="cpu",
                                            weights_only=True))
            outcome_saved = os.path.isfile(os.path.join(directory, GENOTYPE_FILE))
    tracker = Tracker(context["tracking_uri"], context["experiment"], context.get("artifact_root")) \
        if parallel.is_writer else None
    tag_workers(tracker, run_id, parallel, device)
    if tracker is not None:
        tracker.set_tags(run_id, {"revsearch.supernet_params": sum(p.numel() for p in loop.model.parameters())}
                         | ({"revsearch.resumed_at_step": str(loop.step)} if checkpoint is not None else {}))
    start = time.perf_counter()
    log = log_new_steps(tracker, run_id) if tracker is not None else None   # rank 0 logs

    def on_report(step: int, metrics: Dict[str, float], loop) -> None:
        # Train V2 wants every worker's report; only rank 0 logs and attaches the checkpoint
        report_search(step, metrics, loop, settings, derived_config, start, run_id, log, ray.train.report,
                      ray.train.Checkpoint, attach_checkpoint=parallel.is_writer)

    if loop.step < settings.steps:
        loop.run(settings.steps, settings.report_every, on_report)
    elif not outcome_saved:   # a finished search checkpointed without its outcome files (an older revsearch)
        report_search(loop.step, loop.metrics(), loop, settings, derived_config, start, run_id, None,
                      ray.train.report, ray.train.Checkpoint, attach_checkpoint=parallel.is_writer)


# ----------------------------------------------------------------------------------------- retrain
RESULT_FILE = "train_result.json"


def run_retrain_workers(sweep, context: Dict[str, Any], candidate: Dict[str, Any], seed: int,
                        train_config, run_id: str, extent: Dict[str, float]):
    """Train one retrain candidate on ``sweep.resources.workers`` workers; returns the ``TrainResult``.
    The Trainer's own checkpoint files (``train_config.save_dir``, written by rank 0, read by every
    worker on resume) are what a restarted worker group continues from."""
    import json
    from dataclasses import asdict
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    from ..train.trainer import TrainResult

    scaling_config, torch_config = scaling(sweep)
    trainer = TorchTrainer(
        retrain_worker,
        train_loop_config={"context": context, "candidate": candidate, "seed": seed,
                           "train_config": asdict(train_config), "run_id": run_id, "extent": extent,
                           "use_gpu": sweep.resources.gpu > 0},
        scaling_config=scaling_config, torch_config=torch_config,
        run_config=ray.train.RunConfig(
            name=f"retrain-{candidate['label']}-seed{seed}",
            storage_path=os.path.join(context["run_dir"], "train_runs"),
            failure_config=ray.train.FailureConfig(max_failures=2), callbacks=[TuneReportCallback()]))
    trainer.fit()
    with open(os.path.join(train_config.save_dir, RESULT_FILE), encoding="utf-8") as f:
        return TrainResult(**json.load(f))


def retrain_worker(train_loop_config: Dict[str, Any]) -> None:
    """One worker of a retrain trial (inside a Ray Train worker, process group initialised)."""
    import json
    from dataclasses import asdict
    import ray.train
    from ..learning.data_parallel import DataParallel
    from ..train.trainer import TrainConfig, Trainer
    from .candidates import build_retrain_model
    from .data_prep import PreparedData, encoded_data
    from .tracking import Tracker

    cfg = train_loop_config
    context, candidate, seed, run_id = cfg["context"], cfg["candidate"], int(cfg["seed"]), cfg["run_id"]
    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    prepared = PreparedData(**context["prepared"])
    data = encoded_data(prepared, candidate["vocab_size"], candidate["spm_model_type"], candidate["max_len"])
    torch.manual_seed(seed)
    model, spec = build_retrain_model(candidate, data.tokenizer.vocab_size)
    train_config = dict(cfg["train_config"])
    if cfg["use_gpu"] and torch.cuda.is_available():   # NCCL reduces CUDA tensors
        train_config["device"] = str(ray.train.torch.get_device())
        torch.cuda.set_device(ray.train.torch.get_device())
    parallel = DataParallel.worker(seed)
    tracker = Tracker(context["tracking_uri"], context["experiment"], context.get("artifact_root")) \
        if parallel.is_writer else None
    tag_workers(tracker, run_id, parallel, train_config.get("device"))

    def on_report(step: int, metrics: Dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_metrics(run_id, metrics, step)
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                         | {"step": step} | cfg["extent"])

    trainer = Trainer(model, data.train, data.valid, TrainConfig(**train_config),
                      spm_model=data.tokenizer.model_proto, model_spec=spec, on_report=on_report,
                      parallel=parallel)
    result = trainer.train()
    if parallel.is_writer:
        path = os.path.join(train_config["save_dir"], RESULT_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(asdict(result), f)
        os.replace(path + ".tmp", path)
