"""Fairness across groups (advisory here; compression steps make it blocking in a later issue).

Per-group accuracy on the test split (the ``group`` column of the sample table, e.g. the
``scanner_b`` minority of the default data); the largest gap between groups is reported.
"""

from behaviors.context import ModelUnderTest, Splits


def group_accuracies(model: ModelUnderTest, samples) -> dict[str, float]:
    """Accuracy of every group present in ``samples``."""
    correct = (model.predictions(samples) == samples.y).tolist()
    out: dict[str, float] = {}
    for group in sorted(set(samples.groups)):
        hits = [c for c, g in zip(correct, samples.groups, strict=True) if g == group]
        out[group] = sum(hits) / len(hits)
    return out


def test_group_accuracy_gap(candidate: ModelUnderTest, splits: Splits, thresholds, behavior) -> None:
    """The largest accuracy gap between groups stays under ``max_group_accuracy_gap``."""
    accs = group_accuracies(candidate, splits.test)
    for group, acc in accs.items():
        behavior.record(f"group_accuracy[{group}]", acc)
    gap = max(accs.values()) - min(accs.values()) if len(accs) > 1 else 0.0
    behavior.check("group_accuracy_gap", gap, at_most=thresholds["max_group_accuracy_gap"])
