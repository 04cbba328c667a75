"""Candidate operations of the DARTS search space (docs/method.md, "A search node").

Every op is an ``nn.Module`` called as ``op(h, pad_mask=None, memory=None, memory_pad_mask=None)``
returning a tensor shaped like ``h`` that is 0 at pad positions and never reads padding; with
``causal=True`` no output reads a later position, and ``op.step(h_t, cache, memory, memory_pad_mask)``
gives the newest position alone from a per-op cache (incremental decoding, ``ops.incremental``).
Build ops by name with ``build_op``::

    from revsearch.ops import OpConfig, build_op, validate_op_names
    names = validate_op_names(["conv3", "self_attn", "zero"], decoder=False)
    ops = [build_op(n, OpConfig(dim=320, causal=False)) for n in names]
"""
from .attention import CrossAttention, SelfAttention
from .base import causal_mask, masked_softmax, resolve_heads, zero_pads
from .convolution import DynamicConv, StandardConv, time_padding
from .feedforward import FeedForward, GatedLinearUnit, Identity, Zero
from .incremental import IncrementalState
from .registry import (DECODER_ONLY_OPS, DECODER_OPS, ENCODER_OPS, UNWRAPPED_OPS, OpConfig, WrappedOp,
                       build_op, op_param_count, validate_op_names)

__all__ = [
    "OpConfig", "ENCODER_OPS", "DECODER_OPS", "UNWRAPPED_OPS", "DECODER_ONLY_OPS",
    "build_op", "validate_op_names", "op_param_count", "WrappedOp",
    "StandardConv", "DynamicConv", "SelfAttention", "CrossAttention",
    "FeedForward", "GatedLinearUnit", "Zero", "Identity",
    "zero_pads", "masked_softmax", "causal_mask", "resolve_heads", "time_padding",
    "IncrementalState",
]
