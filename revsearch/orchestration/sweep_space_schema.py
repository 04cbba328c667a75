"""The ``space`` section: Optuna parameters over search/data settings, checked against those settings.

Each entry's keys are checked by the model of its type (``SPEC_MODELS``, unknown keys rejected);
``build_space`` then checks the values against the setting a parameter overrides (the setting's own
pydantic type, ``check_setting``), the order rules of ``derived`` and ``when``, and returns the
``SpaceParam``s in file order. Problems are raised with ``problem`` (paths relative to ``space``).
"""
from __future__ import annotations

import difflib
import math
import re
from functools import lru_cache
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from typing_extensions import Annotated

from ..errors import ConfigError
from .space_expr import expr_names
from .sweep_errors import (INT64_MAX, describe, first_error, is_int, literal_hint, number_text, one_line, problem,
                           quoted_value, value_kind)
from .sweep_search import SEARCH_SPACE_KEYS, SearchSection
from .sweep_sections import FULL_OP_SET, DataSection

SPACE_TYPES = ("choice", "int", "uniform", "loguniform", "derived")
#: data settings a space parameter may override
DATA_SPACE_KEYS = ("vocab_size", "spm_model_type", "max_tokens", "arch_fraction", "max_len")
#: values of one ``choice`` parameter (the load-time combination check and Optuna enumerate them)
MAX_CHOICE_VALUES = 10_000
PARAM_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


# --- the settings a parameter may override --------------------------------------------------------
def setting_target(name: str) -> Optional[str]:
    return "search" if name in SEARCH_SPACE_KEYS else "data" if name in DATA_SPACE_KEYS else None


def setting_field(target: str, key: str) -> FieldInfo:
    return (SearchSection if target == "search" else DataSection).model_fields[key]


@lru_cache(maxsize=None)
def _adapter(target: str, key: str) -> TypeAdapter:
    info = setting_field(target, key)
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def check_setting(target: str, key: str, value: Any, nullable: bool = True) -> Any:
    """``value`` validated as the setting ``target.key`` (normalized: an int for a number becomes a
    float); raises ``ValueError`` with 'must be ..., got ...'. ``nullable=False``: a bound, never null."""
    try:
        return _adapter(target, key).validate_python(value)
    except ValidationError:
        info = setting_field(target, key)
        raise ValueError(f"must be {describe(info.annotation, info, nullable_prefix=nullable)}, got "
                         f"{quoted_value(value)}{literal_hint(info.annotation, value)}") from None


def setting_kind(target: str, key: str) -> str:
    return value_kind(setting_field(target, key).annotation)


# --- the entries ----------------------------------------------------------------------------------
class _Spec(BaseModel):
    """The keys of one entry (their values are checked by ``build_space``); ``when`` is last in each."""
    model_config = ConfigDict(extra="forbid")


WHEN = Field(None, description="`{earlier_param: value or [values]}`: sampled only when every named earlier "
                               "parameter has one of the values")


class ChoiceSpec(_Spec):
    type: Literal["choice"]
    values: Any = Field(None, description=f"non-empty list of at most {MAX_CHOICE_VALUES:,} distinct null / bool "
                                          f"/ int / float / str")
    when: Any = WHEN


class IntSpec(_Spec):
    type: Literal["int"]
    low: Any = None
    high: Any = None
    step: Any = 1
    log: Any = False
    when: Any = WHEN


class UniformSpec(_Spec):
    type: Literal["uniform"]
    low: Any = None
    high: Any = None
    when: Any = WHEN


class LogUniformSpec(_Spec):
    type: Literal["loguniform"]
    low: Any = None
    high: Any = None
    when: Any = WHEN


class DerivedSpec(_Spec):
    type: Literal["derived"]
    expr: Any = None
    when: Any = WHEN


SPEC_MODELS = {"choice": ChoiceSpec, "int": IntSpec, "uniform": UniformSpec, "loguniform": LogUniformSpec,
               "derived": DerivedSpec}


class SpaceParam(BaseModel):
    """One entry of ``space``. ``target`` is "search" / "data" for a setting it overrides, None for a
    helper only read by ``derived`` expressions or ``when`` conditions."""
    name: str
    type: str
    values: Optional[List[Any]] = None     # choice
    low: Optional[Union[int, float]] = None
    high: Optional[Union[int, float]] = None
    step: Optional[int] = None             # int (default 1)
    log: bool = False                      # int (loguniform is always log)
    expr: Optional[str] = None             # derived
    when: Dict[str, List[Any]] = Field(default_factory=dict)
    target: Optional[str] = None

    @property
    def sampled(self) -> bool:
        return self.type != "derived"

    def to_dict(self) -> dict:
        out: Dict[str, Any] = {"type": self.type}
        if self.type == "choice":
            out["values"] = list(self.values)
        elif self.type == "derived":
            out["expr"] = self.expr
        else:
            out["low"], out["high"] = self.low, self.high
            if self.type == "int":
                out["step"], out["log"] = self.step, self.log
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


