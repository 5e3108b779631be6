"""The source root `platform/` must never shadow the standard library's `platform` module."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_is_the_standard_library_module_from_repo_root():
    assert not (ROOT / "platform" / "__init__.py").exists()
    code = "import platform, sysconfig; print(platform.__file__); print(sysconfig.get_paths()['stdlib'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    module_file, stdlib = out.stdout.split("\n")[:2]
    assert Path(module_file).resolve().parent == Path(stdlib).resolve()
    assert hasattr(__import__("platform"), "python_version")


def test_models_package_does_not_import_ray():
    code = "import sys, modelfoundry.models; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _runtime_closure() -> set[str]:
    """Every distribution `pip install modelfoundry` (no extras) brings in, from pyproject.toml's
    dependencies and the installed packages' own requirements."""
    import re
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [(Requirement(d), "") for d in deps]
    seen: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = norm(req.name)
        for e in req.extras or [""]:
            key = f"{name}[{e}]"
            if key in seen:
                continue
            seen.add(key)
            try:
                todo += [(Requirement(r), e) for r in metadata.requires(req.name) or []]
            except metadata.PackageNotFoundError:
                continue
    return {k.split("[")[0] for k in seen}


def _imports(tree) -> list[tuple[str, bool]]:
    """(top-level module, guarded by an `except ImportError`) for every absolute import."""
    import ast

    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in guarded) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], id(node) in guarded))
    return out


def test_every_runtime_import_comes_from_the_runtime_dependencies():
    """`pip install .` without extras, then `foundry run`: every import anywhere in the library
    (function bodies included, where lazy imports hide) is the standard library, a distribution
    the runtime dependencies install, or an optional one behind `except ImportError` with a
    message naming its extra."""
    import ast
    import re
    from importlib import metadata

    closure = _runtime_closure()
    providers = metadata.packages_distributions()
    assert {"torch", "ray", "fastapi", "starlette", "numpy"} <= closure
    bad = []
    for path in sorted((ROOT / "platform" / "modelfoundry").rglob("*.py")):
        for top, is_guarded in _imports(ast.parse(path.read_text())):
            if top in sys.stdlib_module_names or top in ("modelfoundry", "__future__") or is_guarded:
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(top, [])}
            if not dists & closure:
                bad.append(f"{path.relative_to(ROOT)}: import {top} (from {sorted(dists) or 'nothing installed'})")
    assert not bad, "imports outside the runtime dependencies:\n" + "\n".join(bad)
    # the check does catch one: the test extra's HTTP client
    assert not {"httpx"} & closure and _imports(ast.parse("def f():\n    import httpx\n")) == [("httpx", False)]


def test_the_installed_set_is_the_pinned_set():
    """constraints.txt pins every distribution the runtime dependencies bring in, and this
    environment (made by `make setup`, as CI's is) holds exactly those versions."""
    import re
    from importlib import metadata

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[norm(name)] = version.strip()
    missing = sorted(_runtime_closure() - set(pins))
    assert not missing, f"not pinned in constraints.txt: {missing}"
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra's package this environment does not hold
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
    for text in ((ROOT / "Makefile").read_text(), (ROOT / "cluster.yaml").read_text()):
        assert "-c constraints.txt" in text or "-c /home/ubuntu/modelfoundry/constraints.txt" in text
