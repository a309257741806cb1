"""The gate: promote a candidate only if every blocking behaviour passed; the only mover of ``champion``.

The ledger entry is written first (write-ahead), then the version is tagged and the alias moved.
If the process dies between the two, :func:`reconcile` (run at the start of the
next stage) finishes the move the ledger already decided, so the registry never drifts from the
ledger for long and a promotion is never half-done from the auditor's point of view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core.faults import crash_point
from pipeline.records.ledger import Entry, Ledger
from pipeline.records.registry import Registry

PROMOTED = "promoted"
BLOCKED = "blocked"
ABANDONED = "abandoned"
ABANDONED_ENTRY = "abandoned"


class Result(Protocol):
    """What the gate needs of a behaviour result."""

    name: str
    outcome: str
    blocking: bool
    value: float | None
    threshold: float | None


@dataclass(frozen=True)
class Decision:
    """Promote or block, with the failing behaviours and their numbers."""

    promote: bool
    reason: str
    failing: list[dict[str, Any]] = field(default_factory=list)
    advisory_failures: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``promoted`` or ``blocked``."""
        return PROMOTED if self.promote else BLOCKED


def decide(results: Sequence[Result]) -> Decision:
    """Block when any blocking behaviour failed (errors count as failures); an empty suite blocks."""
    if not results:
        return Decision(False, "no behaviour ran: refusing to promote an untested candidate")
    failing = [
        {"name": r.name, "value": r.value, "threshold": r.threshold}
        for r in results
        if r.blocking and r.outcome == "failed"
    ]
    advisory = [r.name for r in results if not r.blocking and r.outcome == "failed"]
    if failing:
        names = ", ".join(f["name"].split("::")[-1] for f in failing)
        return Decision(False, f"blocking behaviours failed: {names}", failing, advisory)
    inconclusive = [r.name.split("::")[-1] for r in results if r.blocking and r.outcome == "inconclusive"]
    if inconclusive:
        # Not failed, so not blocking; but not shown as evidence either (their controls pass too).
        return Decision(True, f"no blocking behaviour failed; inconclusive (control passes too): {', '.join(inconclusive)}", [], advisory)
    return Decision(True, "every blocking behaviour passed", [], advisory)


def apply_decision(
    decision: Decision,
    *,
    ledger: Ledger,
    registry: Registry,
    step: str,
    version: int,
    manifest_hash: str,
    champion_before: int | None,
    mode: str = "gate",
    report: str | None = None,
    evidence: dict[str, Any] | None = None,
    anchor: Callable[[Entry], dict[str, str]] | None = None,
) -> None:
    """Record the decision in the ledger, tag the version and, on promotion, move the alias.

    ``report`` is where the behaviour report lives (an MLflow artifact URI); the decision links to it.
    ``evidence`` is the forget evidence per request (each check with its control and verdict).
    ``anchor`` gives the tags that anchor the decision's entry outside the ledger (its hash, sequence
    number and signature: :func:`pipeline.records.anchors.decision_tags`); by default the hash only.
    """
    alias = {"from": champion_before, "to": version} if decision.promote else None
    entry = ledger.append(
        "decision",
        {
            "version": version,
            "manifest_hash": manifest_hash,
            "decision": decision.label,
            "mode": mode,
            "reason": decision.reason,
            "failing": decision.failing,
            "alias": alias,
            "report": report,
            "evidence": evidence or {},
        },
        step=step,
    )
    crash_point("gate.decided")
    tags = anchor(entry) if anchor is not None else {"ume.ledger_entry": entry.hash}
    if report:
        tags["ume.report"] = report
    if mode == "gate":
        tags["ume.decision"] = decision.label
    registry.set_version_tags(version, tags)
    crash_point("gate.tagged")
    if decision.promote:
        registry.set_champion(version)
        crash_point("gate.promoted")


