"""The tests themselves can fail (issue 29): no test without an assertion, no assertion that always holds.

Read from the source with ``ast``: every ``test_*`` function asserts, expects an exception
(``pytest.raises``) or calls a helper of ``tests/`` (or ``bench/``) that does; no ``assert`` is a
tautology (``or True``, a literal truth, a gate decision "promoted or blocked").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HELPER_ROOTS = (TESTS, TESTS.parent / "bench")
EVERY_DECISION = {"promoted", "blocked"}


def _functions(root: Path) -> dict[str, list[ast.FunctionDef]]:
    found: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.setdefault(node.name, []).append(node)
    return found


def _called_names(fn: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            target = node.func
            names.add(target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", ""))
    return names


def _checks_directly(fn: ast.AST) -> bool:
    """An ``assert``, ``pytest.raises``/``pytest.fail``, or a ``raise`` of an error (a helper that checks)."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert | ast.Raise):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("raises", "fail", "warns"):
            return True
    return False


def _checking_functions() -> set[str]:
    """Names of every helper that checks something, directly or through helpers it calls (a fixed point)."""
    functions: dict[str, list[ast.FunctionDef]] = {}
    for root in HELPER_ROOTS:
        for name, defs in _functions(root).items():
            functions.setdefault(name, []).extend(defs)
    checking = {name for name, defs in functions.items() if any(_checks_directly(d) for d in defs)}
    while True:
        more = {name for name, defs in functions.items() if name not in checking and any(_called_names(d) & checking for d in defs)}
        if not more:
            return checking
        checking |= more


def _tests() -> list[tuple[str, ast.FunctionDef]]:
    out = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                out.append((f"{path.name}::{node.name}", node))
            if isinstance(node, ast.ClassDef):
                out += [(f"{path.name}::{node.name}.{f.name}", f) for f in node.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    return out


def _tautology(test: ast.Assert) -> str | None:
    """Why this assertion always holds, or None."""
    expr = test.test
    if isinstance(expr, ast.Constant) and bool(expr.value):
        return "asserts a true literal"
    if isinstance(expr, ast.BoolOp) and isinstance(expr.op, ast.Or) and any(isinstance(v, ast.Constant) and bool(v.value) for v in expr.values):
        return "ends in `or True`"
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and isinstance(expr.ops[0], ast.In):
        options = expr.comparators[0]
        if isinstance(options, ast.Tuple | ast.List | ast.Set):
            values = {e.value for e in options.elts if isinstance(e, ast.Constant)}
            if EVERY_DECISION <= values:
                return "accepts every gate decision"
    return None


def test_the_checker_finds_what_it_looks_for() -> None:
    """Controls: crafted sources it must flag, and ones it must accept."""
    name, true = ast.Name("x"), ast.Constant(True)
    every_decision = ast.Tuple([ast.Constant("promoted"), ast.Constant("blocked")])
    flagged = [  # built as nodes: written as source, they would be the very tautologies the suite forbids
        ast.Assert(ast.BoolOp(ast.Or(), [name, true])),
        ast.Assert(true),
        ast.Assert(ast.Compare(name, [ast.In()], [every_decision])),
    ]
    assert all(_tautology(node) for node in flagged)
    assert not any(_tautology(ast.parse(src).body[0]) for src in ("assert x", "assert d in ('promoted',)", "assert x or y"))
    assert not _checks_directly(ast.parse("def test_a():\n    run()\n").body[0])
    assert _checks_directly(ast.parse("def test_a():\n    with pytest.raises(E):\n        run()\n").body[0])


def test_every_test_checks_something() -> None:
    checking = _checking_functions()
    silent = [name for name, fn in _tests() if not _checks_directly(fn) and not (_called_names(fn) & checking)]
    assert not silent, f"tests that cannot fail (no assert, no pytest.raises, no checking helper): {silent}"


@pytest.mark.parametrize("root", HELPER_ROOTS, ids=lambda p: p.name)
def test_no_assertion_is_a_tautology(root: Path) -> None:
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Assert) and (why := _tautology(node)):
                found.append(f"{path.name}:{node.lineno}: {why}")
    assert not found, found


def test_a_missing_engine_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.projects import unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, and no PostgreSQL"):
        unavailable("no PostgreSQL")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        unavailable("no PostgreSQL")