# --- checking -------------------------------------------------------------------------------------
def build_space(raw: Any, op_sets: Dict[str, Any]) -> Dict[str, SpaceParam]:
    """The checked parameters of a ``space`` mapping, in file order."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise problem((), f"must be a mapping of parameter name -> {{type: ...}}, got {quoted_value(raw)}")
    for name in raw:
        if not isinstance(name, str) or not re.match(PARAM_PATTERN, name):
            raise problem((name,), "parameter names must be identifiers (letters, digits, _; not starting "
                                   "with a digit)")
    params: Dict[str, SpaceParam] = {}
    referenced = set()
    for name, spec in raw.items():
        target = setting_target(name)
        if not isinstance(spec, dict):
            raise problem((name,), f"must be a mapping with a type ({', '.join(SPACE_TYPES)}), got {quoted_value(spec)}")
        kind = spec.get("type")
        if kind not in SPACE_TYPES:
            raise problem((name, "type"), ("required" if kind is None else f"unknown type {quoted_value(kind)}")
                          + f"; one of: {', '.join(SPACE_TYPES)}")
        try:
            SPEC_MODELS[kind].model_validate(spec)
        except ValidationError as e:
            path, message = first_error(e, SPEC_MODELS[kind])
            raise problem((name,) + path, message) from None
        param = SpaceParam(name=name, type=kind, target=target)
        if kind == "choice":
            param.values = _choice_values(spec.get("values"), (name, "values"), target, name, op_sets)
        elif kind == "derived":
            param.expr = _derived(spec.get("expr"), (name,), params, target, name)
            referenced.update(expr_names(param.expr))
        else:
            _range(param, spec, (name,), target)
        param.when = _when(spec.get("when"), (name, "when"), params)
        referenced.update(param.when)
        params[name] = param
    for name, param in params.items():
        if param.target is None and name not in referenced:
            settings = SEARCH_SPACE_KEYS + DATA_SPACE_KEYS
            hint = difflib.get_close_matches(name, settings, n=1)
            raise problem((name,), "unknown setting: not a search or data key, and no derived expression or "
                                   "when condition reads it" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; settings: {', '.join(settings)}")
    return params


def _reference(name: str, earlier: Dict[str, SpaceParam], path: Tuple) -> None:
    if name not in earlier:
        known = ", ".join(earlier) or "(none: no earlier parameters)"
        raise problem(path, f"unknown name {name!r}; known: {known}")
    if earlier[name].when and earlier[name].target is None:
        raise problem(path, f"{name!r} is conditional (when) and has no default when skipped; only "
                            f"unconditional parameters or search/data settings can be read")


def _derived(expr: Any, where: Tuple, earlier: Dict[str, SpaceParam], target: Optional[str], name: str) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise problem(where + ("expr",), f"must be an arithmetic expression over earlier parameters, "
                                         f"got {quoted_value(expr)}")
    try:
        used = expr_names(expr)
    except ConfigError as e:
        raise problem(where + ("expr",), one_line(e)) from None
    for used_name in used:
        _reference(used_name, earlier, where + ("expr",))
    if target is not None and setting_kind(target, name) not in ("int", "float"):
        raise problem(where + ("type",), f"{target}.{name} is not numeric; derived parameters can only set "
                                         f"numeric settings")
    return expr


def _choice_values(values: Any, path: Tuple, target: Optional[str], name: str, op_sets: Dict[str, Any]) -> list:
    if not isinstance(values, list) or not values:
        raise problem(path, f"must be a non-empty list, got {quoted_value(values)}")
    if len(values) > MAX_CHOICE_VALUES:
        raise problem(path, f"{len(values):,} values; at most {MAX_CHOICE_VALUES:,} (a space this large cannot "
                            f"be enumerated or usefully searched; use type int, uniform or loguniform for a range)")
    out = []
    seen = set()   # hashable scalars; set membership is == (1 == 1.0 == True)
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise problem(path + (i,), f"must be null, a boolean, a number or a string, got {quoted_value(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise problem(path + (i,), f"must be a finite number, got {quoted_value(v)}")
        if is_int(v) and abs(v) > INT64_MAX:
            raise problem(path + (i,), f"must fit in 64 bits, got {quoted_value(v)}")
        if target is not None:
            try:
                check_setting(target, name, v)
            except ValueError as e:
                raise problem(path + (i,), str(e)) from None
            if name == "op_set" and v not in (FULL_OP_SET, *op_sets):
                raise problem(path + (i,), f"unknown op set {quoted_value(v)}; defined: "
                                           f"{', '.join((FULL_OP_SET,) + tuple(op_sets))}")
        if v in seen:
            raise problem(path + (i,), f"duplicate value {quoted_value(v)} (equal to an earlier one)")
        seen.add(v)
        out.append(v)
    return out


def _number(value: Any, kind: str, path: Tuple) -> Any:
    ok = (is_int(value) and abs(value) <= INT64_MAX) if kind == "int" else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if ok and kind != "int":
        try:
            ok = math.isfinite(float(value))
        except OverflowError:
            ok = False
    if not ok:
        raise problem(path, f"must be {'an integer' if kind == 'int' else 'a number'}, got {quoted_value(value)}")
    return value if kind == "int" else float(value)


def _range(param: SpaceParam, spec: dict, where: Tuple, target: Optional[str]) -> None:
    kind = param.type
    if target is not None:
        setting = setting_kind(target, param.name)
        if setting != ("int" if kind == "int" else "float"):
            uses = {"int": "int, choice or derived", "float": "uniform, loguniform, choice or derived"}.get(
                setting, "choice")
            info = setting_field(target, param.name)
            raise problem(where + ("type",), f"{target}.{param.name} is {describe(info.annotation, info)}; "
                                             f"use type {uses}")
    bounds = {}
    for key in ("low", "high"):
        if key not in spec:
            raise problem(where + (key,), f"required for type {kind}")
        value = _number(spec[key], "int" if kind == "int" else "float", where + (key,))
        if target is not None:
            try:
                check_setting(target, param.name, value, nullable=False)
            except ValueError as e:
                raise problem(where + (key,), str(e)) from None
        bounds[key] = value
    low, high = bounds["low"], bounds["high"]
    if not low < high:
        raise problem(where + ("high",), f"must be > low ({number_text(low)}), got {number_text(high)}")
    if kind == "loguniform" and low <= 0:
        raise problem(where + ("low",), f"must be > 0 for type loguniform, got {number_text(low)}")
    if kind == "int":
        if abs(low) > 2 ** 62 or abs(high) > 2 ** 62:
            raise problem(where + ("high",), "bounds must fit in 63 bits")
        log, step = spec.get("log", False), spec.get("step", 1)
        if not isinstance(log, bool):
            raise problem(where + ("log",), f"must be true or false, got {quoted_value(log)}")
        if not (is_int(step) and 1 <= step <= INT64_MAX):
            raise problem(where + ("step",), f"must be an integer >= 1, got {quoted_value(step)}")
        if log and step != 1:
            raise problem(where + ("step",), f"must be 1 when log is true, got {step}")
        if log and low < 1:
            raise problem(where + ("low",), f"must be >= 1 when log is true, got {low}")
        if (high - low) % step:
            raise problem(where + ("high",), f"high - low ({high - low}) must be a multiple of step ({step})")
        param.log, param.step = log, step
    param.low, param.high = low, high


def _when(raw: Any, path: Tuple, earlier: Dict[str, SpaceParam]) -> Dict[str, List[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise problem(path, f"must be a mapping of earlier parameter -> value (or list of values), got {quoted_value(raw)}")
    out = {}
    for name, wanted in raw.items():
        where = path + (name,)
        if not isinstance(name, str):
            raise problem(where, "must name an earlier parameter")
        _reference(name, earlier, where)
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values:
            raise problem(where, "must be a value or a non-empty list of values")
        ref = earlier[name]
        for v in values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise problem(where, f"values must be null, booleans, numbers or strings, got {quoted_value(v)}")
            if ref.type == "choice" and v not in ref.values:
                raise problem(where, f"{quoted_value(v)} is not one of {name}'s values "
                                     f"({', '.join(quoted_value(c) for c in ref.values)})")
            if ref.type == "int" and not (is_int(v) and ref.low <= v <= ref.high):
                raise problem(where, f"{quoted_value(v)} is outside {name}'s range [{ref.low}, {ref.high}]")
        out[name] = list(values)
    return out
