"""The house rules of the package, checked on the source: lower layers never import higher ones, Ray /
Optuna / MLflow stay at the edge, no two modules import each other (directly or around a loop), and no
private name is imported across modules. Every import counts, including the ones inside functions: a
lazy import is still a dependency."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "revsearch")

# package -> the revsearch packages it may import (itself always allowed); top-level modules are leaves
ALLOWED = {
    "reversible": {"errors"},
    "ops": {"errors", "reversible"},
    "models": {"errors", "special_tokens", "ops", "reversible"},
    "learning": {"errors", "special_tokens"},
    "data": {"errors", "special_tokens"},
    "search": {"errors", "special_tokens", "learning", "models", "ops", "reversible", "data"},
    "train": {"errors", "special_tokens", "learning", "models", "ops", "reversible", "data", "search"},
}
EDGE_LIBRARIES = ("ray", "optuna", "mlflow")
EDGE_PACKAGES = {"orchestration", "commands", "cli", "interrupts"}


def modules():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield rel[:-len(".__init__")] if rel.endswith(".__init__") else rel, path


def imports(module, path):
    """(imported module, imported names) for every import statement of a module, absolute."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            names = [a.name for a in node.names]
            # `from . import x` imports the module x
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            yield (target, names) if not subs else (subs[0], [])
            for extra in subs[1:]:
                yield extra, []


MODULES = dict(modules())
GRAPH = {m: list(imports(m, p)) for m, p in MODULES.items()}


def layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_lower_layers_never_import_higher_ones(package):
    wrong = [(m, t) for m, deps in GRAPH.items() if layer(m) == package
             for t, _ in deps if t.startswith("revsearch.") and layer(t) not in ALLOWED[package] | {package}]
    assert not wrong, wrong


def test_ray_optuna_mlflow_stay_at_the_edge():
    wrong = [(m, t) for m, deps in GRAPH.items() if layer(m) not in EDGE_PACKAGES
             for t, _ in deps if t.split(".")[0] in EDGE_LIBRARIES]
    assert not wrong, wrong


def test_no_import_cycles_between_modules():
    edges = {m: {t for t, _ in deps if t in MODULES and t != m and not m.startswith(t + ".")
                 and not t.endswith("__init__")}
             for m, deps in GRAPH.items()}
    # a package's __init__ re-exporting its own modules is not a cycle worth reporting
    edges = {m: {t for t in ts if not (m == t.rpartition(".")[0] or t == m.rpartition(".")[0])}
             for m, ts in edges.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_private_name_is_imported_across_modules():
    wrong = [(m, t, n) for m, deps in GRAPH.items() for t, names in deps if t.startswith("revsearch")
             for n in names if n.startswith("_") and not n.startswith("__")]
    assert not wrong, wrong


def test_one_definition_of_each_special_token_id():
    defined = []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                names = [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
                defined += [(module, n) for n in names if n in ("PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID")]
    assert sorted({m for m, _ in defined}) == ["revsearch.special_tokens"], defined
