"""The stream runner: ``prepare``, ``base`` and one ``step`` per stream entry, each one process.

A step takes the champion, asks an operator in ``edits/`` for new component(s), composes the
candidate, runs the behaviour suite in-process, registers the candidate in MLflow and hands the
results to the gate. Every stage writes its record (``store/steps/<id>.json``, the DVC output)
last, atomically, so DVC reruns a stage that did not finish.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from behaviors.build import build_context, model_under_test
from behaviors.evidence import evidence_line, forget_evidence
from behaviors.report import write_report
from behaviors.suite import BehaviorResult, run_suite
from edits import OperatorEnv, get_method
from edits.base import train_base
from edits.forget import EXACT_METHODS
from edits.merge.common import chosen_overlays
from edits.registry import Change
from pipeline import gate, ranks
from pipeline.components import Component
from pipeline.compose import compose
from pipeline.config import BASE_STEP, Params, StepConfig
from pipeline.data import UmeData, open_data, prepare_data
from pipeline.data.table import SampleTable
from pipeline.deletion import (
    RESOLVED_ENTRY,
    REVOKED_ENTRY,
    DeletionLog,
    DeletionRequest,
    deletion_debt,
    ingest,
    load_request,
    request_path,
    resolve,
    uncovered_requests,
)
from pipeline.errors import ConfigError, DataError, UmeError
from pipeline.faults import crash_point
from pipeline.history import write_history
from pipeline.lineage import hash_sample_ids, version_lineage
from pipeline.manifest import Manifest
from pipeline.model import check_arch, check_checkpoint, create_net, load_backbone, make_trainer
from pipeline.tempfiles import sweep_stale_temporaries
from pipeline.workspace import Workspace

KEY_METRICS = ("test_accuracy", "retained_accuracy", "canary_agreement", "max_class_recall_drop")


def validate_params(params: Params) -> None:
    """Everything that can be checked before any write: the arch, every step's method and options."""
    check_arch(params.model.arch, params.file)
    if params.checkpoint_path is not None:
        check_checkpoint(params.checkpoint_path, params.model.checkpoint_sha256, file=params.file)
    for key, step in params.stream.items():
        if step.kind == "rollback":
            _rollback_target(step, params)
            continue
        method_name, options = step.method, step.options
        if step.kind == "forget":
            _, method_name, _, options = _forget_plan(params, step)
        method = get_method(step.kind, method_name, file=params.file, where=f"stream.{key}.method")
        method.parse_config(options, where=f"stream.{key}", file=params.file)


def _rollback_target(step: StepConfig, params: Params) -> tuple[str, Any]:
    opts = step.options
    where = f"stream.{step.key}"
    unknown = set(opts) - {"to", "drop", "reason"}
    if unknown:
        raise ConfigError("unknown key (allowed: to, drop, reason)", file=params.file, field=f"{where}.{sorted(unknown)[0]}")
    if ("to" in opts) == ("drop" in opts):
        raise ConfigError("a rollback names exactly one of 'to' (a version) or 'drop' (a step id)", file=params.file, field=where)
    if "to" in opts:
        if isinstance(opts["to"], bool) or not isinstance(opts["to"], int) or opts["to"] < 1:
            raise ConfigError(f"expected a version number >= 1, got {opts['to']!r}", file=params.file, field=f"{where}.to")
        return "to", opts["to"]
    if opts["drop"] not in params.stream or opts["drop"] == step.key:
        raise ConfigError(f"unknown step {opts['drop']!r}", file=params.file, field=f"{where}.drop")
    return "drop", opts["drop"]


def open_workspace(params_path: str | Path = "params.yaml") -> Workspace:
    """Load, fully validate and open; raises before anything is written."""
    ws = Workspace.open(params_path)
    validate_params(ws.params)
    return ws


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    crash_point("step.record_tmp")
    os.replace(tmp, path)


def _trainer_factory(ws: Workspace, run_id: str):
    def make(max_epochs: int, max_steps: int = -1) -> L.Trainer:
        from lightning.pytorch.loggers import MLFlowLogger

        if not ws.primary:  # a DDP follower logs nothing (its run id is a placeholder)
            return make_trainer(ws.params.train, max_epochs=max_epochs, max_steps=max_steps)
        logger = MLFlowLogger(
            experiment_name=ws.params.registry.experiment,
            tracking_uri=ws.params.registry.tracking_uri,
            run_id=run_id,
            log_model=False,
        )
        return make_trainer(ws.params.train, max_epochs=max_epochs, logger=logger, max_steps=max_steps)

    return make


