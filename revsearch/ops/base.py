"""Plumbing shared by every candidate operation: the call signature, padding and attention masks.

Every op is called as ``op(h, pad_mask=None, memory=None, memory_pad_mask=None)``:

* ``h``: ``float[B, T, dim]``, the pooled node input;
* ``pad_mask``: ``bool[B, T]``, True at padding positions, or None (no padding);
* ``memory``: ``float[B, S, memory_dim]``, the encoder output (read only by cross-attention);
* ``memory_pad_mask``: ``bool[B, S]``, True at memory padding positions, or None.

The output has ``h``'s shape, is exactly 0 at pad positions and never depends on the inputs at pad
positions. The reason for the strictness: inside the reversible engine an op's output is *added* to a
split (``Y_k = X_k + G_k``) and later *subtracted* again to rebuild ``X_k``. Garbage leaking from padding
would not break reversibility, but it would make the searched architecture depend on batch composition
(how much padding a sentence happens to get), and a uniform "pads are zero in, zero out" rule is the
cheapest way to rule that out everywhere.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def zero_pads(x: Tensor, pad_mask: Optional[Tensor]) -> Tensor:
    """``x`` with the time steps marked True in ``pad_mask`` set to exactly 0 (``x``: [B, T, ...]).

    ``masked_fill`` (not multiplication) so that inf/NaN sitting in padding cannot survive as NaN, and
    so that the gradient flowing into padding positions is exactly 0.
    """
    if pad_mask is None:
        return x
    if x.device.type == "cpu" and pad_mask.dim() == 2 and x.dim() >= 2 and x.shape[:2] == pad_mask.shape:
        # on CPU a broadcast masked_fill costs ~4x an index_fill of the pad rows ([8, 64, 128]: 33 µs vs
        # 8-10 µs); both set the rows to exactly 0 and pass exactly 0 gradient into them
        rows = pad_mask.reshape(-1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return x
        return x.reshape(pad_mask.numel(), -1).index_fill(0, rows, 0.0).view(x.shape)
    mask = pad_mask.reshape(pad_mask.shape + (1,) * (x.dim() - pad_mask.dim()))
    return x.masked_fill(mask, 0.0)


def check_inputs(h: Tensor, dim: int, pad_mask: Optional[Tensor]) -> None:
    """Fail with a readable message on the two mistakes that otherwise surface as obscure matmul errors."""
    if h.dim() != 3 or h.shape[-1] != dim:
        raise ValueError(f"op expects h of shape [B, T, {dim}], got {tuple(h.shape)}")
    if pad_mask is not None and (pad_mask.shape != h.shape[:2] or pad_mask.dtype != torch.bool):
        raise ValueError(f"pad_mask must be bool[{h.shape[0]}, {h.shape[1]}], "
                         f"got {pad_mask.dtype}{list(pad_mask.shape)}")


def resolve_heads(dim: int, heads: int) -> int:
    """The largest head count ``<= heads`` that divides ``dim``.

    Split widths in the reversible network are ``d / n`` (e.g. 960 / 3 = 320, or odd numbers in small
    sweeps), so a fixed 8 heads does not always divide the width; degrading to fewer heads keeps every
    op buildable for every width instead of making some (width, splits) combinations illegal.
    """
    if dim < 1 or heads < 1:
        raise ValueError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
    for h in range(min(heads, dim), 0, -1):
        if dim % h == 0:
            return h
    return 1  # unreachable: 1 divides everything


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """``bool[t_q, t_k]``, True where key j lies in the future of query i (j > i)."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).triu(1)


def masked_softmax(scores: Tensor, mask: Optional[Tensor], dim: int = -1) -> Tensor:
    """Softmax over ``dim`` with ``mask`` (True = excluded) entries forced to exactly 0.

    A row whose entries are *all* masked (a query at a pad position, or a sentence whose encoder output
    is entirely padding) gives an all-zero row, not NaN, in both passes: masked scores are filled with
    the dtype's most negative finite value (never -inf, whose softmax over a full row is 0/0), and the
    probabilities are masked again afterwards so the uniform distribution that such a row would get is
    zeroed. In partially masked rows the masked probabilities already underflow to exactly 0, so the
    values at masked keys cannot influence the result.
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    filled = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim).masked_fill(mask, 0.0)
