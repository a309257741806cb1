"""The crash harness (bench/crash.py) in CI: SIGKILL at representative points, rerun `dvc repro`, check invariants.

``python -m bench.reliability`` runs every case of :data:`bench.crash.CASES`; this runs :data:`bench.crash.CI_CASES`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.crash import CASES, CI_CASES, LEARN_STEP, reference_run, run_case
from pipeline.core.faults import CRASH_POINTS, crash_point
from pipeline.core.tempfiles import sweep_stale_temporaries
from tests.projects import base_template, clone_project, command_env, sh

pytestmark = [pytest.mark.crash, pytest.mark.e2e]
BY_NAME = {case.name: case for case in CASES}


def test_every_case_names_a_known_point_and_every_point_is_tried() -> None:
    points = {case.point.partition("@")[0] for case in CASES}
    assert points <= set(CRASH_POINTS)
    assert points == set(CRASH_POINTS), f"never tried: {sorted(set(CRASH_POINTS) - points)}"
    assert set(CI_CASES) <= set(BY_NAME)


def test_crash_point_is_inert_unless_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UME_CRASH_AT", raising=False)
    crash_point("step.started")  # returns: nothing armed
    monkeypatch.setenv("UME_CRASH_AT", "gate.decided")
    crash_point("step.started")  # returns: another point is armed
    monkeypatch.setenv("UME_CRASH_AT", "step.started@2")
    monkeypatch.delenv("_UME_CRASH_SEEN_step_started", raising=False)
    crash_point("step.started")  # returns: armed for the second visit
    armed = "from pipeline.core.faults import crash_point\ncrash_point('step.started')\nprint('survived')"
    env = command_env() | {"UME_CRASH_AT": "step.started"}
    killed = subprocess.run([sys.executable, "-c", armed], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL and "survived" not in killed.stdout  # the control: armed, it kills


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("crash")
    # The session's base template with one promoted learn step on top (bench.crash.make_template's project,
    # without training a base of its own).
    stream = {LEARN_STEP: {"kind": "learn", "parent": "base", "slice": "u1", "epochs": 3}}
    template = clone_project(base_template(tmp_path_factory), work / "template", stream=stream)
    sh(template, "dvc", "repro")
    scenarios = dict.fromkeys(BY_NAME[name].scenario for name in CI_CASES)
    return {"work": work, "template": template, "references": {s: reference_run(template, s, work) for s in scenarios}}


@pytest.mark.parametrize("name", CI_CASES)
def test_killed_stage_recovers_with_every_invariant(name: str, harness: dict[str, Any]) -> None:
    case = BY_NAME[name]
    outcome = run_case(case, harness["template"], harness["references"][case.scenario], harness["work"])
    assert outcome.reached, outcome.problems
    assert outcome.survived, "\n".join(outcome.problems)


def test_sweep_removes_only_temporaries_of_dead_writers(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".ledger.jsonl.{dead.pid}.tmp"
    live = tmp_path / f".record.json.{os.getpid()}.tmp"
    other = tmp_path / ".params.yaml.tmp"
    for path in (stale, live, other):
        path.write_text("half")
    assert sweep_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()
