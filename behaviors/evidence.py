"""Forget evidence per deletion request, read from behaviour results: what the gate, MLflow, the
ledger, ``ume status`` and certificates show.

Only checks run against a control count (see :func:`behaviors.plugin.verdict`). A check is
*conclusive* when its control fails it; a request's forgetting is shown only by checks that passed
while their control failed. Checks whose control passes too are listed as inconclusive and never
as evidence that forgetting happened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from behaviors.suite import BehaviorResult

_PER_REQUEST = re.compile(r"^(?P<check>.+)\[(?P<request>[^\]]+)\]$")


def split_name(name: str) -> tuple[str, str | None]:
    """``forget_accuracy_gap[del-1]`` -> (``forget_accuracy_gap``, ``del-1``)."""
    match = _PER_REQUEST.match(name)
    return (match["check"], match["request"]) if match else (name, None)


def forget_evidence(results: Iterable[BehaviorResult]) -> dict[str, dict[str, Any]]:
    """Request id -> its controlled checks (candidate, control, threshold, verdict) and verdict counts."""
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        for check in result.checks:
            if not check.get("controlled"):
                continue
            name, request = split_name(check["name"])
            if request is None:
                continue
            entry = out.setdefault(request, {"checks": [], "passed": 0, "failed": 0, "inconclusive": 0})
            entry["checks"].append(
                {
                    "check": name,
                    "behaviour": result.short_name,
                    "value": check["value"],
                    "control": check["control"],
                    "threshold": check["threshold"],
                    "higher_is_better": check["higher_is_better"],
                    "verdict": check["verdict"],
                }
            )
            entry[check["verdict"]] += 1
    for entry in out.values():
        entry["conclusive"] = sum(_control_fails(c) for c in entry["checks"])
    return out


def _control_fails(check: dict[str, Any]) -> bool:
    """The check can tell: the un-forgotten control fails it."""
    control, threshold = check["control"], check["threshold"]
    if control is None or control != control:
        return False
    return control < threshold if check["higher_is_better"] else control > threshold


def evidence_line(entry: dict[str, Any]) -> str:
    """``1 of 5 checks conclusive (passed: forget_member_share_bound)`` for tables and tags."""
    passed = [c["check"] for c in entry["checks"] if c["verdict"] == "passed"]
    failed = [c["check"] for c in entry["checks"] if c["verdict"] == "failed"]
    parts = [f"{entry['conclusive']} of {len(entry['checks'])} checks conclusive"]
    if passed:
        parts.append(f"passed: {', '.join(passed)}")
    if failed:
        parts.append(f"failed: {', '.join(failed)}")
    return "; ".join(parts)
