"""The pytest plugin behind behaviour specs: fixtures, the ``blocking`` marker, ``--ume-version``.

Loaded everywhere through the ``pytest11`` entry point, it builds nothing until a spec asks for a
fixture. Inside a step, the runner injects the context (candidate, champion, splits) with
:class:`ContextInjector`; standalone (``pytest behaviors/``), the candidate is the current champion
or ``--ume-version N``, read from the registry of the ``params.yaml`` in the current directory.

Standalone, an advisory spec (no ``blocking`` marker) that fails is reported as an expected failure
("advisory: ..."), as the gate treats it: it never blocks a step, so it does not turn a plain run red;
``--ume-strict`` fails the run on it. Inside a step every outcome is recorded as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from behaviors.context import BehaviorContext, ModelUnderTest, Splits
from pipeline.data import SampleSet

CONTEXT_KEY = pytest.StashKey[BehaviorContext]()
SOFT_ADVISORY_KEY = pytest.StashKey[bool]()


class ContextInjector:
    """A plugin object that hands a ready context to the fixtures (used by the step runner)."""

    def __init__(self, context: BehaviorContext, *, soft_advisory: bool = False) -> None:
        self.context = context
        self.soft_advisory = soft_advisory

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        """Stash the context before any fixture runs; the gate records advisory failures as failures."""
        config.stash[CONTEXT_KEY] = self.context
        config.stash[SOFT_ADVISORY_KEY] = self.soft_advisory


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--ume-version`` and ``--ume-params``."""
    group = parser.getgroup("ume", "ume behaviour specs")
    group.addoption("--ume-version", type=int, default=None, help="registered version to test (default: champion)")
    group.addoption("--ume-params", default="params.yaml", help="params.yaml of the project (default: ./params.yaml)")
    group.addoption("--ume-strict", action="store_true", help="a failing advisory spec fails the run (default: reported as an expected failure)")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``blocking`` marker."""
    config.addinivalue_line("markers", "blocking: a failure of this behaviour blocks promotion")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A failing advisory spec, run standalone: an expected failure that names itself advisory (not with ``--ume-strict``)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or "ume_context" not in getattr(item, "fixturenames", ()):
        return  # only behaviour specs (tests that do not use ume's context are never touched)
    if item.get_closest_marker("blocking") or not item.config.stash.get(SOFT_ADVISORY_KEY, True) or item.config.getoption("--ume-strict"):
        return
    message = str(call.excinfo.value).splitlines()[0] if call.excinfo else "failed"
    report.outcome = "skipped"
    report.wasxfail = f"advisory (never blocks a step; --ume-strict fails on it): {message}"


NO_CONTROL = object()  # marks a check that has no control by nature (not a forget check)

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"


def verdict(candidate_passes: bool | None, control_passes: bool | None) -> str:
    """The verdict of a controlled check: ``passed`` only when the control fails it.

    ``candidate_passes`` is None when the value could not be measured (too few samples, no
    reference model); ``control_passes`` is None when there is no control model. A check that
    the control passes as well says nothing about forgetting: ``inconclusive``.
    """
    if candidate_passes is False:
        return FAILED
    if candidate_passes is None or control_passes is None or control_passes:
        return INCONCLUSIVE
    return PASSED


@dataclass
class Check:
    """One measured value against its threshold, and (for forget checks) the control's value."""

    name: str
    value: float
    threshold: float
    higher_is_better: bool
    control: float | None = None
    controlled: bool = False

    def _passes(self, value: float | None) -> bool | None:
        if value is None or math.isnan(value):
            return None
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    @property
    def passed(self) -> bool:
        """Whether the value is on the right side of the threshold (NaN never is)."""
        return bool(self._passes(self.value))

    @property
    def verdict(self) -> str:
        """``passed``/``failed``; for a controlled check also ``inconclusive`` (see :func:`verdict`)."""
        if not self.controlled:
            return PASSED if self.passed else FAILED
        return verdict(self._passes(self.value), self._passes(self.control))

    def to_json(self) -> dict[str, Any]:
        """The row reports, the ledger and certificates show."""
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "higher_is_better": self.higher_is_better,
            "control": self.control,
            "controlled": self.controlled,
            "verdict": self.verdict,
        }


