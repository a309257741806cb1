"""The crash harness: SIGKILL a stage at a named point, rerun ``dvc repro``, check every invariant.

Each :class:`CrashCase` names a scenario (what the user does next on a small trained project:
append a learn step, file a deletion request with ``ume forget``, append a quantize step, roll an
overlay back, re-prepare the data) and a crash point of :mod:`pipeline.core.faults`. A case:

1. copies the template project (prepared data, a gated base, one promoted learn step ``s01``);
2. does the scenario with ``UME_CRASH_AT=<point>``: the stage process kills itself there with
   SIGKILL (the harness checks that it did: the point is logged before the kill);
3. recovers the way a user would: ``dvc repro`` again (after a crash inside ``ume forget``, the
   same ``ume forget`` command first);
4. checks, and the case *survives* only if all hold:
   - the recovery run exits 0 and ``ume audit`` passes (the ledger's chain verifies; every
     registry version, tag and the champion alias agree with the ledger);
   - the champion is the one a crash-free run of the same scenario ends with (same manifest hash:
     composition is deterministic), so it is unchanged or fully promoted, never half;
   - every step's decision and candidate manifest equal the crash-free run's;
   - every deletion request of the crash-free run is in the ledger and resolved, none lost;
   - every component file verifies (sidecar, SHA-256, safetensors), every manifest parses, and no
     temporary file of an atomic write is left;
   - a further ``dvc repro`` has nothing to do.

``python -m bench.reliability`` runs every case; ``tests/test_crash.py`` runs a subset in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.faults import CRASH_AT_ENV, CRASH_LOG_ENV, CRASH_POINTS

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(
    ".venv", "store", "mlruns", "mlartifacts", "mlflow.db", ".git", "tmp", "dvc.lock", "__pycache__", ".hypothesis", "*.egg-info", "certificates",
    "dvc_plots", "bench", "docs",
)
LEARN_STEP = "s01-learn-u1"
SCENARIOS = ("learn", "forget", "compress", "rollback", "ui-rollback", "prepare")
# Scenarios whose crash points include ones after a promotion (the rollback is blocked by design on the small project).
PROMOTED_SCENARIOS = ("learn", "forget", "compress")


@dataclass(frozen=True)
class CrashCase:
    """One crash: a scenario and the point (``name`` or ``name@n`` for its n-th visit) to kill at."""

    scenario: str
    point: str

    @property
    def name(self) -> str:
        """``scenario:point``."""
        return f"{self.scenario}:{self.point}"


CASES: tuple[CrashCase, ...] = (
    *(
        CrashCase("learn", p)
        for p in (
            "step.started", "registry.run_started", "train.batch", "component.tmp_written", "component.saved", "ledger.tmp_written@2",
            "registry.registered", "ledger.candidate", "gate.decided", "gate.tagged", "gate.promoted", "step.record_tmp",
            "dvc.between_stages",
        )
    ),
    *(
        CrashCase("forget", p)
        for p in ("forget.ingested", "forget.request_written", "step.ingested", "train.batch", "gate.promoted", "forget.resolved", "revoke.ledger")
    ),
    # The exact deletion's erasure (`ume erase` in the seal stage): killed after each of its actions.
    *(
        CrashCase("forget", p)
        for p in ("erase.planned", "erase.components", "erase.mlflow", "erase.reports", "erase.derived", "erase.dvc_cache", "erase.keys")
    ),
    *(CrashCase("compress", p) for p in ("component.saved", "gate.promoted")),
    # On the small project the rollback is blocked by the gate, so its last point is the decision.
    *(CrashCase("rollback", p) for p in ("registry.registered", "gate.decided")),
    # A person moved the champion alias back to the base in the MLflow UI; `ume sync` makes it a rollback step.
    *(CrashCase("ui-rollback", p) for p in ("sync.recorded", "sync.before_run")),
    CrashCase("prepare", "prepare.staged"),
)
# What `make test` runs (its time budget is 12 minutes on two cores): an interrupted alias move, the `dvc`
# process killed between two stages (the stage finished, dvc.lock does not know it), a
# deletion request killed before its request file (no request may be lost), a prepare killed in staging.
# (A `ume sync` killed between its ledger entry and the stream append: tests/test_ui_sync.py, in-process.)
# `python -m bench.reliability` runs every case of CASES.
# learn:dvc.between_stages left CI for time on 2026-12-03 and came back with the warm process the same day (it is also the
# case that finds `dvc` through the warm process's child: pipeline.core.warm.logical_parent_pid).
CI_CASES: tuple[str, ...] = ("learn:gate.decided", "learn:dvc.between_stages", "forget:forget.ingested", "forget:erase.keys", "prepare:prepare.staged")


@dataclass
class CrashOutcome:
    """What happened to one case."""

    name: str
    survived: bool
    reached: bool
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """For ``reliability.json``."""
        return {"name": self.name, "survived": self.survived, "reached": self.reached, "problems": self.problems, "seconds": round(self.seconds, 1)}


# ---------------------------------------------------------------------------------------- running


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_AT_ENV, CRASH_LOG_ENV) and not k.startswith("_UME_CRASH_SEEN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def sh(cwd: Path, *argv: str, extra: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in ``cwd``; raise with its output when ``check`` and it fails."""
    proc = subprocess.run(list(argv), cwd=cwd, env=_env(extra), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode} in {cwd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_template(dest: Path, *, base_epochs: int = 8, learn_epochs: int | None = None) -> Path:
    """A small project: this repository's pipeline with tiny settings, ``dvc repro`` run (base + s01).

    ``s01`` learns with the learn method's default epochs unless ``learn_epochs`` is given: on the
    looks data three epochs leave the inverted digits unlearned and the gate blocks the step, and the
    rollback scenario needs a served overlay to drop.
    """
    shutil.copytree(REPO, dest, ignore=IGNORE)
    sh(dest, "git", "init", "-q")
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["train"]["progress_bar"] = False
    raw["train"]["base"]["epochs"] = base_epochs
    # The harness compares each decision with a crash-free run, so a decision must not depend on the
    # machine's load: the wall-clock latency budget is switched off (and fairness loosened, as in tests).
    # Its scenarios must reach the points after a promotion: the quality bounds get the tests' wide margins,
    # so the scenario's 3-epoch learn step on a new look is promoted (the shipped bounds block it: measured
    # 2026-12-03, `learn:gate.promoted` was never reached).
    raw["behaviors"]["thresholds"].update(
        max_group_accuracy_gap=0.5,
        max_group_gap_increase=0.2,
        max_latency_ratio=1000.0,
        min_test_accuracy=0.5,
        max_test_accuracy_drop=0.3,
        max_retained_accuracy_drop=0.3,
        max_class_recall_drop=0.8,
        min_brightness_agreement=0.6,
        # The forget scenario's exact deletion must be served too, or its points after the promotion (gate.promoted,
        # forget.resolved, revoke.ledger) are never reached: measured 2026-12-03, its calibration error rose by 0.0505
        # against the shipped 0.05 and the step was blocked in the crash-free run and in every case.
        max_calibration_error_increase=0.4,
        min_canary_agreement=0.5,
        min_perturbation_agreement=0.5,
        forget_accuracy_tolerance=0.3,
    )
    raw["stream"] = {LEARN_STEP: {"kind": "learn", "parent": "base", "slice": "u1", **({"epochs": learn_epochs} if learn_epochs else {})}}
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(dest, "dvc", "repro")
    record = json.loads((dest / "store" / "steps" / f"{LEARN_STEP}.json").read_text())
    if record["decision"] != "promoted":
        raise RuntimeError(f"the template's {LEARN_STEP} was {record['decision']} by {record.get('failing')}: the scenarios need it served")
    # The reference bank once, here: every forget case (and its crash-free reference) reuses it, purging the
    # shadows that saw the deleted owner, instead of training 16 shadows with the learn recipe in its own gate
    # (measured 2026-12-03: a forget case's recovery `dvc repro` then outran the 900 s timeout with two cases at once).
    sh(dest, sys.executable, "-c", BUILD_BANK)
    return dest


BUILD_BANK = """
from behaviors.build import reference_bank
from pipeline.data import open_data
from pipeline.steps import open_workspace
ws = open_workspace()
manifest = ws.manifest_of(ws.registry.champion())
bank, note = reference_bank(ws, open_data(ws.data_dir, ws.ledger, seed=ws.params.seed), manifest)
print(f"reference bank: {len(bank) if bank else 0} shadows {note}")
"""


def copy_project(template: Path, dest: Path) -> Path:
    """A private copy whose registry URI is absolute.

    MLflow keeps one SQLAlchemy engine per tracking URI for the life of a process, so the relative
    ``sqlite:///mlflow.db`` would keep pointing at the first project this process read. The registry
    is not a DVC parameter of any stage: changing it reruns nothing.
    """
    shutil.copytree(template, dest, symlinks=True)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["registry"]["tracking_uri"] = f"sqlite:///{dest.resolve() / 'mlflow.db'}"
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def _owner_of_learn_slice(root: Path) -> str:
    """A data subject with samples in slice u1 (so the champion carries their influence)."""
    import pandas as pd

    rows = pd.read_csv(root / "store" / "data" / "samples.csv")
    counts = rows[rows["slice"] == "u1"].groupby("owner").size()
    return str(counts[counts >= 3].index.sort_values()[0])


def _append_step(root: Path, key: str, entry: dict[str, Any]) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    entry = {"kind": entry["kind"], "parent": list(raw["stream"])[-1], **{k: v for k, v in entry.items() if k != "kind"}}
    raw["stream"][key] = entry
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _scenario_commands(root: Path, scenario: str) -> list[tuple[str, ...]]:
    """Prepare ``root`` for the scenario; returns the commands the user runs (the crash hits one of them)."""
    if scenario == "learn":
        _append_step(root, "s02-learn-u3", {"kind": "learn", "slice": "u3", "epochs": 3})
        return [("dvc", "repro")]
    if scenario == "compress":
        _append_step(root, "s02-quantize", {"kind": "compress", "method": "quantize", "calibration_samples": 128})
        return [("dvc", "repro")]
    if scenario == "forget":
        return [("ume", "forget", "--owner", _owner_of_learn_slice(root), "--reason", "GDPR art. 17 (crash harness)"), ("dvc", "repro")]
    if scenario == "rollback":
        return [("ume", "rollback", "--drop", LEARN_STEP, "--reason", "crash harness")]
    if scenario == "ui-rollback":
        from mlflow import MlflowClient

        uri = yaml.safe_load((root / "params.yaml").read_text())["registry"]["tracking_uri"]
        MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias("ume-digits", "champion", "1")  # the UI's alias editor
        return [("ume", "sync")]
    if scenario == "prepare":
        return [("dvc", "repro", "--force", "--single-item", "prepare"), ("dvc", "repro")]
    raise ValueError(f"unknown scenario {scenario!r}")


def _recovery_commands(scenario: str, commands: list[tuple[str, ...]], failed_at: int) -> list[tuple[str, ...]]:
    """What a user runs after the crash: the interrupted `ume` command again if it was one, then `dvc repro`."""
    again = [commands[failed_at]] if commands[failed_at][0] == "ume" and scenario in ("forget", "ui-rollback") else []
    return [*again, ("dvc", "repro")]


def run_commands(root: Path, commands: list[tuple[str, ...]], extra: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run the commands in order; returns the index of the first that failed (None if all passed) and its output."""
    for i, argv in enumerate(commands):
        proc = sh(root, *argv, extra=extra, check=False)
        if proc.returncode != 0:
            return i, proc.stdout[-2000:] + proc.stderr[-2000:]
    return None, ""


# --------------------------------------------------------------------------------------- checking


def final_state(root: Path) -> dict[str, Any]:
    """What a run ended with: champion manifest, each step's decision and manifest, requests."""
    from pipeline.records.deletion import DeletionLog
    from pipeline.records.erasure import ErasureLog
    from pipeline.records.workspace import Workspace

    with contextlib.chdir(root):  # a project's paths (store, sqlite) are relative to its directory
        ws = Workspace.open("params.yaml")
        champion = ws.registry.champion()
        steps = {}
        for key in ["base", *ws.params.stream]:
            record = ws.step_record(key)
            steps[key] = None if record is None else {"decision": record["decision"], "manifest_hash": record["manifest_hash"]}
        log = DeletionLog.read(ws.ledger)
        erasure = ErasureLog.read(ws.ledger)
        champion_manifest = ws.manifest_of(champion).hash if champion is not None else None
    return {
        "erased": sorted(erasure.done),
        "erasing": sorted(erasure.unfinished),
        "champion_manifest": champion_manifest,
        "steps": steps,
        "requests": sorted(log.requests),
        "resolved": sorted(log.resolved),
    }


def invariant_problems(root: Path, reference: dict[str, Any]) -> list[str]:
    """Every invariant the harness checks after recovery, against the crash-free ``reference``."""
    from pipeline.core.errors import UmeError
    from pipeline.model.components import ComponentStore
    from pipeline.model.manifest import Manifest
    from pipeline.records.erasure import ErasureLog
    from pipeline.records.workspace import Workspace
    from pipeline.reports.audit import audit

    problems: list[str] = []
    try:
        with contextlib.chdir(root):  # what `ume audit` checks, in-process (one interpreter start less per case)
            ws = Workspace.open("params.yaml")
            report = audit(ws.ledger, ws.registry, store=ws.components, manifest_of=ws.manifest_of)
            erased = ErasureLog.read(ws.ledger).components  # their weights are gone on purpose (audit checks they stay gone)
        problems.extend(f"audit: {line}" for line in report.problems)
        state = final_state(root)
    except UmeError as exc:
        return [*problems, f"cannot read the project: {exc}"]
    if state["champion_manifest"] != reference["champion_manifest"]:
        problems.append(f"champion manifest {state['champion_manifest']} differs from the crash-free run's {reference['champion_manifest']}")
    for key, expected in reference["steps"].items():
        if state["steps"].get(key) != expected:
            problems.append(f"step {key}: {state['steps'].get(key)} differs from the crash-free run's {expected}")
    lost = sorted(set(reference["requests"]) - set(state["requests"]))
    if lost:
        problems.append(f"deletion request(s) lost: {', '.join(lost)}")
    unresolved = sorted(set(reference["resolved"]) - set(state["resolved"]))
    if unresolved:
        problems.append(f"deletion request(s) not resolved: {', '.join(unresolved)}")
    unerased = sorted(set(reference.get("erased", [])) - set(state["erased"]))
    if unerased or state["erasing"]:
        problems.append(f"erasure not finished: {', '.join(unerased or state['erasing'])}")
    store = ComponentStore(root / "store" / "components")
    for sidecar in sorted((root / "store" / "components").glob("*.json")):
        if sidecar.stem in erased:
            continue
        try:
            store.verify(sidecar.stem)
        except UmeError as exc:
            problems.append(f"component {sidecar.stem}: {exc}")
    for path in sorted((root / "store" / "versions").glob("*.json")):
        try:
            Manifest.from_json(json.loads(path.read_text()))
        except (UmeError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"manifest {path.name} does not parse: {exc}")
    leftovers = sorted(str(p.relative_to(root)) for p in (root / "store").rglob("*.tmp"))
    if leftovers:
        problems.append(f"temporary files left: {', '.join(leftovers[:5])}")
    again = sh(root, "dvc", "status", check=False)
    if again.returncode != 0 or "up to date" not in again.stdout:
        problems.append(f"dvc status after recovery is not clean: {again.stdout.strip()[-400:]}")
    return problems


def reference_run(template: Path, scenario: str, workdir: Path) -> dict[str, Any]:
    """The crash-free run of a scenario (what every crashed-then-recovered run must end with)."""
    root = copy_project(template, workdir / f"reference-{scenario}")
    failed, output = run_commands(root, _scenario_commands(root, scenario))
    if failed is not None:
        raise RuntimeError(f"the crash-free {scenario} scenario failed:\n{output}")
    state = final_state(root)
    last = list(state["steps"])[-1]
    decision = (state["steps"][last] or {}).get("decision")
    if scenario in PROMOTED_SCENARIOS and decision != "promoted":
        # A blocked step never reaches the points after a promotion: every such case would report "not reached".
        raise RuntimeError(f"the crash-free {scenario} scenario's step {last} was {decision}: its cases need it promoted (widen the template's margins)")
    return state


def run_case(case: CrashCase, template: Path, reference: dict[str, Any], workdir: Path) -> CrashOutcome:
    """Crash, recover, check."""
    started = time.time()
    point = case.point.partition("@")[0]
    if point not in CRASH_POINTS:
        raise KeyError(f"unknown crash point {case.point!r}")
    root = copy_project(template, workdir / case.name.replace(":", "-").replace("@", "-"))
    log = root / "crash.log"
    commands = _scenario_commands(root, case.scenario)
    failed, output = run_commands(root, commands, extra={CRASH_AT_ENV: case.point, CRASH_LOG_ENV: str(log)})
    reached = log.exists() and point in log.read_text()
    outcome = CrashOutcome(case.name, survived=False, reached=reached)
    if not reached or failed is None:
        outcome.problems.append(f"the crash point was not reached (commands {'failed' if failed is not None else 'passed'}): {output[-600:]}")
        outcome.seconds = time.time() - started
        return outcome
    recovery_failed, recovery_output = run_commands(root, _recovery_commands(case.scenario, commands, failed))
    if recovery_failed is not None:
        outcome.problems.append(f"recovery failed: {recovery_output[-1200:]}")
    outcome.problems.extend(invariant_problems(root, reference))
    outcome.survived = not outcome.problems
    outcome.seconds = time.time() - started
    return outcome


def run_cases(cases: list[CrashCase], workdir: Path, *, jobs: int = 1, log: Any = print) -> list[CrashOutcome]:
    """Build the template once, one crash-free reference per scenario, then every case (``jobs`` at a time)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    template = make_template(workdir / "template")
    scenarios = list(dict.fromkeys(c.scenario for c in cases))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        references = dict(zip(scenarios, pool.map(reference_run, [template] * len(scenarios), scenarios, [workdir] * len(scenarios)), strict=True))
        futures = [pool.submit(run_case, case, template, references[case.scenario], workdir) for case in cases]
        outcomes = []
        for case, future in zip(cases, futures, strict=True):
            outcome = future.result()
            log(f"{'survived' if outcome.survived else 'FAILED  '} {case.name:40s} {outcome.seconds:6.1f} s  {'; '.join(outcome.problems)[:300]}")
            outcomes.append(outcome)
    return outcomes
