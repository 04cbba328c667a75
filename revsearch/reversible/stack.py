"""A stack of reversible layers trained with backpropagation-with-reconstruction.

In ``"reversible"`` mode the forward pass keeps no intermediate activations: only the final outputs (and
the context) are saved. Backward walks the layers top first; each layer rebuilds its inputs from its
outputs and turns dL/dY into dL/dX (``MultiSplitCoupling.reverse_and_grad``). Memory for activations is
therefore independent of depth, at the price of one extra forward per layer.

The very same modules also run with ``"plain"`` autograd (the reference every test compares against) or
with per-layer ``"checkpoint"`` recomputation (the usual alternative, for benchmarks).

Under ``torch.autocast`` (mixed precision) only the coupling functions run in low precision: the split
states and the additive coupling are kept in float64 (``residual_splits``), the outputs handed back in
float32, and backward recomputes each G_k under the forward's autocast state (``autocast.py``), so
reconstruction stays exact. Without autocast nothing of this runs.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from .autocast import HALF_DTYPES, AutocastState, autocast_enabled_for
from .coupling import MultiSplitCoupling
from .rng import RNGState

MODES = ("reversible", "plain", "checkpoint")


def _unflatten_rng(layout, tensors) -> List[Optional[List[RNGState]]]:
    it = iter(tensors)
    logs: List[Optional[List[RNGState]]] = []
    for layer_layout in layout:
        if layer_layout is None:
            logs.append(None)
            continue
        logs.append([RNGState(cpu=next(it), cuda={d: next(it) for d in devices})
                     for devices in layer_layout])
    return logs


class _ReversibleStackFunction(torch.autograd.Function):
    """Explicit inputs: the splits, the context and every trainable parameter of the stack (so the
    graph exists even when the splits do not require grad). Explicit outputs: the final splits.
    Saved for backward: the final splits and the context; per layer only the RNG states (a few KB)."""

    @staticmethod
    def forward(ctx, stack: "ReversibleStack", function_dtype: Optional[torch.dtype], num_splits: int,
                num_context: int, *tensors):
        splits = list(tensors[:num_splits])
        context = tuple(tensors[num_splits:num_splits + num_context])
        params = tensors[num_splits + num_context:]
        rng_logs: List[Optional[List[RNGState]]] = []
        state = splits
        for layer in stack.layers:
            log: Optional[List[RNGState]] = [] if stack.preserve_rng_state else None
            state = layer(state, context, rng_log=log, function_dtype=function_dtype)
            rng_logs.append(log)
        # A split that no layer touched would alias an input; autograd needs fresh outputs.
        outputs = tuple(t.clone() if any(t is s for s in splits) else t for t in state)
        ctx.stack = stack
        # the coupling functions are recomputed in backward under the forward's autocast state
        ctx.autocast_state = AutocastState.capture(splits)
        ctx.function_dtype = function_dtype
        ctx.num_splits = num_splits
        ctx.num_context = num_context
        ctx.param_index = {id(p): i for i, p in enumerate(params)}
        ctx.num_params = len(params)
        # RNG states go through save_for_backward too, so memory meters see every byte we keep.
        ctx.rng_layout = [None if log is None else [sorted(s.cuda) for s in log] for log in rng_logs]
        rng_tensors = [t for log in rng_logs if log is not None for s in log
                       for t in (s.cpu, *(s.cuda[d] for d in sorted(s.cuda)))]
        ctx.save_for_backward(*outputs, *context, *rng_tensors)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        outputs = saved[:ctx.num_splits]
        context = saved[ctx.num_splits:ctx.num_splits + ctx.num_context]
        rng_logs = _unflatten_rng(ctx.rng_layout, saved[ctx.num_splits + ctx.num_context:])
        # Context becomes a leaf per backward so every layer's gradient for it stops here and is summed.
        context = tuple(c.detach().requires_grad_(c.requires_grad)
                        if isinstance(c, Tensor) and c.is_floating_point() else c for c in context)
        context_index = {id(c): i for i, c in enumerate(context) if isinstance(c, Tensor)}
        param_grads: List[Optional[Tensor]] = [None] * ctx.num_params
        context_grads: List[Optional[Tensor]] = [None] * len(context)

        def accumulate(tensors, grads):
            for t, g in zip(tensors, grads):
                if g is None:
                    continue
                if id(t) in context_index:
                    i = context_index[id(t)]
                    context_grads[i] = g if context_grads[i] is None else context_grads[i] + g
                elif id(t) in ctx.param_index:
                    i = ctx.param_index[id(t)]
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g

        state = [y.detach() for y in outputs]
        grads = [torch.zeros_like(y) if g is None else g for y, g in zip(state, grad_outputs)]
        for layer, log in zip(reversed(ctx.stack.layers), reversed(rng_logs)):
            state, grads = layer.reverse_and_grad(state, grads, context, log, accumulate,
                                                  autocast_state=ctx.autocast_state,
                                                  function_dtype=ctx.function_dtype)
        split_grads = [g if ctx.needs_input_grad[4 + i] else None for i, g in enumerate(grads)]
        return (None, None, None, None, *split_grads, *context_grads, *param_grads)


class ReversibleStack(nn.Module):
    """L multi-split coupling layers run as one reversible block.

    ``forward(splits, context)`` takes a sequence of n split tensors and a tuple of context values
    (tensors or None) given unchanged to every coupling function, and returns the n output splits.
    """

    def __init__(self, layers: Sequence[MultiSplitCoupling], mode: str = "reversible",
                 preserve_rng_state: bool = True, checkpoint_reentrant: bool = False):
        super().__init__()
        if not layers:
            raise ValueError("a reversible stack needs at least one layer")
        counts = {layer.num_splits for layer in layers}
        if len(counts) != 1:
            raise ValueError(f"all layers must have the same number of splits, got {sorted(counts)}")
        self.layers = nn.ModuleList(layers)
        self.mode = mode
        self.preserve_rng_state = preserve_rng_state
        # Reentrant checkpointing recomputes under the caller's saved-tensor hooks (so memory meters
        # see the recompute) but only supports .backward(); the default supports autograd.grad too.
        self.checkpoint_reentrant = checkpoint_reentrant
        # Under autocast the split states and the additive coupling are kept in this dtype and the
        # coupling functions get their inputs in float32 (see ``residual_splits``).
        self.autocast_state_dtype = torch.float64

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; valid modes: {', '.join(MODES)}")
        self._mode = value

    @property
    def num_splits(self) -> int:
        return self.layers[0].num_splits

    def _plain(self, splits, context, function_dtype=None) -> List[Tensor]:
        state = list(splits)
        for layer in self.layers:
            state = layer(state, context, function_dtype=function_dtype)
        return state

    def residual_splits(self, splits: Sequence[Tensor]) -> Tuple[List[Tensor], Optional[torch.dtype]]:
        """The splits as the stack keeps them, and the dtype the coupling functions get their inputs in
        (None: the states' own).

        Without autocast: unchanged, whatever their dtype. Under autocast (mixed precision) only the
        coupling functions run in low precision; the split states and the additive coupling are kept in
        ``autocast_state_dtype`` (float64 by default) and each G_k gets float32 inputs, which autocast
        casts down where it computes in bf16/fp16. Why wider than float32: backward rebuilds each G_k's
        inputs from the outputs, off by the rounding of the states. In float32 that is ~1e-7 relative,
        enough to flip the bf16 rounding of an input element now and then; a flipped element moves G_k
        by a whole bf16 step (~4e-3), which the layers below amplify (measured: depth-12 supernet
        encoder, rebuilt input 100x further off than in float32). With float64 states the rebuilt
        inputs round to the same float32 values, so G_k is recomputed exactly. The float64 cost is the
        element-wise additions and the stored final outputs, not the G_k.
        """
        splits = list(splits)
        if not autocast_enabled_for(splits):
            return splits, None
        dtype = self.autocast_state_dtype
        lifted = [s.to(dtype) if s.dtype in HALF_DTYPES + (torch.float32,) else s for s in splits]
        return lifted, (torch.float32 if dtype != torch.float32 else None)

    def forward(self, splits: Sequence[Tensor], context: Sequence = ()) -> List[Tensor]:
        inputs, context = list(splits), tuple(context)
        if len(inputs) != self.num_splits:
            raise ValueError(f"stack has {self.num_splits} splits, got {len(inputs)} tensors")
        splits, function_dtype = self.residual_splits(inputs)
        outputs = self._run(splits, context, function_dtype)
        if function_dtype is not None:  # hand float32 back to the (autocast) model around the stack
            outputs = [o.to(function_dtype) if o.dtype != s.dtype else o for o, s in zip(outputs, inputs)]
        return outputs

    def _run(self, splits: List[Tensor], context: tuple, function_dtype: Optional[torch.dtype]) -> List[Tensor]:
        if self.mode == "plain" or not torch.is_grad_enabled():
            return self._plain(splits, context, function_dtype)
        if self.mode == "checkpoint":
            return self._checkpointed(splits, context, function_dtype)
        params = [p for p in self.parameters() if p.requires_grad]
        tensors = [t for t in splits + list(context) if isinstance(t, Tensor)]
        if not params and not any(t.requires_grad for t in tensors):
            return self._plain(splits, context, function_dtype)
        return list(_ReversibleStackFunction.apply(self, function_dtype, len(splits), len(context),
                                                   *splits, *context, *params))

    def _checkpointed(self, splits, context, function_dtype=None) -> List[Tensor]:
        n = len(splits)
        state = list(splits)
        for layer in self.layers:
            def run(*tensors, layer=layer):
                return tuple(layer(list(tensors[:n]), tensors[n:], function_dtype=function_dtype))
            state = list(checkpoint(run, *state, *context, use_reentrant=self.checkpoint_reentrant,
                                    preserve_rng_state=self.preserve_rng_state))
        return state

    @torch.no_grad()
    def inverse(self, outputs: Sequence[Tensor], context: Sequence = ()) -> List[Tensor]:
        """Inputs from outputs, without replayed randomness (use in eval mode, or with no dropout)."""
        state, function_dtype = self.residual_splits(outputs)
        for layer in reversed(self.layers):
            state = layer.inverse(state, tuple(context), function_dtype=function_dtype)
        return state

    @torch.no_grad()
    def reconstruction_report(self, splits: Sequence[Tensor], context: Sequence = ()) -> List[dict]:
        """Debug report: run forward keeping every layer's true input, rebuild them top-down exactly as
        backward does (randomness replayed), and return per-layer errors, bottom layer first.
        Errors compound downwards, so layer 0 shows the accumulated error of the whole stack."""
        context = tuple(context)
        state, function_dtype = self.residual_splits(splits)
        inputs, logs = [], []
        for layer in self.layers:
            inputs.append([t.clone() for t in state])
            log: List[RNGState] = []
            state = layer(state, context, rng_log=log, function_dtype=function_dtype)
            logs.append(log)
        report = []
        for i in reversed(range(len(self.layers))):
            state = self.layers[i].inverse(state, context, logs[i], function_dtype=function_dtype)
            true = torch.cat([t.flatten() for t in inputs[i]])
            rebuilt = torch.cat([t.flatten() for t in state])
            abs_err = (rebuilt - true).abs().max().item()
            rel_err = ((rebuilt - true).norm() / true.norm().clamp_min(1e-30)).item()
            report.append({"layer": i, "max_abs_error": abs_err, "rel_error": rel_err})
        return list(reversed(report))
