"""Invariance (CheckList INV) and directional (DIR) expectations, property-based with hypothesis.

A failing property reports the shrunk perturbation and saves the first affected image, original
and perturbed, as ``counterexample-*.png`` in the step's report.

Every drawn example is a forward pass over the canary inputs, so in this module ``splits.canary``
is a seeded subsample of at most ``max_check_samples`` of them (:mod:`behaviors.limits`; the whole
canary set of the default data), its images read once.
"""

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from behaviors.context import BehaviorContext, ModelUnderTest, Splits
from behaviors.limits import capped_splits, property_examples
from behaviors.perturbations import Perturbation, occlusion, perturbations

# `behavior` only records and saves images, so sharing it across generated inputs is safe.
# No shrinking: a failing example is reported as found, so a regression costs the gate seconds, not minutes.
PROPERTY = settings(
    max_examples=property_examples(30),
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def splits(ume_context: BehaviorContext, thresholds) -> Splits:
    """The context's splits with the canary set capped and read into memory (the properties' input)."""
    return capped_splits(ume_context, thresholds)


@PROPERTY
@given(p=perturbations())
def test_small_perturbations_keep_predictions(candidate: ModelUnderTest, splits: Splits, thresholds, behavior, p: Perturbation) -> None:
    """INV: brightness, contrast, 1-px shifts, light noise and tiny occlusions keep most canary predictions."""
    x = splits.canary.x
    before = candidate.predictions(splits.canary)
    after = candidate.forward(p.apply(x)).argmax(1)
    agree = (after == before).float().mean().item()
    if agree < thresholds["min_perturbation_agreement"]:
        first = int(torch.nonzero(after != before)[0])
        behavior.counterexample(x[first], p.apply(x[first : first + 1])[0], sample_id=splits.canary.sample_ids[first])
    assert agree >= thresholds["min_perturbation_agreement"], f"{p.describe()}: agreement {agree:.4f}"


@PROPERTY
@given(p=occlusion(max_size=16))
def test_occlusion_never_raises_confidence_on_average(candidate: ModelUnderTest, splits: Splits, p: Perturbation) -> None:
    """DIR: hiding part of the digit does not make the model more sure of its answer, on average."""
    x = splits.canary.x
    probs = candidate.logits(splits.canary).softmax(1)
    predicted = probs.argmax(1)
    before = probs.gather(1, predicted[:, None]).mean().item()
    after = candidate.forward(p.apply(x)).softmax(1).gather(1, predicted[:, None]).mean().item()
    assert after <= before + 0.01, f"{p.describe()}: mean confidence {before:.4f} -> {after:.4f}"
