"""Running a search: endless batch streams over the two halves of the training data, the bilevel step,
periodic validation and metrics, and a complete, resumable state.

This is what one Ray Tune trial does, minus Tune: the orchestration layer passes ``on_report`` and
``on_checkpoint`` callbacks. Everything needed to continue bit-for-bit (weights, α, both optimizers,
stream positions, RNG, the α trajectory) is in ``state_dict()`` and holds only tensors and plain
containers, so it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.batching import Batch, EncodedPair, collate, make_batches, shard_batch
from ..learning import sequence_loss
from .bilevel import BilevelSearch
from .collapse import collapse_metrics
from .genotype import derive_genotype
from .trajectory import AlphaTrajectory


class BatchStream:
    """An endless, deterministic stream of token-count batches; its position is its whole state."""

    def __init__(self, examples: Sequence[EncodedPair], max_tokens: int, seed: int):
        if not examples:
            raise ValueError("a batch stream needs at least one example")
        self.examples, self.max_tokens, self.seed = examples, max_tokens, seed
        self.epoch, self.position = 0, 0
        self._batches: Optional[List[List[int]]] = None

    def _epoch_batches(self) -> List[List[int]]:
        if self._batches is None:
            self._batches = make_batches(self.examples, self.max_tokens, seed=self.seed, epoch=self.epoch)
        return self._batches

    def next_indices(self) -> List[int]:
        batches = self._epoch_batches()
        if self.position >= len(batches):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
            batches = self._epoch_batches()
        indices = batches[self.position]
        self.position += 1
        return indices

    def next(self) -> Batch:
        return collate(self.examples, self.next_indices())

    def next_shards(self, num_shards: int, local_shards: Sequence[int],
                    device: Optional[torch.device] = None) -> List[Tuple[int, Batch]]:
        """Data-parallel: the next global batch cut into ``num_shards`` token-balanced shards, and of
        those the non-empty ones in ``local_shards`` as ``(shard index, batch)`` on ``device`` (each
        batch keeps the token count ``collate`` took on the host). The stream advances by one global
        batch whatever the worker count, so its position resumes with any."""
        shards = shard_batch(self.examples, self.next_indices(), num_shards)
        return [(k, collate(self.examples, shards[k]).to(device or "cpu")) for k in local_shards if shards[k]]

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None


@dataclass
class SearchData:
    weight: Sequence[EncodedPair]   # θ steps
    arch: Sequence[EncodedPair]     # α steps (disjoint from weight)
    valid: Sequence[EncodedPair]
    max_tokens: int = 2048
    seed: int = 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class SearchLoop:
    def __init__(self, search: BilevelSearch, data: SearchData, valid_batches: int = 4):
        self.search, self.model = search, search.model
        # where the batches go: the model's device (a trial's GPU when it has one, else the CPU)
        self.device = next(iter(search.model.parameters())).device
        self.weight_stream = BatchStream(data.weight, data.max_tokens, data.seed)
        self.arch_stream = BatchStream(data.arch, data.max_tokens, data.seed + 1)
        self.valid = data.valid
        self.valid_batch_indices = make_batches(data.valid, data.max_tokens, shuffle=False)[:valid_batches]
        self.step = 0
        self.step_seconds = 0.0  # time spent inside search steps (for the orchestration overhead)
        self._window: List[Dict[str, float]] = []
        self.trajectory = AlphaTrajectory()  # softmax(α) at every report

    @torch.no_grad()
    def validate(self) -> float:
        """Per-token cross-entropy (no smoothing) of the supernet on the first validation batches."""
        self.model.eval()
        total, count = 0.0, 0
        for indices in self.valid_batch_indices:
            b = collate(self.valid, indices).to(self.device)
            n = b.num_tokens   # counted on the host by collate
            total += float(sequence_loss(self.model(b.src, b.tgt_in), b.tgt_out, 0.0)) * n
            count += n
        self.model.train()
        return total / max(count, 1)

    def metrics(self) -> Dict[str, float]:
        window = self._window or [{"train_loss": math.nan, "arch_loss": math.nan, "seconds": 0.0}]
        seconds = sum(w["seconds"] for w in window)
        # warm-up steps have no architecture loss (NaN); average the steps that have one
        arch = [w["arch_loss"] for w in window if not math.isnan(w["arch_loss"])]
        metrics = {
            "step": self.step,
            "train_loss": sum(w["train_loss"] for w in window) / len(window),
            "arch_loss": sum(arch) / len(arch) if arch else math.nan,
            "valid_loss": self.validate(),
            "alpha_entropy": self.model.alpha_entropy(),
            **collapse_metrics(self.genotype()),
            "steps_per_s": len(self._window) / seconds if seconds > 0 else 0.0,
            "lr": self.search.current_lr(),
            "search_seconds": self.step_seconds,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        if torch.cuda.is_available():
            metrics["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        self._window = []
        return metrics

    def run(self, steps: int, report_every: int,
            on_report: Callable[[int, Dict[str, float], "SearchLoop"], None] = lambda *a: None) -> None:
        """Run until ``self.step == steps``; ``on_report(step, metrics, loop)`` every ``report_every``."""
        par = self.search.parallel
        while self.step < steps:
            if par is None:
                weight, arch = self.weight_stream.next().to(self.device), self.arch_stream.next().to(self.device)
                batches = (weight.src, weight.tgt_in, weight.tgt_out), (arch.src, arch.tgt_in, arch.tgt_out)
            else:   # this worker's shards of the two global batches (learning/data_parallel.py)
                batches = (self.weight_stream.next_shards(par.num_shards, par.local_shards, self.device),
                           self.arch_stream.next_shards(par.num_shards, par.local_shards, self.device))
            start = time.perf_counter()
            out = self.search.step(*batches)
            seconds = time.perf_counter() - start
            self.step_seconds += seconds
            self.step += 1
            self._window.append(dict(out, seconds=seconds))
            if self.step % report_every == 0 or self.step == steps:
                self.trajectory.record(self.step, self.model)  # before on_report: its checkpoint has it
                on_report(self.step, self.metrics(), self)

    def genotype(self):
        return derive_genotype(self.model, allow_zero=self.search.config.derive_allow_zero)

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        state = {"model": self.model.state_dict(),
                 "weight_optimizer": self.search.weight_optimizer.state_dict(),
                 "alpha_optimizer": self.search.alpha_optimizer.state_dict(),
                 "search_step_count": self.search.step_count,
                 "step": self.step, "step_seconds": self.step_seconds,
                 "weight_stream": self.weight_stream.state_dict(),
                 "arch_stream": self.arch_stream.state_dict(),
                 "alpha_trajectory": self.trajectory.state_dict(),
                 "rng": torch.get_rng_state()}
        if self.device.type == "cuda":   # dropout on a GPU draws from its own generator
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.search.loss_scale.enabled:  # fp16 only: the dynamic loss scale continues where it was
            state["loss_scale"] = self.search.loss_scale.state_dict()
        return state

    def load_state_dict(self, state: Dict) -> None:
        self.model.load_state_dict(state["model"])
        self.search.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.search.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.search.step_count = int(state["search_step_count"])
        self.step, self.step_seconds = int(state["step"]), float(state["step_seconds"])
        self.weight_stream.load_state_dict(state["weight_stream"])
        self.arch_stream.load_state_dict(state["arch_stream"])
        self.trajectory = AlphaTrajectory()
        if "alpha_trajectory" in state:  # checkpoints written before trajectories were kept have none
            self.trajectory.load_state_dict(state["alpha_trajectory"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if "loss_scale" in state and self.search.loss_scale.enabled:
            self.search.loss_scale.load_state_dict(state["loss_scale"])
