"""docs/sweep-reference.md: its key tables are the ones generated from the sweep models."""
from __future__ import annotations

import os

from revsearch.orchestration.sweep_model import SweepConfig
from revsearch.orchestration.sweep_reference import TABLES, render_table, update_document

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "sweep-reference.md")


def test_reference_tables_match_the_models():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    for name in TABLES:
        assert f"<!-- generated: {name} -->" in text, f"{name}: table markers missing"
    assert update_document(text) == text, ("docs/sweep-reference.md drifted from the sweep models; run "
                                           "python -m revsearch.orchestration.sweep_reference --write")


def test_generated_rows_follow_the_models():
    """Every top-level key has a row, and a row says what the error messages say is allowed."""
    table = render_table("top-level")
    for key in SweepConfig.model_fields:
        if key != "source":
            assert f"| `{key}` |" in table, key
    assert "| `num_samples` | int | `4` | an integer in [1, 10000] |" in table
    search = render_table("search")
    assert "| `splits` | int | `2` | an integer >= 2 |" in search   # SupernetConfig's default


def test_update_document_replaces_only_between_markers():
    text = "prose\n<!-- generated: resources -->\nold\n<!-- end generated: resources -->\nmore prose\n"
    updated = update_document(text)
    assert updated.startswith("prose\n<!-- generated: resources -->\n| key |")
    assert updated.endswith("<!-- end generated: resources -->\nmore prose\n")
    assert "old" not in updated and "`cpu`" in updated
