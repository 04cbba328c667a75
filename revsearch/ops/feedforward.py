"""Position-wise ops: ``ffn`` and ``glu`` (learned), ``zero`` and ``identity`` (parameter-free).

None of them mixes time steps, so causality holds by construction and padding can only affect pad
positions themselves; those are still zeroed on the way in and out so every op obeys the same contract
(see ``base.py``).
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_inputs, zero_pads
from .dropout import Dropout
from .incremental import stateless_step


class FeedForward(nn.Module):
    """The Transformer FFN: ``Linear(dim, m*dim) -> ReLU -> dropout -> Linear(m*dim, dim)``."""

    step = stateless_step   # position-wise: incremental decoding keeps nothing

    def __init__(self, dim: int, multiplier: int = 4, dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, multiplier * dim)
        self.fc2 = nn.Linear(multiplier * dim, dim)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(h, self.dim, pad_mask)
        x = self.dropout(F.relu(self.fc1(zero_pads(h, pad_mask))))
        return zero_pads(self.fc2(x), pad_mask)


class GatedLinearUnit(nn.Module):
    """``GLU(Linear(dim, 2*dim))``: half the projection gates the other half (Dauphin et al. 2017)."""

    step = stateless_step

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, 2 * dim)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(h, self.dim, pad_mask)
        return zero_pads(F.glu(self.proj(zero_pads(h, pad_mask)), dim=-1), pad_mask)


class Zero(nn.Module):
    """The ``zero`` op: all zeros, but still a function of ``h``.

    Returned as ``h * 0.0`` (after zeroing pads, so inf/NaN in padding cannot turn into NaN) rather than
    ``torch.zeros_like(h)``: the result stays in the autograd graph, so a node or reversible coupling
    whose only op is ``zero`` still produces an output that requires grad, which custom autograd
    functions in the engine rely on. Its gradient to ``h`` is exactly 0.
    """

    step = stateless_step

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        return zero_pads(h, pad_mask) * 0.0


class Identity(nn.Module):
    """The ``identity`` op (a skip connection): ``h`` with pad positions zeroed."""

    step = stateless_step

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        return zero_pads(h, pad_mask)
