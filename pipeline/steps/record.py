"""The step record (the DVC output of a stage, what `ume status` reads), written last and atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.faults import crash_point
from pipeline.model.components import Component
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.manifest import Manifest
from pipeline.records.history import write_history
from pipeline.records.workspace import Workspace
from pipeline.steps.context import StepContext


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    crash_point("step.record_tmp")
    os.replace(tmp, path)


def step_record(
    ctx: StepContext,
    decision: str,
    reason: str,
    failing: list[dict[str, Any]],
    version: int,
    manifest: Manifest,
    *,
    champion_after: int | None,
    metrics: dict[str, float],
    run_id: str | None,
    seconds: float,
) -> dict[str, Any]:
    """The record's common fields; the lifecycle adds notes, evidence and the attempt."""
    step = ctx.step
    return {
        "id": ctx.key,
        "kind": ctx.kind,
        "parent": step.parent if step else None,
        "params_hash": step.params_hash() if step else None,
        "decision": decision,
        "reason": reason,
        "failing": [f["name"].split("::")[-1] for f in failing],
        "version": version,
        "manifest_hash": manifest.hash,
        "composition": manifest.describe(),
        "champion_before": ctx.champion_version,
        "champion_after": champion_after,
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "run_id": run_id,
        "seconds": seconds,
    }


def finish(ws: Workspace, key: str, record: dict[str, Any]) -> None:
    """Append the record to the step history and write the DVC output (the last write of a stage)."""
    write_history(ws, key, record)
    write_json_atomic(ws.step_record_path(key), record)


def record_component(ws: Workspace, key: str, component: Component) -> None:
    """The ledger entry of a component the step stored."""
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
