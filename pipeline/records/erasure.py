"""Erasure state: which requests' data was erased, what went, and when erasure is due.

Exclusion (no later step uses a deleted sample) happens when a request is received; *erasure* (no copy
of the samples, or of the weights that learned them, can be read any more) happens once the request is
exact (its latest resolution is ``exact``), by :mod:`pipeline.steps.erase`. The ledger holds both halves:

- ``erasure_started`` (write-ahead): the plan, with every hash needed to finish it after a crash
  (the components' SHA-256 and MD5, the DVC cache's object names, the versions that lose their weights);
- ``erasure``: what was erased and when; from then on the forget checks of those requests report
  ``erased`` and rest on the evidence recorded at resolution and on the lineage proof.

GDPR art. 17 asks for erasure "without undue delay"; ``deletion.max_erasure_days`` (default 30) from
receipt is the deadline ``ume status --check`` holds a project to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.records.debt import TIME_FORMAT, parse_time
from pipeline.records.deletion import DeletionLog
from pipeline.records.ledger import Entry, Ledger

STARTED_ENTRY = "erasure_started"
ERASED_ENTRY = "erasure"
ERASED_TAG = "ume.erased"  # on a registered version whose weights were erased (its metadata stays)
ERASED_REASON_TAG = "ume.erased_reason"


@dataclass
class ErasureLog:
    """Erasures read from the ledger: started (planned) and finished, by request."""

    started: dict[str, Entry] = field(default_factory=dict)
    done: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def read(cls, ledger: Ledger) -> ErasureLog:
        """Every erasure entry, in ledger order."""
        log = cls()
        for entry in ledger.entries():
            if entry.type == STARTED_ENTRY:
                for rid in entry.data["requests"]:
                    log.started[rid] = entry
            elif entry.type == ERASED_ENTRY:
                for rid in entry.data["requests"]:
                    log.done[rid] = entry
        return log

    def erased_at(self, request_id: str) -> str | None:
        """When the request's data was erased (UTC ISO), or None."""
        entry = self.done.get(request_id)
        return None if entry is None else str(entry.data["erased_at"])

    @property
    def components(self) -> set[str]:
        """Every component whose weights were erased."""
        return {c["id"] for entry in self.done.values() for c in entry.data["components"]}

    @property
    def versions(self) -> set[int]:
        """Every registered version whose erased weights make it unloadable (its metadata stays)."""
        return {int(v) for entry in self.done.values() for v in entry.data["versions"]}

    @property
    def unfinished(self) -> dict[str, Entry]:
        """Planned erasures a crash interrupted: the next run finishes them with the recorded plan."""
        return {rid: entry for rid, entry in self.started.items() if rid not in self.done}


def exact_requests(log: DeletionLog) -> list[str]:
    """Requests whose latest resolution is exact: no served component carries their samples."""
    return [rid for rid, entry in log.resolved.items() if entry.data.get("exact")]


def due_requests(log: DeletionLog, erasure: ErasureLog) -> list[str]:
    """Exact requests not yet erased, in ledger order."""
    return [rid for rid in exact_requests(log) if rid not in erasure.done]


def deadline(received: str, max_days: float) -> datetime:
    """When a request's data must be erased: received + ``max_days``."""
    return parse_time(received) + timedelta(days=max_days)


def erasure_state(ledger: Ledger, max_days: float, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per request: ``erased`` (with when), ``due`` (exact, to erase now), ``waiting`` (not exact yet), with the deadline and ``overdue``."""
    now = now or datetime.now(UTC)
    log, erasure = DeletionLog.read(ledger), ErasureLog.read(ledger)
    exact = set(exact_requests(log))
    rows = []
    for rid, entry in log.requests.items():
        received = str(entry.data.get("received") or entry.time)
        due_at = deadline(received, max_days)
        erased_at = erasure.erased_at(rid)
        state = "erased" if erased_at else ("due" if rid in exact else "waiting")
        late = erased_at is None and now > due_at
        rows.append({"request_id": rid, "state": state, "erased_at": erased_at, "deadline": due_at.strftime(TIME_FORMAT), "overdue": late})
    return rows
