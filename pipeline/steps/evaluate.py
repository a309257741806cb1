"""Evaluate and gate a candidate: behaviour suite, report, MLflow registration, the gate, the step record."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from behaviors.build import build_context, model_under_test
from behaviors.evidence import evidence_line, forget_evidence
from behaviors.report import write_report
from behaviors.suite import BehaviorResult, run_suite
from pipeline.core import ranks
from pipeline.core.faults import crash_point
from pipeline.records import gate
from pipeline.records.anchors import decision_tags
from pipeline.records.datasets import EVALUATION_SPLITS, prepared_data_tag, slices_by_hashed_id, step_inputs
from pipeline.records.deletion import DeletionLog
from pipeline.records.served import write_served_files
from pipeline.records.workspace import Workspace
from pipeline.steps.context import Candidate, StepContext, StepOutcome
from pipeline.steps.record import finish, step_record

if TYPE_CHECKING:
    from pipeline.steps.kind import StepKind

KEY_METRICS = ("test_accuracy", "retained_accuracy", "canary_agreement", "max_class_recall_drop")


def metrics_of(results: list[BehaviorResult]) -> dict[str, float]:
    """Every check's value by name."""
    return {check["name"]: check["value"] for r in results for check in r.checks}


def control_metrics(results: list[BehaviorResult]) -> dict[str, float]:
    """The same checks on the un-forgotten control (the power of each forget check)."""
    return {c["name"]: c["control"] for r in results for c in r.checks if c.get("control") is not None}


def report_dir(ws: Workspace, key: str, attempt: int) -> Path:
    """``store/reports/<step>`` (``<step>-attempt2`` for a forget step's exact fallback)."""
    return ws.reports_dir / (key if attempt == 1 else f"{key}-attempt{attempt}")


def _comparison(context) -> list[tuple[str, float, float | None]]:
    """Headline numbers of the candidate and the champion on the same (filtered) splits."""
    rows = []
    for name, samples in (("test accuracy", context.splits.test), ("canary accuracy", context.splits.canary), ("retain accuracy", context.splits.retain)):
        if len(samples) == 0:
            continue
        cand = (context.candidate.predictions(samples) == samples.y).float().mean().item()
        champ = (context.champion.predictions(samples) == samples.y).float().mean().item() if context.champion else None
        rows.append((name, cand, champ))
    return rows


def _continual(context) -> dict[str, Any] | None:
    """The candidate's row of the accuracy matrix: accuracy on every slice's held-out split (pipeline/records/continual.py)."""
    if not context.heldout:
        return None
    row = {name: round((context.candidate.predictions(s) == s.y).float().mean().item(), 6) for name, s in context.heldout.items()}
    return {"heldout_accuracy": row, "learned": list(context.learned), "slice": context.step.get("slice")}


def _run_behaviours(ctx: StepContext, candidate: Candidate, attempt: int) -> tuple[list[BehaviorResult], Any, Path, dict[str, Any]]:
    ws, manifest = ctx.ws, candidate.manifest
    ws.versions.save(manifest)
    model = model_under_test(ws, "candidate", manifest, candidate.existing_version)
    champion = model_under_test(ws, "champion", ctx.champion_manifest, ctx.champion_version) if ctx.champion_manifest else None
    step_info = {
        "id": ctx.key,
        "kind": ctx.kind,
        "candidate": manifest.describe(),
        "champion": f"v{ctx.champion_version}: {ctx.champion_manifest.describe()}" if ctx.champion_manifest else "none",
        "request": ctx.step.options.get("request") if ctx.step else None,
        "slice": ctx.step.options.get("slice") if ctx.step else None,
        "attempt": attempt,
    }
    assert ctx.data is not None
    context = build_context(
        ws, candidate=model, candidate_manifest=manifest, champion=champion, champion_manifest=ctx.champion_manifest, step=step_info, data=ctx.data
    )
    directory = report_dir(ws, ctx.key, attempt)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    context.report_dir = directory
    # DDP: every rank follows rank 0's verdict (a forget fallback trains again, collectively); a follower
    # that will receive it does not repeat the suite, one that will not (external launcher) runs it too.
    follows = not ws.primary and ranks.receives_agreement()
    results = [] if follows else run_suite([ws.params.behaviors.path], context, junit_xml=directory / "junit.xml")
    return results, context, directory, step_info


def _log_inputs(ctx: StepContext, candidate: Candidate, context: Any) -> None:
    """The run's dataset inputs (:mod:`pipeline.records.datasets`): what this step trained, evaluated and forgot.

    Training and replay come from the components this step made: those of the candidate that the
    champion does not have (none for a rollback to an earlier version). Called once per run: a resumed
    stage (``lifecycle._resume_decided``) finishes from the ledger without touching its run, and a
    forget step's fallback logs into its own second run.
    """
    ws, manifest, data = ctx.ws, candidate.manifest, ctx.data
    assert data is not None
    champion = ctx.champion_manifest
    have = set() if champion is None else {champion.base, *champion.overlays, *champion.transforms}
    made = [] if candidate.existing_version is not None else [c for c in manifest.component_ids if c not in have]
    request = ctx.step.options.get("request") if ctx.step else None
    forget = (str(request), DeletionLog.read(ws.ledger).hashed_ids([str(request)])) if request else None
    inputs = step_inputs(
        [ws.components.sidecar(c) for c in made],
        slices_by_hashed_id(data.rows["sample_id"], data.rows["slice"]),
        {name: context.splits[name].sample_ids for name in EVALUATION_SPLITS},
        forget,
    )
    tags = {"ume.step": ctx.key, "ume.manifest_hash": manifest.hash, **prepared_data_tag(ws.data_dir)}
    ws.registry.log_datasets(ctx.run_id, inputs, source=ws.data_dir.as_posix(), tags=tags)


