"""Multi-head attention ops: ``self_attn`` (encoder and decoder) and ``cross_attn`` (decoder only).

Written out by hand rather than with ``nn.MultiheadAttention`` / ``scaled_dot_product_attention``
because three properties are requirements here, not niceties:

* fully masked rows (queries at pad positions; a sentence whose encoder output is all padding) must give
  exactly 0 and finite gradients, where the library kernels give NaN or backend-dependent values;
* attention dropout must draw from torch's global generator (``ops.dropout``, like ``F.dropout``) so the reversible engine's
  RNG replay reproduces it bit for bit during reconstruction, on every backend;
* float64 must work (the engine's gradient-equality tests run in float64).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .base import causal_mask, check_inputs, masked_softmax, resolve_heads, zero_pads
from .dropout import dropout as fast_dropout


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], heads: int, dropout: float,
           training: bool) -> Tensor:
    """Scaled dot-product attention on projected q: [B, Tq, D], k/v: [B, Tk, D]; mask: bool broadcastable
    to [B, heads, Tq, Tk] with True = may not attend. Returns [B, Tq, D], heads merged, before the output
    projection. The one implementation of the attention math: these ops and the Transformer baseline's
    incremental step (``models.transformer``) both use it."""
    b, tq, d = q.shape
    tk = k.shape[1]
    hd = d // heads
    q = q.view(b, tq, heads, hd).transpose(1, 2)                    # [B, H, Tq, hd]
    k = k.view(b, tk, heads, hd).transpose(1, 2)
    v = v.view(b, tk, heads, hd).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)              # [B, H, Tq, Tk]
    probs = masked_softmax(scores, mask, dim=-1)
    probs = fast_dropout(probs, dropout, training)
    return (probs @ v).transpose(1, 2).reshape(b, tq, d)


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal when ``causal=True`` (key j > query i is masked).

    ``heads`` is an upper bound: the op uses the largest count that divides ``dim`` (see
    ``resolve_heads``). Keys at pad positions are masked and pad inputs are zeroed before the
    projections, so padding influences nothing; outputs at pad positions are 0.
    """

    def __init__(self, dim: int, causal: bool, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.causal = causal
        self.heads = resolve_heads(dim, heads)
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(h, self.dim, pad_mask)
        t = h.shape[1]
        q, k, v = self.qkv(zero_pads(h, pad_mask)).chunk(3, dim=-1)
        mask = None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :]                       # [B, 1, 1, Tk]
        if self.causal:
            future = causal_mask(t, t, h.device)[None, None]        # [1, 1, Tq, Tk]
            mask = future if mask is None else (mask | future)
        out = attend(q, k, v, mask, self.heads, self.dropout, self.training)
        return zero_pads(self.out_proj(out), pad_mask)

    def step(self, h: Tensor, cache: dict, memory: Optional[Tensor] = None,
             memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        """The newest position attends to itself and the cached keys/values of the earlier ones."""
        if not self.causal:
            raise ValueError("incremental step needs causal self-attention")
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if "keys" in cache:
            k = torch.cat([cache["keys"], k], dim=1)
            v = torch.cat([cache["values"], v], dim=1)
        cache["keys"], cache["values"] = k, v
        return self.out_proj(attend(q, k, v, None, self.heads, self.dropout, self.training))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, causal={self.causal}, dropout={self.dropout}"


class CrossAttention(nn.Module):
    """Multi-head attention from the decoder state ``h`` to the encoder output ``memory``.

    Queries come from ``h`` (width ``dim``); keys and values are projected from ``memory`` (width
    ``memory_dim``, the full encoder width, which differs from a split's width) to ``dim``. Memory pad
    positions are zeroed and masked. Causality holds trivially: query t reads only its own input and
    the memory. This is also the fixed coupling function G_{n+1} of a decoder layer
    (docs/method.md, "The split encoder-decoder").
    """

    def __init__(self, dim: int, memory_dim: Optional[int] = None, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.memory_dim = dim if memory_dim is None else memory_dim
        self.heads = resolve_heads(dim, heads)
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(self.memory_dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(h, self.dim, pad_mask)
        if memory is None:
            raise ValueError("cross_attn needs memory (the encoder output); got memory=None")
        if memory.dim() != 3 or memory.shape[0] != h.shape[0] or memory.shape[-1] != self.memory_dim:
            raise ValueError(f"cross_attn expects memory of shape [{h.shape[0]}, S, {self.memory_dim}], "
                             f"got {tuple(memory.shape)}")
        if memory_pad_mask is not None and memory_pad_mask.shape != memory.shape[:2]:
            raise ValueError(f"memory_pad_mask must be bool[{memory.shape[0]}, {memory.shape[1]}], "
                             f"got {list(memory_pad_mask.shape)}")
        q = self.q_proj(zero_pads(h, pad_mask))
        k, v = self.kv_proj(zero_pads(memory, memory_pad_mask)).chunk(2, dim=-1)
        mask = None if memory_pad_mask is None else memory_pad_mask[:, None, None, :]
        out = attend(q, k, v, mask, self.heads, self.dropout, self.training)
        return zero_pads(self.out_proj(out), pad_mask)

    def step(self, h: Tensor, cache: dict, memory: Optional[Tensor] = None,
             memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        """Attention of the newest position; the memory's keys/values are projected at the first step
        of a sentence and kept (they do not change while decoding it)."""
        if "keys" not in cache:
            if memory is None:
                raise ValueError("cross_attn needs memory (the encoder output); got memory=None")
            cache["keys"], cache["values"] = self.kv_proj(zero_pads(memory, memory_pad_mask)).chunk(2, dim=-1)
        mask = None if memory_pad_mask is None else memory_pad_mask[:, None, None, :]
        out = attend(self.q_proj(h), cache["keys"], cache["values"], mask, self.heads, self.dropout,
                     self.training)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, memory_dim={self.memory_dim}, heads={self.heads}, "
                f"dropout={self.dropout}")