# --------------------------------------------------------------------------------------- prepare


def run_prepare(ws: Workspace) -> dict[str, Any]:
    """Build the sample table into ``store/data`` and record its hash in the ledger."""
    staging = ws.data_dir.with_name(".data.staging")
    if staging.exists():
        shutil.rmtree(staging)
    info = prepare_data(ws.params, staging)  # a bad source fails here, leaving the prepared data as it was
    crash_point("prepare.staged")
    if ws.data_dir.exists():
        shutil.rmtree(ws.data_dir)
    os.replace(staging, ws.data_dir)
    ws.ledger.append("prepare", {"content_hash": info["content_hash"], "slices": info["slices"], "groups": info["groups"]})
    return info


# ------------------------------------------------------------------------------------ evaluation


@dataclass
class StepOutcome:
    """What a stage produced."""

    record: dict[str, Any]
    results: list[BehaviorResult]


def _metrics(results: list[BehaviorResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        for check in r.checks:
            out[check["name"]] = check["value"]
    return out


def _control_metrics(results: list[BehaviorResult]) -> dict[str, float]:
    """The same checks on the un-forgotten control (the power of each forget check)."""
    return {c["name"]: c["control"] for r in results for c in r.checks if c.get("control") is not None}


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


def _version_artifacts(ws: Workspace, manifest: Manifest, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
    for component_id in (manifest.base, *manifest.overlays, *manifest.transforms):
        for src in (ws.components.weights_path(component_id), ws.components.sidecar_path(component_id)):
            shutil.copy2(src, directory / src.name)


def _step_record(
    key: str,
    kind: str,
    step: StepConfig | None,
    decision: str,
    reason: str,
    failing: list[dict[str, Any]],
    version: int,
    manifest: Manifest,
    *,
    champion_before: int | None,
    champion_after: int | None,
    metrics: dict[str, float],
    run_id: str | None,
    seconds: float,
) -> dict[str, Any]:
    """The step record (DVC output of a stage; what `ume status` shows)."""
    return {
        "id": key,
        "kind": kind,
        "parent": step.parent if step else None,
        "params_hash": step.params_hash() if step else None,
        "decision": decision,
        "reason": reason,
        "failing": [f["name"].split("::")[-1] for f in failing],
        "version": version,
        "manifest_hash": manifest.hash,
        "composition": manifest.describe(),
        "champion_before": champion_before,
        "champion_after": champion_after,
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "run_id": run_id,
        "seconds": seconds,
    }


def evaluate_and_gate(
    ws: Workspace,
    *,
    step: StepConfig | None,
    key: str,
    kind: str,
    manifest: Manifest,
    champion_version: int | None,
    champion_manifest: Manifest | None,
    run_id: str,
    data: UmeData,
    started: float,
    existing_version: int | None = None,
    notes: dict[str, Any] | None = None,
    attempt: int = 1,
) -> StepOutcome:
    """Run the behaviour suite on ``manifest``, register it, gate it and write the step record."""
    notes = notes or {}
    ws.versions.save(manifest)
    candidate = model_under_test(ws, "candidate", manifest, existing_version)
    champion = model_under_test(ws, "champion", champion_manifest, champion_version) if champion_manifest else None
    step_info = {
        "id": key,
        "kind": kind,
        "candidate": manifest.describe(),
        "champion": f"v{champion_version}: {champion_manifest.describe()}" if champion_manifest else "none",
        "request": step.options.get("request") if step else None,
        "attempt": attempt,
    }
    context = build_context(
        ws,
        candidate=candidate,
        candidate_manifest=manifest,
        champion=champion,
        champion_manifest=champion_manifest,
        step=step_info,
        data=data,
    )
    report_dir = ws.reports_dir / (key if attempt == 1 else f"{key}-attempt{attempt}")
    if report_dir.exists():
        shutil.rmtree(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    context.report_dir = report_dir
    # DDP: every rank follows rank 0's verdict (a forget fallback trains again, collectively); a follower
    # that will receive it does not repeat the suite, one that will not (external launcher) runs it too.
    follows = not ws.primary and ranks.receives_agreement()
    results = [] if follows else run_suite([ws.params.behaviors.path], context, junit_xml=report_dir / "junit.xml")
    decision = gate.Decision(**ranks.agree(dataclasses.asdict(gate.decide(results))))
    mode = "gate"
    if kind == "rollback" and existing_version is not None:
        # Rolling back to a version that already passed its gate: the suite runs for the record.
        decision = gate.Decision(True, f"rollback to version {existing_version}, which passed its gate earlier", [], [
            r.name for r in results if r.outcome == "failed"
        ])
        mode = "rollback"
    decision_info = {"label": decision.label, "reason": decision.reason, "failing": decision.failing}
    write_report(
        report_dir,
        step_info,
        decision_info,
        results,
        confusion=(candidate.predictions(context.splits.test), context.splits.test.y, data.classes),
        comparison=_comparison(context),
    )
    metrics = _metrics(results)
    evidence = forget_evidence(results)
    registry = ws.registry
    registry.log_metrics(run_id, {f"behavior.{k}": v for k, v in metrics.items()})
    registry.log_metrics(run_id, {f"control.{k}": v for k, v in _control_metrics(results).items()})
    registry.log_metrics(
        run_id,
        {f"passed.{r.short_name}": float(r.outcome not in ("failed", "inconclusive")) for r in results},
    )
    for request_id, entry in evidence.items():
        registry.log_metrics(run_id, {f"forget.{request_id}.{k}": float(entry[k]) for k in ("conclusive", "passed", "failed", "inconclusive")})
        registry.set_run_tags(run_id, {f"ume.forget_evidence.{request_id}": evidence_line(entry)})
    registry.log_artifacts(run_id, report_dir, "behaviors")
    summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in KEY_METRICS if k in metrics)
    if existing_version is None:
        with tempfile.TemporaryDirectory() as tmp:
            _version_artifacts(ws, manifest, Path(tmp))
            registry.log_artifacts(run_id, tmp, "version")
        version = registry.register(
            run_id,
            "version",
            {
                "ume.step": key,
                "ume.kind": kind,
                "ume.manifest_hash": manifest.hash,
                "ume.composition": manifest.describe(),
                "ume.behaviors": summary[:5000],
                "ume.decision": "pending",
            },
        )
        crash_point("registry.registered")
        ws.ledger.append(
            "candidate",
            {"version": version, "manifest_hash": manifest.hash, "manifest": manifest.to_json(), "run_id": run_id, "notes": notes},
            step=key,
        )
        crash_point("ledger.candidate")
    else:
        version = existing_version
    gate.apply_decision(
        decision,
        ledger=ws.ledger,
        registry=registry,
        step=key,
        version=version,
        manifest_hash=manifest.hash,
        champion_before=champion_version,
        mode=mode,
        report=f"runs:/{run_id}/behaviors/report.html",
        evidence=evidence,
    )
    champion_after = registry.champion()
    registry.set_run_tags(run_id, {"ume.decision": decision.label, "ume.version": str(version), "ume.reason": decision.reason[:5000]})
    record = _step_record(
        key, kind, step, decision.label, decision.reason, decision.failing, version, manifest,
        champion_before=champion_version, champion_after=champion_after, metrics=metrics, run_id=run_id,
        seconds=round(time.time() - started, 2),
    )
    record["notes"] = notes
    record["evidence"] = evidence
    record["control_metrics"] = {k: round(v, 6) for k, v in _control_metrics(results).items() if v == v}
    record["attempt"] = attempt
    record["world_size"] = ranks.world_size()  # processes that trained this step (DDP), 1 otherwise
    registry.log_metrics(run_id, {"stage_seconds": record["seconds"]})
    registry.end_run(run_id)
    write_history(ws, key, record)
    _write_json_atomic(ws.step_record_path(key), record)
    return StepOutcome(record, results)


# ------------------------------------------------------------------------------------------ base


def run_base(ws: Workspace) -> StepOutcome:
    """Train the clean base on the ``base`` slice, register it and gate it (absolute checks only)."""
    started = time.time()
    params = ws.params
    sweep_stale_temporaries(ws.output_dir)  # a DDP follower: only its own scratch
    gate.reconcile(ws.ledger, ws.registry)
    cfg = params.train.base
    pretrained = None
    path = params.checkpoint_path
    if path is not None:  # checked before anything is written: a bad file changes nothing
        pretrained = {"path": str(path), "sha256": check_checkpoint(path, params.model.checkpoint_sha256, file=params.file)}
        load_backbone(create_net(params.model.arch, params.model.num_classes, params.data.channels, params.data.image_size), path, file=params.file)
    ws.ledger.append("step_started", {"kind": "base", "arch": params.model.arch, "pretrained": pretrained}, step=BASE_STEP)
    crash_point("step.started")
    run_id = ws.registry.start_run(BASE_STEP, {"ume.step": BASE_STEP, "ume.kind": "base"})
    crash_point("registry.run_started")
    ws.registry.log_params(run_id, {"arch": params.model.arch, **{f"train.{k}": v for k, v in vars(cfg).items()}})
    data = open_data(ws.data_dir, ws.ledger, batch_size=cfg.batch_size, num_workers=params.train.num_workers, seed=params.seed)
    _, draft = train_base(
        data,
        data.split("base"),
        arch=params.model.arch,
        num_classes=params.model.num_classes,
        in_chans=params.data.channels,
        image_size=params.data.image_size,
        config=cfg,
        make_trainer=_trainer_factory(ws, run_id),
        seed=params.seed,
        pretrained=pretrained,
    )
    component = ws.components.save(draft, parent=None)
    _record_component(ws, BASE_STEP, component)
    manifest = Manifest(base=component.id)
    return evaluate_and_gate(
        ws,
        step=None,
        key=BASE_STEP,
        kind="base",
        manifest=manifest,
        champion_version=None,
        champion_manifest=None,
        run_id=run_id,
        data=data,
        started=started,
    )


def _record_component(ws: Workspace, key: str, component: Component) -> None:
    crash_point("component.saved")
    ws.ledger.append(
        "component",
        {
            "id": component.id,
            "kind": component.kind,
            "sha256": component.sha256,
            "parent": component.parent,
            "lineage_count": len(component.lineage),
            "lineage_hash": hash_sample_ids(component.lineage)[0] if component.lineage else None,
        },
        step=key,
    )


# ------------------------------------------------------------------------------------------ step


def _current_champion(ws: Workspace) -> tuple[int, Manifest]:
    version = ws.registry.champion()
    if version is None:
        raise UmeError(_no_champion_reason(ws), field="champion")
    return version, ws.manifest_of(version)


def _no_champion_reason(ws: Workspace) -> str:
    """Why there is no champion, and the command that gets past it."""
    record = ws.step_record(BASE_STEP)
    if record is None:
        return "no champion yet: the base stage has not run (run `dvc repro`)"
    if record["decision"] == gate.BLOCKED:
        report = ws.reports_dir / BASE_STEP / "report.md"
        return (
            f"no champion: the base (v{record['version']}) was blocked by {', '.join(record['failing']) or 'the gate'} "
            f"(report: {report}). Fix the data, model or behaviors.thresholds in {ws.params.file}, then rerun the base: "
            "`dvc repro --force --single-item base` and `dvc repro` (thresholds are not a dependency of the base stage, "
            "so that changing one does not retrain a whole stream)"
        )
    return f"no champion: the registry has no `champion` alias although the base was {record['decision']} (run `ume audit`)"


def run_step(ws: Workspace, key: str) -> StepOutcome:
    """Run stream step ``key`` on top of the current champion."""
    started = time.time()
    step = ws.params.step(key)
    sweep_stale_temporaries(ws.output_dir)  # a DDP follower: only its own scratch
    gate.reconcile(ws.ledger, ws.registry)
    resumed = _resume_decided_step(ws, step)
    if resumed is not None:
        return resumed
    champion_version, champion_manifest = _current_champion(ws)
    how, target = _rollback_target(step, ws.params) if step.kind == "rollback" else (None, None)
    if how is not None:  # refuse before anything is written
        if how == "to":
            check_rollback_to(ws, int(target), field=f"stream.{key}.to")
        else:
            check_rollback_drop(ws, str(target), field=f"stream.{key}.drop")
    request, method_name, fallback, options = None, step.method, "none", dict(step.options)
    if step.kind == "forget":  # resolve the request before anything is written: unknown ids are errors
        request, method_name, fallback, options = _forget_plan(ws.params, step)
        sample_ids = resolve(request, SampleTable.load(ws.data_dir), file=str(request_path(request.id, ws.params.requests_dir)))
    for component_id in (champion_manifest.base, *champion_manifest.overlays, *champion_manifest.transforms):
        ws.components.verify(component_id)  # a corrupt champion fails the step before anything is written
    _refuse_before_writes(ws, step, champion_manifest)
    ws.ledger.append(
        "step_started",
        {"kind": step.kind, "method": method_name, "params_hash": step.params_hash(), "champion": champion_version},
        step=key,
    )
    crash_point("step.started")
    if request is not None:
        # From here on no consumer reads these samples.
        ingest(ws.ledger, request, sample_ids, version_lineage(champion_manifest, ws.components), champion_version)
        crash_point("step.ingested")
    run_id = ws.registry.start_run(key, {"ume.step": key, "ume.kind": step.kind})
    crash_point("registry.run_started")
    ws.registry.log_params(run_id, {"kind": step.kind, "method": method_name, "parent": step.parent, **step.options})
    data = open_data(ws.data_dir, ws.ledger, num_workers=ws.params.train.num_workers, seed=ws.params.seed)
    common = {
        "step": step,
        "key": key,
        "kind": step.kind,
        "champion_version": champion_version,
        "champion_manifest": champion_manifest,
        "run_id": run_id,
        "data": data,
        "started": started,
    }
    if how == "to":
        return evaluate_and_gate(ws, manifest=ws.manifest_of(int(target)), existing_version=int(target), **common)
    if how == "drop":
        manifest, notes = champion_manifest.without_step(str(target)), {}
        if manifest.transforms and str(target) in champion_manifest.overlay_steps:
            # The float version changed under the transforms: re-derive them, as after any other step.
            env = OperatorEnv(
                step=key,
                seed=ws.params.seed,
                make_trainer=_trainer_factory(ws, run_id),
                champion_manifest=champion_manifest,
                components=ws.components,
            )
            manifest = _reapply_transforms(ws, key, champion_manifest, manifest.float_shadow(), data, env)
            notes["reapplied_transforms"] = list(champion_manifest.transform_steps)
        return evaluate_and_gate(ws, manifest=manifest, notes=notes, **common)

    method = get_method(step.kind, method_name, file=ws.params.file, where=f"stream.{key}.method")
    config = method.parse_config(options, where=f"stream.{key}", file=ws.params.file)
    env = OperatorEnv(
        step=key,
        seed=ws.params.seed,
        make_trainer=_trainer_factory(ws, run_id),
        champion_lineage=frozenset(version_lineage(champion_manifest, ws.components)),
        champion_manifest=champion_manifest,
        components=ws.components,
        request=request,
        forget_ids=frozenset(DeletionLog.read(ws.ledger).hashed_ids([request.id])) if request else frozenset(),
    )
    manifest, notes = _run_operator(ws, key, method, config, champion_manifest, data, env)
    if request is not None:
        _check_covers(ws, manifest, request, method.name)
    outcome = evaluate_and_gate(ws, manifest=manifest, notes=notes, **common)
    if request is not None and outcome.record["decision"] == gate.BLOCKED and fallback != "none" and method.name not in EXACT_METHODS:
        # The deletion must happen: fall back to the exact path, recording both attempts.
        first = outcome.record
        run_id = ws.registry.start_run(f"{key} (fallback {fallback})", {"ume.step": key, "ume.kind": step.kind, "ume.attempt": "2"})
        exact = get_method("forget", fallback)
        env = dataclasses.replace(env, make_trainer=_trainer_factory(ws, run_id))
        manifest, notes = _run_operator(ws, key, exact, exact.parse_config({}, where=f"stream.{key}", file=ws.params.file),
                                        champion_manifest, data, env)
        _check_covers(ws, manifest, request, exact.name)
        notes["first_attempt"] = {k: first[k] for k in ("version", "decision", "reason", "failing", "metrics")} | {"method": method.name}
        common.update(run_id=run_id, started=started)
        outcome = evaluate_and_gate(ws, manifest=manifest, notes=notes, attempt=2, **common)
        method = exact
    if request is not None and outcome.record["decision"] == gate.PROMOTED:
        _resolve_request(ws, key, request, method.name, outcome)
    if outcome.record["decision"] == gate.PROMOTED:
        revoke_unservable_versions(ws)
    return outcome


def _forget_plan(params: Params, step: StepConfig) -> tuple[DeletionRequest, str, str, dict[str, Any]]:
    """The request, method, fallback and method options of a forget step (validated)."""
    options = dict(step.options)
    where = f"stream.{step.key}"
    request_id = options.pop("request", None)
    if not isinstance(request_id, str):
        raise ConfigError("a forget step names its request id (written by `ume forget`)", file=params.file, field=f"{where}.request")
    request = load_request(request_id, params.requests_dir)
    fallback = options.pop("fallback", "exact")
    if fallback not in ("exact", "retrain", "none"):
        raise ConfigError(f"expected exact, retrain or none, got {fallback!r}", file=params.file, field=f"{where}.fallback")
    method_name = step.method or request.method or "exact"
    return request, method_name, fallback, options


def _refuse_before_writes(ws: Workspace, step: StepConfig, champion: Manifest) -> None:
    """Checks that need the champion, done before the step writes anything (bad input changes nothing)."""
    where = f"stream.{step.key}"
    if step.kind == "compress" and any(ws.components.sidecar(t).meta.get("transform") == "quantize" for t in champion.transforms):
        raise ConfigError("the champion is already quantized: put compress steps before the quantize step", file=ws.params.file, field=where)
    if step.kind == "merge":
        chosen_overlays(champion, tuple(step.options.get("overlays") or ()), where=where, file=ws.params.file)
    if step.kind == "compress" and (step.method or "quantize") == "quantize":
        from pipeline.quantize import check_quantizable

        size, channels = ws.params.data.image_size, ws.params.data.channels
        check_quantizable(compose(champion.float_shadow(), ws.components), (channels, size, size), file=ws.params.file, field=f"{where}.method")


def _run_operator(ws: Workspace, key: str, method, config, champion_manifest: Manifest, data: UmeData, env: OperatorEnv):
    """Compose the champion, run the operator, store its components; returns the candidate manifest.

    A compress step works on the champion as served (its transforms included, so pruning can be
    followed by quantization); every other step works on the float shadow, and the champion's
    transforms are then re-derived from their recorded recipes on the result.
    """
    L.seed_everything(ws.params.seed, workers=True, verbose=False)
    compress = method.kind == "compress"
    source = champion_manifest if compress else champion_manifest.float_shadow()
    net = compose(source, ws.components)
    for p in net.parameters():
        p.requires_grad_(True)
    operator_started = time.time()
    try:
        change = method.fn(net, data, config, env)
    except DataError as exc:
        if exc.file is None:
            exc = DataError(exc.message, file=ws.params.file, field=f"stream.{key}.{exc.field or 'slice'}")
        raise exc from None
    if isinstance(change, list):
        change = Change(drafts=change)
    manifest = source if change.keep_overlays is None else source.truncated(change.keep_overlays)
    if change.drop_overlays:
        manifest = manifest.without_positions(change.drop_overlays)
    if change.new_base is not None:
        component = ws.components.save(change.new_base, parent=champion_manifest.hash)
        _record_component(ws, key, component)
        manifest = Manifest(base=component.id)
    for draft in change.drafts:
        component = ws.components.save(draft, parent=champion_manifest.hash)
        _record_component(ws, key, component)
        manifest = manifest.with_overlay(component.id, draft.meta.get("overlay_step", key))
    notes = {"method": f"{method.kind}/{method.name}", **change.notes}
    if change.transform is not None:
        component = ws.components.save(change.transform, parent=champion_manifest.hash)
        _record_component(ws, key, component)
        manifest = manifest.with_transform(component.id, key)
    elif champion_manifest.transforms:
        manifest = _reapply_transforms(ws, key, champion_manifest, manifest, data, env)
        notes["reapplied_transforms"] = list(champion_manifest.transform_steps)
    notes["operator_seconds"] = round(time.time() - operator_started, 3)
    return manifest, notes


def _reapply_transforms(ws: Workspace, key: str, champion: Manifest, manifest: Manifest, data: UmeData, env: OperatorEnv) -> Manifest:
    """Re-derive the champion's export transforms, in order, on the new float version."""
    for transform_id, transform_step in zip(champion.transforms, champion.transform_steps, strict=True):
        sidecar = ws.components.sidecar(transform_id)
        method = get_method(*sidecar.meta["method"].split("/"), file=str(ws.components.sidecar_path(transform_id)), where="meta.method")
        config = method.parse_config(sidecar.meta["config"], where="meta.config", file=str(ws.components.sidecar_path(transform_id)))
        L.seed_everything(ws.params.seed, workers=True, verbose=False)
        net = compose(manifest, ws.components)
        for p in net.parameters():
            p.requires_grad_(True)
        sub_env = dataclasses.replace(env, step=transform_step, champion_lineage=frozenset(version_lineage(manifest.float_shadow(), ws.components)))
        change = method.fn(net, data, config, sub_env)
        component = ws.components.save(change.transform, parent=manifest.hash)
        _record_component(ws, key, component)
        manifest = manifest.with_transform(component.id, transform_step)
    return manifest


def _check_covers(ws: Workspace, manifest: Manifest, request: DeletionRequest, method: str) -> None:
    """Fail closed when an operator's candidate still carries uncovered influence of the request."""
    carried = uncovered_requests(manifest, ws.components, DeletionLog.read(ws.ledger), [request.id])
    if carried:
        raise UmeError(
            f"method {method!r} produced a candidate that still carries {carried[request.id]} deleted sample(s) of {request.id}; "
            "nothing was registered",
            field="method",
        )


def _resolve_request(ws: Workspace, key: str, request: DeletionRequest, method: str, outcome: StepOutcome) -> None:
    """Record that the promoted version no longer carries the request's samples."""
    log = DeletionLog.read(ws.ledger)
    manifest = ws.versions.load(outcome.record["manifest_hash"])
    debt = deletion_debt(manifest, ws.components, log).get(request.id, 0)
    evidence = forget_evidence(outcome.results).get(request.id, {"checks": [], "passed": 0, "failed": 0, "inconclusive": 0, "conclusive": 0})
    shown = [c["check"] for c in evidence["checks"] if c["verdict"] == "passed"]
    if debt == 0:
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
            "control_version": outcome.record["champion_before"],
            "evidence": {k: evidence[k] for k in ("conclusive", "passed", "failed", "inconclusive")} | {"shown_by": shown},
            "note": note,
        },
        step=key,
    )
    crash_point("forget.resolved")


def revoke_unservable_versions(ws: Workspace) -> list[int]:
    """Tag every registered version that still carries uncovered influence of a resolved request."""
    log = DeletionLog.read(ws.ledger)
    if not log.resolved:
        return []
    revoked: dict[int, list[str]] = {}
    for info in ws.registry.versions():
        if not info.manifest_hash:
            continue
        carried = sorted(uncovered_requests(ws.versions.load(info.manifest_hash), ws.components, log, list(log.resolved)))
        if carried and ",".join(carried) != info.tags.get("ume.revoked_by"):
            revoked[info.version] = carried
    if revoked:  # write-ahead, like the gate: the ledger first, then the registry tags
        ws.ledger.append(REVOKED_ENTRY, {"versions": sorted(revoked), "by_request": {str(v): r for v, r in revoked.items()}})
        crash_point("revoke.ledger")
    for version, requests in revoked.items():
        ws.registry.set_version_tags(version, {"deletion_status": "revoked", "ume.revoked_by": ",".join(requests)})
    return sorted(revoked)


def _refuse_reintroduction(ws: Workspace, target: Manifest, *, field: str, what: str, why: str) -> None:
    """Refuse ``target`` when it would serve (uncovered) samples of a request the champion does not."""
    log = DeletionLog.read(ws.ledger)
    if not log.requests:
        return
    carried = uncovered_requests(target, ws.components, log)
    version = ws.registry.champion()
    already = uncovered_requests(ws.manifest_of(version), ws.components, log) if version else {}
    reintroduced = sorted(r for r in carried if r not in already)
    if reintroduced:
        raise ConfigError(f"refused: {what} request(s) {', '.join(reintroduced)}{why}", file=ws.params.file, field=field)


def check_rollback_to(ws: Workspace, target: int, *, field: str) -> None:
    """Refuse a rollback target that never passed the gate (or does not exist)."""
    promoted = {e.data["version"] for e in ws.ledger.of_type("decision") if e.data["decision"] == gate.PROMOTED}
    if target not in promoted:
        raise ConfigError(
            f"version {target} was never promoted through the gate; only earlier champions can be rolled back to"
            f" (promoted: {', '.join(map(str, sorted(promoted))) or 'none'})",
            file=ws.params.file,
            field=field,
        )
    _refuse_reintroduction(
        ws,
        ws.manifest_of(target),
        field=field,
        what=f"version {target} still carries the influence of deleted samples of",
        why="; serving it would undo those deletions",
    )


def check_rollback_drop(ws: Workspace, step_id: str, *, field: str) -> None:
    """Refuse to drop a step whose overlay the champion does not carry."""
    version, manifest = _current_champion(ws)
    if step_id not in manifest.overlay_steps and step_id not in manifest.transform_steps:
        raise ConfigError(
            f"the champion (v{version}: {manifest.describe()}) has no overlay or transform from step {step_id!r}",
            file=ws.params.file,
            field=field,
        )
    _refuse_reintroduction(
        ws,
        manifest.without_step(step_id),
        field=field,
        what=f"dropping {step_id!r} would serve deleted samples of",
        why=" again (the overlay is pinned until a retrain pays the deletion debt)",
    )


def _resume_decided_step(ws: Workspace, step: StepConfig) -> StepOutcome | None:
    """A step whose decision is in the ledger but whose record is missing (crash) is finished, not redone.

    Redoing it would build the step again on a champion that may already carry its overlay.
    """
    entries = [e for e in ws.ledger.verify() if e.step == step.key]
    starts = [i for i, e in enumerate(entries) if e.type == "step_started"]
    if not starts:
        return None
    last = entries[starts[-1]]
    if last.data.get("params_hash") != step.params_hash():
        return None
    decisions = [e for e in entries[starts[-1] :] if e.type == "decision"]
    if not decisions:
        return None
    decision = decisions[-1].data
    champion_now = ws.registry.champion()
    if champion_now not in (last.data.get("champion"), decision["version"]):
        return None  # the stream below this step changed since (e.g. the base was retrained): redo it
    if step.kind == "forget":
        request, _, fallback, _ = _forget_plan(ws.params, step)
        if decision["decision"] == gate.BLOCKED and fallback != "none" and len(decisions) == 1:
            return None  # the fallback attempt never ran: redo the step (the deletion must happen)
    attempt = len(decisions)
    report = ws.reports_dir / (step.key if attempt == 1 else f"{step.key}-attempt{attempt}") / "results.json"
    results_raw = json.loads(report.read_text())["results"] if report.exists() else []
    results = [BehaviorResult(**r) for r in results_raw]
    manifest = ws.versions.load(decision["manifest_hash"])
    record = _step_record(
        step.key, step.kind, step, decision["decision"], decision["reason"], decision["failing"], decision["version"], manifest,
        champion_before=last.data.get("champion"), champion_after=ws.registry.champion(), metrics=_metrics(results), run_id=None,
        seconds=0.0,
    )
    record["resumed"] = True
    outcome = StepOutcome(record, results)
    if step.kind == "forget" and decision["decision"] == gate.PROMOTED and request.id not in DeletionLog.read(ws.ledger).resolved:
        method = next((e.data.get("notes", {}).get("method", "") for e in reversed(entries) if e.type == "candidate"), "")
        _resolve_request(ws, step.key, request, method.split("/")[-1], outcome)
    if decision["decision"] == gate.PROMOTED:
        revoke_unservable_versions(ws)
    write_history(ws, step.key, record)
    _write_json_atomic(ws.step_record_path(step.key), record)
    return outcome
