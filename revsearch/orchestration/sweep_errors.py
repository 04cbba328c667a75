"""One line per problem: pydantic's validation errors of a sweep turned into ``ConfigError`` messages.

Every message reads ``<file>: <dotted.key>: <what is allowed>, got <value>``. What is allowed is
derived from the field's type and constraints (``describe``; the reference tables use the same
words), so a bound changed in the models changes the messages and the documentation with it.
Checks that span several keys raise ``problem(path, message)`` from a validator; the path is relative
to the model the validator belongs to.
"""
from __future__ import annotations

import difflib
import re
import reprlib
import types
import typing
from typing import Any, List, Optional, Sequence, Tuple

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from ..errors import ConfigError

INT64_MAX = 2 ** 63 - 1
PROBLEM = "sweep_problem"


# --- values in messages ---------------------------------------------------------------------------
def quoted_value(value: Any, limit: int = 60) -> str:
    """A short one-line repr for messages. Bounded work: containers are cut before they are rendered
    (a value built from YAML aliases can stand for billions of elements; its full repr would never end)."""
    shower = reprlib.Repr()
    shower.maxlevel, shower.maxlist, shower.maxtuple, shower.maxdict = 3, 8, 8, 8
    shower.maxset = shower.maxfrozenset = shower.maxdeque = shower.maxarray = 8
    shower.maxstring = shower.maxother = shower.maxlong = max(limit, 8)
    try:
        text = shower.repr(value)
    except Exception:  # a broken __repr__ (or an int too long to print) must not turn into a traceback
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def one_line(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_path(path: Sequence[Any]) -> str:
    """``("search", "betas", 1)`` -> ``search.betas[1]``."""
    parts: List[str] = []
    for p in path:
        if is_int(p):
            parts.append(f"[{p}]")
        elif isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_-]+", p):
            parts.append(("." if parts else "") + p)
        else:
            parts.append(("." if parts else "") + quoted_value(p, 40))
    return "".join(parts)


def located(source: str, path: Sequence[Any], message: str) -> ConfigError:
    return ConfigError(f"{source}: {key_path(path)}: {message}" if path else f"{source}: {message}")


def problem(path: Sequence[Any], message: str) -> PydanticCustomError:
    """A cross-key problem raised inside a validator; ``path`` is relative to the validated value."""
    return PydanticCustomError(PROBLEM, "{message}", {"message": message, "path": tuple(path)})


# --- what a field allows --------------------------------------------------------------------------
def unwrap(annotation: Any) -> Tuple[Any, list, bool]:
    """(bare type, constraint metadata, nullable) of an annotation (Annotated / Optional peeled)."""
    metadata: list = []
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, metadata, nullable
            annotation = args[0]
        else:
            return annotation, metadata, nullable


def allowed_override(info: Optional[FieldInfo]) -> Optional[str]:
    extra = info.json_schema_extra if info is not None else None
    return extra.get("allowed") if isinstance(extra, dict) else None


def _bounds(noun: str, metadata: list) -> str:
    low = high = None
    low_open = high_open = False
    for m in metadata:
        if isinstance(m, at.Ge):
            low = m.ge
        elif isinstance(m, at.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, at.Le) and m.le != INT64_MAX:
            high = m.le
        elif isinstance(m, at.Lt):
            high, high_open = m.lt, True
    if low is not None and high is not None:
        return (f"{noun} in {'(' if low_open else '['}{number_text(low)}, "
                f"{number_text(high)}{')' if high_open else ']'}")
    if low is not None:
        return f"{noun} {'>' if low_open else '>='} {number_text(low)}"
    if high is not None:
        return f"{noun} {'<' if high_open else '<='} {number_text(high)}"
    return noun


def describe(annotation: Any, info: Optional[FieldInfo] = None, nullable_prefix: bool = True) -> str:
    """What a value of this field may be, in words: ``an integer >= 2``, ``null or a number > 0``."""
    override = allowed_override(info)
    if override:
        return override
    base, metadata, nullable = unwrap(annotation)
    metadata = metadata + list(info.metadata if info is not None else [])
    if base is bool:
        text = "true or false"
    elif base is int:
        text = _bounds("an integer", metadata)
    elif base is float:
        text = _bounds("a number", metadata)
    elif typing.get_origin(base) is typing.Literal:
        text = "one of: " + ", ".join(map(str, typing.get_args(base)))
    elif isinstance(base, type) and issubclass(base, BaseModel):   # null is the defaults: not worth saying
        return "a mapping with keys " + ", ".join(k for k, f in base.model_fields.items() if not f.exclude)
    elif base is str:
        text = "a string"
    else:
        text = "a valid value"
    return f"null or {text}" if nullable and nullable_prefix else text