def ledger_champion(ledger: Ledger) -> int | None:
    """The champion according to the ledger: the target of the last alias move."""
    champion = None
    for entry in ledger.of_type("decision"):
        alias = entry.data.get("alias")
        if alias:
            champion = alias["to"]
    return champion


def complete_pending_promotion(ledger: Ledger, registry: Registry) -> int | None:
    """Finish an alias move the ledger decided but the registry missed (crash in between)."""
    decided = ledger_champion(ledger)
    if decided is not None and registry.champion() != decided:
        registry.set_champion(decided)
        return decided
    return None


def reconcile(ledger: Ledger, registry: Registry) -> list[str]:
    """Bring the registry back in line with the ledger after a crash; returns what was repaired.

    Run at the start of every stage, before anything else is written. The ledger is the source of
    truth (every write is ledger-first), so a process killed anywhere leaves one of these, each
    finished here in the same write-ahead order:

    - a version registered with no ``candidate`` entry (killed between the two), or a candidate with
      no decision (killed while gating): both are *abandoned*: a ledger entry first, then the tag
      ``ume.decision=abandoned``; the step that made them is redone from the start;
    - a decision whose version tags were not set: the tags are set from the decision entry;
    - an alias move in the ledger that the registry missed: the alias is moved;
    - a revocation in the ledger whose ``deletion_status=revoked`` tags were not set: they are set;
    - an MLflow run left ``RUNNING`` by a killed process: it is marked ``KILLED``.
    """
    from pipeline.records.deletion import REVOKED_ENTRY

    entries = ledger.verify()
    versions = {v.version: v for v in registry.versions()}
    candidates = {e.data["version"] for e in entries if e.type == "candidate"}
    abandoned = {v for e in entries if e.type == ABANDONED_ENTRY for v in e.data["versions"]}
    decided: dict[int, Entry] = {}
    for entry in entries:
        if entry.type == "decision" and entry.data.get("mode", "gate") == "gate":
            decided[entry.data["version"]] = entry
    repaired: list[str] = []
    orphans = sorted(v for v in versions if v not in candidates and v not in abandoned)
    decided_any = {e.data["version"] for e in entries if e.type == "decision"}
    undecided = sorted(v for v in candidates if v not in decided_any and v not in abandoned)
    if orphans or undecided:
        ledger.append(
            ABANDONED_ENTRY,
            {
                "versions": orphans + undecided,
                "reason": "left by a process that stopped before its decision; its step is redone",
                "registered_without_candidate": orphans,
                "candidates_without_decision": undecided,
            },
        )
        abandoned.update(orphans + undecided)
        repaired.append(f"abandoned version(s) {', '.join(map(str, orphans + undecided))}")
    for version in sorted(abandoned):
        if version in versions and versions[version].tags.get("ume.decision") != ABANDONED:
            registry.set_version_tags(version, {"ume.decision": ABANDONED})
    for version, entry in sorted(decided.items()):
        info = versions.get(version)
        if info is not None and info.tags.get("ume.decision") != entry.data["decision"]:
            tags = {"ume.decision": entry.data["decision"], "ume.ledger_entry": entry.hash}
            if entry.data.get("report"):
                tags["ume.report"] = entry.data["report"]
            registry.set_version_tags(version, tags)
            repaired.append(f"tagged version {version} {entry.data['decision']}")
    moved = complete_pending_promotion(ledger, registry)
    if moved is not None:
        repaired.append(f"moved the champion alias to version {moved}")
    for run_id in registry.running_runs():
        registry.end_run(run_id, status="KILLED")
        repaired.append(f"marked run {run_id} KILLED")
    for entry in entries:
        if entry.type != REVOKED_ENTRY:
            continue
        for version, requests in entry.data["by_request"].items():
            info = versions.get(int(version))
            if info is not None and info.tags.get("deletion_status") != "revoked":
                registry.set_version_tags(int(version), {"deletion_status": "revoked", "ume.revoked_by": ",".join(requests)})
                repaired.append(f"tagged version {version} revoked")
    return repaired

