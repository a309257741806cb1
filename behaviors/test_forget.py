"""Forget checks: every honoured deletion stays honoured (DESIGN.md invariant 2, judged by behaviour).

Run for every resolved request and the one being processed, on every step, so that a later
learn, edit, merge, compression or rollback cannot bring forgotten knowledge back.
"""

import math

import pytest
from torchmetrics.classification import MulticlassRecall

from behaviors.context import BehaviorContext
from behaviors.mia import mia_scores

pytestmark = pytest.mark.blocking


def _cases(ume_context: BehaviorContext, scope: str):
    cases = [c for c in ume_context.forget_cases if c.scope == scope and len(c.forgotten)]
    if not cases:
        pytest.skip(f"no {scope}-level deletion to check")
    return cases


def _accuracy(model, samples) -> float:
    return (model.predictions(samples) == samples.y).float().mean().item()


def test_forgotten_samples_no_better_than_unseen(ume_context: BehaviorContext, candidate, thresholds, behavior) -> None:
    """Sample/owner deletion: accuracy on forgotten samples <= accuracy on unseen same-class samples + tolerance."""
    worst = -1.0
    for case in _cases(ume_context, "samples"):
        gap = _accuracy(candidate, case.forgotten) - _accuracy(candidate, case.unseen)
        behavior.record(f"forget_accuracy[{case.request_id}]", _accuracy(candidate, case.forgotten))
        behavior.record(f"unseen_accuracy[{case.request_id}]", _accuracy(candidate, case.unseen))
        if ume_context.champion is not None and case.current:
            behavior.record(f"forget_accuracy_before[{case.request_id}]", _accuracy(ume_context.champion, case.forgotten))
        worst = max(worst, gap)
    behavior.check("forget_accuracy_gap", worst, at_most=thresholds["forget_accuracy_tolerance"])


def test_forgotten_class_is_not_recognised(ume_context: BehaviorContext, candidate, thresholds, num_classes: int, behavior) -> None:
    """Class deletion: recall of the deleted class on its former training samples is at most the bound."""
    worst = 0.0
    for case in _cases(ume_context, "class"):
        metric = MulticlassRecall(num_classes=num_classes, average=None)
        recall = metric(candidate.predictions(case.forgotten), case.forgotten.y)[case.label].item()
        behavior.record(f"forgotten_class_recall[{case.request_id}]", recall)
        if ume_context.champion is not None and case.current:
            before = metric(ume_context.champion.predictions(case.forgotten), case.forgotten.y)[case.label].item()
            behavior.record(f"forgotten_class_recall_before[{case.request_id}]", before)
        worst = max(worst, recall)
    behavior.check("forgotten_class_recall", worst, at_most=thresholds["max_forgotten_class_recall"])


@pytest.mark.parametrize("attack", ["loss", "confidence"])
def test_membership_inference_near_chance(ume_context: BehaviorContext, candidate, thresholds, behavior, attack: str) -> None:
    """Forgotten samples are indistinguishable from unseen ones (attack accuracy near 0.5)."""
    cases = [c for c in ume_context.forget_cases if len(c.forgotten)]
    if not cases:
        pytest.skip("no deletion to check")
    worst = 0.0
    for case in cases:
        scores = mia_scores(
            candidate.logits(case.forgotten), case.forgotten.y, candidate.logits(case.unseen), case.unseen.y
        )
        if not math.isnan(scores[attack]):
            worst = max(worst, scores[attack])
            behavior.record(f"mia_{attack}[{case.request_id}]", scores[attack])
        if ume_context.champion is not None and case.current:
            champ = ume_context.champion
            before = mia_scores(champ.logits(case.forgotten), case.forgotten.y, champ.logits(case.unseen), case.unseen.y)[attack]
            if not math.isnan(before):
                behavior.record(f"mia_{attack}_before[{case.request_id}]", before)
    behavior.check(f"mia_{attack}_accuracy", worst, at_most=thresholds["max_mia_accuracy"])
