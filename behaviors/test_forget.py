"""Forget checks: every honoured deletion stays honoured (DESIGN.md invariant 2, judged by behaviour).

Run for every resolved request and the one being processed, on every step, so that a later
learn, edit, merge, compression or rollback cannot bring forgotten knowledge back.

Every check is also run on the request's *control*, the un-forgotten model (the champion the
request arrived on). A check is evidence of forgetting only when the control fails it: its verdict
is ``passed`` then, ``inconclusive`` when the control passes too (or there is no control), and
``failed`` when the candidate fails it (which blocks). Population attacks and accuracy gaps are
often inconclusive on a model that generalises (Hayes et al. 2024); the per-sample test against
reference models is the one built to be conclusive on memorised data.

Cost: the accuracy checks read the models' cached predictions. The attacks fit on, and the
per-sample test queries, at most ``max_check_samples`` samples of each set (the forgotten samples,
the unseen or calibration samples): a seeded subsample (:mod:`behaviors.limits`), all of them on
the default data.
"""

import math

import pytest
from torchmetrics.classification import MulticlassRecall

from behaviors.context import BehaviorContext, ForgetCase, ModelUnderTest
from behaviors.limits import capped, check_samples
from behaviors.mia import mia_scores


def _cases(ume_context: BehaviorContext, scope: str | None = None) -> list[ForgetCase]:
    cases = [c for c in ume_context.forget_cases if (scope is None or c.scope == scope) and len(c.forgotten)]
    if not cases:
        pytest.skip(f"no {scope or 'deletion'}-level deletion to check" if scope else "no deletion to check")
    return cases


def _accuracy(model: ModelUnderTest | None, samples) -> float | None:
    if model is None:
        return None
    if len(samples) == 0:
        return math.nan
    return (model.predictions(samples) == samples.y).float().mean().item()


def _note_control(behavior, case: ForgetCase) -> None:
    if case.control is None:
        behavior.note(f"{case.request_id}: no control ({case.control_note})")


def sampling_allowance(unseen_accuracy: float, forgotten: int, unseen: int, z: float = 1.645) -> float:
    """How far a forgotten-vs-unseen accuracy gap strays by chance: ``z`` standard errors of the difference of
    two proportions under the null hypothesis that both sets are read alike (one-sided 95 % by default).

    A deletion of 21 samples of one writer, against ~80 unseen samples read at 92 %, allows ~0.11: one
    sample is ~5 points, and an exact retrain that reads a tidy writer's digits perfectly is not remembering.
    """
    if forgotten == 0 or unseen == 0 or math.isnan(unseen_accuracy):
        return 0.0
    p = min(max(unseen_accuracy, 0.0), 1.0)
    return z * math.sqrt(p * (1 - p) * (1 / forgotten + 1 / unseen))


@pytest.mark.blocking
def test_forgotten_samples_no_better_than_unseen(ume_context: BehaviorContext, candidate, thresholds, behavior) -> None:
    """Sample/owner deletion: accuracy on forgotten samples <= accuracy on unseen same-class samples of their look
    + tolerance + the gap's sampling allowance (:func:`sampling_allowance`)."""
    for case in _cases(ume_context, "samples"):
        rid, control = case.request_id, case.control
        forgot, unseen = _accuracy(candidate, case.forgotten), _accuracy(candidate, case.unseen)
        control_forgot, control_unseen = _accuracy(control, case.forgotten), _accuracy(control, case.unseen)
        behavior.record(f"forget_accuracy[{rid}]", forgot, control=control_forgot)
        behavior.record(f"unseen_accuracy[{rid}]", unseen, control=control_unseen)
        allowance = sampling_allowance(unseen, len(case.forgotten), len(case.unseen))
        behavior.record(f"forget_accuracy_allowance[{rid}]", allowance)
        control_gap = None if control is None else control_forgot - control_unseen
        bound = thresholds["forget_accuracy_tolerance"] + allowance
        behavior.expect(f"forget_accuracy_gap[{rid}]", forgot - unseen, at_most=bound, control=control_gap)
        _note_control(behavior, case)
    behavior.verify()


