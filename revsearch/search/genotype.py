"""Genotypes: the derived architecture as versioned JSON (never pickle).

A genotype records, for each side, the candidate op set, and per cell layer and split the chosen op and
the softmax probabilities it was chosen from::

    {"schema_version": 1, "splits": 2, "pooling": "max",
     "encoder": {"candidates": [...], "cell": [["conv3", "self_attn"], ...],
                 "probabilities": [[[0.1, ...], [...]], ...]},
     "decoder": {...}}

Derivation (method.md): every node keeps argmax softmax(α).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from ..ops import validate_op_names

SCHEMA_VERSION = 1
SIDES = ("encoder", "decoder")


@dataclass
class CellGenotype:
    candidates: List[str]
    cell: List[List[str]]                 # [layer][split] -> op name
    probabilities: List[List[List[float]]]  # [layer][split][candidate]

    def to_dict(self) -> Dict[str, Any]:
        return {"candidates": list(self.candidates), "cell": [list(r) for r in self.cell],
                "probabilities": [[list(p) for p in r] for r in self.probabilities]}


@dataclass
class Genotype:
    splits: int
    pooling: str
    encoder: CellGenotype
    decoder: CellGenotype

    def side(self, name: str) -> CellGenotype:
        return self.encoder if name == "encoder" else self.decoder

    def to_dict(self) -> Dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "splits": self.splits, "pooling": self.pooling,
                "encoder": self.encoder.to_dict(), "decoder": self.decoder.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def key(self) -> str:
        """Identity of the architecture (ops and topology, not probabilities): merges duplicates."""
        return json.dumps({"splits": self.splits, "pooling": self.pooling,
                           "encoder": self.encoder.cell, "decoder": self.decoder.cell})

    def describe(self) -> str:
        enc = " | ".join("+".join(r) for r in self.encoder.cell)
        dec = " | ".join("+".join(r) for r in self.decoder.cell)
        return f"enc[{enc}] dec[{dec}]"

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")
        os.replace(tmp, path)

    @staticmethod
    def load(path: str) -> "Genotype":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: genotype file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a genotype JSON file ({err})") from None
        return Genotype.from_dict(data, source=path)

    @staticmethod
    def from_dict(data: Any, source: str = "genotype") -> "Genotype":
        def fail(msg: str):
            raise ConfigError(f"{source}: {msg}")

        if not isinstance(data, dict):
            fail("expected a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            fail(f"schema_version is {version!r}; this revsearch reads version {SCHEMA_VERSION}")
        splits = data.get("splits")
        if not isinstance(splits, int) or isinstance(splits, bool) or splits < 2:
            fail(f"splits must be an integer >= 2, got {splits!r}")
        pooling = data.get("pooling", "max")
        if pooling not in ("max", "mean"):
            fail(f"pooling must be 'max' or 'mean', got {pooling!r}")
        sides = {}
        for side in SIDES:
            raw = data.get(side)
            if not isinstance(raw, dict):
                fail(f"missing '{side}' section")
            try:
                candidates = list(validate_op_names(raw.get("candidates") or [], decoder=side == "decoder"))
            except ConfigError as err:
                fail(f"{side}.candidates: {err}")
            cell = raw.get("cell")
            if not isinstance(cell, list) or not cell:
                fail(f"{side}.cell must be a non-empty list of layers")
            for i, layer in enumerate(cell):
                if not isinstance(layer, list) or len(layer) != splits:
                    fail(f"{side}.cell[{i}] must list {splits} ops (one per searchable node), got {layer!r}")
                for op in layer:
                    if op not in candidates:
                        fail(f"{side}.cell[{i}]: unknown op {op!r}; valid ops: {', '.join(candidates)}")
            probs = raw.get("probabilities")
            if probs is None:
                probs = [[[1.0 if c == op else 0.0 for c in candidates] for op in layer] for layer in cell]
            ok = (isinstance(probs, list) and len(probs) == len(cell) and all(
                isinstance(r, list) and len(r) == splits and all(
                    isinstance(p, list) and len(p) == len(candidates)
                    and all(isinstance(v, (int, float)) for v in p) for p in r) for r in probs))
            if not ok:
                fail(f"{side}.probabilities must have shape [layers={len(cell)}][splits={splits}]"
                     f"[candidates={len(candidates)}]")
            sides[side] = CellGenotype(candidates, [list(r) for r in cell],
                                       [[[float(v) for v in p] for p in r] for r in probs])
        return Genotype(splits, pooling, sides["encoder"], sides["decoder"])


def derive_genotype(supernet) -> Genotype:
    """Argmax of softmax(α) per node of a ``Supernet``."""
    sides = {}
    for side in SIDES:
        candidates = list(supernet.config.ops(side))
        cell, probs = [], []
        for row in supernet.alpha_grid(side):
            p = [torch.softmax(a.detach().double(), 0).tolist() for a in row]
            probs.append(p)
            cell.append([candidates[max(range(len(q)), key=q.__getitem__)] for q in p])
        sides[side] = CellGenotype(candidates, cell, probs)
    return Genotype(supernet.config.splits, supernet.config.pooling, sides["encoder"], sides["decoder"])


def uniform_genotype(splits: int, encoder_op: str, decoder_op: str,
                     layers: int = 1, pooling: str = "max",
                     encoder_candidates: Optional[Sequence[str]] = None,
                     decoder_candidates: Optional[Sequence[str]] = None) -> Genotype:
    """A hand-made genotype (every node the same op): handy for tests and baselines."""
    from ..ops import DECODER_OPS, ENCODER_OPS
    enc_c = list(encoder_candidates or ENCODER_OPS)
    dec_c = list(decoder_candidates or DECODER_OPS)
    return Genotype.from_dict({
        "schema_version": SCHEMA_VERSION, "splits": splits, "pooling": pooling,
        "encoder": {"candidates": enc_c, "cell": [[encoder_op] * splits for _ in range(layers)]},
        "decoder": {"candidates": dec_c, "cell": [[decoder_op] * splits for _ in range(layers)]},
    })
