"""One lifecycle for every stage: plan and refuse → start → operate → evaluate and gate → after → record.

A stage is one process (one DVC stage). :func:`run_stage` runs the same phases for the base and
every stream step, and calls the step kind's hook at each (``pipeline.steps.kind.StepKind``);
nothing here depends on the kind. Every stage writes its record (``store/steps/<id>.json``, the DVC
output) last, atomically, so DVC reruns a stage that did not finish, and a stage whose decision is
already in the ledger is finished from it rather than built again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from behaviors.suite import BehaviorResult
from pipeline.core import signing
from pipeline.core.config import BASE_STEP, Params
from pipeline.core.errors import UmeError
from pipeline.core.faults import crash_point
from pipeline.core.tempfiles import sweep_stale_temporaries
from pipeline.model.net import check_arch, check_checkpoint
from pipeline.records import gate
from pipeline.records.anchors import anchor_run
from pipeline.records.debt import schedule_due_deletions
from pipeline.records.revocation import revoke_unservable_versions
from pipeline.records.served import sign_promoted
from pipeline.records.story import publish_story
from pipeline.records.workspace import Workspace
from pipeline.steps.context import StepContext, StepOutcome, current_champion
from pipeline.steps.evaluate import evaluate_and_gate, metrics_of, report_dir
from pipeline.steps.kind import StepKind, step_kind
from pipeline.steps.record import finish, step_record
from pipeline.steps.sync import SyncResult, take_ui_requests


def validate_params(params: Params) -> None:
    """Everything that can be checked before any write: the arch, the checkpoint, the signing keys, every step's options."""
    check_arch(params.model.arch, params.file)
    if params.checkpoint_path is not None:
        check_checkpoint(params.checkpoint_path, params.model.checkpoint_sha256, file=params.file)
    if params.signing_key_path is not None:  # a bad key (or one model_signing refuses) must stop the stage before it trains
        signing.check_model_signing_key(params.signing_key_path)
    if params.public_key_path is not None:
        signing.load_public_keys(params.public_key_path)
    for key, step in params.stream.items():
        step_kind(step.kind, file=params.file, where=f"stream.{key}.kind").validate(params, step)


def open_workspace(params_path: str | Path = "params.yaml") -> Workspace:
    """Load, fully validate and open; raises before anything is written."""
    ws = Workspace.open(params_path)
    validate_params(ws.params)
    return ws


def run_base(ws: Workspace) -> StepOutcome:
    """Train the clean base on the ``base`` slice, register it and gate it (absolute checks only)."""
    return run_stage(StepContext(ws, BASE_STEP, "base", None))


def run_step(ws: Workspace, key: str) -> StepOutcome:
    """Run stream step ``key`` on top of the current champion."""
    step = ws.params.step(key)
    return run_stage(StepContext(ws, key, step.kind, step))


def run_stage(ctx: StepContext) -> StepOutcome:
    """The phases every stage goes through, then the deletion-debt schedule (an exact step when a limit is reached).

    Before them, a person's change in the MLflow UI (the alias moved, a ``ume.drop`` tag) is recorded and
    turned into a rollback step appended to the stream, or refused (:mod:`pipeline.steps.sync`); after
    them, the registry's descriptions tell the story (:mod:`pipeline.records.story`).
    """
    announce_sync(take_ui_requests(ctx.ws, seen_by=f"stage {ctx.key}"), run_hint=True)
    outcome = _run_phases(ctx)
    if ctx.ws.primary:
        anchor_run(ctx.ws, ctx.run_id)  # the ledger head, outside the ledger (pipeline.records.anchors)
        publish_story(ctx.ws)
        try:
            for key in schedule_due_deletions(ctx.ws):
                print(f"deletion debt: a limit in `deletion` is reached; appended the exact step {key} to the stream (run `dvc repro`)")
        except UmeError as exc:  # the stage itself succeeded: say what to do instead of failing it
            print(f"deletion debt is due but no exact step could be appended ({exc}); add one by hand", file=sys.stderr)
    return outcome


