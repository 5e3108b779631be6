"""The house rules of the source tree (docs/architecture.md): imports go down the floors, never
up; training and serving never import each other; no import cycle; modules and functions stay
small. Measured on the source (AST), in a second: a unit test."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "platform"
# the floors, bottom up (docs/architecture.md); a module may import its own floor and those below
FLOORS = [
    ("models/", "compression/quantize.py", "compression/int8.py", "compression/prune.py", "config.py", "config_flat.py", "storage.py", "console.py", "__init__.py"),
    ("tasks.py", "data/", "store/"),
    ("tracking.py", "compression/codecs.py", "runs.py"),
    ("training/", "serving/", "compression/measure.py", "export_formats.py"),
    ("tuning/", "compression/run.py", "compression/config.py", "compression/__init__.py"),
    ("cli/", "quickstart.py", "cluster.py", "localcluster.py", "submit.py"),
]  # fmt: skip
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def _modules() -> dict[str, tuple[str, ast.Module, int]]:
    """module name -> (path under modelfoundry/, its AST, its line count)."""
    out = {}
    for p in sorted((ROOT / "modelfoundry").rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        text = p.read_text()
        out[name] = (str(p.relative_to(ROOT / "modelfoundry")), ast.parse(text), len(text.splitlines()))
    return out


def _floor(rel: str) -> int:
    for i, prefixes in enumerate(FLOORS, start=1):
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes):
            return i
    raise AssertionError(f"{rel} is on no floor: add it to FLOORS (and docs/architecture.md)")


def _imports(tree: ast.AST, modules: dict, top_level_only: bool) -> set[str]:
    """The platform modules `tree` imports (in function bodies too unless top_level_only)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import sub` imports the submodule (pkg/__init__ too, but that is its own edge
            # only when a name comes from it)
            subs = [f"{node.module}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in modules] or [node.module]
            if len(targets) < len(subs):
                targets.append(node.module)
        for t in targets:
            while t.startswith("modelfoundry") and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("modelfoundry"):
                found.add(t)
    return found


def test_imports_go_down_the_floors_and_training_and_serving_never_meet():
    modules = _modules()
    bad = []
    for name, (rel, tree, _) in modules.items():
        for target in _imports(tree, modules, top_level_only=False) - {name, "modelfoundry"}:
            other = modules[target][0]
            if _floor(other) > _floor(rel):
                bad.append(f"{rel} (floor {_floor(rel)}) imports {other} (floor {_floor(other)})")
            if {rel.split("/")[0], other.split("/")[0]} == {"training", "serving"}:
                bad.append(f"{rel} imports {other}: training and serving meet in store/ only")
    assert not bad, "\n".join(sorted(bad))
    # the check does catch one: the store reaching up into compression/ for its int8 loader
    probe = ast.parse("from modelfoundry.compression.quantize import load_quantized\nimport modelfoundry.tuning\n")
    assert _imports(probe, modules, False) == {"modelfoundry.compression.quantize", "modelfoundry.tuning"}
    assert _floor("store/checkpoint.py") < _floor("tuning/sweep.py")


def test_no_import_cycle():
    """Not at import time, nor through an import inside a function (one that only defers a cycle)."""
    modules = _modules()
    edges = {n: _imports(t, modules, top_level_only=False) - {n} for n, (_, t, _) in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycles.append(" -> ".join(path[path.index(v) :] + [v]))
            elif v not in state:
                visit(v, [*path, v])
        state[u] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_modules_and_functions_stay_small():
    modules = _modules()
    long_modules = {rel: n for rel, _, n in modules.values() if n > MAX_MODULE_LINES}
    long_functions = {
        f"{rel}:{node.name}": node.end_lineno - node.lineno + 1
        for rel, tree, _ in modules.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno >= MAX_FUNCTION_LINES
    }
    over = [f"{k}: {n} lines (the limit is {MAX_MODULE_LINES})" for k, n in long_modules.items()]
    over += [f"{k}: {n} lines (the limit is {MAX_FUNCTION_LINES})" for k, n in long_functions.items()]
    assert not over, "split these (docs/architecture.md, house rules):\n" + "\n".join(sorted(over))
