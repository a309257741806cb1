"""The forgotten-vs-unseen accuracy check (behaviors/test_forget.py): it blocks a candidate that still reads
the deleted samples far better than unseen ones, and allows the gap sampling alone produces.

Crafted models with the widest margins: each reads a sample right when a pixel says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from behaviors.context import BehaviorContext, ForgetCase, ModelUnderTest, Splits, merged_thresholds
from behaviors.suite import run_suite
from behaviors.test_forget import sampling_allowance
from pipeline.data import SampleSet

SPECS = Path(__file__).resolve().parents[1] / "behaviors" / "test_forget.py"


class ReadsMarked(nn.Module):
    """Right on samples whose pixel (0, 1) is 1, wrong on the others."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label, right = x[:, 0, 0, 0].long(), x[:, 0, 0, 1] > 0.5
        return nn.functional.one_hot(torch.where(right, label, (label + 1) % 10), 10).float()


def _samples(name: str, n: int, right: int) -> SampleSet:
    x = torch.zeros(n, 1, 4, 4)
    y = torch.arange(n) % 10
    x[:, 0, 0, 0] = y.float()
    x[:right, 0, 0, 1] = 1.0
    return SampleSet(name, x, y, tuple(f"{name}-{i}" for i in range(n)), ("g",) * n, ("w1",) * n)


def _verdict(forgotten: SampleSet, unseen: SampleSet) -> str:
    model = ModelUnderTest("m", None, ReadsMarked())
    case = ForgetCase("del-1", "samples", None, forgotten, unseen, current=True, control=ModelUnderTest("control", 1, ReadsMarked()))
    everything = unseen.concat(forgotten, name="test")
    context = BehaviorContext(
        candidate=model, champion=None, splits=Splits(test=everything, canary=everything, retain=everything),
        thresholds=merged_thresholds({}), data=None, forget_cases=[case],  # type: ignore[arg-type]
    )
    (result,) = [r for r in run_suite([SPECS], context) if r.short_name == "test_forgotten_samples_no_better_than_unseen"]
    return result.outcome


def test_a_candidate_that_still_reads_the_deleted_samples_is_blocked() -> None:
    """Every forgotten sample read right, a quarter of the unseen ones: a gap of 0.75, far past any allowance."""
    assert _verdict(_samples("forgotten", 20, 20), _samples("unseen", 80, 20)) == "failed"


def test_a_gap_sampling_alone_explains_is_allowed() -> None:
    """21 of 21 against 74 of 80 (a gap of 0.075, past the 0.05 tolerance) is one writer's tidy hand, not memory."""
    assert sampling_allowance(74 / 80, 21, 80) > 0.075 - 0.05
    assert _verdict(_samples("forgotten", 21, 21), _samples("unseen", 80, 74)) != "failed"


def test_the_allowance_shrinks_with_more_samples_and_vanishes_without_any() -> None:
    assert sampling_allowance(0.9, 1000, 1000) < sampling_allowance(0.9, 21, 80) < sampling_allowance(0.9, 5, 80)
    assert sampling_allowance(1.0, 21, 80) == 0.0 and sampling_allowance(0.9, 0, 80) == 0.0
