"""``forget`` steps: honour a deletion request, fall back to the exact path, resolve the request.

The request is recorded in the ledger right after ``step_started`` (from then on no consumer reads
its samples). A candidate that still carries uncovered influence of the request is refused before
registration. A blocked approximate candidate falls back to the exact path (both attempts are
recorded); a promoted one resolves the request with its forget evidence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from behaviors.evidence import forget_evidence
from edits import get_method
from edits.forget import EXACT_METHODS
from edits.registry import Method
from pipeline.core.config import Params, StepConfig
from pipeline.core.errors import ConfigError, UmeError
from pipeline.core.faults import crash_point
from pipeline.data.table import SampleTable
from pipeline.model.lineage import version_lineage
from pipeline.model.manifest import Manifest
from pipeline.records import gate
from pipeline.records.deletion import (
    RESOLVED_ENTRY,
    DeletionLog,
    DeletionRequest,
    deletion_debt,
    ingest,
    load_request,
    request_path,
    resolve,
    uncovered_requests,
)
from pipeline.records.ledger import Entry
from pipeline.records.workspace import Workspace
from pipeline.steps.context import StepContext, StepOutcome
from pipeline.steps.evaluate import evaluate_and_gate
from pipeline.steps.kind import StepKind, register_kind
from pipeline.steps.operate import operator_env, run_operator


@dataclass
class ForgetPlan:
    """A forget step resolved: its request, method (and options), fallback, and the samples it names."""

    request: DeletionRequest
    method: str
    fallback: str
    options: dict[str, Any]
    sample_ids: list[str] = dataclasses.field(default_factory=list)
    config: Any = None
    operator: Method | None = None


def forget_plan(params: Params, step: StepConfig) -> ForgetPlan:
    """The request, method, fallback and method options of a forget step (validated)."""
    options = dict(step.options)
    request_id = options.pop("request", None)
    if not isinstance(request_id, str):
        raise ConfigError("a forget step names its request id (written by `ume forget`)", file=params.file, field=f"stream.{step.key}.request")
    request = load_request(request_id, params.requests_dir)
    fallback = options.pop("fallback", "exact")
    if fallback not in ("exact", "retrain", "none"):
        raise ConfigError(f"expected exact, retrain or none, got {fallback!r}", file=params.file, field=f"stream.{step.key}.fallback")
    return ForgetPlan(request, step.method or request.method or "exact", fallback, options)


def check_covers(ws: Workspace, manifest: Manifest, request: DeletionRequest, method: str) -> None:
    """Fail closed when an operator's candidate still carries uncovered influence of the request, or carries again
    that of a request already resolved (e.g. another request's approximate overlay dropped: its samples served again)."""
    log = DeletionLog.read(ws.ledger)
    carried = uncovered_requests(manifest, ws.components, log, [request.id])
    if carried:
        raise UmeError(
            f"method {method!r} produced a candidate that still carries {carried[request.id]} deleted sample(s) of {request.id}; "
            "nothing was registered",
            field="method",
        )
    exposed = uncovered_requests(manifest, ws.components, log, [rid for rid in log.resolved if rid != request.id])
    if exposed:
        listed = ", ".join(f"{n} of {rid}" for rid, n in sorted(exposed.items()))
        raise UmeError(
            f"method {method!r} produced a candidate that would serve again deleted samples of resolved requests ({listed}); "
            "nothing was registered",
            field="method",
        )


def resolve_request(ws: Workspace, key: str, request: DeletionRequest, method: str, outcome: StepOutcome) -> None:
    """Record that the promoted version no longer carries the request's samples, and what shows it."""
    manifest = ws.versions.load(outcome.record["manifest_hash"])
    log = DeletionLog.read(ws.ledger)
    debt = deletion_debt(manifest, ws.components, log).get(request.id, 0)
    earlier, first = log.resolved.get(request.id), log.first_resolved.get(request.id)
    evidence = forget_evidence(outcome.results).get(request.id, {"checks": [], "passed": 0, "failed": 0, "inconclusive": 0, "conclusive": 0})
    shown = [c["check"] for c in evidence["checks"] if c["verdict"] == "passed"]
    if debt == 0 and earlier is not None and not earlier.data.get("exact"):
        note = (
            f"exact (phase 2): replaces the approximate {earlier.data['method']} overlay of v{earlier.data['version']}; "
            f"the deletion debt of {earlier.data.get('debt_samples', 0)} samples is paid"
        )
    elif debt == 0:
        note = "exact: no served component carries the samples"
    elif shown:
        note = f"approximate, shown by {', '.join(shown)} (control failed, candidate passed); deletion debt until an exact step"
    else:
        note = "approximate and no check was conclusive: nothing shows the samples were forgotten; stays deletion debt until an exact step"
    ws.ledger.append(
        RESOLVED_ENTRY,
        {
            "request_id": request.id,
            "version": outcome.record["version"],
            "manifest_hash": manifest.hash,
            "method": method,
            "exact": debt == 0,
            "debt_samples": debt,
            "control_version": first.data.get("control_version") if first is not None else outcome.record["champion_before"],
            "phase": 1 if earlier is None else int(earlier.data.get("phase", 1)) + 1,
            "replaces": {k: earlier.data[k] for k in ("version", "method", "exact", "debt_samples")} if earlier is not None else None,
            "evidence": {k: evidence[k] for k in ("conclusive", "passed", "failed", "inconclusive")} | {"shown_by": shown},
            "note": note,
        },
        step=key,
    )
    crash_point("forget.resolved")


@register_kind("forget")
class ForgetKind(StepKind):
    """Unlearn a deletion request's samples from the champion."""

    def validate(self, params: Params, step: StepConfig) -> None:
        """The request file exists and parses; the method exists and its options parse."""
        plan = forget_plan(params, step)
        get_method("forget", plan.method, file=params.file, where=f"stream.{step.key}.method").parse_config(
            plan.options, where=f"stream.{step.key}", file=params.file
        )

    def resume_allowed(self, ctx: StepContext, decisions: Sequence[Entry]) -> bool:
        """Not when the gate blocked the first attempt and the fallback never ran (the deletion must happen)."""
        assert ctx.step is not None
        ctx.plan = forget_plan(ctx.params, ctx.step)
        return not (decisions[-1].data["decision"] == gate.BLOCKED and ctx.plan.fallback != "none" and len(decisions) == 1)

    def plan(self, ctx: StepContext) -> None:
        """Resolve the request's samples against the sample table: an unknown id is an error, never a no-op."""
        assert ctx.step is not None
        plan = forget_plan(ctx.params, ctx.step)
        plan.sample_ids = resolve(plan.request, SampleTable.load(ctx.ws.data_dir), file=str(request_path(plan.request.id, ctx.params.requests_dir)))
        plan.operator = get_method("forget", plan.method, file=ctx.params.file, where=f"{ctx.where}.method")
        plan.config = plan.operator.parse_config(plan.options, where=ctx.where, file=ctx.params.file)
        ctx.plan, ctx.method_name = plan, plan.method

    def begin(self, ctx: StepContext) -> None:
        """Record the request in the ledger: from here on no consumer reads these samples."""
        plan, champion = ctx.plan, ctx.champion_manifest
        assert champion is not None
        ingest(ctx.ws.ledger, plan.request, plan.sample_ids, version_lineage(champion, ctx.ws.components), ctx.champion_version)
        crash_point("step.ingested")

    def operate(self, ctx: StepContext):
        """Run the method; refuse a candidate that still carries the request."""
        plan = ctx.plan
        candidate = run_operator(ctx, plan.operator, plan.config, operator_env(ctx, plan.request))
        check_covers(ctx.ws, candidate.manifest, plan.request, plan.operator.name)
        return candidate

    def after_gate(self, ctx: StepContext, outcome: StepOutcome) -> StepOutcome:
        """A blocked approximate deletion falls back to the exact path, recording both attempts."""
        plan: ForgetPlan = ctx.plan
        if outcome.record["decision"] != gate.BLOCKED or plan.fallback == "none" or plan.method in EXACT_METHODS:
            return outcome
        first, ws = outcome.record, ctx.ws
        ctx.run_id = ws.registry.start_run(f"{ctx.key} (fallback {plan.fallback})", {"ume.step": ctx.key, "ume.kind": ctx.kind, "ume.attempt": "2"})
        exact = get_method("forget", plan.fallback)
        candidate = run_operator(ctx, exact, exact.parse_config({}, where=ctx.where, file=ctx.params.file), operator_env(ctx, plan.request))
        check_covers(ws, candidate.manifest, plan.request, exact.name)
        candidate.notes["first_attempt"] = {k: first[k] for k in ("version", "decision", "reason", "failing", "metrics")} | {"method": plan.method}
        return evaluate_and_gate(ctx, self, candidate, attempt=2)

    def promoted(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Resolve the request (once: a resumed step may have resolved it before its crash)."""
        request = ctx.plan.request
        by_this_step = [e for e in DeletionLog.read(ctx.ws.ledger).resolutions.get(request.id, []) if e.step == ctx.key]
        if outcome.record.get("resumed") and by_this_step:
            return
        method = str(outcome.record.get("notes", {}).get("method", "")).split("/")[-1]
        resolve_request(ctx.ws, ctx.key, request, method, outcome)
