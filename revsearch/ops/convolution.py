"""Convolutions over time: the standard conv (conv3..conv11) and the dynamic conv (dynconv3..dynconv15).

Both pad the time axis explicitly instead of using ``nn.Conv1d(padding=...)`` so that one code path
serves both directions:

* non-causal (encoder): ``(k - 1) // 2`` zeros on the left, the rest on the right (symmetric for odd k);
* causal (decoder): ``k - 1`` zeros on the left, none on the right, so output t sees inputs t-k+1..t.

Pad positions of the input are zeroed before the convolution, which makes them indistinguishable from
the boundary zeros: a real position's output then cannot depend on what the padding contains.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_inputs, resolve_heads, zero_pads
from .dropout import dropout as fast_dropout
from .incremental import append_window


def time_padding(kernel_size: int, causal: bool) -> Tuple[int, int]:
    """(left, right) zero padding that keeps the sequence length for ``kernel_size``."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    if causal:
        return kernel_size - 1, 0
    left = (kernel_size - 1) // 2
    return left, kernel_size - 1 - left


class StandardConv(nn.Module):
    """A plain 1-D convolution over time with full channel mixing (``dim -> dim``, width ``k``).

    No activation: the op is linear on purpose, the surrounding ``LayerNorm(h + o(h))`` wrapper and the
    DARTS mixture supply the nonlinearity, as for the other candidates.
    """

    def __init__(self, dim: int, kernel_size: int, causal: bool):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.causal = causal
        self.padding = time_padding(kernel_size, causal)
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=0)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(h, self.dim, pad_mask)
        x = zero_pads(h, pad_mask).transpose(1, 2)          # [B, C, T]
        x = F.pad(x, self.padding)                           # [B, C, T + k - 1]
        out = self.conv(x).transpose(1, 2)                   # [B, T, C]
        return zero_pads(out, pad_mask)

    def step(self, h: Tensor, cache: dict, memory: Optional[Tensor] = None,
             memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        """Output at the newest position from it and the last k - 1 inputs (causal only)."""
        if not self.causal:
            raise ValueError("incremental step needs a causal convolution")
        window = append_window(cache, "inputs", h, self.kernel_size - 1)    # [B, K, C]
        return self.conv(window.transpose(1, 2)).transpose(1, 2)             # [B, 1, C]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, causal={self.causal}"


class DynamicConv(nn.Module):
    """Dynamic convolution (Wu et al. 2019, "Pay Less Attention with Lightweight and Dynamic Convolutions").

    Per position t::

        x      = GLU(Linear(h))                       # input projection (plain Linear if glu=False)
        w_t    = softmax_K(Linear(x_t))               # [heads, K]: a kernel predicted from x_t alone
        y_t,c  = sum_j w_t[head(c), j] * x_{t - left + j, c}
        out_t  = Linear(y_t)

    The channels of one head share a kernel (``dim / heads`` channels each), which keeps the kernel
    predictor small (``dim -> heads * K``) and is what makes it cheaper than attention. Softmax over the
    K taps normalises the kernel; taps that fall on the boundary or on padding read zeros (no
    renormalisation, as in the reference fairseq implementation). The kernel weights get DropConnect-style
    dropout (``weight_dropout``), drawn from torch's global generator so the reversible engine can replay it.

    Vectorised with ``Tensor.unfold`` over time: ``[B, T+K-1, C] -> [B, T, C, K]`` is a view, the only
    materialised extra memory is the einsum's product.
    """

    def __init__(self, dim: int, kernel_size: int, causal: bool, heads: int = 8,
                 weight_dropout: float = 0.1, glu: bool = True):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.causal = causal
        self.heads = resolve_heads(dim, heads)
        self.padding = time_padding(kernel_size, causal)
        self.glu = glu
        self.input_proj = nn.Linear(dim, 2 * dim if glu else dim)
        self.weight_proj = nn.Linear(dim, self.heads * kernel_size)
        self.output_proj = nn.Linear(dim, dim)
        self.weight_dropout = weight_dropout

    def kernels(self, x: Tensor) -> Tensor:
        """The normalised per-position kernels ``[B, T, heads, K]`` predicted from the projected input."""
        b, t, _ = x.shape
        logits = self.weight_proj(x).view(b, t, self.heads, self.kernel_size)
        w = torch.softmax(logits, dim=-1)
        return fast_dropout(w, self.weight_dropout, self.training)

    def project_input(self, h: Tensor, pad_mask: Optional[Tensor]) -> Tensor:
        """``GLU(Linear(h))`` with padding zeroed before and after (the bias would refill it)."""
        x = self.input_proj(zero_pads(h, pad_mask))
        if self.glu:
            x = F.glu(x, dim=-1)
        return zero_pads(x, pad_mask)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(h, self.dim, pad_mask)
        b, t, c = h.shape
        x = self.project_input(h, pad_mask)                            # [B, T, C]
        w = self.kernels(x)                                            # [B, T, H, K]
        left, right = self.padding
        windows = F.pad(x, (0, 0, left, right)).unfold(1, self.kernel_size, 1)   # [B, T, C, K]
        windows = windows.reshape(b, t, self.heads, c // self.heads, self.kernel_size)
        y = torch.einsum("bthck,bthk->bthc", windows, w).reshape(b, t, c)
        return zero_pads(self.output_proj(y), pad_mask)

    def step(self, h: Tensor, cache: dict, memory: Optional[Tensor] = None,
             memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        """Output at the newest position; the cache holds the last k - 1 *projected* inputs (causal only)."""
        if not self.causal:
            raise ValueError("incremental step needs a causal dynamic convolution")
        b, _, c = h.shape
        x = self.project_input(h, None)                                        # [B, 1, C]
        w = self.kernels(x)                                                    # [B, 1, H, K]
        window = append_window(cache, "inputs", x, self.kernel_size - 1)       # [B, K, C]
        window = window.transpose(1, 2).reshape(b, self.heads, c // self.heads, self.kernel_size)
        y = torch.einsum("bhck,bhk->bhc", window, w[:, 0]).reshape(b, 1, c)
        return self.output_proj(y)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, kernel_size={self.kernel_size}, heads={self.heads}, "
                f"causal={self.causal}, glu={self.glu}, weight_dropout={self.weight_dropout}")
