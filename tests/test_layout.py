"""The package's layout holds: the library never imports the lab, no two modules import each other (even
lazily, inside a function), and the framework integrations use only what ``ggro`` exports publicly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ggro

SRC = Path(ggro.__file__).resolve().parent
REPO = SRC.parent.parent
INTEGRATIONS = REPO / "integrations"


def _module_name(path: Path, root: Path = SRC.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = SRC.parent) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import statement anywhere in the file (``root``:
    the folder its top-level package lies in, to resolve relative imports)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _library_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py") if not _module_name(p).startswith(("ggro.lab", "ggro.cli"))}


def _ggro_targets(module: str, names: list[str], known: set[str]) -> set[str]:
    """The ggro modules an import statement loads (``from ggro.x import y`` loads ggro.x.y when that is a module)."""
    targets = {module} if module in known else set()
    targets |= {f"{module}.{n}" for n in names if f"{module}.{n}" in known}
    return targets


def test_library_modules_import_nothing_from_the_lab() -> None:
    offenders = [
        f"{name}:{line} imports {module}"
        for name, path in _library_modules().items()
        for module, names, line in _imports(path)
        if module.startswith("ggro.lab") or (module == "ggro" and "lab" in names)
    ]
    assert not offenders, offenders


def test_the_lab_and_the_library_both_exist() -> None:
    lab = {_module_name(p) for p in (SRC / "lab").rglob("*.py")}
    assert {"ggro.lab.bench", "ggro.lab.eval.runner", "ggro.lab.gold", "ggro.lab.train_head"} <= lab
    assert {"ggro.decoder", "ggro.adapters", "ggro.loading", "ggro.rewards.hf"} <= set(_library_modules())


def test_no_two_modules_import_each_other() -> None:
    """No import cycle among ggro's modules, counting imports inside functions (a package's ``__init__`` is
    left out as a target: importing ``ggro.x`` runs it first anyway)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for module, names, _ in _imports(path):
            edges |= _ggro_targets(module, names, known)
        graph[name] = {t for t in edges if t != name and modules[t].name != "__init__.py"}
    cycles = []
    for start in graph:  # a depth-first search from every module: small graph
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, sorted(set(cycles))[:10]


def _integration_sources() -> list[tuple[Path, Path]]:
    """(source file, its package root) of each integration's library code (tests left out)."""
    return [
        (p, package)
        for package in sorted(INTEGRATIONS.iterdir())
        if package.is_dir()
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0] not in ("tests", ".venv", "build")
    ]


@pytest.mark.skipif(not INTEGRATIONS.is_dir(), reason="the integrations live beside the core only in the repository")
def test_integrations_import_only_public_ggro_names() -> None:
    sources = _integration_sources()
    assert len(sources) >= 6, sources  # both packages' modules are found
    offenders = []
    for path, root in sources:
        for module, names, line in _imports(path, root):
            if module != "ggro" and not module.startswith("ggro."):
                continue
            where = f"{path.relative_to(REPO)}:{line}"
            if module != "ggro":
                offenders.append(f"{where} imports the submodule {module} (use `from ggro import ...`)")
                continue
            offenders += [f"{where} imports {n}, which ggro does not export" for n in names if n not in ggro.__all__]
    assert not offenders, offenders
