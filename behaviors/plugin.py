"""The pytest plugin behind behaviour specs: fixtures, the ``blocking`` marker, ``--ume-version``.

Loaded everywhere through the ``pytest11`` entry point, it builds nothing until a spec asks for a
fixture. Inside a step, the runner injects the context (candidate, champion, splits) with
:class:`ContextInjector`; standalone (``pytest behaviors/``), the candidate is the current champion
or ``--ume-version N``, read from the registry of the ``params.yaml`` in the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from behaviors.context import BehaviorContext, ModelUnderTest, Splits

CONTEXT_KEY = pytest.StashKey[BehaviorContext]()


class ContextInjector:
    """A plugin object that hands a ready context to the fixtures (used by the step runner)."""

    def __init__(self, context: BehaviorContext) -> None:
        self.context = context

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        """Stash the context before any fixture runs."""
        config.stash[CONTEXT_KEY] = self.context


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--ume-version`` and ``--ume-params``."""
    group = parser.getgroup("ume", "ume behaviour specs")
    group.addoption("--ume-version", type=int, default=None, help="registered version to test (default: champion)")
    group.addoption("--ume-params", default="params.yaml", help="params.yaml of the project (default: ./params.yaml)")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``blocking`` marker."""
    config.addinivalue_line("markers", "blocking: a failure of this behaviour blocks promotion")


@dataclass
class Check:
    """One measured value against its threshold."""

    name: str
    value: float
    threshold: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        """Whether the value is on the right side of the threshold."""
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold


class BehaviorRecorder:
    """``behavior.check(name, value, at_least=t)`` records the number and asserts it."""

    def __init__(self, node: pytest.Item, report_dir: Path | None = None) -> None:
        self.node = node
        self.checks: list[Check] = []
        self.report_dir = report_dir

    def counterexample(self, original: torch.Tensor, perturbed: torch.Tensor, label: str = "") -> Path | None:
        """Save an (original, perturbed) pair as a PNG in the report; hypothesis replays the shrunk
        example last, so the file left behind is the minimal counterexample."""
        if self.report_dir is None:
            return None
        from behaviors.perturbations import save_counterexample

        name = self.node.name + (f"-{label}" if label else "")
        return save_counterexample(self.report_dir, name, original, perturbed)

    def record(self, name: str, value: float) -> None:
        """Record a number for the report without a threshold (evidence, e.g. per-request values)."""
        self.node.user_properties.append(("ume_value", (name, float(value))))

    def check(self, name: str, value: float, *, at_least: float | None = None, at_most: float | None = None) -> None:
        """Record ``value`` and fail the spec if it is on the wrong side of the threshold."""
        if (at_least is None) == (at_most is None):
            raise ValueError("give exactly one of at_least= or at_most=")
        threshold = float(at_least if at_least is not None else at_most)  # type: ignore[arg-type]
        check = Check(name, float(value), threshold, higher_is_better=at_least is not None)
        self.checks.append(check)
        self.node.user_properties.append(("ume_check", (check.name, check.value, check.threshold, check.higher_is_better)))
        sign = ">=" if check.higher_is_better else "<="
        assert value == value, f"{name} is NaN"
        assert check.passed, f"{name} = {check.value:.4f}, expected {sign} {check.threshold:.4f}"


@pytest.fixture(scope="session")
def ume_context(request: pytest.FixtureRequest) -> BehaviorContext:
    """The injected context, or one built from the registry for standalone runs."""
    context = request.config.stash.get(CONTEXT_KEY, None)
    if context is None:
        from behaviors.build import standalone_context
        from pipeline.workspace import Workspace

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