def value_kind(annotation: Any) -> str:
    """int | float | bool | str | other: the kind of a setting (which space types may set it)."""
    base = unwrap(annotation)[0]
    if base in (int, float, bool, str):
        return base.__name__
    return "str" if typing.get_origin(base) is typing.Literal else "other"


def field_at(model: type, loc: Sequence[Any]) -> Tuple[Any, Optional[FieldInfo], Optional[type]]:
    """(annotation, FieldInfo, owning model) of the value at ``loc`` under ``model``; the annotation is
    None where ``loc`` leaves the declared types."""
    annotation: Any = model
    info: Optional[FieldInfo] = None
    owner: Optional[type] = None
    for part in loc:
        base = unwrap(annotation)[0]
        origin, args = typing.get_origin(base), typing.get_args(base)
        if isinstance(base, type) and issubclass(base, BaseModel) and isinstance(part, str):
            info = base.model_fields.get(part)
            if info is None:
                return None, None, base
            annotation, owner = info.annotation, base
        elif origin in (list, tuple) and is_int(part) and args:
            annotation = args[0] if origin is list or args[-1] is Ellipsis else args[min(part, len(args) - 1)]
            info = None
        elif origin is dict and args:
            annotation, info = args[1], None
        else:
            return None, None, owner
    return annotation, info, owner


def _did_you_mean(value: Any, options: Sequence[str]) -> str:
    hint = difflib.get_close_matches(value, list(options), n=1) if isinstance(value, str) else []
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def error_line(error: dict, model: type) -> Tuple[Tuple[Any, ...], str]:
    """(path, message) of one pydantic error dict of ``model.model_validate``."""
    loc = tuple(error["loc"])
    kind, value = error["type"], error.get("input")
    if kind == PROBLEM:
        return loc + tuple(error["ctx"]["path"]), error["ctx"]["message"]
    if kind == "extra_forbidden":
        owner = field_at(model, loc[:-1])[0]
        fields_ = unwrap(owner)[0].model_fields if owner is not None else {}
        allowed = [k for k, f in fields_.items() if not f.exclude]
        return loc, f"unknown key{_did_you_mean(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
    annotation, info, _ = field_at(model, loc)
    if kind == "missing" and loc and is_int(loc[-1]):   # a tuple too short: the tuple is wrong
        annotation, info, _ = field_at(model, loc[:-1])
        return loc[:-1], f"must be {describe(annotation, info)}, got {quoted_value(value)}"
    if kind == "missing":
        extra = info.json_schema_extra if info is not None else None
        note = extra.get("required") if isinstance(extra, dict) else None
        return loc, "required" + (f": {note}" if note else "")
    if annotation is None:
        return loc, f"invalid value {quoted_value(value)}: {one_line(error.get('msg', ''), 120)}"
    return loc, f"must be {describe(annotation, info)}, got {quoted_value(value)}" + literal_hint(annotation, value)


def _document_order(error: dict, model: type) -> Tuple[int, ...]:
    """Where an error sits in a depth-first walk of the document that checks a mapping's unknown keys
    before its values (a misspelt key explains the missing value below it), fields in declaration order."""
    loc = tuple(error["loc"])
    order = []
    for depth, part in enumerate(loc):
        owner = unwrap(field_at(model, loc[:depth])[0])[0]
        names = list(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
        if error["type"] == "extra_forbidden" and depth == len(loc) - 1:
            order.append(-1)
        elif part in names:
            order.append(names.index(part))
        else:
            order.append(part if is_int(part) else 0)
    return tuple(order)


def first_error(exc: ValidationError, model: type) -> Tuple[Tuple[Any, ...], str]:
    """The problem to report: the first in document order (see ``_document_order``)."""
    errors = exc.errors(include_url=False)
    return error_line(min(errors, key=lambda e: _document_order(e, model)), model)


def literal_hint(annotation: Any, value: Any) -> str:
    """`` (did you mean 'max'?)`` for a misspelt choice of a ``Literal`` field, else ''."""
    base = unwrap(annotation)[0]
    if typing.get_origin(base) is typing.Literal:
        return _did_you_mean(value, [str(a) for a in typing.get_args(base)])
    return ""
