"""The op set by name: ``OpConfig``, ``ENCODER_OPS`` / ``DECODER_OPS``, ``build_op``, validation.

Names are the contract with the rest of the project (genotypes, sweep files, MLflow params), so they
are plain strings resolved in one place. Op *subsets* are first-class: a sweep may search over any
non-empty, duplicate-free subset, validated by ``validate_op_names``.

``build_op`` returns a ready-to-mix candidate ``õ`` (docs/method.md, "A search node"): every op except
``zero`` and ``identity`` is wrapped as ``LayerNorm(h + dropout(o(h)))`` with pad positions zeroed.
Only LayerNorm is used: BatchNorm's running statistics would be updated twice when the reversible engine
recomputes a layer in the backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .attention import CrossAttention, SelfAttention
from .base import zero_pads
from .convolution import DynamicConv, StandardConv
from .feedforward import FeedForward, GatedLinearUnit, Identity, Zero
from .dropout import Dropout

ENCODER_OPS: Tuple[str, ...] = (
    "conv3", "conv5", "conv7", "conv11",
    "dynconv3", "dynconv7", "dynconv11", "dynconv15",
    "self_attn", "ffn", "glu", "zero", "identity",
)
DECODER_OPS: Tuple[str, ...] = ENCODER_OPS + ("cross_attn",)

#: ops returned unwrapped (no residual + LayerNorm): they are the "no-op" choices of the search.
UNWRAPPED_OPS: Tuple[str, ...] = ("zero", "identity")
#: ops that read ``memory``; they may appear only in a decoder op set.
DECODER_ONLY_OPS: Tuple[str, ...] = ("cross_attn",)


@dataclass(frozen=True)
class OpConfig:
    """What every candidate op needs to be built.

    dim: width of the op's input/output (in the reversible network: one split, d / n).
    causal: True in the decoder; every op then only looks at the past.
    heads: upper bound on attention / dynamic-conv heads (the largest divisor of ``dim`` <= heads is used).
    dropout: attention-probability, FFN-hidden, dynamic-conv-weight and residual dropout.
    memory_dim: width of the encoder output read by ``cross_attn`` (None: same as ``dim``).
    ffn_multiplier: FFN hidden width = ffn_multiplier * dim.
    """

    dim: int
    causal: bool
    heads: int = 8
    dropout: float = 0.1
    memory_dim: Optional[int] = None
    ffn_multiplier: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"op dim must be a positive integer, got {self.dim!r}")
        if not isinstance(self.heads, int) or self.heads < 1:
            raise ConfigError(f"op heads must be a positive integer, got {self.heads!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"op dropout must be in [0, 1), got {self.dropout!r}")
        if self.memory_dim is not None and (not isinstance(self.memory_dim, int) or self.memory_dim < 1):
            raise ConfigError(f"op memory_dim must be a positive integer or None, got {self.memory_dim!r}")
        if not isinstance(self.ffn_multiplier, int) or self.ffn_multiplier < 1:
            raise ConfigError(f"op ffn_multiplier must be a positive integer, got {self.ffn_multiplier!r}")


class WrappedOp(nn.Module):
    """``LayerNorm(h + dropout(o(h)))`` with pad positions zeroed: the form every learned op enters
    the DARTS mixture in, so candidates of very different scales are comparable by their α."""

    def __init__(self, name: str, op: nn.Module, dim: int, dropout: float):
        super().__init__()
        self.name = name
        self.op = op
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, pad_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        o = self.op(h, pad_mask, memory, memory_pad_mask)
        # h's pads are zeroed too, so inf/NaN in padding cannot reach the LayerNorm (or its gradient).
        return zero_pads(self.norm(zero_pads(h, pad_mask) + self.dropout(o)), pad_mask)

    def step(self, h: Tensor, cache: dict, memory: Optional[Tensor] = None,
             memory_pad_mask: Optional[Tensor] = None) -> Tensor:
        """Incremental form (``ops.incremental``): the op's cache is this wrapper's cache."""
        return self.norm(h + self.dropout(self.op.step(h, cache, memory, memory_pad_mask)))


def _conv(k: int) -> Callable[[OpConfig], nn.Module]:
    return lambda c: StandardConv(c.dim, k, c.causal)


def _dynconv(k: int) -> Callable[[OpConfig], nn.Module]:
    return lambda c: DynamicConv(c.dim, k, c.causal, heads=c.heads, weight_dropout=c.dropout)


_BUILDERS: Dict[str, Callable[[OpConfig], nn.Module]] = {
    "conv3": _conv(3), "conv5": _conv(5), "conv7": _conv(7), "conv11": _conv(11),
    "dynconv3": _dynconv(3), "dynconv7": _dynconv(7), "dynconv11": _dynconv(11),
    "dynconv15": _dynconv(15),
    "self_attn": lambda c: SelfAttention(c.dim, c.causal, heads=c.heads, dropout=c.dropout),
    "ffn": lambda c: FeedForward(c.dim, multiplier=c.ffn_multiplier, dropout=c.dropout),
    "glu": lambda c: GatedLinearUnit(c.dim),
    "zero": lambda c: Zero(),
    "identity": lambda c: Identity(),
    "cross_attn": lambda c: CrossAttention(c.dim, c.memory_dim, heads=c.heads, dropout=c.dropout),
}
assert tuple(_BUILDERS) == DECODER_OPS


def _unknown(name: object, valid: Tuple[str, ...]) -> ConfigError:
    return ConfigError(f"unknown op {name!r}; valid ops: {', '.join(valid)}")


def build_op(name: str, config: OpConfig) -> nn.Module:
    """Build candidate ``name`` for ``config``, wrapped unless it is ``zero`` / ``identity``.

    Any name of ``DECODER_OPS`` is accepted whatever ``config.causal`` says (the decoder's fixed
    cross-attention coupling is built here too); whether ``cross_attn`` belongs in an *encoder* op set is
    ``validate_op_names``' job. Parameters are created in torch's default dtype; call ``.double()`` etc.
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        raise _unknown(name, DECODER_OPS)
    op = _BUILDERS[name](config)
    if name in UNWRAPPED_OPS:
        op.name = name
        return op
    return WrappedOp(name, op, config.dim, config.dropout)


