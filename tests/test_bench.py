"""The benchmarks' summary arithmetic, and a few-round smoke run of the overlay latency bench (full runs: `ume bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.forget import markdown, summarize


def _row(scenario: str, method: str, seed: int, acc: float, seconds: float) -> dict:
    return {
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "forget_acc": acc,
        "retain_acc": 1.0,
        "test_acc": 0.98,
        "mia_loss_acc": 0.5,
        "mia_svc_acc": 0.5,
        "seconds": seconds,
    }


def test_gap_and_time_ratio_are_against_retrain_of_the_same_seed() -> None:
    rows = [
        _row("class", "retrain", 0, 0.0, 10.0),
        _row("class", "retrain", 1, 0.0, 20.0),
        _row("class", "ssd", 0, 0.2, 1.0),
        _row("class", "ssd", 1, 0.4, 2.0),
    ]
    summary = {e["method"]: e for e in summarize(rows)}
    assert summary["retrain"]["gap_to_retrain_points"] == 0.0
    # forget acc gaps 20 and 40 points, other three metrics equal: mean over 4 metrics, then over seeds
    assert summary["ssd"]["gap_to_retrain_points"] == pytest.approx((20 / 4 + 40 / 4) / 2)
    assert summary["ssd"]["time_vs_retrain"] == pytest.approx(1.5 / 15.0)
    meta = {"machine": "m", "date": "d", "seeds": [0, 1], "wall_seconds": 1.0, "complete": True}
    text = markdown(list(summary.values()), [], meta)
    assert "| class | ssd |" in text and "7.50" in text


def test_overlay_latency_bench_writes_rows_for_every_variant(tmp_path: Path) -> None:
    from bench.overlays import run_overlay_bench

    # folded == unmerged-5 within 1e-4 and unmerged-N != base are asserted inside the bench
    result = run_overlay_bench(tmp_path, rounds=3, warmup=1, log=lambda message: None)
    written = json.loads((tmp_path / "overlays.json").read_text())
    assert written["rows"] == result["rows"]
    rows = {r["variant"]: r for r in written["rows"]}
    assert list(rows) == ["base", "unmerged-1", "unmerged-3", "unmerged-5", "folded"]
    assert [rows[v]["overlays"] for v in rows] == [0, 1, 3, 5, 5]
    for row in rows.values():
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b64"] > 0
        assert row["ratio_b1"] > 0 and row["ratio_b64"] > 0
    assert rows["base"]["ratio_b1"] == rows["base"]["ratio_b64"] == 1.0
    assert rows["folded"]["macs_ratio"] == 1.0 and rows["unmerged-5"]["macs_ratio"] > rows["unmerged-1"]["macs_ratio"] > 1.0
    assert isinstance(written["goals"]["folded_le_1.05x_base"], bool)
    assert isinstance(written["goals"]["unmerged5_le_1.5x_base"], bool)
    assert {"machine", "date", "arch", "rounds", "threads"} <= set(written)
    assert "| folded | 5 |" in (tmp_path / "overlays.md").read_text()


def test_forget_evidence_power_and_false_positive_rate_per_check_and_kind() -> None:
    from bench.forget_evidence import goals
    from bench.forget_evidence import summarize as summarize_evidence

    def row(kind: str, check: str, unforgotten: bool, retrain: bool) -> dict:
        return {
            "request_kind": kind, "check": check, "seed": 0, "fails_unforgotten": unforgotten, "fails_retrain": retrain,
            "value_unforgotten": 0.5, "value_retrain": 0.0, "check_seconds": 1.0, "step_seconds": 4.0, "samples": 8,
        }

    rows = [row("owner_vulnerable", "per_sample", True, False)] * 9 + [row("owner_vulnerable", "per_sample", False, True)]
    rows += [row("worst_case", "per_sample", True, False)] * 3 + [row("owner_typical", "mia_loss", False, False)] * 2
    summary = {(e["check"], e["request_kind"]): e for e in summarize_evidence(rows)}
    vulnerable = summary[("per_sample", "owner_vulnerable")]
    assert (vulnerable["requests"], vulnerable["power"], vulnerable["false_positive_rate"]) == (10, 0.9, 0.1)
    assert summary[("mia_loss", "owner_typical")]["power"] == 0.0
    met = {g["goal"].split(" ")[3] if "power" in g["goal"] else g["goal"].split(" ")[1]: g["met"] for g in goals(rows)}
    assert met["owner_vulnerable"] and met["worst_case"] and not met["false-positive"] and met["check"]
