"""Run the behaviour specs in-process with ``pytest.main`` and collect one result per spec.

Fail-closed: an error in setup, call or teardown, or a file that does not even import, is a
failed result; a blocking spec that errors blocks. Skips (e.g. comparative specs for the very first
version) are recorded as skipped and do not block.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from behaviors.context import BehaviorContext
from behaviors.plugin import ContextInjector


@dataclass
class BehaviorResult:
    """The outcome of one spec."""

    name: str
    outcome: str  # passed | failed | skipped | inconclusive (a forget check whose control passes too)
    blocking: bool
    value: float | None = None
    threshold: float | None = None
    higher_is_better: bool | None = None
    message: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Skipped and inconclusive count as not failed (neither is evidence of anything)."""
        return self.outcome != "failed"

    @property
    def short_name(self) -> str:
        """``test_accuracy.py::test_floor`` -> ``test_floor``."""
        return self.name.split("::")[-1]

    def to_json(self) -> dict[str, Any]:
        """For reports and the ledger."""
        return asdict(self)


def _clip(text: str, head: int = 1000, tail: int = 1500) -> str:
    """A long failure report, shortened: its start, every ``E`` line (the assertion and hypothesis'
    falsifying example), and its end."""
    if len(text) <= head + tail:
        return text
    errors = "\n".join(line for line in text.splitlines() if line.startswith("E ") or "Falsifying example" in line)[:3000]
    return f"{text[:head]}\n...\n{errors}\n...\n{text[-tail:]}"


class ResultCollector:
    """Pytest hooks that turn reports into :class:`BehaviorResult` rows."""

    def __init__(self) -> None:
        self.blocking: dict[str, bool] = {}
        self.results: dict[str, BehaviorResult] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Remember which specs are blocking."""
        for item in items:
            self.blocking[item.nodeid] = item.get_closest_marker("blocking") is not None

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A spec file that cannot be collected fails closed (and blocks)."""
        if report.failed:
            self.results[report.nodeid] = BehaviorResult(
                name=report.nodeid or "collection",
                outcome="failed",
                blocking=True,
                message=f"collection error:\n{_clip(report.longreprtext)}",
            )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Merge setup/call/teardown phases into one result."""
        result = self.results.get(report.nodeid)
        if result is None:
            result = BehaviorResult(name=report.nodeid, outcome="passed", blocking=self.blocking.get(report.nodeid, False))
            self.results[report.nodeid] = result
        for key, row in report.user_properties:
            if key == "ume_value" and not any(c["name"] == row["name"] for c in result.checks):
                result.checks.append(dict(row))
            if key == "ume_check" and row not in result.checks:
                result.checks.append(dict(row))
                result.value, result.threshold, result.higher_is_better = row["value"], row["threshold"], row["higher_is_better"]
        notes = [row for key, row in report.user_properties if key == "ume_note"]
        inconclusive = [c["name"] for c in result.checks if c.get("verdict") == "inconclusive"]
        if report.when == "call" and report.passed and inconclusive:
            # Never "passed" on evidence its control would give as well: nothing was shown.
            result.outcome = "inconclusive"
            result.message = "\n".join(
                [f"inconclusive (the un-forgotten control passes too, or there is no control): {', '.join(inconclusive)}", *notes]
            )
        if report.failed:
            result.outcome = "failed"
            phase = "" if report.when == "call" else f"error in {report.when}: "
            result.message = phase + _clip(report.longreprtext)
        elif report.skipped and result.outcome != "failed":
            result.outcome = "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            result.message = str(reason)


def run_suite(
    spec_paths: Sequence[str | Path],
    context: BehaviorContext,
    *,
    junit_xml: Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[BehaviorResult]:
    """Run every spec under ``spec_paths`` against ``context``; one result per spec."""
    collector = ResultCollector()
    # Not the unraisable-exception plugin: at exit it runs a full gc.collect() (0.7 s per call over a process that
    # holds torch and MLflow), which cost a gate about 1.4 s of its ~5 s (measured with cProfile on a test step).
    # Not pytest-randomly either, wherever the specs live: it shuffles the specs and reseeds Python's and numpy's global
    # generators per test from a new seed each session, so a gate could decide differently on the same candidate.
    quiet = ["-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:randomly", "--import-mode=importlib", "--no-header", "-rN"]
    args = [str(p) for p in spec_paths] + quiet + list(extra_args)
    if junit_xml is not None:
        junit_xml.parent.mkdir(parents=True, exist_ok=True)
        args.append(f"--junitxml={junit_xml}")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        exit_code = pytest.main(args, plugins=[ContextInjector(context), collector])
    results = sorted(collector.results.values(), key=lambda r: r.name)
    if not results or exit_code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        results.append(
            BehaviorResult(
                name="behaviour-suite",
                outcome="failed",
                blocking=True,
                message=f"pytest exited with {exit_code!s} and ran no spec:\n{buffer.getvalue()[-4000:]}",
            )
        )
    return results


def results_json(results: Sequence[BehaviorResult]) -> str:
    """All results as pretty JSON."""
    return json.dumps([r.to_json() for r in results], indent=1)
