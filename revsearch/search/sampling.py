"""The sampling baseline: genotypes drawn uniformly at random from a search's own space.

The paper's sampling baseline (docs/method.md, "The floor: random genotypes"): architectures sampled
uniformly from the same space and retrained under the same budget fall far below both DARTSformer and
the Transformer. Without this baseline a derived model that beats the Transformer could owe it to the
space (the split topology, the op set) rather than to the search. Each node's op is drawn independently
and uniformly from the candidates a derivation may keep (``zero`` excluded unless allowed, as when
deriving), so every genotype of that space is equally likely; duplicates and the genotypes to avoid (the
derived ones) are redrawn.
"""
from __future__ import annotations

import math
import random
from typing import Iterable, List

from ..errors import ConfigError
from .genotype import EXCLUDED_WHEN_DERIVING, SCHEMA_VERSION, SIDES, Genotype

MAX_DRAWS_PER_GENOTYPE = 10_000


def derivable_ops(candidates: Iterable[str], allow_zero: bool = False) -> List[str]:
    """The candidates a derived genotype may contain (all of them if none would remain)."""
    candidates = list(candidates)
    kept = [op for op in candidates if allow_zero or op not in EXCLUDED_WHEN_DERIVING]
    return kept or candidates


def space_size(template: Genotype, allow_zero: bool = False) -> int:
    """How many distinct genotypes share ``template``'s candidates, split count and cell depth."""
    return math.prod(len(derivable_ops(template.side(s).candidates, allow_zero))
                     ** (template.splits * len(template.side(s).cell)) for s in SIDES)


def sample_genotypes(template: Genotype, count: int, seed: int, allow_zero: bool = False,
                     avoid: Iterable[str] = (), what: str = "retrain.random_genotypes") -> List[Genotype]:
    """``count`` distinct genotypes with ``template``'s candidate op sets, splits, pooling and cell depth
    per side, every node's op uniform over the derivable candidates; none has a ``key()`` in ``avoid``.
    Deterministic in ``seed``. Raises ``ConfigError`` when the space has fewer genotypes than asked."""
    avoid = set(avoid)
    size = space_size(template, allow_zero)
    if count > size - len(avoid):   # at most: some keys to avoid may lie outside this space
        available = size - sum(1 for key in avoid if _in_space(key, template, allow_zero))
        if count > available:
            raise ConfigError(f"{what}: {count} asked, but the search space of {template.splits} splits and "
                              f"these candidate ops holds only {available} genotype(s) besides the derived ones")
    rng = random.Random(f"revsearch-random-genotypes:{seed}")
    excluded = [op for op in EXCLUDED_WHEN_DERIVING if not allow_zero]
    out: List[Genotype] = []
    for _ in range(count * MAX_DRAWS_PER_GENOTYPE):
        if len(out) == count:
            break
        data = {"schema_version": SCHEMA_VERSION, "splits": template.splits, "pooling": template.pooling,
                "derivation": {"rule": "uniform random", "seed": seed, "excluded": excluded}}
        for side in SIDES:
            cell = template.side(side)
            ops = derivable_ops(cell.candidates, allow_zero)
            data[side] = {"candidates": list(cell.candidates),
                          "cell": [[rng.choice(ops) for _ in range(template.splits)] for _ in cell.cell]}
        genotype = Genotype.from_dict(data, source="random genotype")
        if genotype.key() not in avoid:
            avoid.add(genotype.key())
            out.append(genotype)
    return out


def _in_space(key: str, template: Genotype, allow_zero: bool) -> bool:
    import json
    data = json.loads(key)
    if data.get("splits") != template.splits or data.get("pooling") != template.pooling:
        return False
    for side in SIDES:
        ops = set(derivable_ops(template.side(side).candidates, allow_zero))
        cell = data.get(side) or []
        if len(cell) != len(template.side(side).cell) or any(op not in ops for row in cell for op in row):
            return False
    return True
