"""Drift against the champion on the canary split: prediction agreement and calibration."""

import pytest
from torchmetrics.classification import MulticlassCalibrationError

from behaviors.context import ModelUnderTest, Splits


def calibration_error(model: ModelUnderTest, samples, num_classes: int) -> float:
    """Expected calibration error (15 bins, L1) with torchmetrics."""
    metric = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")
    return metric(model.logits(samples).softmax(1), samples.y).item()


@pytest.mark.blocking
def test_canary_agreement(candidate, needs_champion, splits: Splits, thresholds, behavior) -> None:
    """The candidate agrees with the champion on most canary inputs."""
    agree = (candidate.predictions(splits.canary) == needs_champion.predictions(splits.canary)).float().mean().item()
    behavior.check("canary_agreement", agree, at_least=thresholds["min_canary_agreement"])


@pytest.mark.blocking
def test_calibration_error_change(candidate, needs_champion, splits: Splits, thresholds, num_classes: int, behavior) -> None:
    """Calibration on the canary split gets worse by at most ``max_calibration_error_increase``."""
    change = calibration_error(candidate, splits.canary, num_classes) - calibration_error(needs_champion, splits.canary, num_classes)
    behavior.check("calibration_error_increase", change, at_most=thresholds["max_calibration_error_increase"])
