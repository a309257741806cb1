"""The hypothesis state machine over whole streams (bench/stream_machine.py), a few examples in CI.

``UME_STATEFUL_EXAMPLES`` and ``UME_STATEFUL_STEPS`` raise the counts; ``python -m bench.reliability``
runs more and records the figures in ``bench/results/reliability.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.stream_machine import run_machine

pytestmark = pytest.mark.stateful


def test_random_streams_keep_every_invariant(trained_project: Path, tmp_path: Path) -> None:
    examples = int(os.environ.get("UME_STATEFUL_EXAMPLES", "1"))  # every kind once: the test below; the scale: bench.reliability
    steps = int(os.environ.get("UME_STATEFUL_STEPS", "5"))
    result = run_machine(trained_project, tmp_path, examples=examples, steps=steps)
    assert result["violations"] == [], result
    assert result["examples"] >= examples and result["operations"] > 0, result
    ran = sum(count for outcome, count in result["outcomes"].items() if outcome.endswith(("promoted", "blocked", "done")))
    assert ran > 0, f"every operation was refused: the machine exercised nothing ({result['outcomes']})"


def test_every_operation_kind_keeps_every_invariant(trained_project: Path, tmp_path: Path) -> None:
    """Each of the machine's operation kinds once, in a fixed order, the invariants after each (the random run may miss one)."""
    from bench.stream_machine import MachineStats, StreamMachine

    StreamMachine.template, StreamMachine.workdir, StreamMachine.stats = trained_project, tmp_path, MachineStats()
    machine = StreamMachine()
    operations = [
        lambda: machine.learn("u1"),
        lambda: machine.learn("u3"),
        lambda: machine.merge("fold"),
        lambda: machine.forget("owner", 3, "exact"),
        machine.edit,
        lambda: machine.compress("quantize"),
        lambda: machine.rollback_drop(0) if machine._champion_steps() else machine._note("rollback --drop: nothing to drop"),
        lambda: machine.rollback_to(0),
        lambda: machine.ui_move_alias(1),
    ]
    check = StreamMachine.__dict__["invariants"]  # the method itself: hypothesis keeps a list under that name on instances
    try:
        check(machine)
        for operation in operations:
            operation()
            check(machine)
    finally:
        machine.teardown()
    kinds = {outcome.split(":")[0].split()[0] for outcome in StreamMachine.stats.outcomes}
    assert kinds >= {"learn", "merge", "forget", "edit", "compress", "rollback", "ui"}, StreamMachine.stats.outcomes
