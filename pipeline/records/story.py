"""The stream's story where a person reads it: the registered model's and every version's description in MLflow.

Someone who only opens the MLflow UI sees, on the model page, the stream as a table (step, kind,
decision, version, champion after) and how to roll back from the UI; on each version page, what the
version is (base + overlays), which step made it and why it was promoted, blocked or revoked, and
which rollbacks served it again. Written from the ledger and the step records after every stage and
every sync; only descriptions that changed are written. MLflow stores at most 5,000 characters per
description (PostgreSQL enforces it): the table keeps the latest steps and says how many it left out.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pipeline.core.config import BASE_STEP
from pipeline.core.errors import ComponentError
from pipeline.records.deletion import REVOKED_ENTRY
from pipeline.records.gate import ledger_champion
from pipeline.records.ui_requests import DROP_TAG, ROLLBACK_REFUSED_TAG, ui_history
from pipeline.records.workspace import Workspace

MAX_DESCRIPTION = 5000
HOW_TO_ROLL_BACK = (
    "**Roll back from this UI:** move the `champion` alias to an earlier promoted version, or set the tag "
    f"`{DROP_TAG}` = *step* on the champion version to serve it without that step's overlay. `ume sync` (or the next "
    "stage) runs it through the gate as a rollback step and writes it to the ledger, or refuses it, puts the alias back "
    f"and tags the version you chose with `{ROLLBACK_REFUSED_TAG}` and the reason."
)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _steps(ws: Workspace) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(step, kind, record or None) in stream order, the base first."""
    out: list[tuple[str, str, dict[str, Any] | None]] = [(BASE_STEP, "base", ws.step_record(BASE_STEP))]
    for key, step in ws.params.stream.items():
        out.append((key, step.kind, ws.step_record(key)))
    return out


def model_description(ws: Workspace) -> str:
    """The registered model's description: the champion, the stream table, the UI requests, how to roll back."""
    champion = ledger_champion(ws.ledger)
    head = [f"**Managed by ume**: a clean base plus removable overlays; every change passed the behaviour gate and is in the ledger. "
            f"Champion: **v{champion}**." if champion is not None else "**Managed by ume**: no champion yet.", ""]
    rows = []
    for key, kind, record in _steps(ws):
        if record is None:
            rows.append(f"| {key} | {kind} | pending | | |")
        else:
            rows.append(f"| {key} | {kind} | {record['decision']} | v{record['version']} | v{record['champion_after']} |")
    requests = []
    for entry in ui_history(ws)[-5:]:
        data = entry.data
        what = f"alias moved to v{data['to']}" if entry.type == "alias_moved" else f"{DROP_TAG}={data['drop']} on v{data['version']}"
        outcome = f"rollback step {data['step']}" if data["outcome"] == "rollback" else f"refused: {data['reason']}"
        requests.append(f"- {data['seen_at']}: {what} → {_cell(outcome)}")
    tail = ["", "**Requests made in this UI** (latest):", *requests] if requests else []
    tail += ["", HOW_TO_ROLL_BACK]
    table_head = ["| step | kind | decision | version | champion after |", "|---|---|---|---|---|"]
    dropped = 0
    while True:
        note = [f"*{dropped} earlier steps left out: `ume status` lists them all.*"] if dropped else []
        text = "\n".join([*head, *table_head, *rows[dropped:], *note, *tail])
        if len(text) <= MAX_DESCRIPTION or dropped >= len(rows):
            return text[:MAX_DESCRIPTION]
        dropped += 1


def version_descriptions(ws: Workspace) -> dict[int, str]:
    """Each registered version's description: what it is, the step that made it, its decision, revocation and rollbacks."""
    made_by: dict[int, str] = {}
    compositions: dict[int, str] = {}
    decided: dict[int, dict[str, Any]] = {}
    served_again: dict[int, list[str]] = defaultdict(list)
    revoked: dict[int, list[str]] = {}
    abandoned: set[int] = set()
    for entry in ws.ledger.verify():
        data = entry.data
        if entry.type == "candidate":
            made_by[data["version"]] = entry.step or "?"
            manifest = data.get("manifest") or {}
            compositions[data["version"]] = " + ".join(["base", *manifest.get("overlay_steps", ()), *(f"[{t}]" for t in manifest.get("transform_steps", ()))])
        elif entry.type == "decision" and data.get("mode", "gate") == "gate":
            decided[data["version"]] = data
        elif entry.type == "decision" and data.get("mode") == "rollback":
            served_again[data["version"]].append(f"{entry.step} ({entry.time})")
        elif entry.type == REVOKED_ENTRY:
            for version, requests in data["by_request"].items():
                revoked[int(version)] = requests
        elif entry.type == "abandoned":
            abandoned.update(data["versions"])
    kinds = {key: kind for key, kind, _ in _steps(ws)}
    out = {}
    for info in ws.registry.versions():
        number = info.version
        composition = compositions.get(number)
        if composition is None and info.manifest_hash:
            try:
                composition = ws.versions.load(info.manifest_hash).describe()
            except ComponentError:
                composition = "unknown (manifest missing)"
        step = made_by.get(number, info.tags.get("ume.step", "?"))
        lines = [f"**v{number}** = {composition or 'unknown'}", "", f"Made by step `{step}` ({kinds.get(step, 'removed from the stream')})."]
        if number in abandoned:
            lines.append("**Abandoned**: its stage stopped before a decision; the step was redone.")
        elif number in decided:
            data = decided[number]
            lines.append(f"Gate decision: **{data['decision']}**: {data['reason']}")
        if served_again.get(number):
            lines.append(f"Served again by rollback: {', '.join(served_again[number])}.")
        if number in revoked:
            lines.append(f"**Revoked**: carries samples of the deletion request(s) {', '.join(revoked[number])}; never served again.")
        out[number] = "\n\n".join(lines)[:MAX_DESCRIPTION]
    return out


def publish_story(ws: Workspace) -> int:
    """Write the model's and the versions' descriptions where they changed; returns how many were written."""
    if not ws.primary:
        return 0
    written = 0
    current, _ = ws.registry.model_page()
    text = model_description(ws)
    if text != current:
        ws.registry.set_model_description(text)
        written += 1
    existing = {v.version: v.description for v in ws.registry.versions()}
    for number, description in version_descriptions(ws).items():
        if existing.get(number) != description:
            ws.registry.set_version_description(number, description)
            written += 1
    return written