class BehaviorRecorder:
    """``behavior.check(name, value, at_least=t)`` records the number and asserts it.

    Forget checks pass ``control=`` (the same check on the un-forgotten model, or None when there
    is none): their verdict is ``inconclusive`` unless the control fails them. ``expect`` records
    without asserting, so a spec can judge every deletion request before ``verify`` fails it.
    """

    def __init__(self, node: pytest.Item, report_dir: Path | None = None) -> None:
        self.node = node
        self.checks: list[Check] = []
        self.report_dir = report_dir

    def counterexample(self, original: torch.Tensor, perturbed: torch.Tensor, label: str = "", *, sample_id: str | None = None) -> Path | None:
        """Save an (original, perturbed) pair as a PNG in the report, naming the sample it shows (erasure finds it by that);
        hypothesis replays the shrunk example last, so the file left behind is the minimal counterexample."""
        if self.report_dir is None:
            return None
        from behaviors.perturbations import save_counterexample

        name = self.node.name + (f"-{label}" if label else "")
        return save_counterexample(self.report_dir, name, original, perturbed, sample_id=sample_id)

    def record(self, name: str, value: float, *, control: float | None = None) -> None:
        """Record a number for the report without a threshold (evidence, e.g. per-request values)."""
        row = {"name": name, "value": float(value), "threshold": None, "higher_is_better": None}
        row |= {"control": _number(control), "controlled": False, "verdict": None}
        self.node.user_properties.append(("ume_value", row))

    def note(self, text: str) -> None:
        """A line for the report explaining a result (e.g. why a check is inconclusive)."""
        self.node.user_properties.append(("ume_note", text))

    def expect(
        self, name: str, value: float, *, at_least: float | None = None, at_most: float | None = None, control: Any = NO_CONTROL
    ) -> Check:
        """Record ``value`` against its threshold (and the control's value) without failing yet."""
        if (at_least is None) == (at_most is None):
            raise ValueError("give exactly one of at_least= or at_most=")
        threshold = float(at_least if at_least is not None else at_most)  # type: ignore[arg-type]
        controlled = control is not NO_CONTROL
        check = Check(name, float(value), threshold, at_least is not None, _number(control) if controlled else None, controlled)
        self.checks.append(check)
        self.node.user_properties.append(("ume_check", check.to_json()))
        return check

    def verify(self) -> None:
        """Fail the spec if any expectation failed (an uncontrolled NaN fails; a controlled NaN is inconclusive)."""
        failed = [c for c in self.checks if c.verdict == FAILED]
        if failed:
            raise AssertionError("; ".join(_failure(c) for c in failed))

    def check(self, name: str, value: float, *, at_least: float | None = None, at_most: float | None = None, control: Any = NO_CONTROL) -> None:
        """Record ``value`` and fail the spec if it is on the wrong side of the threshold."""
        check = self.expect(name, value, at_least=at_least, at_most=at_most, control=control)
        if check.verdict == FAILED:
            raise AssertionError(_failure(check))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _failure(check: Check) -> str:
    if math.isnan(check.value):
        return f"{check.name} is NaN"
    sign = ">=" if check.higher_is_better else "<="
    return f"{check.name} = {check.value:.4f}, expected {sign} {check.threshold:.4f}"


@pytest.fixture(scope="session")
def ume_context(request: pytest.FixtureRequest) -> BehaviorContext:
    """The injected context, or one built from the registry for standalone runs."""
    context = request.config.stash.get(CONTEXT_KEY, None)
    if context is None:
        from behaviors.build import standalone_context
        from pipeline.records.workspace import Workspace

        ws = Workspace.open(request.config.getoption("--ume-params"))
        context = standalone_context(ws, request.config.getoption("--ume-version"))
        context.report_dir = ws.reports_dir / "standalone"
        request.config.stash[CONTEXT_KEY] = context
    return context


@pytest.fixture(scope="session")
def candidate(ume_context: BehaviorContext) -> ModelUnderTest:
    """The version under test."""
    return ume_context.candidate


@pytest.fixture(scope="session")
def champion(ume_context: BehaviorContext) -> ModelUnderTest | None:
    """The current champion (None before the first promotion)."""
    return ume_context.champion


@pytest.fixture(scope="session")
def splits(ume_context: BehaviorContext) -> Splits:
    """``test``, ``canary`` and ``retain`` sample sets (deleted samples already removed)."""
    return ume_context.splits


@pytest.fixture(scope="session")
def heldout(ume_context: BehaviorContext) -> dict[str, SampleSet]:
    """Each slice's held-out split (test and canary samples of its look), ``base`` first; empty when the data has none."""
    return ume_context.heldout


@pytest.fixture(scope="session")
def learned(ume_context: BehaviorContext) -> tuple[str, ...]:
    """The slices (with a held-out split) the candidate was trained on."""
    return ume_context.learned


@pytest.fixture(scope="session")
def champion_learned(ume_context: BehaviorContext) -> tuple[str, ...]:
    """The slices (with a held-out split) the champion was trained on."""
    return ume_context.champion_learned


@pytest.fixture(scope="session")
def clean_base(ume_context: BehaviorContext) -> ModelUnderTest | None:
    """The candidate's clean base with no overlay (a control of the learning guards)."""
    return ume_context.clean_base


@pytest.fixture(scope="session")
def thresholds(ume_context: BehaviorContext) -> dict[str, float]:
    """Thresholds: defaults overridden by ``params.yaml`` ``behaviors.thresholds``."""
    return ume_context.thresholds


@pytest.fixture(scope="session")
def step(ume_context: BehaviorContext) -> dict[str, Any]:
    """The step being gated (``id``, ``kind``...)."""
    return ume_context.step


@pytest.fixture(scope="session")
def num_classes(ume_context: BehaviorContext) -> int:
    """Number of classes of the model."""
    return ume_context.num_classes


@pytest.fixture
def behavior(request: pytest.FixtureRequest, ume_context: BehaviorContext) -> BehaviorRecorder:
    """Record measured values with their thresholds (shown in reports), and counterexample images."""
    return BehaviorRecorder(request.node, ume_context.report_dir)


@pytest.fixture
def needs_champion(champion: ModelUnderTest | None) -> ModelUnderTest:
    """The champion; skips comparative specs when there is none yet (the base step)."""
    if champion is None:
        pytest.skip("no champion to compare against (first version)")
    return champion
