"""Citations of the method document stay true: every ``method.md`` a docstring or comment names is
``docs/method.md``, and every ``docs/method.md, "Section"`` names a heading that exists there."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "method.md"
CITING_DIRS = ("revsearch", "experiments", "tests")


def headings(markdown: str):
    """Heading texts of a Markdown file (ATX headings outside fenced code)."""
    found, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.add(m.group(1))
    return found


def joined(source: str) -> str:
    """The source with line breaks (and the comment markers that continue a comment) turned into single
    spaces, so a citation wrapped over two lines reads as one."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#:?[ \t]*)?", " ", source)


def citations():
    """(file, cited text) for every mention of method.md in the project's Python sources."""
    out = []
    for folder in CITING_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == Path(__file__).name:
                continue
            text = joined(path.read_text(encoding="utf-8"))
            for m in re.finditer(r"(\S*)method\.md(,\s*\"([^\"]+)\")?", text):
                out.append((path.relative_to(ROOT).as_posix(), m.group(1), m.group(3)))
    return out


def test_every_method_md_citation_points_to_an_existing_section():
    assert METHOD.is_file()
    sections = headings(METHOD.read_text(encoding="utf-8"))
    found = citations()
    assert len(found) >= 10   # the engine, the ops, the search and the models all cite it
    wrong_path = [(f, prefix + "method.md") for f, prefix, _ in found if not prefix.endswith("docs/")]
    assert not wrong_path, f"cite the file as docs/method.md: {wrong_path}"
    missing = [(f, section) for f, _, section in found if section is not None and section not in sections]
    assert not missing, f"sections not in docs/method.md: {missing}; headings there: {sorted(sections)}"


def test_the_readme_links_the_method_document():
    assert "(docs/method.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
