"""A hypothesis state machine over whole streams: random learn, forget, edit, compress, rollback, merge and UI alias moves.

Each example starts from a copy of a small trained project (prepared data and a gated base) and
runs a random sequence of the operations a user can do, through the same code paths as the CLI
(``ume forget`` and ``ume rollback`` are called as commands; other steps are appended to
``params.yaml`` and run with :func:`pipeline.steps.run_step`, as ``ume step`` does). After every
operation, :meth:`StreamMachine.invariants` checks the invariants of ``DESIGN.md``:

1. the champion passed the gate it was promoted through, and the registry agrees with the ledger
   (``ume audit``: chain verifies, every version and alias move is in the ledger);
2. no version that is still servable (not tagged ``deletion_status=revoked``) carries uncovered
   influence of a resolved deletion request, the champion included; the data layer serves no
   deleted sample to any consumer;
3. composing the champion twice gives bit-identical outputs, and a version that is champion again
   (after ``rollback --to``) gives exactly the outputs it gave before;
6. an operation refused with an error changed nothing (ledger, registry versions, alias).

Used by ``tests/test_stateful.py`` (few examples, CI) and ``python -m bench.reliability`` (more).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

EDIT_SPEC = """\
description: a small edit for the state machine (the champion's top confusion on the field slice)
cases: {slice: field, confusion: top, holdout_fraction: 0.4}
locality: canary
train: {rank: 4, alpha: 8, epochs: 4, lr: 0.003, batch_size: 32, locality_weight: 2.0, locality_samples: 8.0}
"""


def copy_trained_project(template: Path, dest: Path) -> Path:
    """A private copy of a trained project whose params point at the copy (absolute store and sqlite paths)."""
    shutil.copytree(template, dest)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["paths"]["store"] = str(dest / "store")
    raw["registry"]["tracking_uri"] = f"sqlite:///{dest / 'mlflow.db'}"
    raw.pop("stream", None)
    raw["behaviors"]["thresholds"]["min_edit_success"] = 0.0  # the tiny edit may not fix its cases: it must still be safe
    raw["behaviors"]["thresholds"]["min_edit_holdout_success"] = 0.0
    raw["behaviors"]["thresholds"]["max_latency_ratio"] = 1000.0  # wall-clock budgets depend on the machine's load, not on the stream
    # An empty, block-style `stream:` last, so that steps can be appended as `ume forget` does.
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False) + "stream:\n")
    (dest / "edits").mkdir(exist_ok=True)
    (dest / "edits" / "machine-edit.yaml").write_text(EDIT_SPEC)
    return dest


@dataclass
class MachineStats:
    """Counts across examples (what ``reliability.json`` reports)."""

    examples: int = 0
    operations: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    operations_per_example: list[int] = field(default_factory=list)


class StreamMachine(RuleBasedStateMachine):
    """Random streams on a private copy of a trained project; invariants after every operation."""

    template: Path
    workdir: Path
    stats = MachineStats()

    def __init__(self) -> None:
        super().__init__()
        type(self).stats.examples += 1
        self.root = copy_trained_project(self.template, self.workdir / f"example-{type(self).stats.examples:03d}")
        self.params = self.root / "params.yaml"
        self.outputs: dict[int, tuple[Any, str]] = {}  # version -> hash of its outputs when first seen as champion
        self.counter = 0
        self.operations = 0
        self._old_cwd = os.getcwd()
        os.chdir(self.root)  # no dvc.yaml here: `ume rollback` runs its step in-process

    def teardown(self) -> None:
        """Leave the example's directory."""
        type(self).stats.operations_per_example.append(self.operations)
        os.chdir(self._old_cwd)

    # ------------------------------------------------------------------------------ helpers

    def _ws(self):
        from pipeline.records.workspace import Workspace

        return Workspace.open(self.params)

    def _fingerprint(self) -> tuple[int, tuple[int, ...], int | None]:
        ws = self._ws()
        return len(ws.ledger.verify()), tuple(v.version for v in ws.registry.versions()), ws.registry.champion()

    def _note(self, what: str) -> None:
        stats = type(self).stats
        stats.operations += 1
        self.operations += 1
        stats.outcomes[what] = stats.outcomes.get(what, 0) + 1

    def _append_and_run(self, entry: dict[str, Any]) -> str:
        """Append a step to the stream and run it as ``ume step`` does; a refusal must change nothing."""
        from pipeline.cli import append_stream_step
        from pipeline.core.errors import UmeError
        from pipeline.steps import open_workspace, run_step

        self.counter += 1
        key = f"m{self.counter:02d}-{entry['kind']}"
        stream = yaml.safe_load(self.params.read_text())["stream"] or {}
        entry = {"kind": entry["kind"], "parent": list(stream)[-1] if stream else "base", **{k: v for k, v in entry.items() if k != "kind"}}
        original = self.params.read_text()
        before = self._fingerprint()
        try:
            append_stream_step(self.params, key, entry)
            with contextlib.redirect_stdout(io.StringIO()):
                outcome = run_step(open_workspace(self.params), key)
        except UmeError as exc:
            self.params.write_text(original)
            assert self._fingerprint() == before, f"refused step {key} ({exc}) changed the ledger or the registry"
            self._note(f"{entry['kind']}: refused")
            return "refused"
        self._note(f"{entry['kind']}: {outcome.record['decision']}")
        return outcome.record["decision"]

    def _cli(self, *argv: str) -> int:
        """Run an ``ume`` command in-process; a non-zero exit must change nothing."""
        from pipeline.cli import main

        before = self._fingerprint()
        original = self.params.read_text()
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                main(["--params", str(self.params), *argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
        else:
            code = 0
        if code != 0:
            changed = f"refused `ume {' '.join(argv)}` changed something; it said: {said.getvalue().strip()[-600:]}"
            assert self.params.read_text() == original and self._fingerprint() == before, changed
        return code

    def _rows(self):
        from pipeline.data import open_data

        ws = self._ws()
        return open_data(ws.data_dir, ws.ledger, seed=ws.params.seed).rows

    # -------------------------------------------------------------------------------- rules

    @rule(slice_name=st.sampled_from(["u1", "u2", "u3"]))
    def learn(self, slice_name: str) -> None:
        """A data update (u2 is the corrupted slice: the gate should block it)."""
        self._append_and_run({"kind": "learn", "slice": slice_name, "epochs": 2})

    @rule(kind=st.sampled_from(["owner", "samples", "label", "group"]), pick=st.integers(0, 10_000), method=st.sampled_from(["exact", "ssd"]))
    def forget(self, kind: str, pick: int, method: str) -> None:
        """``ume forget`` with any selector kind, then its step."""
        rows = self._rows()
        if kind == "owner":
            owners = sorted(rows["owner"].unique())
            args = ["--owner", owners[pick % len(owners)]]
        elif kind == "samples":
            ids = sorted(rows["sample_id"])
            chosen = [ids[(pick + 97 * i) % len(ids)] for i in range(4)]
            path = self.root / f"samples-{self.counter}.txt"
            path.write_text("\n".join(chosen) + "\n")
            args = ["--samples", str(path)]
        elif kind == "label":
            from pipeline.data.table import SampleTable

            classes = list(SampleTable.load(self._ws().data_dir).classes)
            present = sorted(set(rows["label"]))
            args = ["--label", classes[present[pick % len(present)]]]
        else:
            args = ["--group", sorted(rows["group"].unique())[pick % rows["group"].nunique()]]
        stream_before = set(yaml.safe_load(self.params.read_text())["stream"] or {})
        code = self._cli("forget", *args, "--reason", "state machine", "--method", method, "--defer-exact")
        if code != 0:
            self._note("forget: refused")
            return
        key = next(iter(set(yaml.safe_load(self.params.read_text())["stream"] or {}) - stream_before), None)
        if key is None:
            self._note("forget: repeat")
            return
        from pipeline.steps import open_workspace, run_step

        with contextlib.redirect_stdout(io.StringIO()):
            outcome = run_step(open_workspace(self.params), key)
        self._note(f"forget {kind}: {outcome.record['decision']}")

    @rule()
    def edit(self) -> None:
        """A targeted LoRA edit of the champion's top confusion."""
        self._append_and_run({"kind": "edit", "spec": "edits/machine-edit.yaml"})

    @rule(method=st.sampled_from(["quantize", "prune"]))
    def compress(self, method: str) -> None:
        """Quantize or prune the champion (refused after a quantize: the check is before any write)."""
        options = {"calibration_samples": 128} if method == "quantize" else {"sparsity": 0.3, "finetune_steps": 5}
        self._append_and_run({"kind": "compress", "method": method, **options})

    @rule(method=st.sampled_from(["fold", "cat"]))
    def merge(self, method: str) -> None:
        """Fold or concatenate the champion's overlays."""
        self._append_and_run({"kind": "merge", "method": method})

    @rule(pick=st.integers(0, 100))
    def rollback_to(self, pick: int) -> None:
        """``ume rollback --to`` an earlier version (refused if it never passed the gate or would serve deleted data)."""
        versions = [v.version for v in self._ws().registry.versions()]
        code = self._cli("rollback", "--to", str(versions[pick % len(versions)]), "--reason", "state machine")
        self._note("rollback --to: " + ("done" if code == 0 else "refused"))

    @precondition(lambda self: bool(self._champion_steps()))
    @rule(pick=st.integers(0, 100))
    def rollback_drop(self, pick: int) -> None:
        """``ume rollback --drop`` one overlay or transform of the champion."""
        steps = self._champion_steps()
        code = self._cli("rollback", "--drop", steps[pick % len(steps)], "--reason", "state machine")
        self._note("rollback --drop: " + ("done" if code == 0 else "refused"))

    @rule(pick=st.integers(0, 100))
    def ui_move_alias(self, pick: int) -> None:
        """A person moves the champion alias in the MLflow UI; ``ume sync`` makes it a gated rollback or refuses it."""
        from pipeline.cli import main
        from pipeline.records.gate import ledger_champion

        ws = self._ws()
        versions = [v.version for v in ws.registry.versions()]
        target = versions[pick % len(versions)]
        before = ws.registry.champion()
        ws.registry.set_champion(target)  # what the UI's alias editor does
        code = 0
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                main(["--params", str(self.params), "sync"])
        except SystemExit as exc:
            code = int(exc.code or 0)
        ws = self._ws()
        champion = ws.registry.champion()
        assert champion == ledger_champion(ws.ledger), f"after ume sync the alias (v{champion}) is not the ledger's champion"
        if target == before:
            self._note("ui alias: unchanged")
        elif code == 0:
            assert champion == target, f"an allowed UI rollback to v{target} left the champion at v{champion}"
            self._note("ui alias: rollback")
        else:
            assert champion == before, f"a refused UI rollback to v{target} moved the champion from v{before} to v{champion}"
            self._note("ui alias: refused")

    def _champion_steps(self) -> list[str]:
        ws = self._ws()
        champion = ws.registry.champion()
        manifest = ws.manifest_of(champion)
        return [s for s in (*manifest.overlay_steps, *manifest.transform_steps) if s in (yaml.safe_load(self.params.read_text())["stream"] or {})]

    # ---------------------------------------------------------------------------- invariants

    @invariant()
    def invariants(self) -> None:
        """DESIGN.md invariants 1-4 after every operation (6 is checked by the operations themselves)."""
        from pipeline.model.compose import compose
        from pipeline.model.lineage import hash_sample_ids
        from pipeline.model.net import predict_logits
        from pipeline.records.deletion import DeletionLog, uncovered_requests
        from pipeline.reports.audit import audit_workspace

        ws = self._ws()
        report = audit_workspace(ws)  # the ledger, the registry and every anchor of the ledger
        assert report.ok, f"audit: {report.problems}"
        log = DeletionLog.read(ws.ledger)
        for info in ws.registry.versions():
            if info.tags.get("deletion_status") == "revoked" or not info.manifest_hash:
                continue
            carried = uncovered_requests(ws.versions.load(info.manifest_hash), ws.components, log, list(log.resolved))
            assert not carried, f"servable version {info.version} carries deleted samples of {carried}"
        served = set(hash_sample_ids(list(self._rows()["sample_id"])))
        assert not served & log.hashed_ids(), "the data layer serves deleted samples"
        champion = ws.registry.champion()
        manifest = ws.manifest_of(champion)
        from pipeline.data import open_data

        probe = open_data(ws.data_dir, ws.ledger, seed=ws.params.seed).split("canary").x[:64]
        first = hashlib.sha256(predict_logits(compose(manifest, ws.components), probe).numpy().tobytes()).hexdigest()
        second = hashlib.sha256(predict_logits(compose(manifest, ws.components), probe).numpy().tobytes()).hexdigest()
        assert first == second, "composition is not deterministic"
        key = (champion, len(probe))
        if champion in self.outputs and self.outputs[champion][0] == key:
            assert self.outputs[champion][1] == first, f"version {champion} does not give the outputs it gave before"
        self.outputs[champion] = (key, first)


def run_machine(template: Path, workdir: Path, *, examples: int, steps: int, seed: int | None = None) -> dict[str, Any]:
    """Run the state machine; returns examples, operations, outcome counts and the violations found (0 or 1)."""
    StreamMachine.template = template
    StreamMachine.workdir = workdir
    StreamMachine.stats = MachineStats()
    violations: list[str] = []
    config = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: every step trains a model
        suppress_health_check=list(HealthCheck),
        derandomize=seed is None,
        database=None,
    )
    try:
        run_state_machine_as_test(StreamMachine, settings=config)
    except Exception as exc:  # an invariant (AssertionError) or an operation that crashed: both are violations
        # hypothesis attaches the operations that led here as the exception's notes: keep them, or a violation cannot be replayed
        steps = "\n".join(getattr(exc, "__notes__", ()))
        violations.append(f"{type(exc).__name__}: {exc}"[:2000] + (f"\n{steps[-6000:]}" if steps else ""))
    stats = StreamMachine.stats
    per_example = sorted(stats.operations_per_example)
    spread = {"min": per_example[0], "median": per_example[len(per_example) // 2], "max": per_example[-1]} if per_example else {}
    return {
        "examples": stats.examples,
        "operations": stats.operations,
        "operations_per_example": spread,
        "outcomes": dict(sorted(stats.outcomes.items())),
        "violations": violations,
    }
