"""Fairness across groups: nobody pays alone for a change (Hooker et al. 2019, "What Do Compressed
Deep Neural Networks Forget?": compression hurts small groups first).

Per-group accuracy and per-group macro recall (torchmetrics) on the evaluation samples (test and
canary together, for enough minority samples), by the ``group`` column of the sample table, e.g.
the ``scanner_b`` minority of the default data. The largest gap between groups must stay under a
bound and must not grow by more than a tolerance against the champion, unless the growth is noise:
beyond the tolerance, a paired test decides. Both models answer the same samples, so the group at
the bottom of the candidate's gap lost significantly only if, among its samples the two models
disagree on, those the champion got right and the candidate wrong outnumber the reverse beyond
chance: a one-sided exact McNemar test (McNemar 1947, "Note on the sampling error of the difference
between correlated proportions or percentages"; the exact binomial form of Dietterich 1998,
"Approximate Statistical Tests for Comparing Supervised Classification Learning Algorithms"). A
growth that is within the tolerance, or that no group paid for significantly (p at least
``min_group_loss_p_value``), passes: on 36 minority samples one sample moves the gap 2.8 points.

Where slices have held-out splits (``domain``), the gap is judged on the test and canary samples of the
slices the candidate was taught (``taught``), and its growth on those the champion knew (``known``):
a look neither model has learned says nothing about who pays for a change.

Cost: the models' cached predictions on the test and canary sets (no forward pass of its own), and
one vectorised pass over the group labels.
"""

import numpy as np
import pytest
import torch
from scipy import stats
from torchmetrics.classification import MulticlassAccuracy, MulticlassRecall

from behaviors.context import ModelUnderTest, Splits

pytestmark = pytest.mark.blocking


def metrics_by_group(predicted: torch.Tensor, labels: torch.Tensor, groups, num_classes: int) -> dict[str, dict[str, float]]:
    """``{group: {"accuracy": ..., "recall": ...}}`` for every group in ``groups`` (aligned with the predictions)."""
    groups = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups.tolist())):
        idx = torch.from_numpy(np.flatnonzero(groups == group))
        p, y = predicted[idx], labels[idx]
        accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")(p, y).item()
        recall = MulticlassRecall(num_classes=num_classes, average="macro")(p, y).item()
        out[group] = {"accuracy": accuracy, "recall": recall}
    return out


def group_metrics(model: ModelUnderTest, samples, num_classes: int) -> dict[str, dict[str, float]]:
    """``{group: {"accuracy": ..., "recall": ...}}`` for every group present in ``samples``."""
    return metrics_by_group(model.predictions(samples), samples.y, samples.groups, num_classes)


def fairness_predictions(model: ModelUnderTest, splits: Splits, among: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Predictions, labels and groups on test and canary together, from the model's cached predictions on
    each (no forward pass over the concatenation); ``among``: only the ``taught`` or ``known`` slices'
    samples, where the data has held-out splits."""
    if among is not None and among in splits.extra:
        samples = splits.extra[among]
        return model.predictions(samples), samples.y, list(samples.groups)
    predicted = torch.cat([model.predictions(splits.test), model.predictions(splits.canary)])
    labels = torch.cat([splits.test.y, splits.canary.y])
    return predicted, labels, list(splits.test.groups + splits.canary.groups)


def fairness_metrics(model: ModelUnderTest, splits: Splits, num_classes: int, among: str | None = None) -> dict[str, dict[str, float]]:
    """:func:`metrics_by_group` on :func:`fairness_predictions`."""
    return metrics_by_group(*fairness_predictions(model, splits, among), num_classes)


def paired_loss(candidate_right: torch.Tensor, champion_right: torch.Tensor) -> tuple[int, int, float]:
    """``(losses, gains, p)``: samples the champion got right and the candidate wrong, the reverse, and the
    one-sided exact McNemar p-value of that many losses or more if a loss and a gain were equally likely
    among the samples the two disagree on (1.0 when they agree on all)."""
    losses = int((champion_right & ~candidate_right).sum())
    gains = int((candidate_right & ~champion_right).sum())
    if losses + gains == 0:
        return losses, gains, 1.0
    return losses, gains, float(stats.binomtest(losses, losses + gains, 0.5, alternative="greater").pvalue)


def gap(metrics: dict[str, dict[str, float]], key: str) -> float:
    """Largest difference between groups (0 with a single group)."""
    values = [m[key] for m in metrics.values()]
    return max(values) - min(values) if len(values) > 1 else 0.0


def test_group_accuracy_gap(candidate: ModelUnderTest, splits: Splits, thresholds, num_classes: int, behavior) -> None:
    """The largest accuracy gap between groups stays under ``max_group_accuracy_gap``."""
    metrics = fairness_metrics(candidate, splits, num_classes, among="taught")
    for group, m in metrics.items():
        behavior.record(f"group_accuracy[{group}]", m["accuracy"])
        behavior.record(f"group_recall[{group}]", m["recall"])
    behavior.check("group_accuracy_gap", gap(metrics, "accuracy"), at_most=thresholds["max_group_accuracy_gap"])


@pytest.mark.parametrize("metric", ["accuracy", "recall"])
def test_group_gap_does_not_grow(candidate, needs_champion, splits: Splits, thresholds, num_classes: int, behavior, metric: str) -> None:
    """The gap between groups grows by at most ``max_group_gap_increase`` against the champion, or the group
    at the bottom did not lose significantly (paired exact test, p at least ``min_group_loss_p_value``)."""
    cand_predicted, labels, groups = fairness_predictions(candidate, splits, among="known")
    champ_predicted, _, _ = fairness_predictions(needs_champion, splits, among="known")
    cand = metrics_by_group(cand_predicted, labels, groups, num_classes)
    champ = metrics_by_group(champ_predicted, labels, groups, num_classes)
    for group in cand:
        behavior.record(f"group_{metric}_change[{group}]", cand[group][metric] - champ.get(group, cand[group])[metric])
    behavior.record(f"group_{metric}_gap_before", gap(champ, metric))
    increase = gap(cand, metric) - gap(champ, metric)
    tolerance = thresholds["max_group_gap_increase"]
    if not increase > tolerance:
        behavior.check(f"group_{metric}_gap_increase", increase, at_most=tolerance)
        return
    behavior.record(f"group_{metric}_gap_increase", increase)
    bottom = min(cand, key=lambda g: cand[g][metric])
    mask = torch.from_numpy(np.asarray(groups, dtype=object) == bottom)
    losses, gains, p_value = paired_loss((cand_predicted == labels)[mask], (champ_predicted == labels)[mask])
    behavior.record(f"group_losses[{bottom}]", losses)
    behavior.record(f"group_gains[{bottom}]", gains)
    behavior.note(
        f"the {metric} gap grew by {increase:.4f} (> {tolerance}); {bottom} ({int(mask.sum())} samples) lost {losses} the champion "
        f"got right and gained {gains}: one-sided exact McNemar p = {p_value:.4f}"
    )
    behavior.check(f"group_loss_p_value[{bottom}]", p_value, at_least=thresholds["min_group_loss_p_value"])
