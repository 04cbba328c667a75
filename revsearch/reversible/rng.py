"""Replayable randomness for recomputation.

Reconstruction calls every coupling function a second time during backward. If that function uses
dropout (or any other random op), the second call must draw exactly the same numbers as the first, or
the rebuilt input and the recomputed gradient are wrong. We record the generator state right before each
forward call and replay it inside ``torch.random.fork_rng`` so the global generator is left exactly where
it was: nothing is ever reseeded.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch


@dataclass(frozen=True)
class RNGState:
    """The CPU generator state plus the state of every CUDA device the call's tensors live on."""

    cpu: torch.Tensor
    cuda: dict = field(default_factory=dict)  # device index -> state tensor

    @staticmethod
    def capture(tensors: Iterable[Optional[torch.Tensor]]) -> "RNGState":
        cuda_devices = sorted({t.device.index for t in tensors
                               if isinstance(t, torch.Tensor) and t.is_cuda})
        cuda = {d: torch.cuda.get_rng_state(d) for d in cuda_devices}
        return RNGState(cpu=torch.get_rng_state(), cuda=cuda)

    @property
    def nbytes(self) -> int:
        return self.cpu.numel() + sum(s.numel() for s in self.cuda.values())


@contextlib.contextmanager
def replayed(state: Optional[RNGState]) -> Iterator[None]:
    """Run the body with the generators set to ``state``; restore the current state afterwards."""
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=list(state.cuda), enabled=True):
        torch.set_rng_state(state.cpu)
        for device, cuda_state in state.cuda.items():
            torch.cuda.set_rng_state(cuda_state, device)
        yield
