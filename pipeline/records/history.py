"""The stream's history for ``dvc metrics show`` and ``dvc plots show``.

Each finished stage writes ``store/metrics/<step>.json`` (a DVC metrics file of that stage) and
rewrites ``store/history.json`` (one row per finished step in stream order) and
``store/history/<metric>.json`` (the rows that have that metric: the series behind the top-level
``plots`` of ``dvc.yaml``; DVC cannot draw a series with missing values). A DDP follower writes
them to its scratch directory (``Workspace.output_dir``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.config import BASE_STEP
from pipeline.records.continual import heldout_of
from pipeline.records.workspace import Workspace

HISTORY_FIELDS = ("test_accuracy", "retained_accuracy", "forget_accuracy", "group_gap", "agreement", "promoted", "heldout_mean")


def step_metrics(record: dict[str, Any]) -> dict[str, float | int | str]:
    """The plotted numbers of one step record (missing values are left out)."""
    m = record.get("metrics", {})
    out: dict[str, float | int | str] = {"step": record["id"], "kind": record["kind"], "decision": record["decision"]}
    out["promoted"] = int(record["decision"] == "promoted")
    out["version"] = record["version"]
    if "test_accuracy" in m:
        out["test_accuracy"] = m["test_accuracy"]
    if "retained_accuracy" in m:
        out["retained_accuracy"] = m["retained_accuracy"]
    forget = [v for k, v in m.items() if k.startswith("forget_accuracy[") or k.startswith("forgotten_class_recall[")]
    if forget:
        out["forget_accuracy"] = max(forget)
    if "group_accuracy_gap" in m:
        out["group_gap"] = m["group_accuracy_gap"]
    if "canary_agreement" in m:
        out["agreement"] = m["canary_agreement"]
    heldout = heldout_of(record)
    for name, value in heldout.items():
        out[f"heldout_accuracy[{name}]"] = value
    if heldout:
        out["heldout_mean"] = round(sum(heldout.values()) / len(heldout), 6)
    return out


def _write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def write_history(ws: Workspace, key: str, record: dict[str, Any]) -> None:
    """This step's metrics file and the whole history file."""
    _write(ws.output_dir / "metrics" / f"{key}.json", step_metrics(record))
    rows = []
    for index, step in enumerate([BASE_STEP, *ws.params.stream]):
        done = record if step == key else ws.step_record(step)
        if done is not None:
            rows.append({"index": index, **step_metrics(done)})
    _write(ws.output_dir / "history.json", rows)
    for field in HISTORY_FIELDS:  # one file per metric: a plotted series may not have gaps
        series = [{"index": r["index"], "step": r["step"], field: r[field]} for r in rows if field in r]
        _write(ws.output_dir / "history" / f"{field}.json", series)
    _write(ws.output_dir / "history" / "heldout.json", _heldout_cells(rows))


def _heldout_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (step, slice) of the held-out accuracies: the accuracy matrix as ``dvc plots`` draws a heat map."""
    cells = []
    for r in rows:
        for key, value in r.items():
            if key.startswith("heldout_accuracy["):
                cells.append({"step": f"{r['index']:02d} {r['step']}", "slice": key[len("heldout_accuracy[") : -1], "accuracy": value})
    return cells
