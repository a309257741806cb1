"""The README's measured headline table, written from ``bench/results/*.json`` (never typed by hand).

``python -m bench.headline`` writes ``bench/results/headline.md``; ``python -m bench.tables`` pastes it
into the README between its markers, and ``--check`` (run by the test suite) fails when they differ.

Every row shows the figure a user waits for (a whole step, gate included; latency at batch 1 *and*
batch 64; the forget checks' power and false alarms for every kind of request) beside any partial
one (an operator alone), and says where it comes from: the results file, its commit and date, and,
when that file was measured on other defaults than the ones that ship (:mod:`bench.provenance`),
that it is stale and which command reruns it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import provenance

RESULTS = provenance.RESULTS
OUT = RESULTS / "headline.md"

Row = tuple[str, str]  # (figure, measured)


def _one(figure: str, measured: str) -> list[Row]:
    """A section with a single row."""
    return [(figure, measured)]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _demo(d: dict[str, Any]) -> list[Row]:
    steps = d["steps"]
    prov = d["provenance"]
    by_kind: dict[str, list[float]] = {}
    for s in steps:
        by_kind.setdefault(s["kind"], []).append(s["seconds"] or 0.0)
    learn = statistics.median(by_kind.get("learn", [0.0]))
    slowest = max((s for s in steps if s["kind"] != "base"), key=lambda s: s["seconds"] or 0.0)
    forgets = ", ".join(f"`{s['step']}` {s['seconds']:.0f} s ({s['seconds'] / learn:.1f}×)" for s in steps if s["kind"] == "forget")
    wall = (
        f"{prov['wall_seconds']:.0f} s end to end in a fresh clone (install excluded; goal ≤ 180 s)" if prov.get("wall_seconds") else "wall time not recorded"
    )
    return [
        (
            "`make demo`",
            f"{wall}; its {len(steps)} step stages sum to {prov['stage_seconds']:.0f} s; the slowest, `{slowest['step']}`, {slowest['seconds']:.0f} s",
        ),
        ("demo deletion steps against a learn step (whole step, gate included)", f"learn step median {learn:.1f} s; {forgets} (goal ≤ 2×)"),
    ]


def _speed(d: dict[str, Any]) -> list[Row]:
    ref, champ = d["reference"], d["champion"]
    goals = [g for g in d["goals"] if "all-at-once" in g["goal"]]
    measured = "; ".join(f"{g['goal'].replace('the all-at-once training', 'it')}: {g['measured']} ({g['met']})" for g in goals)
    return _one(
        "steps against one all-at-once retrain on all promoted data (`ume bench speed`, same run, end to end)",
        f"the retrain {d['reference_end_to_end']:.1f} s, test accuracy {_pct(ref['test_accuracy'])} (the champion {_pct(champ['test_accuracy'])}); {measured}",
    )


def _forget_exact(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in d["rows"]:
        by_method.setdefault(r["method"], []).append(r)
    if "exact" in by_method and "retrain" in by_method:
        ex, re = by_method["exact"], by_method["retrain"]

        def mean(rows: list[dict[str, Any]], key: str) -> float:
            return statistics.mean(r[key] for r in rows)

        promoted = (
            f"gate: {sum(r['decision'] == 'promoted' for r in ex)} / {len(ex)} promoted against {sum(r['decision'] == 'promoted' for r in re)} / {len(re)}"
        )
        rows.append(
            (
                "`exact` deletion in the latest slice against a full `retrain` (means over seeds)",
                f"whole step {mean(ex, 'step_seconds') / mean(re, 'step_seconds'):.2f}× ({mean(ex, 'step_seconds'):.1f} s against "
                f"{mean(re, 'step_seconds'):.1f} s); the operator alone {mean(ex, 'operator_seconds') / mean(re, 'operator_seconds'):.2f}×; {promoted}",
            )
        )
    for layout in sorted({o["layout"] for o in d.get("owners", [])}):
        owners = [o for o in d["owners"] if o["layout"] == layout]
        ratios = sorted(o["seconds"] / o["retrain_seconds"] for o in owners)
        exact = sum(bool(o["exact"]) for o in owners) / len(owners)
        rows.append(
            (
                f"`exact` deletion of any owner, `{layout}` layout ({len(owners)} deletions)",
                f"{_pct(exact)} exact; operator median {statistics.median(ratios):.2f}×, worst {ratios[-1]:.2f}× a full retrain's",
            )
        )
    return rows


def _forget(d: dict[str, Any]) -> list[Row]:
    methods = [r for r in d["summary"] if r["method"] not in ("original", "retrain")]
    if not methods:
        return []
    gaps: dict[str, list[float]] = {}
    for r in methods:
        gaps.setdefault(r["method"], []).append(r["gap_to_retrain_points"])
    best = min(gaps, key=lambda m: max(gaps[m]))
    return [("best retrain-free deletion method, gap to a retrain", f"`{best}`: worst scenario {max(gaps[best]):.2f} points (goal ≤ 1.0)")]


def _forget_evidence(d: dict[str, Any]) -> list[Row]:
    rows = [r for r in d["summary"] if r["check"] == "per_sample"]
    if not rows:
        return []
    cells = "; ".join(f"{r['request_kind']} {_pct(r['power'])} / {_pct(r['false_positive_rate'])}" for r in rows)
    return [("per-sample forget check: power / false alarms by request kind", cells)]


def _compress(d: dict[str, Any]) -> list[Row]:
    fp32 = next(r for r in d["rows"] if r["method"] == "fp32")
    int8 = next((r for r in d["rows"] if r["setting"] == "int8"), None)
    rows: list[Row] = []
    if int8:
        rows.append(
            (
                "int8 quantization of the champion against fp32",
                f"size {int8['size_bytes'] / fp32['size_bytes']:.2f}×; latency {int8['latency_ms_b1'] / fp32['latency_ms_b1']:.2f}× at batch 1 "
                f"(goal ≤ 1.0×), {int8['latency_ms_b64'] / fp32['latency_ms_b64']:.2f}× at batch 64 (goal ≤ 0.6×); "
                f"test accuracy {100 * (int8['test_acc'] - fp32['test_acc']):+.2f} points",
            )
        )
    pruned = [r for r in d["rows"] if r["method"] == "prune" and r["test_acc"] >= fp32["test_acc"] - 0.01]
    if pruned:
        best = min(pruned, key=lambda r: min(r["size_bytes"] / fp32["size_bytes"], r["latency_ms_b1"] / fp32["latency_ms_b1"]))
        rows.append(
            (
                "pruning within 1 point of fp32 accuracy, its best row",
                f"{best['setting']}: size {best['size_bytes'] / fp32['size_bytes']:.2f}×, latency {best['latency_ms_b1'] / fp32['latency_ms_b1']:.2f}× "
                f"at batch 1 and {best['latency_ms_b64'] / fp32['latency_ms_b64']:.2f}× at batch 64 (goal ≤ 0.7× size or latency)",
            )
        )
    return rows


def _overlays(d: dict[str, Any]) -> list[Row]:
    by = {r["variant"]: r for r in d["rows"]}
    if "folded" not in by or "unmerged-5" not in by:
        return []
    f, u = by["folded"], by["unmerged-5"]
    return _one(
        "five LoRA overlays folded / left unmerged, against the base",
        f"batch 1: {f['ratio_b1']:.2f}× / {u['ratio_b1']:.2f}×; batch 64: {f['ratio_b64']:.2f}× / {u['ratio_b64']:.2f}×",
    )


def _scale(d: dict[str, Any]) -> list[Row]:
    return _one(
        "cost against data and history (`ume bench scale`)",
        f"peak memory {d['memory_ratio_16x_over_1x']:.2f}× and step time {d['step_time_ratio_16x_over_1x']:.2f}× for 16× the images; "
        f"step 20 {d['step20_over_step1']:.2f}× step 1; gate {d['gate_over_forward_floor']:.2f}× one forward pass at 16× (goal ≤ 2×)",
    )


def _startup(d: dict[str, Any]) -> list[Row]:
    cold, warm = d["summary"]["cold"], d["summary"]["warm"]
    pairs = {
        "a training stage": (warm["stages"]["s01"]["startup"], cold["stages"]["s01"]["startup"]),
        "`ume status`": (warm["light"]["status"], cold["light"]["status"]),
        "`dvc repro` of a small project end to end": (warm["dvc_repro"], cold["dvc_repro"]),
    }
    return _one("start-up, warm process against cold", "; ".join(f"{what} {w:.2f} s against {c:.2f} s" for what, (w, c) in pairs.items()))


def _reliability(d: dict[str, Any]) -> list[Row]:
    return _one(
        "crash points survived / bad inputs refused cleanly / tamper cases caught",
        f"{d['crash_points_survived']} / {d['crash_points_tried']}; {d['bad_inputs_clean']} / {d['bad_inputs_tried']}; "
        f"{d.get('tamper_cases_caught', 0)} / {d.get('tamper_cases_tried', 0)}; state machine: {d['state_machine_examples']} random streams, "
        f"{d['invariant_violations']} invariant violations",
    )


def _erasure(d: dict[str, Any]) -> list[Row]:
    parts = []
    for r in d["erasures"]:
        ratio = f" ({r['erasure_seconds'] / r['step_seconds']:.2f}× its deletion step, {r['step_seconds']:.0f} s)" if r["step_seconds"] else ""
        parts.append(f"{', '.join(r['requests'])}: {r['erasure_seconds']:.1f} s{ratio}")
    search = d["search"]
    return _one(
        "erasure after an exact deletion (`ume bench erasure`, the demo)",
        f"{'; '.join(parts)}; `dvc gc -w -f` {d['collect']['gc_seconds']:.1f} s; decrypting on read {d['reads']['per_row_us']:.1f} µs per row; "
        f"content search of {search['files']} files: {len(search['hits'])} hold an erased row or weights; not erased (not exact): "
        f"{', '.join(d['not_erased']) or 'none'}",
    )


def _ci(d: dict[str, Any]) -> list[Row]:
    broken = ", ".join(f"{d[k]} {k}" for k in ("failed", "errors") if d.get(k))
    red = f"**RED** (exit {d['exit_code']}{': ' + broken if broken else ''}), " if d.get("exit_code") or broken else ""
    return _one(
        "`bash .ci/run` on a clean clone (install included)",
        f"{red}{d['wall_seconds'] / 60:.1f} min, {d['passed']} passed, {d['skipped']} skipped, the suite {d['suite_seconds']:.0f} s (goal ≤ 12 min)",
    )


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
    ("demo.json", _demo),
    ("speed.json", _speed),
    ("forget_exact.json", _forget_exact),
    ("forget.json", _forget),
    ("forget_evidence.json", _forget_evidence),
    ("compress.json", _compress),
    ("overlays.json", _overlays),
    ("scale.json", _scale),
    ("startup.json", _startup),
    ("erasure.json", _erasure),
    ("reliability.json", _reliability),
    ("ci.json", _ci),
]


def _source(name: str, data: dict[str, Any], stale: dict[str, str]) -> str:
    recs = provenance.records_of(data)
    when = ", ".join(sorted({f"{r.get('commit', '?')} {str(r.get('date', '?'))[:10]}" for r in recs})) or "no provenance"
    cell = f"`{name}` ({when})"
    if name in stale:
        cell += f" **stale**: {stale[name]}"
    return cell


def markdown(results: Path = RESULTS) -> str:
    """The headline table from every results file present."""
    stale: dict[str, str] = {}
    for problem in provenance.problems(results):
        stale[problem.file] = f"{stale[problem.file]}; {problem.why}" if problem.file in stale else problem.why
    lines = ["| figure | measured | from |", "|---|---|---|"]
    for name, rows_of in SECTIONS:
        path = results / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for figure, measured in rows_of(data):
            lines.append(f"| {figure} | {measured} | {_source(name, data, stale)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """``python -m bench.headline``: write ``bench/results/headline.md``."""
    OUT.write_text(markdown(), encoding="utf-8")
    print(OUT.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
