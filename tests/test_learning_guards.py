"""The learning guards (behaviors/test_learning.py) and the accuracy matrix (pipeline/records/continual.py).

Crafted models with the widest margins: each knows a set of slices exactly (right on every sample of a
slice it knows, wrong on every other), so every decision is 0 % or 100 % away from its threshold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from behaviors.context import BehaviorContext, ModelUnderTest, Splits, merged_thresholds
from behaviors.suite import run_suite
from pipeline.data import SampleSet
from pipeline.records.continual import summarize
from pipeline.records.gate import decide

SPECS = Path(__file__).resolve().parents[1] / "behaviors" / "test_learning.py"
SLICES = ("base", "u1", "u2")


class Knows(nn.Module):
    """Right on the slices it knows, wrong on the others; reads the label and the slice from pixels 0 and 1."""

    def __init__(self, *known: str) -> None:
        super().__init__()
        self.known = torch.tensor([s in known for s in SLICES])
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label, domain = x[:, 0, 0, 0].long(), x[:, 0, 0, 1].long()
        predicted = torch.where(self.known[domain], label, (label + 1) % 10)
        return nn.functional.one_hot(predicted, 10).float()


def _samples(domain: int) -> SampleSet:
    x = torch.zeros(20, 1, 4, 4)
    y = torch.arange(20) % 10
    x[:, 0, 0, 0], x[:, 0, 0, 1] = y.float(), float(domain)
    ids = tuple(f"{domain}-{i}" for i in range(20))
    return SampleSet(f"heldout:{SLICES[domain]}", x, y, ids, ("g",) * 20, ("",) * 20)


def _context(candidate: nn.Module, champion: nn.Module, *, step: dict, champion_learned: tuple[str, ...]) -> BehaviorContext:
    heldout = {name: _samples(i) for i, name in enumerate(SLICES)}
    everything = heldout["base"].concat(heldout["u1"]).concat(heldout["u2"], name="test")
    return BehaviorContext(
        candidate=ModelUnderTest("candidate", None, candidate),
        champion=ModelUnderTest("champion", 1, champion),
        splits=Splits(test=everything, canary=everything, retain=everything),
        thresholds=merged_thresholds({}),
        data=None,  # type: ignore[arg-type]
        step=step,
        heldout=heldout,
        champion_learned=champion_learned,
        clean_base=ModelUnderTest("clean base", None, Knows("base")),
    )


def _results(context: BehaviorContext) -> dict:
    return {r.short_name: r for r in run_suite([SPECS], context)}


LEARN_U2 = {"id": "s02", "kind": "learn", "slice": "u2"}


def test_a_learn_step_that_teaches_its_slice_and_keeps_the_others_passes() -> None:
    results = _results(_context(Knows("base", "u1", "u2"), Knows("base", "u1"), step=LEARN_U2, champion_learned=("base", "u1")))
    assert results["test_learn_step_teaches_its_slice"].outcome == "passed"
    assert results["test_learned_slices_are_kept"].outcome == "passed"  # the control (the clean base) loses u1: it fails the guard
    assert decide(list(results.values())).promote


def test_a_learn_step_that_taught_nothing_is_blocked_and_its_control_is_the_champion() -> None:
    results = _results(_context(Knows("base", "u1"), Knows("base", "u1"), step=LEARN_U2, champion_learned=("base", "u1")))
    taught = results["test_learn_step_teaches_its_slice"]
    assert taught.outcome == "failed" and taught.value == pytest.approx(0.0)
    (check,) = [c for c in taught.checks if c["name"] == "slice_gain[u2]"]
    assert check["control"] == 0.0 and check["controlled"]
    decision = decide(list(results.values()))
    assert not decision.promote and [f["name"].split("::")[-1] for f in decision.failing] == ["test_learn_step_teaches_its_slice"]


def test_a_step_that_loses_an_earlier_slice_is_blocked() -> None:
    results = _results(_context(Knows("base", "u2"), Knows("base", "u1"), step=LEARN_U2, champion_learned=("base", "u1")))
    kept = results["test_learned_slices_are_kept"]
    assert kept.outcome == "failed" and kept.value == pytest.approx(1.0)
    assert results["test_learn_step_teaches_its_slice"].outcome == "passed"
    assert not decide(list(results.values())).promote


def test_the_forgetting_guard_reports_inconclusive_when_its_control_passes_too() -> None:
    """A champion that knew only what the clean base knows: the base passes the guard, so it proves nothing."""
    results = _results(_context(Knows("base"), Knows("base"), step={"id": "f1", "kind": "forget"}, champion_learned=("base",)))
    assert results["test_learned_slices_are_kept"].outcome == "inconclusive"
    assert results["test_learn_step_teaches_its_slice"].outcome == "skipped"  # not a learn step
    assert decide(list(results.values())).promote


def _record(decision: str, row: dict[str, float], slice_: str | None = None) -> dict:
    return {"decision": decision, "continual": {"heldout_accuracy": row, "slice": slice_}}


def test_accuracy_matrix_and_gem_figures_from_the_promoted_history() -> None:
    records = [
        ("base", "base", _record("promoted", {"base": 0.98, "u1": 0.10, "u2": 0.20})),
        ("s01", "learn", _record("promoted", {"base": 0.96, "u1": 0.90, "u2": 0.20}, "u1")),
        ("s02", "learn", _record("blocked", {"base": 0.96, "u1": 0.90, "u2": 0.05}, "u2")),  # not in R: never served
        ("f03", "forget", _record("promoted", {"base": 0.95, "u1": 0.85, "u2": 0.25})),
    ]
    summary = summarize(records)
    assert summary is not None
    assert [step for step, _ in summary.rows] == ["base", "s01", "f03"]
    assert summary.learned == [("base", "base"), ("u1", "s01")]
    assert summary.acc == pytest.approx((0.95 + 0.85 + 0.25) / 3)
    assert summary.bwt == pytest.approx(0.95 - 0.98)  # every learned slice but the last: the base's own
    assert summary.fwt == pytest.approx(0.10 - 0.10)  # u1 just before it was learned, against the clean base
    assert summarize([("base", "base", {"decision": "promoted"})]) is None
