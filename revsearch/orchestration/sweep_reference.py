"""The key tables of docs/sweep-reference.md, generated from the sweep models.

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` in the
document; the prose around them is written by hand. ``update_document(text)`` replaces every table;
tests/test_sweep_reference.py fails when the committed document differs from it.

    python -m revsearch.orchestration.sweep_reference            # print the tables
    python -m revsearch.orchestration.sweep_reference --write    # rewrite docs/sweep-reference.md
    python -m revsearch.orchestration.sweep_reference --check    # exit 1 when it has drifted
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import typing
from typing import Any, Dict, List, Tuple

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .sweep_errors import describe, unwrap
from .sweep_model import SweepConfig
from .sweep_retrain import RetrainSection, SizeSection
from .sweep_search import ProxyRetrainSection, SearchSection
from .sweep_sections import (DataSection, ObjectiveSection, ResourcesSection, SchedulerSection, SyntheticSection,
                             TrackingSection)

#: table name -> (model, keys left out: documented in their own table)
TABLES: Dict[str, Tuple[type, Tuple[str, ...]]] = {
    "top-level": (SweepConfig, ("source",)),
    "data": (DataSection, ()),
    "data.synthetic": (SyntheticSection, ()),
    "search": (SearchSection, ()),
    "search.proxy_retrain": (ProxyRetrainSection, ()),
    "objective": (ObjectiveSection, ()),
    "scheduler": (SchedulerSection, ()),
    "resources": (ResourcesSection, ()),
    "retrain": (RetrainSection, ()),
    "retrain.size": (SizeSection, ()),
    "tracking": (TrackingSection, ()),
}
DOCUMENT = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "sweep-reference.md")
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                   re.S)


def _extra(info: FieldInfo, key: str) -> Any:
    extra = info.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


def _yaml(value: Any) -> str:
    """A value as it is written in a sweep file (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type(info: FieldInfo) -> str:
    if _extra(info, "type"):
        return _extra(info, "type")
    base, _, nullable = unwrap(info.annotation)
    origin = typing.get_origin(base)
    if isinstance(base, type) and issubclass(base, BaseModel) or origin is dict:
        name = "mapping"
    elif origin is typing.Literal or base is str:
        name = "string"
    else:
        name = {int: "int", float: "number", bool: "bool", list: "list", tuple: "list"}.get(origin or base, "any")
    return f"{name} or null" if nullable else name


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{_yaml(value)}`"
    return f"`{_yaml(info.default)}`"


def _allowed(info: FieldInfo) -> str:
    base = unwrap(info.annotation)[0]
    if isinstance(base, type) and issubclass(base, BaseModel) and not _extra(info, "allowed"):
        text = ""
    else:
        text = describe(info.annotation, info)
    rules = _extra(info, "rules")
    return "; ".join(t for t in (text, rules) if t)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_table(name: str) -> str:
    model, skipped = TABLES[name]
    rows: List[str] = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for key, info in model.model_fields.items():
        if key in skipped:
            continue
        cells = (f"`{key}`", _type(info), _default(info), _allowed(info), info.description or "")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def update_document(text: str) -> str:
    """``text`` with every generated table replaced by the current one (unknown names are errors)."""
    def replace(match: re.Match) -> str:
        if match.group("name") not in TABLES:
            raise KeyError(f"unknown generated table {match.group('name')!r}; known: {', '.join(TABLES)}")
        return match.group(1) + render_table(match.group("name")) + match.group(4)
    return BLOCK.sub(replace, text)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in docs/sweep-reference.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/sweep-reference.md has drifted")
    parser.add_argument("--document", default=os.path.normpath(DOCUMENT), help="the reference to update")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for name in TABLES:
            sys.stdout.write(f"<!-- generated: {name} -->\n{render_table(name)}<!-- end generated: {name} -->\n\n")
        return 0
    with open(args.document, encoding="utf-8") as f:
        text = f.read()
    updated = update_document(text)
    if args.check:
        if updated != text:
            print(f"{args.document}: the generated tables differ from the sweep models; run "
                  f"python -m revsearch.orchestration.sweep_reference --write", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        with open(args.document, "w", encoding="utf-8") as f:
            f.write(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
