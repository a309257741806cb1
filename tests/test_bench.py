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


def _scale_result(step_seconds: list[float], peak: list[float], history: list[float], repro: dict, gate_fixed: float = 3.0) -> dict:
    """A synthetic ``bench.scale`` result: sizes 1x/4x/16x, a history, a gate row per size."""
    from bench.scale import goals, summarize

    sizes = {}
    for (name, images), seconds, mib in zip((("1x", 60), ("4x", 240), ("16x", 960)), step_seconds, peak, strict=True):
        floor = images / 100  # the gate grows 1.5x as fast as the floor, above a fixed part
        warm = gate_fixed + 1.5 * floor
        gate = {
            "evaluated_samples": images, "gate_seconds_cold": warm + 1.0, "gate_seconds_warm": warm, "fixed_startup_seconds": 1.0,
            "forward_floor_seconds": floor, "forward_floor_repeats": 3, "gate_over_forward_floor": round(warm / floor, 3),
            "training_samples": images // 2,
        }
        step = {"wall_seconds": seconds, "peak_mib": mib, "stage_seconds": seconds - 5, "operator_seconds": 1.0}
        step |= {"suite_seconds_in_step": 2.0, "decision": "promoted"}
        sizes[name] = {"images": images, "training_samples": images // 2, "prepare": {"wall_seconds": 9.0, "peak_mib": 900.0},
                       "base": {"wall_seconds": 30.0, "peak_mib": 1000.0}, "step": step, "gate": gate}
    rows = [{"index": i, "step": f"s{i:02d}", "wall_seconds": t, "peak_mib": 1000.0, "stage_seconds": t - 5, "operator_seconds": 1.0,
             "suite_seconds_in_step": 2.0, "decision": "promoted"} for i, t in enumerate(history, start=1)]
    meta = {"machine": "m", "date": "d", "arch": "test_resnet", "base_size": 60, "epochs": 1, "repeats": 1, "quick": True,
            "load_before": [0.0], "load_after": [0.0], "wall_seconds": 1.0}
    result = {"meta": meta, "sizes": sizes, "history": rows, **summarize(sizes, rows), "nochange_repro_seconds": repro.get("seconds"),
              "nochange_repro": repro, "stage_startup_seconds": {"ume --help": 4.0}, "families": {}, "families_meta": {}}
    result["goals"] = goals(result)
    return result


def test_scale_summary_and_goals_are_computed_from_the_measured_rows(tmp_path: Path) -> None:
    from bench.scale import markdown, plot

    met = _scale_result([10.0, 20.0, 40.0], [1000.0, 1050.0, 1100.0], [10.0, 11.0, 12.0, 12.5, 12.0, 12.0], {"seconds": 3.0, "nothing_changed": True})
    assert met["memory_ratio_16x_over_1x"] == 1.1 and met["step_time_ratio_16x_over_1x"] == 4.0 and met["training_samples_ratio_16x_over_1x"] == 16.0
    assert met["step_time_by_size"] == {"1x": 10.0, "4x": 20.0, "16x": 40.0}
    assert met["step6_over_step1"] == 1.2 and met["median_last3_over_first3"] == 1.091
    assert met["gate_over_forward_floor"] == pytest.approx(1.812) and met["gate_growth_over_floor_growth"] == pytest.approx(1.5)
    assert [g["met"] for g in met["goals"]] == [True, True, True, True, True]

    unmet = _scale_result([10.0, 80.0, 400.0], [1000.0, 2000.0, 4000.0], [10.0, 30.0], {"seconds": 12.0, "nothing_changed": True})
    assert unmet["memory_ratio_16x_over_1x"] == 4.0 and unmet["step2_over_step1"] == 3.0
    assert [g["met"] for g in unmet["goals"]] == [False, False, False, True, False]
    slow_gate = _scale_result([10.0, 20.0, 40.0], [1000.0, 1050.0, 1100.0], [10.0, 11.0], {"seconds": 3.0, "nothing_changed": True}, gate_fixed=6.0)
    assert slow_gate["gate_over_forward_floor"] == pytest.approx(2.125) and slow_gate["goals"][3]["met"] is False  # the growth alone (1.5x) would pass
    missing = _scale_result([10.0, 20.0, 40.0], [1.0, 1.0, 1.0], [10.0], {"seconds": None, "message": "dvc commit -f failed"})
    assert missing["goals"][-1]["met"] is None

    text = markdown(unmet)
    assert "| peak memory of a step <= 1.2x from 1x to 16x data | 4.00x | not met |" in text
    assert "| 16x | 960 | 480 | 400.00 |" in text and "run `ume bench families` first" in text
    plot(unmet, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_scale_manifest_families_and_the_measured_child_process(tmp_path: Path) -> None:
    import sys

    from bench.scale import families_matrix, manifest_rows, measured

    rows = manifest_rows([str(i % 10) for i in range(400)], 400, update_slices=4)
    counts = {s: sum(r["slice"] == s for r in rows) for s in {r["slice"] for r in rows}}
    assert (counts["base"], counts["test"], counts["canary"]) == (160, 60, 20) and sum(counts[f"u{i}"] for i in range(1, 5)) == 160
    assert all(r["owner"] == "-" for r in rows if r["slice"] in ("base", "test", "canary"))
    owner_slices: dict[str, set[str]] = {}
    for r in rows:
        owner_slices.setdefault(r["owner"], set()).add(r["slice"])
    assert all(len(slices) == 1 for owner, slices in owner_slices.items() if owner != "-")  # whole owners per slice

    raw = {"families": {"a": {"base": "ok (promoted)", "learn": "refused: f: field 'x': no", "edit": "failed: KeyError: 'y'"}}, "meta": {"date": "d"}}
    assert families_matrix(raw) == {"a": {"base": "ok", "learn": "refused: f: field 'x': no", "edit": "failed: KeyError: 'y'"}}

    run = measured([sys.executable, "-c", "b = bytearray(200 * 2**20); print(len(b))"], tmp_path, tmp_path / "child.log")
    assert run.peak_mib > 200 and run.seconds > 0 and run.output.strip() == str(200 * 2**20)
    with pytest.raises(RuntimeError, match="exited 3"):
        measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, tmp_path / "fail.log")


