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
    examples = int(os.environ.get("UME_STATEFUL_EXAMPLES", "2"))
    steps = int(os.environ.get("UME_STATEFUL_STEPS", "5"))
    result = run_machine(trained_project, tmp_path, examples=examples, steps=steps)
    assert result["violations"] == [], result
    assert result["examples"] >= examples and result["operations"] > 0, result
    ran = sum(count for outcome, count in result["outcomes"].items() if outcome.endswith(("promoted", "blocked", "done")))
    assert ran > 0, f"every operation was refused: the machine exercised nothing ({result['outcomes']})"
