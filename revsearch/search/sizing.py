"""Equal-size retraining: choose each retrained model's width so that all have the same parameter count.

The paper's claim is made at equal size (DARTSformer 65.2M vs Transformer-base 61.1M parameters), so a
derived genotype, the Transformer baseline and the random genotypes are compared at one parameter budget
(``retrain.size``), not at one width: a conv-only cell at the Transformer's width has a third of its
parameters and would lose for that reason alone. Embedding, vocabulary and depth stay equal; only the
width moves (and, for the Transformer, its FFN width when no model width lands close enough).

Counting builds the model on the meta device (no memory is allocated), so the count is exact for the
very model the retrain builds: :func:`derived_model_config` / :func:`transformer_config` are what
``orchestration.candidates.build_retrain_model`` builds from. Counts grow with width at a fixed head
count, so a bisection over widths finds the two around the target.

Width rules, from the models' constraints:

* derived: ``hidden = splits * split_width``. Widths whose split width is a multiple of ``heads`` come
  first (every attention / dynamic-conv op keeps its ``heads`` heads, as in the search); only when none
  of them lands within the tolerance, a smaller head count h (a divisor of ``heads``) with split widths
  that are multiples of h is tried, down to one head at any width; ``heads`` is then set to h (without
  it ``ops.resolve_heads`` would give each width its own head count and the count would zigzag). The
  decoder's ``splits + 1`` pieces have the same split width, so any such ``hidden`` is valid.
* Transformer: ``hidden`` a multiple of its (fixed) ``heads``, ``ffn_dim = 4 * hidden``; if no width is
  within the tolerance, the FFN width is solved for (the count is linear in it) at the two widths around
  the target, keeping the one whose FFN ratio is closest to 4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError
from ..models.split_seq2seq import SplitSeq2SeqConfig
from ..models.transformer import StandardTransformer, TransformerConfig
from .derive import build_derived_model
from .genotype import Genotype

MAX_HIDDEN = 1 << 15          # no retrained model is wider; the search for a width stops here
FFN_RATIO = 4                 # the Transformer's FFN width per model width (Vaswani et al.)
MAX_BASELINE_HEADS = 8

#: keys of a retrain candidate's ``model`` dict that go into ``SplitSeq2SeqConfig``
DERIVED_KEYS = ("hidden", "splits", "embed_dim", "encoder_layers", "decoder_layers", "heads", "pooling",
                "dropout", "tie_embeddings")


@dataclass
class SizedModel:
    """A model dict with its chosen width, its exact parameter count and the deviation from the target."""
    model: Dict[str, Any]
    params: int
    target: int
    deviation: float          # (params - target) / target


def baseline_heads(hidden: int) -> int:
    """Heads of the Transformer baseline: the largest divisor of ``hidden`` that is at most 8."""
    return max(h for h in range(1, min(MAX_BASELINE_HEADS, hidden) + 1) if hidden % h == 0)


def derived_model_config(model: Dict[str, Any], vocab_size: int) -> SplitSeq2SeqConfig:
    return SplitSeq2SeqConfig(vocab_size=vocab_size, mode="plain", **{k: model[k] for k in DERIVED_KEYS
                                                                      if k in model})


def transformer_config(model: Dict[str, Any], vocab_size: int) -> TransformerConfig:
    """The baseline's config; ``ffn_dim`` absent or null means ``4 * hidden``."""
    return TransformerConfig(vocab_size=vocab_size, embed_dim=model["embed_dim"], hidden=model["hidden"],
                             encoder_layers=model["encoder_layers"], decoder_layers=model["decoder_layers"],
                             heads=model["heads"], ffn_dim=model.get("ffn_dim") or FFN_RATIO * model["hidden"],
                             dropout=model["dropout"])


def _count(build: Callable[[], torch.nn.Module]) -> int:
    with torch.device("meta"):   # shapes only: nothing is allocated or initialised for real
        model = build()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def derived_param_count(genotype: Genotype, model: Dict[str, Any], vocab_size: int) -> int:
    return _count(lambda: build_derived_model(genotype, derived_model_config(model, vocab_size)))


def transformer_param_count(model: Dict[str, Any], vocab_size: int) -> int:
    return _count(lambda: StandardTransformer(transformer_config(model, vocab_size)))


def _deviation(params: int, target: int) -> float:
    return (params - target) / target