def test_lifelong_metrics_follow_gem_definitions_on_a_crafted_matrix() -> None:
    """ACC, BWT, FWT (Lopez-Paz & Ranzato 2017) of a hand-computed accuracy matrix (row 0 = the base)."""
    from bench.lifelong import cl_metrics

    r = [
        [0.9, 0.1, 0.2, 0.0],
        [0.8, 0.7, 0.3, 0.1],
        [0.7, 0.6, 0.9, 0.2],
        [0.6, 0.5, 0.8, 1.0],
    ]
    got = cl_metrics(r)
    assert got["acc"] == pytest.approx((0.6 + 0.5 + 0.8 + 1.0) / 4)
    assert got["bwt"] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.7) + (0.8 - 0.9)) / 3)
    assert got["fwt"] == pytest.approx(((0.1 - 0.1) + (0.3 - 0.2) + (0.2 - 0.0)) / 3)


def test_lifelong_choice_takes_only_exact_cheap_compositions_and_the_best_worst_stream() -> None:
    from bench.lifelong import COMPOSITIONS, choose, eligible

    def entry(acc: float, exact: float = 1.0, worst: float = 0.1) -> dict:
        return {"acc": acc, "deletion_exact_share": exact, "deletion_cost_worst": worst}

    table = {c: entry(0.5) for c in COMPOSITIONS}
    summary = {"looks": dict(table), "classes": dict(table)}
    summary["looks"]["stacked"] = entry(0.99, worst=0.7)  # best ACC, too costly to delete from
    summary["looks"]["routed"], summary["classes"]["routed"] = entry(0.9), entry(0.8)
    summary["looks"]["summed"], summary["classes"]["summed"] = entry(0.95), entry(0.6)  # better on one stream only
    summary["looks"]["routed-full"] = entry(0.97, exact=0.5)
    assert choose(summary) == "routed"
    for stream in summary.values():  # none cheap enough: the best worst-stream ACC among the exact ones, and the table says so
        for c in COMPOSITIONS:
            stream[c] = {**stream[c], "deletion_cost_worst": 0.6}
    assert choose(summary) == "routed" and not eligible(summary)


def test_lifelong_streams_are_the_default_and_a_class_incremental_one_with_held_out_splits() -> None:
    from bench.lifelong import make_stream

    looks = make_stream("looks", 0)  # the embedded default of params.yaml, labels clean
    assert [s.name for s in looks] == ["base", "u1", "u2", "u3"]
    for s in looks:
        assert set(s.y_eval.tolist()) == set(range(10)) and len(s.x_eval) >= 100
    assert (set(looks[0].owners) == {"-"}) and all("-" not in set(s.owners) for s in looks[1:])  # the base is licensed
    classes = make_stream("classes", 0)
    assert all(len(s.x_eval) == (len(s.x) + len(s.x_eval)) // 4 for s in classes)
    assert [sorted(set(s.y.tolist())) for s in classes] == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert looks[1].x.mean() > 0.5 > looks[0].x.mean()  # u1: inverted, a background the base never saw


def test_a_red_ci_run_reads_red_in_the_readme_row() -> None:
    """bench.ci records a red run too (its figures are still figures); the README's CI row must not read it as green."""
    from bench.headline import _ci

    green = {"exit_code": 0, "wall_seconds": 480.0, "passed": 511, "skipped": 0, "failed": 0, "errors": 0, "suite_seconds": 400.0}
    ((_, text),) = _ci(green)
    assert "RED" not in text and "511 passed" in text
    ((_, text),) = _ci({**green, "exit_code": 1, "passed": 510, "failed": 1})
    assert text.startswith("**RED** (exit 1: 1 failed)") and "510 passed" in text
