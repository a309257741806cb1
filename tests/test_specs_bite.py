"""Every blocking behaviour ume ships can block (issue 29, item 1): the kill rate.

For each blocking spec in ``behaviors/`` a crafted candidate with a known, large defect for exactly
that behaviour fails it, and a healthy candidate passes it, both judged by the real spec run by the
real suite (:func:`behaviors.suite.run_suite`). The list of blocking specs is read from the spec
files themselves: a new blocking spec without a crafted failure here fails
:func:`test_every_blocking_spec_has_a_crafted_failure`.

The crafted world has the widest margins: 4-channel 8x8 images whose channels are constant planes
holding the label (channel 0, -0.9 + 0.2 x label), the group (1), a set marker (2: test 0, retain 1, forgotten
2) and nothing (3, a probe a brightness shift moves). Every model reads the centre pixel, so the
membership test's shifted queries and a brightness shift of a few hundredths leave what it reads intact;
each decision is 0 % or 100 % away from its threshold.
"""

from __future__ import annotations

import ast
import io
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

from behaviors.context import BehaviorContext, EditCase, ErasedCase, ForgetCase, ModelUnderTest, Splits, merged_thresholds
from behaviors.plugin import ContextInjector
from behaviors.references import ReferenceBank, Shadow
from behaviors.suite import run_suite
from pipeline.core.config import ReferenceConfig
from pipeline.data import SampleSet

BEHAVIORS = Path(__file__).resolve().parents[1] / "behaviors"
CLASSES = 10
TEST, RETAIN, FORGOTTEN = 0, 1, 2


