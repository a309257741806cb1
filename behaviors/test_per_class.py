"""Per-class recall: a change may not buy overall accuracy by sacrificing one class."""

import pytest
from torchmetrics.classification import MulticlassRecall

from behaviors.context import ModelUnderTest, Splits


def per_class_recall(model: ModelUnderTest, samples, num_classes: int):
    """Recall of every class (torchmetrics, ``average=None``)."""
    metric = MulticlassRecall(num_classes=num_classes, average=None)
    return metric(model.predictions(samples), samples.y)


@pytest.mark.blocking
def test_per_class_recall_drop(candidate, needs_champion, splits: Splits, thresholds, num_classes: int, behavior) -> None:
    """No class loses more than ``max_class_recall_drop`` of recall on the test split."""
    drops = per_class_recall(needs_champion, splits.test, num_classes) - per_class_recall(candidate, splits.test, num_classes)
    present = splits.test.y.unique()
    worst = drops[present].max().item()
    behavior.check("max_class_recall_drop", worst, at_most=thresholds["max_class_recall_drop"])
