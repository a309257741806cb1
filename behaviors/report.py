"""Behaviour reports: JSON for machines, Markdown and HTML for reviewers, logged to MLflow with each step.

A report shows every behaviour (outcome, blocking, value, threshold, direction), the decision and
why, the candidate's confusion matrix on the test split (PNG), and the shrunk counterexamples of
failing property-based specs (PNGs saved by the specs themselves).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from behaviors.suite import BehaviorResult
from pipeline.core.markdown import markdown_to_html


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _bound(check: dict[str, Any]) -> str:
    """``<= 0.1500`` / ``>= 0.9000``."""
    return f"{'>=' if check['higher_is_better'] else '<='} {check['threshold']:.4f}"


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
    evidence = [(r.short_name, c) for r in results for c in r.checks if c.get("controlled")]
    if evidence:
        lines += [
            "",
            "## Forget evidence (each check on the candidate and on its control, the un-forgotten model)",
            "",
            "A check is evidence of forgetting only when its control fails it (`passed`); when the control passes too it is",
            "`inconclusive` and shows nothing.",
            "",
            "| behaviour | check | candidate | control | threshold | verdict |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{name}` | {c['name']} | {_fmt(c['value'])} | {_fmt(c['control'])} | {_bound(c)} | {c['verdict']} |" for name, c in evidence
        ]
    recorded = [(r.short_name, c) for r in results for c in r.checks if c["threshold"] is None]
    if recorded:
        lines += ["", "## Recorded values (not checks)", "", "| behaviour | value | candidate | control |", "|---|---|---|---|"]
        lines += [f"| `{name}` | {c['name']} | {_fmt(c['value'])} | {_fmt(c.get('control'))} |" for name, c in recorded]
    inconclusive = [r for r in results if r.outcome == "inconclusive"]
    if inconclusive:
        lines += ["", "## Inconclusive", ""]
        lines += [f"- `{r.short_name}`: {r.message}" for r in inconclusive]
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"### `{r.name}`", "", "```", r.message.strip()[-3000:], "```", ""]
    return "\n".join(lines) + "\n"


def confusion_matrix_png(predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], path: Path) -> None:
    """The confusion matrix (torchmetrics) as a PNG heat map with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchmetrics.classification import MulticlassConfusionMatrix

    matrix = MulticlassConfusionMatrix(num_classes=len(classes))(predictions, labels).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title("candidate on the test split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    directory: Path,
    step: dict[str, Any],
    decision: dict[str, Any],
    results: Sequence[BehaviorResult],
    *,
    confusion: tuple[torch.Tensor, torch.Tensor, Sequence[str]] | None = None,
    comparison: Sequence[tuple[str, float, float | None]] = (),
) -> None:
    """``results.json``, ``report.md``, ``report.html`` and images in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"step": step, "decision": decision, "results": [r.to_json() for r in results]}
    (directory / "results.json").write_text(json.dumps(payload, indent=1))
    markdown = render_markdown(step, decision, results)
    if comparison:
        markdown += "\n## Candidate against the champion\n\n| metric | candidate | champion | delta |\n|---|---|---|---|\n"
        for name, cand, champ in comparison:
            delta = "" if champ is None else f"{cand - champ:+.4f}"
            markdown += f"| {name} | {cand:.4f} | {_fmt(champ)} | {delta} |\n"
    if confusion is not None:
        confusion_matrix_png(*confusion, directory / "confusion_matrix.png")
        markdown += "\n## Confusion matrix\n\n![confusion matrix](confusion_matrix.png)\n"
    examples = sorted(p.name for p in directory.glob("counterexample-*.png"))
    if examples:
        markdown += "\n## Counterexamples (shrunk by hypothesis)\n\n" + "".join(f"![{name}]({name})\n\n" for name in examples)
    (directory / "report.md").write_text(markdown)
    title = f"ume behaviour report: {step.get('id')}"
    (directory / "report.html").write_text(markdown_to_html(markdown, title))
