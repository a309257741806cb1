"""Accuracy behaviours (CheckList's minimum functionality tests): floors and no-regression vs the champion."""

import pytest
import torch

from behaviors.context import ModelUnderTest, Splits
from behaviors.plugin import BehaviorRecorder


def accuracy(model: ModelUnderTest, samples) -> float:
    """Top-1 accuracy of ``model`` on ``samples``."""
    return (model.predictions(samples) == samples.y).float().mean().item()


@pytest.mark.blocking
def test_test_accuracy_floor(candidate: ModelUnderTest, splits: Splits, heldout, learned, thresholds, behavior: BehaviorRecorder) -> None:
    """Test accuracy never falls below an absolute floor; where slices have held-out splits, the floor
    holds on the splits of the slices the candidate was taught (a look it never saw is not a regression)."""
    taught = [heldout[name] for name in learned if name in heldout]
    if not taught:
        behavior.check("test_accuracy", accuracy(candidate, splits.test), at_least=thresholds["min_test_accuracy"])
        return
    behavior.record("test_accuracy", accuracy(candidate, splits.test))
    correct = sum((candidate.predictions(s) == s.y).sum().item() for s in taught)
    behavior.check("learned_test_accuracy", correct / sum(len(s) for s in taught), at_least=thresholds["min_test_accuracy"])


@pytest.mark.blocking
def test_test_accuracy_no_drop(candidate, needs_champion, splits: Splits, thresholds, behavior: BehaviorRecorder) -> None:
    """Test accuracy drops by at most ``max_test_accuracy_drop`` against the champion."""
    drop = accuracy(needs_champion, splits.test) - accuracy(candidate, splits.test)
    behavior.check("test_accuracy_drop", drop, at_most=thresholds["max_test_accuracy_drop"])


@pytest.mark.blocking
def test_retained_accuracy_no_drop(candidate, needs_champion, splits: Splits, thresholds, behavior: BehaviorRecorder) -> None:
    """On what the champion was trained on (minus deletions), accuracy drops by at most the bound."""
    assert len(splits.retain) > 0, "empty retain set"
    cand = accuracy(candidate, splits.retain)
    drop = accuracy(needs_champion, splits.retain) - cand
    behavior.check("retained_accuracy", cand, at_least=0.0)
    behavior.check("retained_accuracy_drop", drop, at_most=thresholds["max_retained_accuracy_drop"])


def test_no_empty_prediction_class(candidate: ModelUnderTest, splits: Splits, num_classes: int, behavior) -> None:
    """Advisory: every class is predicted at least once on the test split."""
    predicted = torch.unique(candidate.predictions(splits.test)).numel()
    present = torch.unique(splits.test.y).numel()
    behavior.check("classes_predicted", predicted, at_least=present)
