"""Data-parallel steps that equal the one-process step (docs/method.md, "Data-parallel steps").

The search and the retraining take their gradients with ``torch.autograd.grad`` and freeze one parameter
group per step, which ``DistributedDataParallel`` does not see; so the synchronisation is explicit here:

* every global batch is cut into ``num_shards`` token-balanced shards (``data.batching.shard_batch``);
  worker k computes shard k;
* each shard's loss is its *summed* token loss divided by the *global* token count (an all-reduce of the
  workers' counts), so the sum over workers of the shard gradients is exactly the gradient of the
  one-process per-token loss over the whole global batch;
* ``TokenWeightedSync.reduce`` all-reduces (SUM) every gradient in one flat buffer per dtype before it is
  used, so clipping, the finite-difference norm of second-order DARTS and Adam see the same numbers on
  every worker and the parameters never drift apart;
* dropout draws from one random stream per shard (``ShardRNG``), seeded from (seed, step, shard): the
  one-process reference, which runs all shards of the global batch one after the other and accumulates
  their gradients, draws exactly the masks the workers draw.

With one process and ``DataParallel.reference(n, seed)`` the same code runs all n shards locally; that is
the reference the two-process tests compare against (tests/test_data_parallel.py).
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError


class TokenWeightedSync:
    """The collective operations of one trial's workers; for one process every operation is the identity
    (no process group is touched)."""

    def __init__(self, group: Optional[object] = None):
        self.group = group
        active = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(group) if active else 1
        self.rank = dist.get_rank(group) if active else 0
        self.distributed = self.world_size > 1

    def global_tokens(self, *counts: int) -> Tuple[int, ...]:
        """The sums over all workers of this worker's token counts (one all-reduce for all of them)."""
        if not self.distributed:
            return tuple(int(c) for c in counts)
        t = torch.tensor([int(c) for c in counts], dtype=torch.int64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return tuple(int(c) for c in t.tolist())

    @staticmethod
    def mean_loss(loss_sum: Tensor, global_tokens: int) -> Tensor:
        """A shard's contribution to the global per-token loss."""
        return loss_sum / max(int(global_tokens), 1)

    def reduce(self, grads: Sequence[Optional[Tensor]], like: Sequence[Tensor],
               extras: Sequence[Tensor] = ()) -> Tuple[List[Optional[Tensor]], List[Tensor]]:
        """All-reduce (SUM) gradients and a few scalars (loss sums) in one flat buffer per dtype.

        ``like[i]`` gives the shape and dtype of ``grads[i]``. A gradient that is None on every worker
        stays None (the optimizer then skips that parameter, as it would in one process); a presence flag
        travels with each gradient for that."""
        if not self.distributed:
            return list(grads), list(extras)
        groups: Dict[torch.dtype, List[int]] = {}
        for i, p in enumerate(like):
            groups.setdefault(p.dtype, []).append(i)
        extra_dtype = next(iter(groups), torch.float64)
        groups.setdefault(extra_dtype, [])
        out: List[Optional[Tensor]] = [None] * len(grads)
        reduced_extras: List[Tensor] = []
        for dtype, members in groups.items():
            parts = [(grads[i] if grads[i] is not None else torch.zeros_like(like[i])).reshape(-1)
                     for i in members]
            device = like[members[0]].device if members else self._device()
            flags = torch.tensor([0.0 if grads[i] is None else 1.0 for i in members], dtype=dtype, device=device)
            tail = [e.detach().to(device=device, dtype=dtype).reshape(1) for e in extras] \
                if dtype == extra_dtype else []
            flat = torch.cat(parts + [flags] + tail)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            offset = 0
            for i in members:
                n = like[i].numel()
                out[i] = flat[offset:offset + n].view_as(like[i])
                offset += n
            present = flat[offset:offset + len(members)].tolist()
            offset += len(members)
            for i, flag in zip(members, present):
                if flag == 0.0:
                    out[i] = None
            if tail:
                reduced_extras = [flat[offset + j].to(extras[j].dtype) for j in range(len(extras))]
        return out, reduced_extras

    def broadcast_parameters(self, params: Sequence[Tensor]) -> None:
        """Start every worker from rank 0's parameters (initialisation is seeded, this makes it certain)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0, group=self.group)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)

    def _device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo takes CPU tensors (and CUDA ones, staged)
        backend = dist.get_backend(self.group) if self.distributed else "gloo"
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of shard ``shard``'s random stream at step ``step`` (a hash: neighbouring seeds, steps
    and shards give unrelated streams)."""
    digest = hashlib.sha256(f"revsearch-shard:{seed}:{step}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ShardRNG:
    """One random stream per shard within a step. ``begin(step, shards)`` seeds them from (seed, step,
    shard); ``active(k)`` makes stream k torch's global generator (CPU and the CUDA device in use) for
    the body and keeps its position for the next forward pass on shard k, leaving the outer generator
    where it was. The reversible engine records the generator state before each coupling function and
    replays it in ``fork_rng`` during the backward pass, so it replays exactly the shard stream's masks."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._states: Dict[int, Tuple[Tensor, Optional[Tensor]]] = {}

    @staticmethod
    def _cuda_device() -> Optional[int]:
        return torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def begin(self, step: int, shards: Sequence[int]) -> None:
        device = self._cuda_device()
        self._states = {}
        with torch.random.fork_rng(devices=[] if device is None else [device]):
            for k in shards:
                torch.manual_seed(shard_seed(self.seed, step, k))
                self._states[k] = (torch.get_rng_state(),
                                   None if device is None else torch.cuda.get_rng_state(device))

    @contextlib.contextmanager
    def active(self, shard: int) -> Iterator[None]:
        if shard not in self._states:
            raise RuntimeError(f"shard {shard} has no random stream this step (call begin first)")
        device = self._cuda_device()
        cpu, cuda = self._states[shard]
        with torch.random.fork_rng(devices=[] if device is None else [device]):
            torch.set_rng_state(cpu)
            if cuda is not None and device is not None:
                torch.cuda.set_rng_state(cuda, device)
            yield
            self._states[shard] = (torch.get_rng_state(),
                                   None if device is None else torch.cuda.get_rng_state(device))


@dataclass
class DataParallel:
    """How one process takes part in a data-parallel step: the number of shards each global batch is cut
    into, which of them this process computes, the collectives, and the seed of the shard streams."""

    num_shards: int
    local_shards: Tuple[int, ...]
    seed: int = 0
    sync: TokenWeightedSync = field(default_factory=TokenWeightedSync)

    def __post_init__(self) -> None:
        if self.num_shards < 1 or not self.local_shards or \
                not all(0 <= k < self.num_shards for k in self.local_shards):
            raise ConfigError(f"data parallel: local shards {self.local_shards!r} must be in "
                              f"[0, {self.num_shards})")
        self.local_shards = tuple(int(k) for k in self.local_shards)
        self.rng = ShardRNG(self.seed)

    @staticmethod
    def worker(seed: int, group: Optional[object] = None) -> "DataParallel":
        """This process is one worker of an initialised process group: shard = rank."""
        sync = TokenWeightedSync(group)
        return DataParallel(num_shards=sync.world_size, local_shards=(sync.rank,), seed=seed, sync=sync)

    @staticmethod
    def reference(num_shards: int, seed: int) -> "DataParallel":
        """One process computing all shards of every global batch: what ``num_shards`` workers compute."""
        return DataParallel(num_shards=num_shards, local_shards=tuple(range(num_shards)), seed=seed,
                            sync=_Identity())

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints and logs."""
        return self.sync.rank == 0


class _Identity(TokenWeightedSync):
    """The one-process sync even inside an initialised process group (the reference run of a test)."""

    def __init__(self):
        self.group, self.world_size, self.rank, self.distributed = None, 1, 0, False


def accumulate(total: List[Optional[Tensor]], grads: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Gradient accumulation over shards: None is "no contribution"."""
    return [g if t is None else (t if g is None else t + g) for t, g in zip(total, grads)]
