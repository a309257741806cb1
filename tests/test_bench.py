"""The benchmark's summary arithmetic (the benchmark itself runs with `ume bench`, not in tests)."""

from __future__ import annotations

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
