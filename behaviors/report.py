"""Behaviour reports: JSON for machines, Markdown for reviewers (logged to MLflow with each step)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from behaviors.suite import BehaviorResult


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render_markdown(step: dict[str, Any], decision: dict[str, Any], results: Sequence[BehaviorResult]) -> str:
    """A table of every behaviour: outcome, blocking, value, threshold, direction, message."""
    lines = [
        f"# Behaviour report: step `{step.get('id')}` ({step.get('kind')})",
        "",
        f"**Decision: {decision['label']}**: {decision['reason']}",
        "",
        f"Candidate: {step.get('candidate', '')}  ",
        f"Champion: {step.get('champion', 'none')}",
        "",
        "| behaviour | outcome | blocking | value | threshold | better |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        better = "" if r.higher_is_better is None else ("higher" if r.higher_is_better else "lower")
        lines.append(
            f"| `{r.short_name}` | {r.outcome} | {'yes' if r.blocking else 'no'} | {_fmt(r.value)} | {_fmt(r.threshold)} | {better} |"
        )
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"### `{r.name}`", "", "```", r.message.strip()[-3000:], "```", ""]
    return "\n".join(lines) + "\n"


def write_report(directory: Path, step: dict[str, Any], decision: dict[str, Any], results: Sequence[BehaviorResult]) -> None:
    """``results.json`` and ``report.md`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"step": step, "decision": decision, "results": [r.to_json() for r in results]}
    (directory / "results.json").write_text(json.dumps(payload, indent=1))
    (directory / "report.md").write_text(render_markdown(step, decision, results))
