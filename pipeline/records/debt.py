"""Deletion debt with a deadline: each request's age, deadline and state, and the exact steps that pay it.

A request is *in debt* while the champion serves its samples only approximately (a forget overlay
covers them, the lineage still holds them: :func:`pipeline.records.deletion.deletion_debt`). GDPR
art. 17 asks for erasure "without undue delay"; ``deletion.max_debt_days`` is the delay a team
commits to, and ``deletion.max_debt_samples`` caps how much approximate deletion the champion may
carry at once. When either limit is reached, :func:`schedule_due_deletions` appends an exact
``forget`` step (``pay-<request>``) to the stream, so the next ``dvc repro`` pays the debt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.core.config import DeletionConfig, Params
from pipeline.records.deletion import EXACT_METHODS, DeletionLog, deletion_debt
from pipeline.records.workspace import Workspace

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def parse_time(text: str) -> datetime:
    """A ledger or request timestamp (``2026-11-23T02:19:04Z``, or ISO 8601) as an aware UTC datetime."""
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RequestDebt:
    """Where one request stands against its deadline."""

    request_id: str
    received: str
    age_days: float
    deadline: str
    state: str  # pending (no promoted step yet), debt (served approximately), overdue (debt or pending past the deadline), exact
    debt_samples: int
    exact_since: str | None  # when the ledger recorded the resolution that made it exact

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def request_debts(log: DeletionLog, champion_debt: dict[str, int], config: DeletionConfig, now: datetime) -> list[RequestDebt]:
    """Every received request with its age, deadline and state at ``now``."""
    out = []
    for rid, entry in log.requests.items():
        received = parse_time(entry.data.get("received") or entry.time)
        deadline = received + timedelta(days=config.max_debt_days)
        resolved = log.resolved.get(rid)
        debt = champion_debt.get(rid, 0)
        if resolved is None or debt:
            state = "overdue" if now > deadline else ("debt" if debt else "pending")
        else:
            state = "exact"
        exact_since = None
        if state == "exact":
            exact_entries = [e for e in log.resolutions.get(rid, []) if e.data.get("exact")]
            exact_since = exact_entries[0].time if exact_entries else resolved.time  # type: ignore[union-attr]
        out.append(
            RequestDebt(
                rid, received.strftime(TIME_FORMAT), round((now - received).total_seconds() / 86400, 2), deadline.strftime(TIME_FORMAT),
                state, debt, exact_since,
            )
        )
    return out


def due_requests(debts: list[RequestDebt], config: DeletionConfig, now: datetime) -> list[str]:
    """Requests in debt whose exact step is due: past their deadline, or all of them when the sample cap is exceeded."""
    in_debt = [d for d in debts if d.debt_samples]
    if sum(d.debt_samples for d in in_debt) > config.max_debt_samples:
        return [d.request_id for d in in_debt]
    return [d.request_id for d in in_debt if now >= parse_time(d.deadline)]


def scheduled_exact_steps(params: Params, request_id: str) -> list[str]:
    """Stream steps that remove ``request_id`` exactly (an exact forget or a full retrain)."""
    return [
        key
        for key, step in params.stream.items()
        if (step.kind == "forget" and step.options.get("request") == request_id and (step.method or "exact") in EXACT_METHODS)
        or step.kind == "retrain"
    ]


def champion_debt(ws: Workspace) -> dict[str, int]:
    """The champion's deletion debt by request (empty without a champion)."""
    version = ws.registry.champion()
    if version is None:
        return {}
    return deletion_debt(ws.manifest_of(version), ws.components, DeletionLog.read(ws.ledger))


def debts_of(ws: Workspace, now: datetime | None = None) -> list[RequestDebt]:
    """Every request of the workspace against its deadline at ``now`` (default: the current time)."""
    return request_debts(DeletionLog.read(ws.ledger), champion_debt(ws), ws.params.deletion, now or datetime.now(UTC))


def schedule_due_deletions(ws: Workspace, now: datetime | None = None) -> list[str]:
    """Append a ``pay-<request>`` exact step for every due request that has none; returns the new step ids.

    A request whose exact step already exists (run or not) gets no second one: if that step was
    blocked, the request stays overdue and `ume status --check` says so.
    """
    from pipeline.core.streamfile import stream_text_with, write_stream_text

    now = now or datetime.now(UTC)
    params = ws.params
    due = due_requests(debts_of(ws, now), params.deletion, now)
    entries: dict[str, dict[str, Any]] = {}
    parent = list(params.stream)[-1] if params.stream else "base"
    for rid in due:
        if scheduled_exact_steps(params, rid):
            continue
        key = f"pay-{rid}"
        entries[key] = {"kind": "forget", "parent": parent, "request": rid, "method": "exact"}
        parent = key
    if entries:
        path = Path(params.file)
        write_stream_text(path, stream_text_with(path, entries))
    return list(entries)
