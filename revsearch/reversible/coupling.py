"""The multi-split reversible coupling layer (docs/method.md, "Multi-split reversible layer").

The hidden state is split along features into n parts. Forward, k = 1..n in order::

    Y_k = X_k + G_k(Y_1..Y_{k-1}, X_{k+1}..X_n, *context)

Inverse, k = n..1::

    X_k = Y_k - G_k(Y_1..Y_{k-1}, X_{k+1}..X_n, *context)

Each coupling function ``G_k`` is any ``nn.Module`` called as ``G_k(others, *context)``: ``others`` is the
list of the n-1 other splits in index order (already-updated outputs before k, inputs after k) and
``context`` is whatever the stack was given (an encoder output, padding masks, ...), passed unchanged and
treated as a constant of the layer so reversibility holds. A function must return a tensor shaped like
split k and must register every parameter it uses (a shared parameter may be registered in several).

This file knows nothing of DARTS: the layer only walks its functions.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .autocast import AutocastState, replayed_autocast
from .rng import RNGState, replayed

# accumulate(tensors, grads): receives gradients for parameters and context tensors
GradSink = Callable[[Sequence[Tensor], Sequence[Optional[Tensor]]], None]


def _others(state: Sequence[Tensor], k: int, dtype: Optional[torch.dtype] = None) -> List[Tensor]:
    """The inputs of G_k; cast to ``dtype`` when given (states kept wider than the functions compute in)."""
    return [t if dtype is None else t.to(dtype) for j, t in enumerate(state) if j != k]


def accumulate_into_dot_grad(tensors: Sequence[Tensor], grads: Sequence[Optional[Tensor]]) -> None:
    """Default gradient sink for standalone use of a layer: add to ``.grad`` like autograd would."""
    for t, g in zip(tensors, grads):
        if g is None:
            continue
        t.grad = g.detach().clone() if t.grad is None else t.grad + g


class MultiSplitCoupling(nn.Module):
    """One reversible layer with n >= 2 splits and coupling functions G_1..G_n."""

    def __init__(self, functions: Sequence[nn.Module]):
        super().__init__()
        if len(functions) < 2:
            raise ValueError(f"a multi-split coupling needs at least 2 functions, got {len(functions)}")
        self.functions = nn.ModuleList(functions)

    @property
    def num_splits(self) -> int:
        return len(self.functions)

    def _check(self, splits: Sequence[Tensor]) -> None:
        if len(splits) != self.num_splits:
            raise ValueError(f"layer has {self.num_splits} splits, got {len(splits)} tensors")

    def forward(self, splits: Sequence[Tensor], context: Sequence = (),
                rng_log: Optional[List[RNGState]] = None,
                function_dtype: Optional[torch.dtype] = None) -> List[Tensor]:
        """Y from X. When ``rng_log`` is a list, the generator state before each G_k is appended to it.
        ``function_dtype``: the dtype the G_k get their inputs in (None: the states' own dtype)."""
        self._check(splits)
        state = list(splits)
        for k, g in enumerate(self.functions):
            if rng_log is not None:
                rng_log.append(RNGState.capture(list(state) + list(context)))
            state[k] = state[k] + g(_others(state, k, function_dtype), *context)
        return state

    def inverse(self, outputs: Sequence[Tensor], context: Sequence = (),
                rng_states: Optional[Sequence[RNGState]] = None,
                autocast_state: Optional[AutocastState] = None,
                function_dtype: Optional[torch.dtype] = None) -> List[Tensor]:
        """X from Y (no gradients). ``rng_states`` (and ``autocast_state``) are those of the forward call;
        None: the current ones."""
        self._check(outputs)
        state = list(outputs)
        with torch.no_grad():
            for k in reversed(range(self.num_splits)):
                with replayed(rng_states[k] if rng_states is not None else None), \
                        replayed_autocast(autocast_state):
                    out = self.functions[k](_others(state, k, function_dtype), *context)
                state[k] = state[k] - out
        return state

    def reverse_and_grad(self, outputs: Sequence[Tensor], grad_outputs: Sequence[Tensor],
                         context: Sequence = (), rng_states: Optional[Sequence[RNGState]] = None,
                         accumulate: GradSink = accumulate_into_dot_grad,
                         autocast_state: Optional[AutocastState] = None,
                         function_dtype: Optional[torch.dtype] = None):
        """Rebuild X from Y and turn dL/dY into dL/dX (docs/method.md, "Backprop with reconstruction").

        Gradients for the parameters of every G_k and for context tensors that require grad are handed to
        ``accumulate``. Returns ``(inputs, grad_inputs)``; both are detached. Each G_k is recomputed under
        ``rng_states[k]`` and ``autocast_state`` (the forward's); the subtraction runs outside autocast.
        """
        self._check(outputs)
        state = [y.detach() for y in outputs]
        # grad[j] holds dL/d(current value at position j): dY_j before G_j is undone, dX_j after.
        grad = [g.detach() for g in grad_outputs]
        context_needing_grad = [c for c in context if isinstance(c, Tensor) and c.requires_grad]
        for k in reversed(range(self.num_splits)):
            g_k = self.functions[k]
            others = [t.detach().requires_grad_(True) for t in _others(state, k, function_dtype)]
            params = [p for p in g_k.parameters() if p.requires_grad]
            with torch.enable_grad(), replayed(rng_states[k] if rng_states is not None else None), \
                    replayed_autocast(autocast_state):
                out = g_k(others, *context)
            # grad[k] is now complete for Y_k: every G_j (j > k) that read Y_k has been undone.
            total = grad[k]
            if out.requires_grad:
                wrt = others + context_needing_grad + params
                # under autocast G_k may return half precision; the forward's ``X_k + G_k`` promoted it,
                # and its backward casts dY_k down the same way (a no-op when the dtypes agree)
                grads = torch.autograd.grad(out, wrt, grad_outputs=total.to(out.dtype), allow_unused=True)
                other_positions = [j for j in range(self.num_splits) if j != k]
                for j, gj in zip(other_positions, grads[:len(others)]):
                    if gj is not None:
                        grad[j] = grad[j] + gj
                accumulate(context_needing_grad + params, grads[len(others):])
            state[k] = state[k] - out.detach()
            # Y_k = X_k + G_k(...): the identity path gives dX_k = dY_k; the G_j with j < k that read X_k
            # add their share in the following iterations.
        return state, grad
