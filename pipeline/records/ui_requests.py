"""What a person changed in the MLflow UI, read as a request: the ``champion`` alias moved, or a ``ume.drop`` tag set.

Only ume's gate moves the alias, and every move it makes is a ledger entry first. An alias on any
other version than the ledger's last move is therefore a person's act (the MLflow UI's alias editor,
or any MLflow client), and ume reads it as ``ume rollback --to V`` by that person; a tag
``ume.drop = <step>`` set on the champion version reads as ``ume rollback --drop <step>``.

This module only *finds* such requests and reads their ledger entries; :mod:`pipeline.steps.sync`
checks them, records them and acts (a rollback step appended to the stream, or the refusal written
back to the UI). Two things are never read as a person's move:

- a promotion the ledger decided whose stage did not finish (its step record is missing): a process
  was killed between the ledger entry and the alias move, and :func:`pipeline.records.gate.reconcile`
  finishes it;
- a move already recorded (an ``alias_moved`` entry after the last alias move in the ledger, for the
  version the alias is on): a sync was interrupted, and the next one finishes what that entry says.

MLflow records neither who moved an alias nor when: ``by`` stays empty and ``seen_at`` is when ume
first saw the move.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.records.gate import ledger_champion
from pipeline.records.ledger import Entry
from pipeline.records.workspace import Workspace

ALIAS_ENTRY = "alias_moved"  # data: from, to, seen_at, seen_by, by, outcome (rollback | refused), step | reason
DROP_ENTRY = "drop_requested"  # data: version, drop, seen_at, seen_by, by, outcome (rollback | refused), step | reason
DROP_TAG = "ume.drop"
ROLLBACK_REFUSED_TAG = "ume.rollback_refused"
DROP_REFUSED_TAG = "ume.drop_refused"
ROLLBACK_QUEUED_TAG = "ume.rollback_step"
QUEUED, REFUSED = "rollback", "refused"
UNKNOWN_AUTHOR = "unknown (MLflow does not record who moves an alias or sets a tag)"


@dataclass(frozen=True)
class AliasMove:
    """The ``champion`` alias on ``to`` while the ledger's last move is to ``expected``."""

    expected: int | None
    to: int | None
    recorded: Entry | None  # the entry of an interrupted sync that already decided this move

    def describe(self) -> str:
        """One line for `ume status` and `ume audit`."""
        where = f"on version {self.to}" if self.to is not None else "deleted"
        return f"the champion alias is {where} but the ledger's champion is version {self.expected}: moved outside ume (the MLflow UI?)"


@dataclass(frozen=True)
class DropTag:
    """A ``ume.drop`` tag: the person asks to serve ``version`` without the overlay of step ``drop``."""

    version: int
    drop: str
    recorded: Entry | None


def _alias_moves(entries: list[Entry]) -> tuple[int, list[Entry]]:
    """The sequence number of the ledger's last alias move and the ``alias_moved`` entries after it."""
    last = -1
    for entry in entries:
        if entry.type == "decision" and entry.data.get("alias"):
            last = entry.seq
    return last, [e for e in entries if e.type == ALIAS_ENTRY and e.seq > last]


def promotion_in_flight(ws: Workspace, entries: list[Entry]) -> bool:
    """Whether the ledger's last alias move belongs to a stage that did not finish (its record is missing)."""
    moves = [e for e in entries if e.type == "decision" and e.data.get("alias")]
    if not moves:
        return False
    last = moves[-1]
    if last.step is None:
        return False
    record = ws.step_record(last.step)
    return record is None or record.get("version") != last.data["version"] or record.get("decision") != last.data["decision"]


def alias_move(ws: Workspace, champion: int | None = None) -> AliasMove | None:
    """The person's alias move, or None when the alias is where the ledger put it (or a promotion is in flight).

    ``champion`` is the alias as already read (saves one registry call).
    """
    entries = ws.ledger.verify()
    expected = ledger_champion(ws.ledger)
    actual = ws.registry.champion() if champion is None else champion
    if actual == expected or expected is None or promotion_in_flight(ws, entries):
        return None
    _, after = _alias_moves(entries)
    recorded = next((e for e in reversed(after) if e.data["to"] == actual), None)
    return AliasMove(expected=expected, to=actual, recorded=recorded)


def drop_tags(ws: Workspace) -> list[DropTag]:
    """Every version carrying a ``ume.drop`` tag, with the entry that already decided it (if any)."""
    tagged = [(v.version, v.tags[DROP_TAG]) for v in ws.registry.versions() if v.tags.get(DROP_TAG)]
    if not tagged:
        return []
    decided = {(e.data["version"], e.data["drop"]): e for e in ws.ledger.of_type(DROP_ENTRY)}
    return [DropTag(version, drop.strip(), decided.get((version, drop.strip()))) for version, drop in tagged]


def queued_rollbacks(ws: Workspace) -> list[Entry]:
    """Recorded UI requests whose rollback step was decided on but is not in the stream yet (an interrupted sync)."""
    out = []
    for entry in [*ws.ledger.of_type(ALIAS_ENTRY), *ws.ledger.of_type(DROP_ENTRY)]:
        if entry.data["outcome"] == QUEUED and entry.data["step"] not in ws.params.stream:
            out.append(entry)
    return sorted(out, key=lambda e: e.seq)


def ui_history(ws: Workspace) -> list[Entry]:
    """Every UI request the ledger recorded, oldest first."""
    return sorted([*ws.ledger.of_type(ALIAS_ENTRY), *ws.ledger.of_type(DROP_ENTRY)], key=lambda e: e.seq)
