"""``ume sync``: a person's change in the MLflow UI becomes a gated, ledgered rollback, or is refused in the UI.

Runs at the start of every stage, and through ``ume sync`` (a user, or a scheduler next to the
MLflow server). For each request found by :mod:`pipeline.records.ui_requests`:

- **checked** with exactly the checks of ``ume rollback`` (:func:`check_rollback_to`,
  :func:`check_rollback_drop`), so the refusal messages are the same;
- **recorded** write-ahead: one ledger entry (``alias_moved`` or ``drop_requested``) with the
  outcome, before any effect, so an interrupted sync is finished by the next one from that entry;
- **acted on**:

  - allowed: a ``rollback`` step is appended to the stream in ``params.yaml`` and the alias goes back
    to the ledger's champion until that step, gated in ``mode=rollback`` like a CLI rollback, moves it
    (``ume sync`` runs the step at once through ``dvc repro``; a stage leaves it to the next ``dvc repro``);
  - refused: the alias goes back to the ledger's champion, and the reason is written where the
    person will see it: a tag on the version they chose (``ume.rollback_refused`` or
    ``ume.drop_refused``) and on the registered model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import UmeError
from pipeline.core.faults import crash_point
from pipeline.core.streamfile import new_step_key, stream_text_with, write_stream_text
from pipeline.records.gate import ledger_champion
from pipeline.records.ledger import Entry
from pipeline.records.ui_requests import (
    ALIAS_ENTRY,
    DROP_ENTRY,
    DROP_REFUSED_TAG,
    DROP_TAG,
    QUEUED,
    REFUSED,
    ROLLBACK_QUEUED_TAG,
    ROLLBACK_REFUSED_TAG,
    UNKNOWN_AUTHOR,
    AliasMove,
    DropTag,
    alias_move,
    drop_tags,
    queued_rollbacks,
)
from pipeline.records.workspace import Workspace
from pipeline.steps.kinds.rollback import check_rollback_drop, check_rollback_to


@dataclass
class SyncResult:
    """What one sync did: the rollback steps it appended (to run) and the requests it refused."""

    appended: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line per refusal, with the reason

    @property
    def changed(self) -> bool:
        """Whether anything was recorded."""
        return bool(self.appended or self.refused)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reason_of(exc: UmeError) -> str:
    return exc.message.removeprefix("refused: ")


def _append_rollback(ws: Workspace, key: str, entry: dict[str, Any]) -> None:
    """Append ``key`` to the stream (after the last step), unless an interrupted sync already did."""
    if key in ws.params.stream:
        return
    path = Path(ws.params.file)
    parent = list(ws.params.stream)[-1] if ws.params.stream else "base"
    write_stream_text(path, stream_text_with(path, {key: {"kind": "rollback", "parent": parent, **entry}}))
    ws.reload_params()


def _refusal_tags(ws: Workspace, version: int, tag: str, text: str) -> None:
    """The refusal where the person looks: the version they chose and the registered model."""
    ws.registry.set_version_tags(version, {tag: text})
    ws.registry.set_model_tags({tag: f"v{version}: {text}"})


def _take_alias_move(ws: Workspace, move: AliasMove, seen_by: str, result: SyncResult) -> None:
    """Record the move (unless an interrupted sync did), then append its rollback step or refuse it."""
    expected = move.expected
    assert expected is not None
    entry = move.recorded
    if entry is None:
        data: dict[str, Any] = {"from": expected, "to": move.to, "seen_at": _now(), "seen_by": seen_by, "by": UNKNOWN_AUTHOR}
        try:
            if move.to is None:
                raise UmeError("the champion alias was deleted; ume always serves a champion")
            check_rollback_to(ws, move.to, field=f"alias {move.to}")
            data |= {"outcome": QUEUED, "step": new_step_key(ws.params.stream, "rollback")}
        except UmeError as exc:
            data |= {"outcome": REFUSED, "reason": _reason_of(exc)}
        entry = ws.ledger.append(ALIAS_ENTRY, data)
        crash_point("sync.recorded")
    ws.registry.set_champion(expected)  # back to the ledger's champion: only a gated step moves it
    data = entry.data
    if data["outcome"] == REFUSED:
        if move.to is not None:
            _refusal_tags(ws, move.to, ROLLBACK_REFUSED_TAG, f"{data['reason']} (alias moved back to v{expected}; ledger entry {entry.hash[:12]})")
        result.refused.append(f"champion alias on v{move.to}: refused, moved back to v{expected}: {data['reason']}")
        return
    _append_rollback(ws, data["step"], _rollback_options(entry))
    ws.registry.set_version_tags(move.to, {ROLLBACK_QUEUED_TAG: data["step"]})
    result.appended.append(data["step"])


def _take_drop_tag(ws: Workspace, tag: DropTag, seen_by: str, result: SyncResult) -> None:
    """Record a ``ume.drop`` tag (unless an interrupted sync did), remove it, then append its rollback step or refuse it."""
    entry = tag.recorded
    if entry is None:
        data: dict[str, Any] = {"version": tag.version, "drop": tag.drop, "seen_at": _now(), "seen_by": seen_by, "by": UNKNOWN_AUTHOR}
        try:
            champion = ledger_champion(ws.ledger)
            if tag.version != champion:
                raise UmeError(f"{DROP_TAG} is read on the champion version only (v{champion}), not on v{tag.version}")
            if tag.drop not in ws.params.stream:
                raise UmeError(f"unknown step {tag.drop!r} (stream: {', '.join(ws.params.stream) or 'empty'})")
            check_rollback_drop(ws, tag.drop, field=DROP_TAG)
            data |= {"outcome": QUEUED, "step": new_step_key(ws.params.stream, "rollback")}
        except UmeError as exc:
            data |= {"outcome": REFUSED, "reason": _reason_of(exc)}
        entry = ws.ledger.append(DROP_ENTRY, data)
        crash_point("sync.recorded")
    ws.registry.delete_version_tag(tag.version, DROP_TAG)
    data = entry.data
    if data["outcome"] == REFUSED:
        _refusal_tags(ws, tag.version, DROP_REFUSED_TAG, f"{DROP_TAG}={tag.drop}: {data['reason']} (ledger entry {entry.hash[:12]})")
        result.refused.append(f"{DROP_TAG}={tag.drop} on v{tag.version}: refused: {data['reason']}")
        return
    _append_rollback(ws, data["step"], _rollback_options(entry))
    result.appended.append(data["step"])


def _rollback_options(entry: Entry) -> dict[str, Any]:
    """The stream options of the rollback step a recorded UI request asks for (its ``reason`` says where it came from)."""
    data = entry.data
    seen = f"seen {data['seen_at']} by {data['seen_by']}"
    if entry.type == ALIAS_ENTRY:
        return {"to": data["to"], "reason": f"champion alias moved to v{data['to']} outside ume (MLflow UI), {seen}"}
    return {"drop": data["drop"], "reason": f"{DROP_TAG}={data['drop']} set on v{data['version']} in the MLflow UI, {seen}"}


def _finish_queued(ws: Workspace, entry: Entry, result: SyncResult) -> None:
    """An interrupted sync recorded a rollback but did not append its step: append it now."""
    _append_rollback(ws, entry.data["step"], _rollback_options(entry))
    result.appended.append(entry.data["step"])


def take_ui_requests(ws: Workspace, *, seen_by: str) -> SyncResult:
    """Find, check, record and act on every UI request; ``seen_by`` names who looked (``ume sync`` or a stage)."""
    result = SyncResult()
    if not ws.primary:
        return result
    for entry in queued_rollbacks(ws):
        _finish_queued(ws, entry, result)
    move = alias_move(ws)
    if move is not None:
        _take_alias_move(ws, move, seen_by, result)
    for tag in drop_tags(ws):
        _take_drop_tag(ws, tag, seen_by, result)
    return result