def validate_op_names(names: Iterable[str], decoder: bool) -> Tuple[str, ...]:
    """Check an op set for the encoder (``decoder=False``) or decoder and return it as a tuple.

    Order is preserved (it fixes the order of α's entries). Raises ``ConfigError`` with one line for: a
    bare string instead of a list, an empty set, an unknown name (listing the valid ones), ``cross_attn``
    in an encoder set, or a duplicate.
    """
    if isinstance(names, str):
        raise ConfigError(f"op set must be a list of op names, got the string {names!r}")
    try:
        ops = tuple(names)
    except TypeError:
        raise ConfigError(f"op set must be a list of op names, got {names!r}") from None
    side = "decoder" if decoder else "encoder"
    if not ops:
        raise ConfigError(f"{side} op set is empty; choose at least one of: "
                          f"{', '.join(DECODER_OPS if decoder else ENCODER_OPS)}")
    valid = DECODER_OPS if decoder else ENCODER_OPS
    seen = set()
    for name in ops:
        if not decoder and name in DECODER_ONLY_OPS:
            raise ConfigError(f"op {name!r} is decoder-only (it reads the encoder output); "
                              f"it cannot be in the encoder op set")
        if not isinstance(name, str) or name not in valid:
            raise _unknown(name, valid)
        if name in seen:
            raise ConfigError(f"duplicate op {name!r} in the {side} op set")
        seen.add(name)
    return ops


def op_param_count(name: str, config: OpConfig) -> int:
    """Number of trainable parameters of ``build_op(name, config)`` (wrapper's LayerNorm included)."""
    return sum(p.numel() for p in build_op(name, config).parameters() if p.requires_grad)


@lru_cache(maxsize=None)
def is_parameter_free(name: str) -> bool:
    """True when op ``name`` itself learns nothing (``zero``, ``identity``): the ops a collapsing DARTS
    search drifts towards. Asked of the op rather than listed, so a future op (a pooling, say) is
    classified by what it is. The wrapper's LayerNorm is not counted: it is the same for every learned
    op and is not what makes an op a "skip"."""
    # building initialises weights: keep the global RNG untouched, or the first call in a process would
    # shift every later random number (a search would then not resume bit-for-bit)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        op = build_op(name, OpConfig(dim=8, causal=name in DECODER_ONLY_OPS, heads=2))
    inner = op.op if isinstance(op, WrappedOp) else op
    return not any(True for _ in inner.parameters())
