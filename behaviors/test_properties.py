"""Property-based behaviours with hypothesis (CheckList's invariance tests).

Derandomized, so a gate decision is reproducible; a failure reports the shrunk counterexample.
Every drawn brightness shift is a forward pass over the canary inputs, so in this module
``splits.canary`` is a seeded subsample of at most ``max_check_samples`` of them
(:mod:`behaviors.limits`; the whole canary set of the default data), its images read once.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from behaviors.context import BehaviorContext, ModelUnderTest, Splits
from behaviors.limits import capped_splits, property_examples

PROPERTY_SETTINGS = settings(max_examples=property_examples(25), deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def splits(ume_context: BehaviorContext, thresholds) -> Splits:
    """The context's splits with the canary set capped and read into memory (the properties' input)."""
    return capped_splits(ume_context, thresholds)


@pytest.mark.blocking
@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.0, 4.0))
def test_logits_are_finite(candidate: ModelUnderTest, splits: Splits, seed: int, scale: float) -> None:
    """Any input in (and well beyond) the valid range gives finite logits: no NaN, no inf."""
    shape = splits.canary.x.shape[1:]
    x = torch.randn((8, *shape), generator=torch.Generator().manual_seed(seed)) * scale
    assert torch.isfinite(candidate.forward(x)).all()


@pytest.mark.blocking
@PROPERTY_SETTINGS
@given(delta=st.floats(-1.0, 1.0))
def test_brightness_stability(candidate: ModelUnderTest, splits: Splits, thresholds, delta: float) -> None:
    """A tiny brightness change (at most ``brightness_delta`` of the range) keeps predictions stable."""
    shift = delta * thresholds["brightness_delta"] * 2.0  # inputs span [-1, 1]
    x = splits.canary.x
    agree = (candidate.forward((x + shift).clamp(-1, 1)).argmax(1) == candidate.predictions(splits.canary)).float().mean().item()
    assert agree >= thresholds["min_brightness_agreement"], (
        f"brightness shift {shift:+.4f}: agreement {agree:.4f} < {thresholds['min_brightness_agreement']}"
    )