def announce_sync(result: SyncResult, *, run_hint: bool) -> None:
    """Say what a sync did (a stage: the appended rollback steps run in the next ``dvc repro``)."""
    for line in result.refused:
        print(f"MLflow UI request: {line}", file=sys.stderr)
    for key in result.appended:
        print(f"MLflow UI request: appended the rollback step {key} to the stream" + (" (run `dvc repro`)" if run_hint else ""))


def _run_phases(ctx: StepContext) -> StepOutcome:
    """Plan and refuse, start, operate, evaluate and gate, act on the decision, record."""
    ws, kind = ctx.ws, step_kind(ctx.kind)
    sweep_stale_temporaries(ws.output_dir)  # a DDP follower: only its own scratch
    gate.reconcile(ws.ledger, ws.registry)
    resumed = _resume_decided(ctx, kind)
    if resumed is not None:
        return resumed
    if kind.needs_champion:  # plan and refuse: a bad input or a corrupt champion changes nothing
        ctx.champion_version, ctx.champion_manifest = current_champion(ws)
        for component_id in (ctx.champion_manifest.base, *ctx.champion_manifest.overlays, *ctx.champion_manifest.transforms):
            ws.components.verify(component_id)
    kind.plan(ctx)
    ws.ledger.append("step_started", kind.started(ctx), step=ctx.key)  # start
    crash_point("step.started")
    kind.begin(ctx)
    ctx.run_id = ws.registry.start_run(ctx.key, {"ume.step": ctx.key, "ume.kind": ctx.kind})
    crash_point("registry.run_started")
    ws.registry.log_params(ctx.run_id, kind.run_params(ctx))
    ctx.data = kind.open_data(ctx)
    candidate = kind.operate(ctx)  # operate
    outcome = kind.after_gate(ctx, evaluate_and_gate(ctx, kind, candidate))  # evaluate and gate, then act on it
    if outcome.record["decision"] == gate.PROMOTED:
        _promoted(ctx, kind, outcome)
    return outcome


def _promoted(ctx: StepContext, kind: StepKind, outcome: StepOutcome) -> None:
    """Once the candidate is champion: the kind's bookkeeping, revocations, and its served files signed (a signing key set)."""
    kind.promoted(ctx, outcome)
    revoke_unservable_versions(ctx.ws)
    sign_promoted(ctx.ws, outcome.record["version"], step=ctx.key)  # OpenSSF model signing (pipeline/records/served.py)


def _resume_decided(ctx: StepContext, kind: StepKind) -> StepOutcome | None:
    """A step whose decision is in the ledger but whose record is missing (crash) is finished, not redone.

    Redoing it would build the step again on a champion that may already carry its overlay.
    """
    ws, step = ctx.ws, ctx.step
    if step is None:
        return None
    entries = [e for e in ws.ledger.verify() if e.step == step.key]
    starts = [i for i, e in enumerate(entries) if e.type == "step_started"]
    if not starts or entries[starts[-1]].data.get("params_hash") != step.params_hash():
        return None
    started = entries[starts[-1]]
    decisions = [e for e in entries[starts[-1] :] if e.type == "decision"]
    if not decisions:
        return None
    decision = decisions[-1].data
    if ws.registry.champion() not in (started.data.get("champion"), decision["version"]):
        return None  # the stream below this step changed since (e.g. the base was retrained): redo it
    if not kind.resume_allowed(ctx, decisions):
        return None
    ctx.champion_version = started.data.get("champion")
    report = report_dir(ws, step.key, len(decisions)) / "results.json"
    results = [BehaviorResult(**r) for r in json.loads(report.read_text())["results"]] if report.exists() else []
    record = step_record(
        ctx, decision["decision"], decision["reason"], decision["failing"], decision["version"], ws.versions.load(decision["manifest_hash"]),
        champion_after=ws.registry.champion(), metrics=metrics_of(results), run_id=None, seconds=0.0,
    )
    candidates = [e for e in entries[starts[-1] :] if e.type == "candidate"]
    record["resumed"] = True
    record["notes"] = candidates[-1].data.get("notes", {}) if candidates else {}
    outcome = StepOutcome(record, results)
    if decision["decision"] == gate.PROMOTED:
        _promoted(ctx, kind, outcome)
    finish(ws, step.key, record)
    return outcome