def _nearest_multiple(count: Callable[[int], int], step: int, target: int) -> List[int]:
    """The two widths (multiples of ``step``) around ``target``: the largest whose count is below it and
    the smallest whose count reaches it (one width when even the narrowest or the widest is past it)."""
    cap = max(1, MAX_HIDDEN // step)
    high = 1
    while high < cap and count(high * step) < target:
        high = min(high * 2, cap)
    low = 1
    while high - low > 1:      # smallest multiple whose count reaches the target lies in (low, high]
        mid = (low + high) // 2
        if count(mid * step) >= target:
            high = mid
        else:
            low = mid
    return [k * step for k in range(max(1, high - 1), high + 1)]


def _fail(what: str, label: str, target: int, tolerance: float, params: int, where: str) -> ConfigError:
    return ConfigError(f"{what}: {label} cannot reach {target:,} params within {100 * tolerance:g}%: "
                       f"nearest {params:,} ({100 * _deviation(params, target):+.1f}%) at {where}")


def size_derived(label: str, genotype: Genotype, model: Dict[str, Any], vocab_size: int, target: int,
                 tolerance: float, what: str = "retrain.size") -> SizedModel:
    """``model`` with the ``hidden`` (and ``heads``) whose parameter count is nearest ``target``: split
    widths that are multiples of ``model['heads']`` first; when none lands within ``tolerance``, a smaller
    head count h (a divisor of ``heads``, largest first) with split widths that are multiples of h. Every
    op of a derived model works on one split width, so h is then the head count of every op (written
    into ``heads``), and the count grows monotonically with the width on each rung. Raises ``ConfigError``
    (one line naming ``label`` and the nearest count) when no width lands within ``tolerance``."""
    splits, heads = genotype.splits, int(model["heads"])
    cache: Dict[Tuple[int, int], int] = {}

    def count(hidden: int, h: int) -> int:
        if (hidden, h) not in cache:
            cache[(hidden, h)] = derived_param_count(genotype, dict(model, hidden=hidden, splits=splits, heads=h),
                                                     vocab_size)
        return cache[(hidden, h)]

    best: Optional[Tuple[int, int, int]] = None     # (|count - target|, hidden, heads)
    for h in sorted((d for d in range(1, heads + 1) if heads % d == 0), reverse=True):
        widths = _nearest_multiple(lambda hidden: count(hidden, h), splits * h, target)
        hidden = min(widths, key=lambda w: (abs(count(w, h) - target), w))
        if best is None or abs(count(hidden, h) - target) < best[0]:
            best = (abs(count(hidden, h) - target), hidden, h)
        if best[0] <= tolerance * target + 1e-9:
            break
    _, hidden, h = best
    params = count(hidden, h)
    if abs(_deviation(params, target)) > tolerance + 1e-12:
        raise _fail(what, label, target, tolerance, params, f"hidden {hidden}, heads {h}")
    return SizedModel(dict(model, hidden=hidden, splits=splits, heads=h), params, target, _deviation(params, target))


def size_transformer(label: str, model: Dict[str, Any], vocab_size: int, target: int, tolerance: float,
                     what: str = "retrain.size") -> SizedModel:
    """The Transformer baseline sized to ``target``: ``hidden`` a multiple of ``model['heads']`` with
    ``ffn_dim = 4 * hidden`` when that lands within ``tolerance``, else the FFN width is solved for."""
    heads = int(model["heads"])
    cache: Dict[Tuple[int, int], int] = {}

    def count(hidden: int, ffn: Optional[int] = None) -> int:
        ffn = ffn or FFN_RATIO * hidden
        if (hidden, ffn) not in cache:
            cache[(hidden, ffn)] = transformer_param_count(dict(model, hidden=hidden, ffn_dim=ffn), vocab_size)
        return cache[(hidden, ffn)]

    widths = _nearest_multiple(count, heads, target)
    hidden = min(widths, key=lambda h: (abs(count(h) - target), h))
    if abs(_deviation(count(hidden), target)) <= tolerance + 1e-12:
        return SizedModel(dict(model, hidden=hidden, ffn_dim=FFN_RATIO * hidden), count(hidden), target,
                          _deviation(count(hidden), target))
    options = []
    for h in widths:   # the count is linear in the FFN width: solve for it at each width near the target
        slope = count(h, 2) - count(h, 1)
        ffn = max(1, round((target - (count(h, 1) - slope)) / slope))
        options.append((abs(_deviation(count(h, ffn), target)) > tolerance + 1e-12,
                        abs(ffn / h - FFN_RATIO), abs(count(h, ffn) - target), h, ffn))
    outside, _, _, h, ffn = min(options)
    if outside:
        raise _fail(what, label, target, tolerance, count(h, ffn), f"hidden {h}, ffn_dim {ffn}")
    return SizedModel(dict(model, hidden=h, ffn_dim=ffn), count(h, ffn), target, _deviation(count(h, ffn), target))
