"""Learning guards: a learn step must teach its own slice, and no step may undo what earlier steps taught.

Measured on each slice's held-out split (the test and canary samples whose ``domain`` is the slice:
its look, never trained on). The candidate's accuracies there are one row of the accuracy matrix
``R`` of continual learning (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual
Learning"; ``pipeline/records/continual.py`` turns the rows into ACC, BWT and FWT):

- *the slice is learned*: a ``learn`` step raises its own slice's held-out accuracy by at least
  ``min_slice_gain`` over the champion. The control is the champion itself (its gain is 0, so it fails
  whenever the margin is positive): a step that taught nothing, such as a bad data drop, is blocked;
- *nothing learned is lost* (a backward-transfer guard): on every slice the champion had learned, the
  held-out accuracy falls by at most ``max_slice_forgetting``. The control is the clean base alone,
  which fails the guard whenever the champion had learned something beyond it; when it passes too,
  the check is reported inconclusive (the champion knew nothing the base did not).
"""

import pytest

from behaviors.context import ModelUnderTest
from behaviors.plugin import BehaviorRecorder

pytestmark = pytest.mark.blocking


def accuracy(model: ModelUnderTest, samples) -> float:
    """Top-1 accuracy of ``model`` on ``samples``."""
    return (model.predictions(samples) == samples.y).float().mean().item()


def test_learn_step_teaches_its_slice(candidate, needs_champion, step, heldout, thresholds, behavior: BehaviorRecorder) -> None:
    """A learn step raises its own slice's held-out accuracy by at least ``min_slice_gain`` (control: the champion)."""
    if step.get("kind") != "learn":
        pytest.skip("not a learn step")
    name = step.get("slice")
    if name not in heldout:
        pytest.skip(f"slice {name!r} has no held-out split (no test or canary sample has it as its domain)")
    before, after = accuracy(needs_champion, heldout[name]), accuracy(candidate, heldout[name])
    behavior.record(f"slice_accuracy_before[{name}]", before)
    behavior.record(f"slice_accuracy_after[{name}]", after)
    behavior.check(f"slice_gain[{name}]", after - before, at_least=thresholds["min_slice_gain"], control=0.0)


def test_learned_slices_are_kept(
    candidate, needs_champion, clean_base, step, heldout, champion_learned, thresholds, behavior: BehaviorRecorder
) -> None:
    """No slice the champion had learned loses more than ``max_slice_forgetting`` held-out accuracy (control: the clean base)."""
    kept = [name for name in champion_learned if name in heldout]
    if not kept:
        pytest.skip("the champion has learned no slice with a held-out split")
    drops, control_drops = {}, {}
    for name in kept:
        champion_accuracy = accuracy(needs_champion, heldout[name])
        drops[name] = champion_accuracy - accuracy(candidate, heldout[name])
        if clean_base is not None:
            control_drops[name] = champion_accuracy - accuracy(clean_base, heldout[name])
    worst = max(drops, key=drops.get)
    for name, drop in drops.items():
        behavior.record(f"slice_forgetting[{name}]", drop)
    control = max(control_drops.values()) if control_drops else None
    if control is not None and control <= thresholds["max_slice_forgetting"]:
        behavior.note("the clean base passes this guard too: the champion knew nothing more than the base on these slices")
    behavior.check("max_slice_forgetting", drops[worst], at_most=thresholds["max_slice_forgetting"], control=control)
