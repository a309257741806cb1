"""The package's shape (issue 19, DESIGN.md "Who may import whom"): imports only go down, no circles.

Every import in ``pipeline/``, ``edits/`` and ``behaviors/`` is read with :mod:`ast` (imports
inside functions included, ``if TYPE_CHECKING:`` blocks excluded: they never run) and checked
against the floors below. Nothing in the installed package imports ``bench`` or ``tests``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "edits", "behaviors")

# Top to bottom. A module may import its own floor and any floor below it.
FLOORS: list[tuple[str, ...]] = [
    ("pipeline.launcher",),
    ("pipeline.cli",),
    ("pipeline.steps", "pipeline.reports"),
    ("behaviors", "edits"),
    ("pipeline.records",),
    ("pipeline.data",),
    ("pipeline.model",),
    ("pipeline.core", "pipeline"),
]


def floor_of(module: str) -> int:
    """The index of ``module``'s floor (0 is the top)."""
    best = None
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, module
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every executed import of ume's own packages (or of bench/tests) in ``path``."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    me = module_name(path)
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                package = me.split(".")[: -node.level] if not path.name == "__init__.py" else me.split(".")[: len(me.split(".")) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        out.extend((node.lineno, n) for n in names if n.split(".")[0] in (*PACKAGES, "bench", "tests"))
    return out


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def package_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_import_goes_down_or_stays_on_its_floor() -> None:
    upward = []
    for path in package_files():
        me = module_name(path)
        for line, target in imports_of(path):
            if target.split(".")[0] in ("bench", "tests"):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} (the package never imports bench/ or tests/)")
            elif floor_of(target) < floor_of(me):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}, a floor above {me}")
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules() -> None:
    graph = nx.DiGraph()
    for path in package_files():
        me = module_name(path)
        for _, target in imports_of(path):
            if target != me and not me.startswith(target + "."):  # a package's __init__ is not a dependency of its children
                graph.add_edge(me, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "\n".join(" -> ".join([*c, c[0]]) for c in cycles[:10])


def test_no_import_circle_between_floors_packages() -> None:
    """Subpackages depend one way: e.g. data never imports records, model never imports data."""
    graph = nx.DiGraph()
    for path in package_files():
        me = ".".join(module_name(path).split(".")[:2])
        for _, target in imports_of(path):
            target = ".".join(target.split(".")[:2])
            if target != me and _is_module(target) and (ROOT.joinpath(*target.split(".")) / "__init__.py").exists():
                graph.add_edge(me, target)
    cycles = [c for c in nx.simple_cycles(graph) if len(c) > 1]
    assert not cycles, "\n".join(" -> ".join([*c, c[0]]) for c in cycles[:10])


@pytest.mark.parametrize("module", ["pipeline.steps.lifecycle"])
def test_the_lifecycle_is_small_and_has_no_kind_branch(module: str) -> None:
    """Issue 19: the runner stays under 250 lines and never branches on the step kind."""
    source = ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text()
    assert len(source.splitlines()) < 250
    assert "kind ==" not in source and ".kind in" not in source


def test_every_step_kind_in_params_has_a_registered_lifecycle_kind() -> None:
    from pipeline.core.config import STEP_KINDS
    from pipeline.core.errors import ConfigError
    from pipeline.steps.kind import StepKind, step_kind

    for name in (*STEP_KINDS, "base"):
        assert isinstance(step_kind(name), StepKind)
    with pytest.raises(ConfigError, match="unknown step kind"):
        step_kind("teleport")
