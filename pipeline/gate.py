"""The gate: promote a candidate only if every blocking behaviour passed; the only mover of ``champion``.

The ledger entry is written first (write-ahead), then the version is tagged and the alias moved.
If the process dies between the two, :func:`complete_pending_promotion` (run at the start of the
next step) finishes the move the ledger already decided, so the registry never drifts from the
ledger for long and a promotion is never half-done from the auditor's point of view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.ledger import Ledger
from pipeline.registry import Registry

PROMOTED = "promoted"
BLOCKED = "blocked"


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
) -> None:
    """Record the decision in the ledger, tag the version and, on promotion, move the alias.

    ``report`` is where the behaviour report lives (an MLflow artifact URI); the decision links to it.
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
        },
        step=step,
    )
    tags = {"ume.ledger_entry": entry.hash}
    if report:
        tags["ume.report"] = report
    if mode == "gate":
        tags["ume.decision"] = decision.label
    registry.set_version_tags(version, tags)
    if decision.promote:
        registry.set_champion(version)


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