def _read(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label, group, marker and probe, read at the centre pixel."""
    centre = x[:, :, 4, 4]
    label = ((centre[:, 0] + 0.9) / 0.2).round().clamp(0, CLASSES - 1).long()
    return label, centre[:, 1].round().long(), centre[:, 2].round().long(), centre[:, 3]


class Crafted(nn.Module):
    """Predicts the label it reads, except where ``wrong(label, group, marker, probe)`` says; ``confidence``
    scales the one-hot logits (per sample, optionally); ``extra`` adds unused weights; ``work`` adds matmuls."""

    def __init__(
        self,
        wrong: Callable[..., torch.Tensor] | None = None,
        *,
        confidence: float | Callable[..., torch.Tensor] = 8.0,
        relabel: dict[int, int] | None = None,
        extra: int = 0,
        work: int = 0,
        nan: bool = False,
    ) -> None:
        super().__init__()
        self.wrong, self.confidence, self.relabel, self.work, self.nan = wrong, confidence, relabel or {}, work, nan
        self.weight = nn.Parameter(torch.zeros(1 + extra))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label, group, marker, probe = _read(x)
        predicted = label.clone()
        for old, new in self.relabel.items():
            predicted[label == old] = new
        if self.wrong is not None:
            predicted = torch.where(self.wrong(label, group, marker, probe), (predicted + 1) % CLASSES, predicted)
        scale = self.confidence(label, group, marker, probe) if callable(self.confidence) else torch.full(label.shape, self.confidence)
        logits = nn.functional.one_hot(predicted, CLASSES).float() * scale[:, None]
        for _ in range(self.work):
            a = torch.ones(128, 128)
            logits = logits + (a @ a)[0, 0] * 0.0
        if self.nan:
            logits[:, 0] = math.nan
        return logits + self.weight.sum() * 0.0


def _set(name: str, n: int, marker: int, *, labels: list[int] | None = None, y: list[int] | None = None, offset: int = 0) -> SampleSet:
    """``n`` crafted samples (labels cycling 0-9 unless given; groups alternating a/b)."""
    read = torch.tensor(labels if labels is not None else [i % CLASSES for i in range(n)])
    group = torch.arange(n) % 2
    x = torch.zeros(n, 4, 8, 8)
    x[:, 0] = (read.float() * 0.2 - 0.9)[:, None, None]
    x[:, 1] = group.float()[:, None, None]
    x[:, 2] = float(marker)
    ids = tuple(f"{name}-{offset + i}" for i in range(n))
    groups = tuple("a" if g == 0 else "b" for g in group.tolist())
    return SampleSet(name, x, torch.tensor(y) if y is not None else read, ids, groups, ("",) * n)


def _context(candidate: nn.Module, champion: nn.Module | None = None, **extra) -> BehaviorContext:
    test = _set("test", 60, TEST)
    canary = _set("canary", 60, TEST, offset=100)
    return BehaviorContext(
        candidate=ModelUnderTest("candidate", None, candidate),
        champion=ModelUnderTest("champion", 1, champion if champion is not None else Crafted()),
        splits=Splits(test=test, canary=canary, retain=_set("retain", 60, RETAIN)),
        thresholds=merged_thresholds({}),
        data=None,  # type: ignore[arg-type]
        step={"id": "s09", "kind": "learn"},
        num_classes=CLASSES,
        **extra,
    )


def _edit_context(candidate: nn.Module) -> BehaviorContext:
    """An edit "read 3 as 5": its cases and held-out cases look like 3s and must be called 5."""
    cases = _set("edit-cases", 10, TEST, labels=[3] * 10, y=[5] * 10, offset=200)
    holdout = _set("edit-holdout", 10, TEST, labels=[3] * 10, y=[5] * 10, offset=300)
    return _context(candidate, edits=[EditCase("three-as-five", (3, 5), cases, holdout, current=True)])


def _remembers(label, group, marker, probe) -> torch.Tensor:
    return marker != FORGOTTEN  # right only on the forgotten samples


def _forgot(label, group, marker, probe) -> torch.Tensor:
    return marker == FORGOTTEN


def _forget_context(candidate: nn.Module, control: nn.Module) -> BehaviorContext:
    case = ForgetCase(
        "del-r1",
        "samples",
        None,
        _set("forgotten", 20, FORGOTTEN, offset=400),
        _set("unseen", 60, TEST, offset=500),
        True,
        control=ModelUnderTest("control", 1, control),
    )
    return _context(candidate, forget_cases=[case])


def _class_context(candidate: nn.Module) -> BehaviorContext:
    forgotten = _set("forgotten-class", 10, FORGOTTEN, labels=[3] * 10, offset=600)
    case = ForgetCase(
        "del-c3", "class", 3, forgotten, _set("unseen-class", 10, TEST, labels=[3] * 10, offset=700), True, control=ModelUnderTest("control", 1, Crafted())
    )
    return _context(candidate, forget_cases=[case], excluded_labels=(3,))


def _membership_context(candidate: nn.Module, control: nn.Module) -> BehaviorContext:
    """A bank of 8 crafted references that never saw the forgotten samples: confident at 2 give or take."""
    shadows = [Shadow(f"ref-{k}", Crafted(confidence=1.6 + 0.1 * k), frozenset()) for k in range(8)]
    bank = ReferenceBank(Path("unused"), shadows, config=ReferenceConfig())
    context = _forget_context(candidate, control)
    context.references = bank
    return context


def _erased_context(carried: int) -> BehaviorContext:
    """An erased request (pixels gone): the candidate's lineage holds ``carried`` of its 20 samples, its control's all 20."""
    return _context(Crafted(), erased=[ErasedCase("del-e1", "2026-12-04T00:00:00Z", carried, 20, "exact")])


MEMORISES = Crafted(confidence=lambda label, group, marker, probe: torch.where(marker == FORGOTTEN, 12.0, 2.0))
TYPICAL = Crafted(confidence=2.0)

# spec -> (its file, a context whose candidate must fail it, a context whose candidate must pass it)
CRAFTED: dict[str, tuple[str, Callable[[], BehaviorContext], Callable[[], BehaviorContext]]] = {
    "test_test_accuracy_floor": (
        "test_accuracy.py",
        lambda: _context(Crafted(lambda *a: torch.ones_like(a[0], dtype=torch.bool))),
        lambda: _context(Crafted()),
    ),
    "test_test_accuracy_no_drop": ("test_accuracy.py", lambda: _context(Crafted(lambda label, *a: label < 5)), lambda: _context(Crafted())),
    "test_retained_accuracy_no_drop": (
        "test_accuracy.py",
        lambda: _context(Crafted(lambda label, group, marker, probe: marker == RETAIN)),
        lambda: _context(Crafted()),
    ),
    "test_model_size_within_budget": ("test_budget.py", lambda: _context(Crafted(extra=100_000)), lambda: _context(Crafted())),
    # both sides do real work, so the healthy ratio is compute against compute (about 1), not interpreter noise
    "test_latency_within_budget": ("test_budget.py", lambda: _context(Crafted(work=80), Crafted(work=4)), lambda: _context(Crafted(work=4), Crafted(work=4))),
    "test_canary_agreement": ("test_drift.py", lambda: _context(Crafted(lambda label, *a: label % 2 == 0)), lambda: _context(Crafted())),
    "test_calibration_error_change": ("test_drift.py", lambda: _context(Crafted(confidence=0.1)), lambda: _context(Crafted())),
    "test_edit_success": ("test_edit.py", lambda: _edit_context(Crafted()), lambda: _edit_context(Crafted(relabel={3: 5}))),
    "test_edit_generalizes": ("test_edit.py", lambda: _edit_context(Crafted()), lambda: _edit_context(Crafted(relabel={3: 5}))),
    "test_edit_is_local": ("test_edit.py", lambda: _edit_context(Crafted(relabel={3: 5, 7: 8})), lambda: _edit_context(Crafted(relabel={3: 5}))),
    "test_group_accuracy_gap": ("test_fairness.py", lambda: _context(Crafted(lambda label, group, *a: group == 1)), lambda: _context(Crafted())),
    "test_group_gap_does_not_grow[accuracy]": ("test_fairness.py", lambda: _context(Crafted(lambda label, group, *a: group == 1)), lambda: _context(Crafted())),
    "test_group_gap_does_not_grow[recall]": ("test_fairness.py", lambda: _context(Crafted(lambda label, group, *a: group == 1)), lambda: _context(Crafted())),
    "test_forgotten_samples_no_better_than_unseen": (
        "test_forget.py",
        lambda: _forget_context(Crafted(_remembers), Crafted(_remembers)),
        lambda: _forget_context(Crafted(_forgot), Crafted(_remembers)),
    ),
    "test_forgotten_class_is_not_recognised": ("test_forget.py", lambda: _class_context(Crafted()), lambda: _class_context(Crafted(relabel={3: 4}))),
    "test_forgotten_samples_are_not_members": (
        "test_forget.py",
        lambda: _membership_context(MEMORISES, MEMORISES),
        lambda: _membership_context(TYPICAL, MEMORISES),
    ),
    "test_erased_requests_stay_out_of_the_lineage": ("test_forget.py", lambda: _erased_context(3), lambda: _erased_context(0)),
    "test_per_class_recall_drop": ("test_per_class.py", lambda: _context(Crafted(relabel={3: 4})), lambda: _context(Crafted())),
    "test_logits_are_finite": ("test_properties.py", lambda: _context(Crafted(nan=True)), lambda: _context(Crafted())),
    "test_brightness_stability": (
        "test_properties.py",
        lambda: _context(Crafted(lambda label, group, marker, probe: torch.sin(probe * 500) > 0)),
        lambda: _context(Crafted()),
    ),
}


class PlaneReader(nn.Module):
    """Predicts the group, read as the median of its whole plane (channel 1): no small perturbation moves a median of 64."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = x[:, 1].flatten(1).median(1).values.round().clamp(0, 1).long()
        return nn.functional.one_hot(group, CLASSES).float() * 8.0 + self.weight.sum() * 0.0


class SurerWhenHidden(nn.Module):
    """The label it reads, at confidence 0.16, or 0.94 once any pixel of the image is background (-1): an occlusion makes it surer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = _read(x)[0]
        scale = torch.where(x.flatten(1).amin(1) < -0.95, 5.0, 0.5)
        return nn.functional.one_hot(label, CLASSES).float() * scale[:, None] + self.weight.sum() * 0.0


# Advisory specs (they never block a step): each shown failing all the same, on the same kind of crafted candidate.
ADVISORY: dict[str, tuple[str, Callable[[], BehaviorContext], Callable[[], BehaviorContext]]] = {
    "test_no_empty_prediction_class": ("test_accuracy.py", lambda: _context(Crafted(relabel={3: 4})), lambda: _context(Crafted())),
    "test_membership_inference_near_chance[loss]": (
        "test_forget.py",
        lambda: _membership_context(MEMORISES, MEMORISES),
        lambda: _membership_context(TYPICAL, MEMORISES),
    ),
    "test_membership_inference_near_chance[confidence]": (
        "test_forget.py",
        lambda: _membership_context(MEMORISES, MEMORISES),
        lambda: _membership_context(TYPICAL, MEMORISES),
    ),
    "test_small_perturbations_keep_predictions": (
        "test_invariance.py",
        lambda: _context(Crafted(lambda label, group, marker, probe: torch.sin(probe * 500) > 0)),
        lambda: _context(PlaneReader()),
    ),
    "test_occlusion_never_raises_confidence_on_average": ("test_invariance.py", lambda: _context(SurerWhenHidden()), lambda: _context(Crafted())),
}
# Shown failing on crafted candidates in their own test modules (a context of their own kind).
ELSEWHERE = {
    "test_learn_step_teaches_its_slice": "tests/test_learning_guards.py::test_a_learn_step_that_taught_nothing_is_blocked_and_its_control_is_the_champion",
    "test_learned_slices_are_kept": "tests/test_learning_guards.py::test_a_step_that_loses_an_earlier_slice_is_blocked",
}


def shipped_specs(*, blocking_only: bool = False) -> set[str]:
    """Every spec in ``behaviors/test_*.py``, parametrized ids expanded; ``blocking_only``: those with a module
    ``pytestmark`` or their own ``blocking`` marker."""
    found: set[str] = set()
    for path in sorted(BEHAVIORS.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_blocking = "pytestmark = pytest.mark.blocking" in path.read_text()
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            marks = [ast.unparse(d) for d in node.decorator_list]
            if blocking_only and not (module_blocking or "pytest.mark.blocking" in marks):
                continue
            params = [d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.parametrize"]
            if params and isinstance(params[0].args[1], ast.List):
                found |= {f"{node.name}[{ast.literal_eval(v)}]" for v in params[0].args[1].elts}
            else:
                found.add(node.name)
    return found


def blocking_specs() -> set[str]:
    """Every blocking spec in ``behaviors/test_*.py``."""
    return shipped_specs(blocking_only=True)


def _outcome(spec: str, context: BehaviorContext) -> str:
    node = f"{BEHAVIORS / {**CRAFTED, **ADVISORY}[spec][0]}::{spec.partition('[')[0]}"  # that spec alone (all its parameters)
    results = {r.short_name: r for r in run_suite([node], context)}
    return results[spec].outcome


def test_every_blocking_spec_has_a_crafted_failure() -> None:
    shipped = blocking_specs()
    assert len(shipped) >= 20  # the reader found them (20 blocking specs when this was written)
    missing = sorted(shipped - set(CRAFTED) - set(ELSEWHERE))
    assert not missing, f"blocking specs with no crafted failure (add one to CRAFTED): {missing}"
    assert not (set(CRAFTED) | set(ELSEWHERE)) - shipped, "a crafted case names a spec that is not shipped (or not blocking)"
    print(f"kill rate: {len(shipped & (set(CRAFTED) | set(ELSEWHERE)))}/{len(shipped)} blocking specs shown failing")


@contextmanager
def every_core_busy() -> Iterator[int]:
    """One spinning process per core (a loaded CI machine) for the duration; their number."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # every spinner running before anything is timed
        yield len(spinners)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def test_the_latency_budget_decides_the_same_with_every_core_busy() -> None:
    """Issue 29, item 5: the crafted latency cases, gated again while every core spins in another process."""
    _, bad, good = CRAFTED["test_latency_within_budget"]
    with every_core_busy():
        outcomes = [_outcome("test_latency_within_budget", bad()), *(_outcome("test_latency_within_budget", good()) for _ in range(3))]
    assert outcomes == ["failed", "passed", "passed", "passed"]


def test_every_advisory_spec_has_a_crafted_failure_too() -> None:
    advisory = shipped_specs() - blocking_specs()
    assert advisory, "the reader found no advisory spec"
    missing, extra = sorted(advisory - set(ADVISORY)), sorted(set(ADVISORY) - advisory)
    assert not missing and not extra, f"advisory specs without a crafted failure: {missing}; named but not advisory: {extra}"


def test_a_failing_advisory_spec_is_an_expected_failure_standalone_and_a_failure_in_the_gate() -> None:
    """``pytest behaviors/`` on a champion stays green on an advisory failure (reported as such); the gate records it."""
    _, bad, _ = ADVISORY["test_no_empty_prediction_class"]
    args = [f"{BEHAVIORS / 'test_accuracy.py'}::test_no_empty_prediction_class", "-q", "-p", "no:cacheprovider", "--import-mode=importlib"]
    with redirect_stdout(io.StringIO()) as shown:
        standalone = pytest.main(args + ["-rx"], plugins=[ContextInjector(bad(), soft_advisory=True)])
        strict = pytest.main([*args, "--ume-strict"], plugins=[ContextInjector(bad(), soft_advisory=True)])
    assert (standalone, strict) == (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    assert "advisory (never blocks a step" in shown.getvalue() and "classes_predicted" in shown.getvalue()
    assert _outcome("test_no_empty_prediction_class", bad()) == "failed"


@pytest.mark.parametrize("spec", sorted(CRAFTED) + sorted(ADVISORY))
def test_the_spec_fails_a_crafted_bad_candidate_and_passes_a_healthy_one(spec: str) -> None:
    _, bad, good = {**CRAFTED, **ADVISORY}[spec]
    assert _outcome(spec, bad()) == "failed"
    assert _outcome(spec, good()) == "passed"


def _gap_context(candidate_wrong_on: set[int], champion_wrong_on: set[int]) -> BehaviorContext:
    """Candidate and champion wrong on the ``scanner``-b samples of the given labels (12 of group b's 60 per label)."""

    def wrong_on(labels: set[int]) -> Callable[..., torch.Tensor]:
        return lambda label, group, *a: (group == 1) & torch.isin(label, torch.tensor(sorted(labels), dtype=torch.long))

    return _context(Crafted(wrong_on(candidate_wrong_on)), Crafted(wrong_on(champion_wrong_on)))


@pytest.mark.parametrize("metric", ["accuracy", "recall"])
def test_a_gap_that_grows_by_noise_passes_and_one_a_group_paid_for_blocks(metric: str) -> None:
    """Beyond the tolerance the paired test decides: the same 12-sample growth of the gap (0.2 > 0.05) passes when group b
    lost 36 and gained 24 (one-sided exact McNemar p = 0.078) and blocks when it lost 12 and gained none (p = 0.0002)."""
    spec = f"test_group_gap_does_not_grow[{metric}]"
    assert _outcome(spec, _gap_context({5, 7, 9}, {1, 3})) == "passed"
    assert _outcome(spec, _gap_context({1}, set())) == "failed"
    assert _outcome(spec, _gap_context({1, 3}, {1, 3})) == "passed"  # the same mistakes: no growth at all


def test_paired_loss_counts_disagreements_only() -> None:
    from behaviors.test_fairness import paired_loss

    right = torch.tensor([True, True, False, False, True])
    assert paired_loss(right, right) == (0, 0, 1.0)
    losses, gains, p = paired_loss(torch.tensor([False, False, False, True, True]), right)
    assert (losses, gains) == (2, 1) and p == pytest.approx(0.5)
