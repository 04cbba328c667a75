"""How decided is a search, and is it collapsing?
(docs/method.md, "What makes a search result mean something")

Two numbers per report, computed from a genotype alone (so they can be recomputed from the JSON logged to
MLflow), next to the supernet's ``alpha_entropy``:

* ``param_free_share``: the share of derived nodes whose chosen op learns nothing (``zero``, ``identity``,
  as ``ops.registry.is_parameter_free`` says). DARTS' known failure is a drift towards such ops; a share
  that climbs over the search is collapse.
* ``alpha_margin``: mean over nodes of the top-1 minus the top-2 probability of softmax(α). Near 0 the
  argmax is noise (α barely moved from uniform); ``alpha_margin_min`` is the least decided node.

A node is one architecture parameter: (side, cell layer, split). Shared α in deeper layers counts once.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from ..ops.registry import is_parameter_free
from .genotype import SIDES, Genotype


def top_margin(probabilities: Sequence[float]) -> float:
    """Top-1 minus top-2 probability (1.0 for a single candidate: nothing competes with it)."""
    ranked = sorted(probabilities, reverse=True)
    return float(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0))


def collapse_metrics(genotype: Genotype) -> Dict[str, float]:
    chosen: List[str] = []
    margins: List[float] = []
    for side in SIDES:
        cell = genotype.side(side)
        for layer_ops, layer_probs in zip(cell.cell, cell.probabilities):
            for op, probs in zip(layer_ops, layer_probs):
                chosen.append(op)
                margins.append(top_margin(probs))
    return {"param_free_share": sum(is_parameter_free(op) for op in chosen) / len(chosen),
            "alpha_margin": sum(margins) / len(margins),
            "alpha_margin_min": min(margins)}


#: ops that mix information across sequence positions (causal in the decoder); the rest act position-wise
#: (FFN, GLU, identity, zero) or read the source (cross-attention)
POSITION_MIXING_PREFIXES = ("conv", "dynconv", "self_attn")


def decoder_lacks_target_context(genotype: Genotype) -> bool:
    """True when no searched decoder op mixes target positions (e.g. every slot ``cross_attn``): such a
    decoder sees earlier target tokens only through pooling of the same position (docs/method.md, "A
    decoder needs target-side context"), a known degenerate outcome worth flagging in a ranking."""
    ops = [op for layer in genotype.side("decoder").cell for op in layer]
    return not any(op.startswith(POSITION_MIXING_PREFIXES) for op in ops)

