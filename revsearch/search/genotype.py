"""Genotypes: the derived architecture as versioned JSON (never pickle).

A genotype records, for each side, the candidate op set, and per cell layer and split the chosen op and
the softmax probabilities it was chosen from::

    {"schema_version": 1, "splits": 2, "pooling": "max",
     "encoder": {"candidates": [...], "cell": [["conv3", "self_attn"], ...],
                 "probabilities": [[[0.1, ...], [...]], ...]},
     "decoder": {...}}

Derivation (docs/method.md, "Derivation"): every node keeps argmax softmax(α). As in DARTS, ``zero`` is
never derived (a node whose largest weight is ``zero`` takes its next-best op) unless ``allow_zero`` is
set; the rule used is recorded under ``"derivation"`` (e.g. ``{"rule": "argmax", "excluded":
["zero"]}``), which files written before it was recorded simply lack. It is provenance only: ``key()``
ignores it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from ..ops import validate_op_names

SCHEMA_VERSION = 1
#: bounds checked before anything is built from a genotype (a search writes 2-8 splits and 1-4 layers;
#: a file with 100,000 splits or 10^6 layers would allocate gigabytes before any other check)
MAX_SPLITS = 64
MAX_CELL_LAYERS = 64
MAX_GENOTYPE_BYTES = 1 << 20
SIDES = ("encoder", "decoder")
#: ops DARTS never keeps when deriving a genotype ("none" in Liu et al. 2019): a node of ``zero`` is a
#: removed node, which the argmax favours for reasons unrelated to accuracy (docs/method.md, "Derivation")
EXCLUDED_WHEN_DERIVING = ("zero",)


def _short(value: Any, limit: int = 80) -> str:
    """repr cut to ``limit`` characters (a genotype file may hold a 100,000-entry list)."""
    import reprlib
    shower = reprlib.Repr()
    shower.maxlist, shower.maxstring, shower.maxother = 8, limit, limit
    text = shower.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    derivation: Optional[Dict[str, Any]] = None   # how the ops were chosen (plain JSON; provenance only)

    def side(self, name: str) -> CellGenotype:
        return self.encoder if name == "encoder" else self.decoder

    def to_dict(self) -> Dict[str, Any]:
        out = {"schema_version": SCHEMA_VERSION, "splits": self.splits, "pooling": self.pooling,
               "encoder": self.encoder.to_dict(), "decoder": self.decoder.to_dict()}
        if self.derivation is not None:
            out["derivation"] = json.loads(json.dumps(self.derivation))
        return out

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
        if os.path.isdir(path):
            raise ConfigError(f"{path}: is a directory, expected a genotype JSON file")
        if os.path.exists(path) and not os.path.isfile(path):   # a FIFO would block, /dev/zero never end
            raise ConfigError(f"{path}: not a regular file, expected a genotype JSON file")
        if os.path.isfile(path) and os.path.getsize(path) > MAX_GENOTYPE_BYTES:
            raise ConfigError(f"{path}: {os.path.getsize(path):,} bytes; a genotype JSON file is a few KB "
                              f"(at most {MAX_GENOTYPE_BYTES // 1024} KiB)")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.loads(f.read(MAX_GENOTYPE_BYTES + 1))
        except FileNotFoundError:
            raise ConfigError(f"{path}: genotype file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a genotype JSON file ({err})") from None
        except RecursionError:  # json recurses once per nesting level; a genotype is 4 levels deep
            raise ConfigError(f"{path}: not a genotype JSON file (nested too deeply)") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the genotype file "
                              f"({err.strerror or type(err).__name__})") from None
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
        if not isinstance(splits, int) or isinstance(splits, bool) or not 2 <= splits <= MAX_SPLITS:
            fail(f"splits must be an integer in [2, {MAX_SPLITS}], got {_short(splits)}")
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
            if len(cell) > MAX_CELL_LAYERS:
                fail(f"{side}.cell has {len(cell):,} layers; at most {MAX_CELL_LAYERS} (the cell is repeated "
                     f"to the model's depth)")
            for i, layer in enumerate(cell):
                # names before shapes: a misspelt op is the likelier mistake and must be named as such,
                # not reported as a wrong op count
                for op in layer if isinstance(layer, list) else ():
                    if not isinstance(op, str) or op not in candidates:
                        fail(f"{side}.cell[{i}]: unknown op {_short(op)}; valid ops: {', '.join(candidates)}")
                if not isinstance(layer, list) or len(layer) != splits:
                    fail(f"{side}.cell[{i}] must list {splits} ops (one per searchable node), got {_short(layer)}")
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
            # json reads NaN and Infinity; a probability must be a finite number in [0, 1]
            bad = next(((i, j, v) for i, r in enumerate(probs) for j, p in enumerate(r) for v in p
                        if not (math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6)), None)
            if bad is not None:
                fail(f"{side}.probabilities[{bad[0]}][{bad[1]}]: must be finite numbers in [0, 1], "
                     f"got {bad[2]!r}")
            sides[side] = CellGenotype(candidates, [list(r) for r in cell],
                                       [[[float(v) for v in p] for p in r] for r in probs])
        derivation = data.get("derivation")
        if derivation is not None:
            excluded = derivation.get("excluded", []) if isinstance(derivation, dict) else None
            if not isinstance(excluded, list) or not all(isinstance(op, str) for op in excluded):
                fail(f"derivation must be an object whose 'excluded' is a list of op names, got {_short(derivation)}")
        return Genotype(splits, pooling, sides["encoder"], sides["decoder"], derivation)


def derive_genotype(supernet, allow_zero: bool = False) -> Genotype:
    """Argmax of softmax(α) per node of a ``Supernet``, over the candidates except ``zero`` (DARTS'
    rule) unless ``allow_zero``. A side whose only candidates are excluded ones keeps the plain argmax."""
    excluded = () if allow_zero else EXCLUDED_WHEN_DERIVING
    sides = {}
    for side in SIDES:
        candidates = list(supernet.config.ops(side))
        allowed = [i for i, c in enumerate(candidates) if c not in excluded] or list(range(len(candidates)))
        cell, probs = [], []
        for row in supernet.alpha_grid(side):
            p = [torch.softmax(a.detach().double(), 0).tolist() for a in row]
            probs.append(p)
            # ties go to the first candidate, as before
            cell.append([candidates[max(allowed, key=lambda i: (q[i], -i))] for q in p])
        sides[side] = CellGenotype(candidates, cell, probs)
    return Genotype(supernet.config.splits, supernet.config.pooling, sides["encoder"], sides["decoder"],
                    derivation={"rule": "argmax", "excluded": list(excluded)})


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
