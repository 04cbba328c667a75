"""Incremental decoding state: what each decoder op keeps between steps so that step t costs O(1)
decoder passes instead of re-running the whole prefix (fairseq's ``incremental_state``).

Every op has ``step(h, cache, memory=None, memory_pad_mask=None)``: ``h`` is ``float[B, 1, dim]``, the
op's input at the newest position only, and ``cache`` is the op's own dict inside one
:class:`IncrementalState` (empty at the first step). The result is the op's output at that position,
equal (to rounding) to the last row of ``op(prefix)`` on the whole causal prefix. What is kept:

* ``conv*`` / ``dynconv*``: the last k - 1 inputs (causal windows read nothing else);
* ``self_attn``: the keys and values of every earlier position;
* ``cross_attn``: the keys and values projected from the encoder memory, computed once per sentence;
* ``ffn`` / ``glu`` / ``identity`` / ``zero``: nothing (position-wise).

Decoding batches never hold target padding at positions that still matter (a finished hypothesis is
dropped or ignored), so ``step`` takes no target pad mask. Beam search calls :meth:`IncrementalState.reorder`
when it selects beams (or drops finished sentences): every cached tensor is indexed along dim 0.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn


class IncrementalState:
    """The caches of one decoding batch, one dict per module, plus the position of the next step."""

    def __init__(self) -> None:
        self.position = 0                          # index of the token the next step feeds in
        self._caches: Dict[int, Dict[str, Any]] = {}
        self.extras: Dict[str, Tensor] = {}        # model-level per-row tensors (memory, masks)

    def cache(self, module: nn.Module) -> Dict[str, Any]:
        # keyed by id: the modules outlive the state (it lives for one batch), so ids are stable
        return self._caches.setdefault(id(module), {})

    def reorder(self, rows: Tensor) -> None:
        """Keep batch rows ``rows`` (in that order, repeats allowed) of every cached tensor."""
        for cache in list(self._caches.values()) + [self.extras]:
            for key, value in cache.items():
                if isinstance(value, Tensor):
                    cache[key] = value.index_select(0, rows)


def start_decoding_state(memory: Tensor, memory_pad_mask: Tensor) -> IncrementalState:
    """The state of a new decoding batch: the encoder output and its pad mask go into ``extras`` (under
    ``"memory"`` / ``"memory_pad_mask"``, where the models' ``decode_step`` reads them), so that beam
    search's :meth:`IncrementalState.reorder` selects their rows along with the caches. Every seq2seq
    model's ``start_decoding`` is this."""
    state = IncrementalState()
    state.extras.update(memory=memory, memory_pad_mask=memory_pad_mask)
    return state


def append_window(cache: Dict[str, Any], key: str, x: Tensor, keep: int) -> Tensor:
    """``cat(last keep inputs, x)`` along time (zeros before the start: the causal boundary padding),
    remembering the newest ``keep`` for the next step. x: ``[B, 1, C]`` -> ``[B, keep + 1, C]``."""
    past = cache.get(key)
    if past is None:
        past = x.new_zeros(x.shape[0], keep, x.shape[2])
    window = torch.cat([past, x], dim=1)
    cache[key] = window[:, 1:] if keep else window[:, :0]
    return window


def stateless_step(op: nn.Module, h: Tensor, cache: Dict[str, Any], memory=None,
                   memory_pad_mask=None) -> Tensor:
    """``step`` of a position-wise op: the full forward on the one new position."""
    return op(h, None, memory, memory_pad_mask)


def supports_incremental(module: nn.Module) -> bool:
    """True when ``module`` has a ``step``, and so do the ops it wraps (``.op``, as ``WrappedOp`` and
    the models' coupling functions do). Every op ``build_op`` makes has one."""
    if not callable(getattr(module, "step", None)):
        return False
    inner = getattr(module, "op", None)
    return not isinstance(inner, nn.Module) or supports_incremental(inner)
