"""Fairness across groups: nobody pays alone for a change (Hooker et al. 2019, "What Do Compressed
Deep Neural Networks Forget?": compression hurts small groups first).

Per-group accuracy and per-group macro recall (torchmetrics) on the evaluation samples (test and
canary together, for enough minority samples), by the ``group`` column of the sample table, e.g.
the ``scanner_b`` minority of the default data. The largest gap between groups must stay under a
bound and must not grow by more than a tolerance against the champion.

Where slices have held-out splits (``domain``), the gap is judged on the test and canary samples of the
slices the candidate was taught (``taught``), and its growth on those the champion knew (``known``):
a look neither model has learned says nothing about who pays for a change.

Cost: the models' cached predictions on the test and canary sets (no forward pass of its own), and
one vectorised pass over the group labels.
"""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassRecall

from behaviors.context import ModelUnderTest, Splits

pytestmark = pytest.mark.blocking


def fairness_set(splits: Splits):
    """Test and canary samples together."""
    return splits.test.concat(splits.canary, name="fairness")


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


def fairness_metrics(model: ModelUnderTest, splits: Splits, num_classes: int, among: str | None = None) -> dict[str, dict[str, float]]:
    """:func:`group_metrics` on test and canary together, from the model's cached predictions on each
    (the same numbers as on :func:`fairness_set`, without a forward pass over the concatenation);
    ``among``: only the ``taught`` or ``known`` slices' samples, where the data has held-out splits."""
    if among is not None and among in splits.extra:
        return group_metrics(model, splits.extra[among], num_classes)
    predicted = torch.cat([model.predictions(splits.test), model.predictions(splits.canary)])
    labels = torch.cat([splits.test.y, splits.canary.y])
    return metrics_by_group(predicted, labels, splits.test.groups + splits.canary.groups, num_classes)


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
    """The gap between groups grows by at most ``max_group_gap_increase`` against the champion."""
    cand = fairness_metrics(candidate, splits, num_classes, among="known")
    champ = fairness_metrics(needs_champion, splits, num_classes, among="known")
    for group in cand:
        behavior.record(f"group_{metric}_change[{group}]", cand[group][metric] - champ.get(group, cand[group])[metric])
    behavior.record(f"group_{metric}_gap_before", gap(champ, metric))
    behavior.check(f"group_{metric}_gap_increase", gap(cand, metric) - gap(champ, metric), at_most=thresholds["max_group_gap_increase"])
