"""What a search trial builds and reports, shared by the one-process trial (trainables.py) and the
workers of a data-parallel trial (data_parallel_trial.py): the loop, the report, where it runs."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional

import torch

from ..models.split_seq2seq import SplitSeq2SeqConfig
from ..search import BilevelSearch, Genotype, Supernet, SupernetConfig, build_derived_model
from ..search.loop import SearchData, SearchLoop
from .data_prep import PreparedData, encoded_data, search_split

STATE_FILE = "search_state.pt"
#: the outcome, also in the last checkpoint: what a data-parallel trial reads without building the supernet
GENOTYPE_FILE, TRAJECTORY_FILE = "genotype.json", "alpha_trajectory.pt"


def placement_tags() -> Dict[str, str]:
    """Where this process runs: host, and the Ray node when inside a Ray worker. Set again whenever a
    trial (re)starts, so a trial Tune restarted on another node shows where it finished."""
    import socket
    tags = {"revsearch.host": socket.gethostname(), "revsearch.pid": str(os.getpid())}
    try:
        import ray
        if ray.is_initialized():
            context = ray.get_runtime_context()
            tags["revsearch.ray_node_id"] = context.get_node_id()
            tags["revsearch.ray_node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - placement is informative only; never fail a trial for it
        pass
    return tags


def trial_device(gpu: float) -> Optional[torch.device]:
    """Where a one-process trial (or a Ray task holding one worker's resources) computes: the GPU Ray
    gave it when the sweep asks for ``gpu > 0`` and this torch has CUDA, else None (the CPU). Ray sets
    ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned, so inside the process that GPU is ``cuda:0``."""
    if gpu > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return None


def device_tags(device: Optional[torch.device]) -> Dict[str, str]:
    """The trial run's ``revsearch.device`` tag (and the GPU's name), so a run that asked for a GPU and
    fell back to the CPU (a CPU-only torch on the node) says so."""
    if device is None or device.type != "cuda":
        return {"revsearch.device": "cpu"}
    return {"revsearch.device": str(device), "revsearch.gpu_name": torch.cuda.get_device_name(device)}


def derived_param_count(genotype: Genotype, model_config: SplitSeq2SeqConfig) -> int:
    with torch.device("meta"):  # count without allocating
        model = build_derived_model(genotype, model_config)
    return sum(p.numel() for p in model.parameters())


def build_search_loop(sweep, settings, context: Dict[str, Any], parallel=None, device=None):
    """The trial's search: data, supernet and loop (``parallel``: this process is one data-parallel
    worker, learning/data_parallel.py; ``device``: where the supernet goes, None: CPU). Returns the loop,
    the data and the derived models' config."""
    prepared = PreparedData(**context["prepared"])
    data = encoded_data(prepared, settings.data["vocab_size"], settings.data["spm_model_type"],
                        settings.data["max_len"])
    weight, arch = search_split(data, settings.data["arch_fraction"], sweep.seed)
    torch.manual_seed(sweep.seed)
    supernet_config = SupernetConfig(vocab_size=data.tokenizer.vocab_size, **settings.supernet)
    net = Supernet(supernet_config)
    if device is not None:
        net.to(device)
    loop = SearchLoop(BilevelSearch(net, settings.search, parallel=parallel),
                      SearchData(weight, arch, data.valid, settings.data["max_tokens"], sweep.seed),
                      valid_batches=settings.valid_batches)
    derived_config = SplitSeq2SeqConfig(**{k: v for k, v in asdict(supernet_config).items()
                                           if k in SplitSeq2SeqConfig.__dataclass_fields__})
    return loop, data, derived_config


def search_result(loop: SearchLoop, metrics: Dict[str, float], derived_config, start: float,
                  run_id: str, total_steps: int):
    """(metrics to log, the Tune result) of one search report."""
    genotype = loop.genotype()
    metrics = dict(metrics, params=derived_param_count(genotype, derived_config),
                   trial_wall_seconds=time.perf_counter() - start)
    return metrics, dict(metrics, genotype=genotype.to_json(), genotype_key=genotype.key(),
                         mlflow_run_id=run_id, total_steps=total_steps)   # total: the live view's ETA


def log_new_steps(tracker, run_id: str) -> Callable:
    """``tracker.log_metrics`` for the steps the run has not logged yet. A trial resumed from a checkpoint
    older than its last report (a worker or driver killed between the checkpoint's write and its
    registration) runs those steps again and reports the same values, since the resume replays them
    exactly; logging them again would draw each such step twice in MLflow."""
    through = max((m.step for m in tracker.client.get_metric_history(run_id, "valid_loss")), default=0)

    def log(run: str, metrics: Dict[str, float], step: int) -> None:
        if step > through:
            tracker.log_metrics(run, metrics, step)
    return log


def report_search(step: int, metrics: Dict[str, float], loop: SearchLoop, settings, derived_config,
                  start: float, run_id: str, log_metrics: Optional[Callable], report: Callable,
                  checkpoint_class, attach_checkpoint: bool = True) -> None:
    """One search report of a trial: log the metrics to its MLflow run (``log_metrics``; None on the
    workers that do not log) and report the result (``tune.report`` in a one-process trial,
    ``ray.train.report`` on a data-parallel worker) with the loop's state attached as a checkpoint every
    ``checkpoint_every`` steps and at the end (``attach_checkpoint``: only rank 0 of a Train run writes)."""
    metrics, result = search_result(loop, metrics, derived_config, start, run_id, settings.steps)
    if log_metrics is not None:
        log_metrics(run_id, metrics, step)
    keep = step % settings.checkpoint_every == 0 or step == settings.steps
    if not (keep and attach_checkpoint):
        report(result)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(loop.state_dict(), os.path.join(directory, STATE_FILE))
        if step == settings.steps:
            with open(os.path.join(directory, GENOTYPE_FILE), "w", encoding="utf-8") as f:
                f.write(result["genotype"])
            torch.save(loop.trajectory.state_dict(), os.path.join(directory, TRAJECTORY_FILE))
        report(result, checkpoint=checkpoint_class.from_directory(directory))


def read_search_outcome(directory: str):
    """(genotype, α trajectory) from a search's last checkpoint directory (``report_search``)."""
    import json
    from ..search import Genotype
    from ..search.trajectory import AlphaTrajectory
    path = os.path.join(directory, GENOTYPE_FILE)
    with open(path, encoding="utf-8") as f:
        genotype = Genotype.from_dict(json.load(f), source=path)
    trajectory = AlphaTrajectory()
    trajectory.load_state_dict(torch.load(os.path.join(directory, TRAJECTORY_FILE), map_location="cpu",
                                                  weights_only=True))
    return genotype, trajectory
