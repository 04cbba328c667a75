"""The value types of sweep settings, as pydantic annotations, and small helpers shared by the models.

Scalars are strict: an integer setting takes an integer (``300``, not ``300.0`` or ``true``), a number
takes an int or a finite float, a boolean only ``true``/``false``, a string only a string. Integers
are bounded to 64 bits.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from pydantic import Field
from typing_extensions import Annotated

from .sweep_errors import INT64_MAX


def Int(ge: Optional[int] = None, le: int = INT64_MAX) -> Any:
    """An integer in [ge, le] (no upper bound: 64 bits)."""
    return Annotated[int, Field(strict=True, ge=ge, le=le)]


def OptInt(ge: Optional[int] = None, le: int = INT64_MAX) -> Any:
    return Optional[Int(ge, le)]


def Number(ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
           lt: Optional[float] = None) -> Any:
    """A finite number (an int is taken as a float) with the given bounds."""
    return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=ge, gt=gt, le=le, lt=lt)]


def OptNumber(**bounds: Optional[float]) -> Any:
    return Optional[Number(**bounds)]


Probability = Number(ge=0.0, le=1.0)
#: dropout, label smoothing, Adam betas: [0, 1)
Fraction = Number(ge=0.0, lt=1.0)
#: resolved against the sweep file's directory by the section that holds it
DirectoryPath = Annotated[str, Field(strict=True)]


def doc(type: Optional[str] = None, allowed: Optional[str] = None, rules: Optional[str] = None) -> Dict[str, Any]:
    """``Field`` keywords for what the type does not say: the reference's *type* and *allowed* columns
    (``allowed`` also replaces the generated text in error messages) and cross-key ``rules``."""
    extra = {k: v for k, v in (("type", type), ("allowed", allowed), ("rules", rules)) if v is not None}
    return {"json_schema_extra": extra}


def plain(value: Any) -> Any:
    """Tuples as lists, recursively: the YAML/JSON form of a value."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