@pytest.mark.blocking
def test_forgotten_class_is_not_recognised(ume_context: BehaviorContext, candidate, thresholds, num_classes: int, behavior) -> None:
    """Class deletion: recall of the deleted class on its former training samples is at most the bound."""
    metric = MulticlassRecall(num_classes=num_classes, average=None)

    def recall(model: ModelUnderTest | None, case: ForgetCase) -> float | None:
        return None if model is None else metric(model.predictions(case.forgotten), case.forgotten.y)[case.label].item()

    for case in _cases(ume_context, "class"):
        behavior.expect(
            f"forgotten_class_recall[{case.request_id}]",
            recall(candidate, case),
            at_most=thresholds["max_forgotten_class_recall"],
            control=recall(case.control, case),
        )
        _note_control(behavior, case)
    behavior.verify()


@pytest.mark.parametrize("attack", ["loss", "confidence"])
def test_membership_inference_near_chance(ume_context: BehaviorContext, candidate, thresholds, behavior, attack: str) -> None:
    """Population attack: forgotten samples are indistinguishable from unseen ones (attack accuracy near 0.5).

    Advisory, not blocking: measured in ``bench/forget_evidence`` it almost never fails the
    un-forgotten model of a typical data subject, and it fails the *exact retrain* of an atypical
    one (their samples differ from test samples whether or not the model saw them), so it would
    block exact deletions. Shown for comparison; the per-sample test is the blocking one.
    """

    limit = check_samples(thresholds)

    def score(model: ModelUnderTest | None, case: ForgetCase) -> float | None:
        if model is None:
            return None
        logits = model.logits(case.forgotten), model.logits(case.unseen)
        return mia_scores(logits[0], case.forgotten.y, logits[1], case.unseen.y, max_samples=limit)[attack]

    for case in _cases(ume_context):
        behavior.expect(
            f"mia_{attack}_accuracy[{case.request_id}]", score(candidate, case), at_most=thresholds["max_mia_accuracy"], control=score(case.control, case)
        )
        _note_control(behavior, case)
    behavior.verify()


@pytest.mark.blocking
def test_forgotten_samples_are_not_members(ume_context: BehaviorContext, candidate, thresholds, behavior) -> None:
    """Sample/owner deletion: per-sample offline LiRA (Carlini et al. 2022; U-LiRA, Hayes et al. 2024)
    flags at most a bounded share of the forgotten samples as members, at a fixed false-positive rate."""
    bank, limit = ume_context.references, thresholds["max_forget_member_share"]
    cap, seed = check_samples(thresholds), getattr(ume_context.data, "seed", 0)
    non_members = capped(ume_context.splits.test, cap, seed=seed)
    for case in _cases(ume_context, "samples"):
        rid = case.request_id
        name = f"forget_member_share_bound[{rid}]"
        if bank is None:
            behavior.expect(name, math.nan, at_most=limit, control=None)
            behavior.note(f"{rid}: {ume_context.references_note}")
            continue
        forgotten = capped(case.forgotten, cap, seed=seed)
        if len(forgotten) < len(case.forgotten):
            behavior.note(f"{rid}: {len(forgotten)} of its {len(case.forgotten)} forgotten samples tested (behaviors.max_check_samples)")
        result = bank.test(candidate.forward, forgotten, non_members)
        control = bank.test(case.control.forward, forgotten, non_members) if case.control is not None else None
        for field in ("member_share", "p_value", "heldout_false_positive_rate", "samples", "references"):
            behavior.record(f"forget_{field}[{rid}]", getattr(result, field), control=getattr(control, field) if control else None)
        behavior.expect(name, result.lower_bound, at_most=limit, control=control.lower_bound if control else None)
        if result.samples == 0:
            behavior.note(f"{rid}: none of its samples has {bank.config.min_references} reference models without it (all in the clean base?)")
        _note_control(behavior, case)
    behavior.verify()


@pytest.mark.blocking
def test_erased_requests_stay_out_of_the_lineage(ume_context: BehaviorContext, behavior) -> None:
    """Erased requests (their pixels' keys destroyed, their weights deleted): no check can read their samples any more,
    so they rest on the evidence recorded at resolution and on the lineage proof: no component of the candidate was
    trained on one of their samples. The control is the un-forgotten version's lineage (its sidecars stay)."""
    if not ume_context.erased:
        pytest.skip("no erased request")
    for case in ume_context.erased:
        control = case.control_carried
        behavior.note(f"{case.request_id}: erased at {case.erased_at}; evidence recorded at resolution: {case.evidence or 'none'}")
        if control is None:
            behavior.note(f"{case.request_id}: no control (the un-forgotten version's manifest cannot be read)")
        behavior.expect(f"erased_lineage[{case.request_id}]", float(case.carried), at_most=0.0, control=None if control is None else float(control))
    behavior.verify()
