"""``ume status``: the champion, every stream step with its decision, and the deleted-sample count."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipeline.core.config import BASE_STEP
from pipeline.records.continual import ContinualSummary, summarize
from pipeline.records.continual import render as render_continual
from pipeline.records.debt import request_debts
from pipeline.records.deletion import DeletionLog, deletion_debt, uncovered_requests
from pipeline.records.erasure import erasure_state
from pipeline.records.ui_requests import alias_move, drop_tags, ui_history
from pipeline.records.workspace import Workspace


def collect_status(ws: Workspace, now: datetime | None = None) -> dict[str, Any]:
    """Status as a JSON-ready mapping (the same data ``--json`` prints); deadlines are judged at ``now``."""
    now = now or datetime.now(UTC)
    alias = ws.registry.champion()
    move = alias_move(ws, alias)  # a person's move in the MLflow UI is a request, not yet the champion
    champion_version = move.expected if move is not None else alias
    champion: dict[str, Any] | None = None
    log = DeletionLog.read(ws.ledger)
    debt: dict[str, int] = {}
    if champion_version is not None:
        manifest = ws.manifest_of(champion_version)
        debt = deletion_debt(manifest, ws.components, log)
        champion = {
            "version": champion_version,
            "composition": manifest.describe(),
            "base": manifest.base,
            "overlays": [{"step": s, "component": c} for c, s in zip(manifest.overlays, manifest.overlay_steps, strict=True)],
            "manifest_hash": manifest.hash,
            "carries_deleted": uncovered_requests(manifest, ws.components, log),
        }
    steps = []
    done: list[tuple[str, str, dict[str, Any]]] = []
    for key in [BASE_STEP, *ws.params.stream]:
        record = ws.step_record(key)
        kind = "base" if key == BASE_STEP else ws.params.stream[key].kind
        if record is not None:
            done.append((key, kind, record))
        if record is None:
            steps.append({"id": key, "kind": kind, "decision": "pending"})
            continue
        steps.append(
            {
                "id": key,
                "kind": kind,
                "decision": record["decision"],
                "version": record["version"],
                "champion_after": record["champion_after"],
                "reason": record["reason"],
                "failing": record["failing"],
                "metrics": record["metrics"],
                "seconds": record.get("seconds"),
            }
        )
    debts = {d.request_id: d for d in request_debts(log, debt, ws.params.deletion, now)}
    requests = {rid: _request_status(e.data, log.resolved.get(rid)) | _deadline(debts[rid]) for rid, e in log.requests.items()}
    erasure = {row["request_id"]: row for row in erasure_state(ws.ledger, ws.params.deletion.max_erasure_days, now)}
    for rid, request in requests.items():
        request["erasure"] = {k: erasure[rid][k] for k in ("state", "erased_at", "deadline", "overdue")}
    continual = summarize(done)
    return {
        "as_of": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "champion": champion,
        "steps": steps,
        "continual": continual.to_json() if continual else None,
        "deleted_samples": len(log.hashed_ids()),
        "requests": requests,
        "pending_requests": log.pending,
        "overdue_requests": [rid for rid, r in requests.items() if r["state"] == "overdue"],
        "overdue_erasures": [rid for rid, r in requests.items() if r["erasure"]["overdue"]],
        "max_erasure_days": ws.params.deletion.max_erasure_days,
        "deletion_debt": {
            "samples": sum(debt.values()),
            "by_request": debt,
            "max_samples": ws.params.deletion.max_debt_samples,
            "max_days": ws.params.deletion.max_debt_days,
            "over_sample_limit": sum(debt.values()) > ws.params.deletion.max_debt_samples,
        },
        "ui_requests": _ui_requests(ws, move),
        "ledger_entries": len(ws.ledger.verify()),
        "tracking_uri": ws.params.registry.tracking_uri,
        "model_name": ws.params.registry.model_name,
    }


def _ui_requests(ws: Workspace, move: Any) -> dict[str, Any]:
    """Changes made in the MLflow UI: not yet synced (alias move, ``ume.drop`` tags) and the recorded ones."""
    unsynced = []
    if move is not None and move.recorded is None:
        unsynced.append(f"{move.describe()}: run `ume sync` to apply it as a gated rollback (or have it refused)")
    for tag in drop_tags(ws):
        if tag.recorded is None:
            unsynced.append(f"ume.drop={tag.drop} set on v{tag.version}: run `ume sync` to apply it as `ume rollback --drop {tag.drop}`")
    history = []
    for entry in ui_history(ws):
        data = entry.data
        what = f"alias moved to v{data['to']}" if entry.type == "alias_moved" else f"ume.drop={data['drop']} on v{data['version']}"
        history.append({"seen_at": data["seen_at"], "request": what, "outcome": data["outcome"], "step": data.get("step"), "reason": data.get("reason")})
    return {"unsynced": unsynced, "recorded": history}


def _request_status(request: dict[str, Any], resolved: Any) -> dict[str, Any]:
    """One request: scope, size, resolution and how many of its forget checks were conclusive."""
    out: dict[str, Any] = {"scope": request["scope"], "samples": request["count"], "resolved": resolved is not None}
    if resolved is not None:
        r = resolved.data
        out |= {"method": r["method"], "exact": r["exact"], "version": r["version"], "evidence": r.get("evidence"), "note": r.get("note")}
    return out


def _deadline(debt: Any) -> dict[str, Any]:
    """Age, deadline, state (pending / debt / overdue / exact) and when it became exact."""
    return {"age_days": debt.age_days, "deadline": debt.deadline, "state": debt.state, "exact_since": debt.exact_since}


def _evidence(request: dict[str, Any]) -> str:
    evidence = request.get("evidence")
    if not request["resolved"]:
        return "pending"
    if evidence is None:
        return "not recorded (resolved before ume recorded controls)"
    checks = evidence["passed"] + evidence["failed"] + evidence["inconclusive"]
    shown = f"; shown by {', '.join(evidence['shown_by'])}" if evidence.get("shown_by") else "; nothing shown"
    return f"{evidence['conclusive']}/{checks} checks conclusive{shown}"


def _erasure(erasure: dict[str, Any]) -> str:
    """``erased 2026-12-04``, ``due by 2027-01-03`` (exact, erasure pending), ``waits 2027-01-03`` (not exact yet), ``OVERDUE``."""
    if erasure["state"] == "erased":
        return f"erased {erasure['erased_at'][:10]}"
    if erasure["overdue"]:
        return f"OVERDUE {erasure['deadline'][:10]}"
    return f"{'due by' if erasure['state'] == 'due' else 'waits'} {erasure['deadline'][:10]}"


def _num(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


def render_status(status: dict[str, Any]) -> str:
    """The human table printed at the end of ``make demo``."""
    lines = []
    champ = status["champion"]
    if champ:
        lines.append(f"champion: {status['model_name']} v{champ['version']} = {champ['composition']}")
    else:
        lines.append("champion: none yet (run `dvc repro`)")
    debt = status["deletion_debt"]
    lines.append(
        f"deleted samples: {status['deleted_samples']}   pending requests: {', '.join(status['pending_requests']) or 'none'}   "
        f"deletion debt: {debt['samples']} samples (limit {debt['max_samples']})   ledger entries: {status['ledger_entries']}"
    )
    for line in status["ui_requests"]["unsynced"]:
        lines.append(f"NOT SYNCED (MLflow UI): {line}")
    if status["overdue_requests"]:
        lines.append(f"OVERDUE (past received + {debt['max_days']:g} days as of {status['as_of']}): {', '.join(status['overdue_requests'])}")
    if status["overdue_erasures"]:
        lines.append(
            f"ERASURE OVERDUE (not erased by received + {status['max_erasure_days']:g} days as of {status['as_of']}): {', '.join(status['overdue_erasures'])}"
        )
    lines.append("")
    width = max([18, *(len(s["id"]) for s in status["steps"])])
    header = f"{'step':<{width}} {'kind':<9} {'decision':<9} {'ver':>4} {'champ':>5} {'test_acc':>8} {'retained':>8} {'canary':>7} {'secs':>6}  failing"
    lines.append(header)
    lines.append("-" * len(header))
    for s in status["steps"]:
        m = s.get("metrics", {})
        lines.append(
            f"{s['id']:<{width}} {s['kind']:<9} {s['decision']:<9} {s.get('version', '-')!s:>4} {s.get('champion_after', '-')!s:>5} "
            f"{_num(m, 'test_accuracy'):>8} {_num(m, 'retained_accuracy'):>8} {_num(m, 'canary_agreement'):>7} "
            f"{s.get('seconds', '-')!s:>6}  {', '.join(s.get('failing', []))}"
        )
    continual = status.get("continual")
    if continual:
        lines += ["", "held-out accuracy per slice (the accuracy matrix R; pipeline/records/continual.py):"]
        summary = ContinualSummary(
            slices=continual["slices"],
            rows=[(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in continual["rows"]],
            learned=list(continual["learned"].items()),
            acc=continual["acc"],
            bwt=continual["bwt"],
            fwt=continual["fwt"],
        )
        lines += ["  " + line for line in render_continual(summary)]
    if status["requests"]:
        lines += ["", f"{'request':<18} {'scope':<8} {'samples':>7} {'method':<8} {'state':<8} {'age':>6} {'deadline':<11} {'erasure':<18}  evidence"]
        for rid, r in status["requests"].items():
            deadline = "-" if r["state"] == "exact" else r["deadline"][:10]
            lines.append(
                f"{rid:<18} {r['scope']:<8} {r['samples']:>7} {r.get('method', '-'):<8} {r['state']:<8} {r['age_days']:>5.1f}d {deadline:<11} "
                f"{_erasure(r['erasure']):<18}  {_evidence(r)}"
            )
    recorded = status["ui_requests"]["recorded"]
    if recorded:
        lines += ["", "requests made in the MLflow UI:"]
        for r in recorded[-10:]:
            outcome = f"rollback step {r['step']}" if r["outcome"] == "rollback" else f"refused: {r['reason']}"
            lines.append(f"  {r['seen_at']}  {r['request']} -> {outcome}")
    return "\n".join(lines)
