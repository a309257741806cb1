"""Edit checks: an edit fixes its cases, generalises to held-out cases of the same kind, and stays local.

Success is checked for every edit the candidate carries, on every step: a later learn, forget,
merge or compression that loses an edit is blocked like any other regression. Locality is checked
for the edit made by the step under test: agreement with the champion outside the edit's labels.
"""

import pytest

from behaviors.context import BehaviorContext, EditCase

pytestmark = pytest.mark.blocking


def _edits(ume_context: BehaviorContext, current_only: bool = False) -> list[EditCase]:
    edits = [e for e in ume_context.edits if e.current or not current_only]
    if not edits:
        pytest.skip("no edit to check" if not current_only else "this step makes no edit")
    return edits


def _accuracy(model, samples) -> float:
    return (model.predictions(samples) == samples.y).float().mean().item() if len(samples) else 1.0


def _worst_success(ume_context: BehaviorContext, candidate, behavior, metric: str, cases_of) -> float:
    """Record ``metric`` (and its value before, for the step's own edit) for every edit; the worst."""
    worst = 1.0
    for edit in _edits(ume_context):
        acc = _accuracy(candidate, cases_of(edit))
        behavior.record(f"{metric}[{edit.name}]", acc)
        if ume_context.champion is not None and edit.current:
            behavior.record(f"{metric}_before[{edit.name}]", _accuracy(ume_context.champion, cases_of(edit)))
        worst = min(worst, acc)
    return worst


def test_edit_success(ume_context: BehaviorContext, candidate, thresholds, behavior) -> None:
    """Every edit the candidate carries still fixes its cases (accuracy >= ``min_edit_success``)."""
    worst = _worst_success(ume_context, candidate, behavior, "edit_success", lambda e: e.cases)
    behavior.check("edit_success", worst, at_least=thresholds["min_edit_success"])


def test_edit_generalizes(ume_context: BehaviorContext, candidate, thresholds, behavior) -> None:
    """Held-out cases of the same kind are fixed too (accuracy >= ``min_edit_holdout_success``)."""
    worst = _worst_success(ume_context, candidate, behavior, "edit_holdout_success", lambda e: e.holdout)
    behavior.check("edit_holdout_success", worst, at_least=thresholds["min_edit_holdout_success"])


def test_edit_is_local(ume_context: BehaviorContext, candidate, needs_champion, splits, thresholds, behavior) -> None:
    """Outside the edit's labels, the candidate agrees with the champion (>= ``min_edit_locality``)."""
    worst = 1.0
    for edit in _edits(ume_context, current_only=True):
        outside = splits[edit.locality].without_labels(edit.scope_labels)
        agree = (candidate.predictions(outside) == needs_champion.predictions(outside)).float().mean().item()
        behavior.record(f"edit_locality[{edit.name}]", agree)
        worst = min(worst, agree)
    behavior.check("edit_locality", worst, at_least=thresholds["min_edit_locality"])