def _log_results(ctx: StepContext, results: list[BehaviorResult], directory: Path) -> dict[str, Any]:
    registry, run_id = ctx.ws.registry, ctx.run_id
    evidence = forget_evidence(results)
    registry.log_metrics(run_id, {f"behavior.{k}": v for k, v in metrics_of(results).items()})
    registry.log_metrics(run_id, {f"control.{k}": v for k, v in control_metrics(results).items()})
    registry.log_metrics(run_id, {f"passed.{r.short_name}": float(r.outcome not in ("failed", "inconclusive")) for r in results})
    for request_id, entry in evidence.items():
        registry.log_metrics(run_id, {f"forget.{request_id}.{k}": float(entry[k]) for k in ("conclusive", "passed", "failed", "inconclusive")})
        registry.set_run_tags(run_id, {f"ume.forget_evidence.{request_id}": evidence_line(entry)})
    registry.log_artifacts(run_id, directory, "behaviors")
    return evidence


def _register(ctx: StepContext, candidate: Candidate, metrics: dict[str, float]) -> int:
    """Register a new candidate version (write-ahead: the registry, then its ledger entry)."""
    ws, manifest, run_id = ctx.ws, candidate.manifest, ctx.run_id
    if candidate.existing_version is not None:
        return candidate.existing_version
    summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in KEY_METRICS if k in metrics)
    with tempfile.TemporaryDirectory() as tmp:
        write_served_files(ws, manifest, Path(tmp))  # the files a signed promotion signs (store/signed/v<N>/)
        ws.registry.log_artifacts(run_id, tmp, "version")
    tags = {
        "ume.step": ctx.key,
        "ume.kind": ctx.kind,
        "ume.manifest_hash": manifest.hash,
        "ume.composition": manifest.describe(),
        "ume.behaviors": summary[:5000],
        "ume.decision": "pending",
    }
    version = ws.registry.register(run_id, "version", tags)
    crash_point("registry.registered")
    ws.ledger.append(
        "candidate",
        {"version": version, "manifest_hash": manifest.hash, "manifest": manifest.to_json(), "run_id": run_id, "notes": candidate.notes},
        step=ctx.key,
    )
    crash_point("ledger.candidate")
    return version


def evaluate_and_gate(ctx: StepContext, kind: StepKind, candidate: Candidate, *, attempt: int = 1) -> StepOutcome:
    """Run the behaviour suite on the candidate, register it, gate it and write the step record."""
    ws, manifest = ctx.ws, candidate.manifest
    results, context, directory, step_info = _run_behaviours(ctx, candidate, attempt)
    agreed = gate.Decision(**ranks.agree(dataclasses.asdict(gate.decide(results))))
    decision, mode = kind.decide(ctx, candidate, agreed, results)
    assert ctx.data is not None
    write_report(
        directory,
        step_info,
        {"label": decision.label, "reason": decision.reason, "failing": decision.failing},
        results,
        confusion=(context.candidate.predictions(context.splits.test), context.splits.test.y, ctx.data.classes),
        comparison=_comparison(context),
    )
    metrics = metrics_of(results)
    _log_inputs(ctx, candidate, context)
    evidence = _log_results(ctx, results, directory)
    version = _register(ctx, candidate, metrics)
    gate.apply_decision(
        decision,
        ledger=ws.ledger,
        registry=ws.registry,
        step=ctx.key,
        version=version,
        manifest_hash=manifest.hash,
        champion_before=ctx.champion_version,
        mode=mode,
        report=f"runs:/{ctx.run_id}/behaviors/report.html",
        evidence=evidence,
        anchor=decision_tags(ws),
    )
    champion_after = ws.registry.champion()
    ws.registry.set_run_tags(ctx.run_id, {"ume.decision": decision.label, "ume.version": str(version), "ume.reason": decision.reason[:5000]})
    record = step_record(
        ctx, decision.label, decision.reason, decision.failing, version, manifest,
        champion_after=champion_after, metrics=metrics, run_id=ctx.run_id, seconds=round(time.time() - ctx.started, 2),
    )
    record["notes"] = candidate.notes
    record["evidence"] = evidence
    record["control_metrics"] = {k: round(v, 6) for k, v in control_metrics(results).items() if v == v}
    record["attempt"] = attempt
    continual = _continual(context)
    if continual is not None:
        record["continual"] = continual
        ws.registry.log_metrics(ctx.run_id, {f"heldout_accuracy.{k}": v for k, v in continual["heldout_accuracy"].items()})
    bank = context.references
    if bank is not None:  # what the per-sample forget check's reference bank cost this gate (0 trained: it was kept ahead)
        record["reference_bank"] = {
            "shadows": len(bank), "trained": bank.trained, "purged": bank.purged, "stale": bank.stale, "seconds": round(bank.seconds, 2)
        }  # fmt: skip
    record["world_size"] = ranks.world_size()  # processes that trained this step (DDP), 1 otherwise
    ws.registry.log_metrics(ctx.run_id, {"stage_seconds": record["seconds"]})
    ws.registry.end_run(ctx.run_id)
    finish(ws, ctx.key, record)
    return StepOutcome(record, results)
