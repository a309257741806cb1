"""Continual-learning metrics of a stream: the accuracy matrix ``R`` and its ACC, BWT and FWT.

Every step record carries ``continual.heldout_accuracy``: the candidate's accuracy on each slice's
held-out split (test and canary samples of the slice's look). Over the promoted records in stream
order, row 0 is the clean base, each promoted ``learn`` step of a slice with a held-out split adds a
row (the model right after learning that slice), and the last row is the champion now. From them, as
defined by Lopez-Paz & Ranzato 2017 ("Gradient Episodic Memory for Continual Learning") and used by
Avalanche:

- ACC: the champion's mean held-out accuracy over every slice (learned or not);
- BWT: the mean, over each learned slice but the last one learned (and the base's own slice), of the
  champion's accuracy on it minus the accuracy right after it was learned (negative: forgetting);
- FWT: the mean, over each learned update slice, of the accuracy on it just before it was learned
  minus the clean base's (here 0 unless an earlier slice helped a later one).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

BASE_ROW = "base"


@dataclass
class ContinualSummary:
    """The accuracy matrix of the promoted history, and its summary figures (None when not defined)."""

    slices: list[str]
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # (step, accuracy per slice)
    learned: list[tuple[str, str]] = field(default_factory=list)  # (slice, step that learned it), in order
    acc: float | None = None
    bwt: float | None = None
    fwt: float | None = None

    def to_json(self) -> dict[str, Any]:
        """For ``ume status --json``."""
        return {"slices": self.slices, "rows": [{"step": s, **r} for s, r in self.rows], "learned": dict(self.learned),
                "acc": self.acc, "bwt": self.bwt, "fwt": self.fwt}


def heldout_of(record: dict[str, Any] | None) -> dict[str, float]:
    """The per-slice held-out accuracies a step record carries (empty when the data has no held-out splits)."""
    return dict(((record or {}).get("continual") or {}).get("heldout_accuracy") or {})


def summarize(records: list[tuple[str, str, dict[str, Any]]]) -> ContinualSummary | None:
    """``records``: ``(step, kind, record)`` in stream order, base first. None when no record has held-out accuracies."""
    promoted = [(step, kind, rec) for step, kind, rec in records if rec.get("decision") == "promoted" and heldout_of(rec)]
    if not promoted:
        return None
    slices = list(heldout_of(promoted[0][2]))
    summary = ContinualSummary(slices=slices)
    first_step, _, first = promoted[0]
    summary.rows.append((first_step, heldout_of(first)))
    if BASE_ROW in slices:
        summary.learned.append((BASE_ROW, first_step))
    for step, kind, rec in promoted[1:]:
        row = heldout_of(rec)
        name = (rec.get("continual") or {}).get("slice")
        if kind == "learn" and name in slices and name not in dict(summary.learned):
            summary.rows.append((step, row))
            summary.learned.append((name, step))
    last_step, _, last = promoted[-1]
    now = heldout_of(last)
    if summary.rows[-1][0] != last_step:
        summary.rows.append((last_step, now))
    summary.acc = statistics.mean(now.get(s, 0.0) for s in slices)
    after = {step: row for step, row in summary.rows}
    before_each = [name for name, _ in summary.learned[:-1]]
    if before_each:
        summary.bwt = statistics.mean(now[name] - after[step][name] for name, step in summary.learned[:-1])
    updates = [(name, step) for name, step in summary.learned if name != BASE_ROW]
    if updates:
        base_row = summary.rows[0][1]
        steps = [s for s, _ in summary.rows]
        gains = []
        for name, step in updates:
            previous = summary.rows[steps.index(step) - 1][1]
            gains.append(previous[name] - base_row[name])
        summary.fwt = statistics.mean(gains)
    return summary


def render(summary: ContinualSummary) -> list[str]:
    """The matrix as text lines for ``ume status``."""
    width = max(14, *(len(s) for s, _ in summary.rows))
    lines = [f"{'after step':<{width}} " + " ".join(f"{s:>7}" for s in summary.slices) + "   mean"]
    for step, row in summary.rows:
        values = [row.get(s) for s in summary.slices]
        cells = " ".join(f"{100 * v:>6.1f}%" if v is not None else f"{'-':>7}" for v in values)
        lines.append(f"{step:<{width}} {cells}  {100 * statistics.mean(v for v in values if v is not None):5.1f}%")

    def points(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.1f} points"

    learned = ", ".join(f"{name} ({step})" for name, step in summary.learned)
    lines.append(f"ACC {100 * (summary.acc or 0):.1f}%   BWT {points(summary.bwt)}   FWT {points(summary.fwt)}   learned: {learned}")
    return lines
