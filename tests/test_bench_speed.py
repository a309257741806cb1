"""``ume bench speed``'s pure parts: the all-promoted-data selection, the ratios and goals, the start-up summary, the tables.

The bench itself (the demo pipeline, the reference training) runs only as ``ume bench speed --project DIR``.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bench import speed
from pipeline.data import SampleTable, UmeData
from pipeline.model.lineage import hash_sample_ids


def _step(step: str, kind: str, e2e: float, deletion: str | None = None, request: str | None = None) -> dict:
    return {"step": step, "kind": kind, "deletion": deletion, "request": request, "end_to_end": e2e}


STEPS = [
    _step("base", "base", 20.0),
    _step("s01", "learn", 10.0),
    _step("s02", "learn", 14.0),  # blocked in the demo: it still counts as a learn step
    _step("s03", "learn", 12.0),
    _step("forget-04", "forget", 70.0, "exact", "del-a"),
    _step("forget-05", "forget", 13.0, "approximate", "del-b"),
    _step("forget-05-exact", "forget", 11.0, "exact", "del-b"),
    _step("s07", "compress", 8.0),
]


def test_deletion_classes() -> None:
    assert speed.deletion_class("forget", None) == "exact"
    assert speed.deletion_class("forget", "exact") == "exact"
    assert speed.deletion_class("forget", "neggrad") == "approximate"
    assert speed.deletion_class("retrain", "full") == "exact"
    assert speed.deletion_class("learn", "lora") is None


def test_every_ratio_the_issue_asks_for_with_its_goal_and_the_unflattering_rows() -> None:
    rows = speed.ratio_rows(STEPS, reference_seconds=40.0)
    by = {(r["figure"], r["numerator"], r["denominator"]): r for r in rows}
    # every learn step against the reference (0.3x): 10/40 met, 14/40 not
    assert by[("learn step / all-at-once training", "s01", "all-at-once")]["ratio"] == pytest.approx(0.25)
    assert by[("learn step / all-at-once training", "s01", "all-at-once")]["met"] == "met"
    assert by[("learn step / all-at-once training", "s02", "all-at-once")]["met"] == "NOT met"
    # the first deletion is labelled first; the approximate one has no goal against the reference
    first = by[("exact deletion step (first) / all-at-once training", "forget-04", "all-at-once")]
    assert first["ratio"] == pytest.approx(70 / 40, abs=1e-3) and first["goal"] == speed.EXACT_OVER_REFERENCE and first["met"] == "NOT met"
    approx = by[("approximate deletion step (later) / all-at-once training", "forget-05", "all-at-once")]
    assert approx["goal"] is None and approx["met"] == "-"
    # every deletion against the median learn step (12 s; blocked s02 counted), goal 2x
    median = [r for r in rows if r["denominator"] == "median learn step"]
    assert [r["numerator"] for r in median] == ["forget-04", "forget-05", "forget-05-exact"]
    assert all(r["denominator_seconds"] == 12.0 for r in median)
    assert [r["met"] for r in median] == ["NOT met", "met", "met"]
    # approximate against the exact phase of the same request only (not forget-04's); that phase starts from what the
    # approximate step built, so the ratio is shown without a goal
    pairs = [r for r in rows if r["figure"].startswith("approximate deletion /")]
    assert [(r["numerator"], r["denominator"]) for r in pairs] == [("forget-05", "forget-05-exact")]
    assert pairs[0]["figure"] == "approximate deletion / the exact phase that followed it"
    assert pairs[0]["ratio"] == pytest.approx(13 / 11, abs=1e-3) and pairs[0]["goal"] is None and pairs[0]["met"] == "-"
    # base, compress and edit steps get no ratio row
    assert not {r["numerator"] for r in rows} & {"base", "s07"}


def test_all_promoted_data_is_the_champions_lineage_less_deleted_and_evaluation_samples() -> None:
    slices = ["base"] * 4 + ["u1"] * 3 + ["u2"] * 3 + ["u3"] * 3 + ["test"] * 2 + ["canary"]
    ids = [f"s{i}" for i in range(len(slices))]
    frame = pd.DataFrame({"sample_id": ids, "label": [i % 2 for i in range(len(ids))], "group": "g",
                          "owner": ["" if s == "base" else "w1" for s in slices], "slice": slices})  # fmt: skip
    table = SampleTable(rows=frame, images=torch.zeros(len(ids), 1, 4, 4, dtype=torch.uint8), classes=["0", "1"])
    of = {s: [i for i, x in zip(ids, slices, strict=True) if x == s] for s in set(slices)}
    deleted = {of["u1"][0], of["u3"][2]}  # an exactly deleted sample (not in lineage any more) and an approximately forgotten one (still in it)
    data = UmeData(table, frozenset(hash_sample_ids(deleted)))
    # the champion composes base, u1 (retrained without its deleted sample) and u3; u2 was blocked; a stray test id is never training data
    lineage = hash_sample_ids([*of["base"], *of["u1"][1:], *of["u3"], of["test"][0]])
    chosen = speed.promoted_samples(data, lineage)
    assert set(chosen.sample_ids) == set(of["base"]) | set(of["u1"][1:]) | set(of["u3"][:2])
    assert not set(chosen.sample_ids) & deleted
    assert sorted(set(chosen.slices)) == ["base", "u1", "u3"]


def test_startup_summary_stage_walls_and_the_tables() -> None:
    def run(mode: str, k: float) -> dict:
        stages = {name: {"wall": 9 * k, "own": 8 * k, "startup": k} for name in ("base", "s01")}
        return {"mode": mode, "stages": {**stages, "prepare": {"wall": 2 * k, "own": 0.0, "startup": 2 * k}}, "light": {"status": k, "audit": k}}

    runs = [run("cold", 7.0), run("warm", 0.4), run("warm", 0.6), run("cold", 5.0)]
    summary = speed.startup_summary(runs)
    assert summary["cold"]["ume step (start-up)"] == {"min": 5.0, "median": 6.0, "runs": 2}
    assert summary["warm"]["ume status"]["median"] == pytest.approx(0.5)
    assert speed.stage_walls([("prepare", 0.0), ("base", 3.0), ("seal", 10.0)], 12.5) == {"prepare": 3.0, "base": 7.0, "seal": 2.5}

    steps = [{**s, "method": None, "decision": "promoted", "seconds": s["end_to_end"] - 0.5, "operator_seconds": 1.0, "stage_wall": None} for s in STEPS]
    result = {
        "seconds": 600.0, "demo": {"wall_seconds": 250.0}, "demo_mode": "warm", "stage_startup_seconds": 0.5, "steps": steps,
        "reference": {"samples": 900, "samples_by_slice": {"base": 600, "u1": 300}, "champion_version": 10, "composition": "base + s01",
                      "deleted_samples": 29, "epochs": 30, "seconds": 39.5, "open_seconds": 0.2, "train_seconds": 39.0, "test_accuracy": 0.8,
                      "heldout_accuracy": {"base": 0.9}, "heldout_mean": 0.9},
        "reference_end_to_end": 40.0, "champion": {"test_accuracy": 0.7, "heldout_accuracy": {"base": 0.95}, "heldout_mean": 0.95},
        "ratios": speed.ratio_rows(STEPS, 40.0), "startup": {"repeats": 2, "summary": summary},
        "compression": [
            {"model": "fp32 (float shadow)", "size_bytes": 4000, "latency_ms_b1": 1.0, "latency_ms_b64": 8.0, "test_accuracy": 0.72, "against": None},
            {"model": "+ s07", "size_bytes": 2000, "latency_ms_b1": 0.9, "latency_ms_b64": 7.0, "test_accuracy": 0.72, "against": "fp32 (float shadow)"},
            {"model": "+ s08", "size_bytes": 600, "latency_ms_b1": 0.4, "latency_ms_b64": 2.0, "test_accuracy": 0.715, "against": "+ s07"},
        ],
        "from_files": {"scale": {"commit": "abc1234", "date": "2026-12-03", "gate_over_forward_floor": 4.8, "stale": None}},
    }  # fmt: skip
    goals = {g: (m, ok) for g, m, ok in speed.goal_rows(result)}
    assert goals["demo pipeline (`dvc repro` after `make clean`) ≤ 180 s"] == ("250 s", "NOT met")
    assert goals["every learn step ≤ 0.3× the all-at-once training"] == ("worst 0.35× (`s02`)", "NOT met")
    assert goals["training-stage start-up ≤ 2 s (warm, median)"][1] == "met"
    assert goals["training-stage start-up ≤ 2 s (cold, median)"][1] == "NOT met"
    assert any(g.startswith("int8 (`s08`)") and ok == "met" for g, (_, ok) in goals.items())
    assert any(g.startswith("pruning (`s07`)") and ok == "met" for g, (_, ok) in goals.items())  # size 0.5x
    gate = next(m for g, (m, _) in goals.items() if g.startswith("gate"))
    assert "not from this run" in gate and "abc1234" in gate
    text = speed.markdown(result)
    assert "| `forget-04` | forget |" in text and "NOT met" in text and "met |" in text


def test_the_reference_is_the_median_of_its_repeats() -> None:
    """Three all-at-once trainings: the one of median seconds is the reference, every run's seconds are kept."""
    from bench.speed import median_reference

    runs = [{"seconds": s, "test_accuracy": a} for s, a in ((7.4, 0.73), (6.0, 0.73), (6.6, 0.73))]
    chosen = median_reference(runs)
    assert chosen["seconds"] == 6.6 and chosen["repeat_seconds"] == [7.4, 6.0, 6.6]
    assert median_reference(runs[:1])["seconds"] == 7.4


def test_a_deletion_in_a_later_repro_is_labelled_as_such_and_gets_its_own_goal_row() -> None:
    later = {**_step("forget-09", "forget", 20.0, "exact", "del-c"), "order": speed.LATER_REPRO}
    rows = speed.ratio_rows([*STEPS, later], reference_seconds=40.0)
    mine = [r for r in rows if r["numerator"] == "forget-09"]
    assert [r["figure"] for r in mine] == [
        f"exact deletion step ({speed.LATER_REPRO}) / all-at-once training",
        f"exact deletion step ({speed.LATER_REPRO}) / median learn step",
    ]
    assert mine[1]["ratio"] == pytest.approx(20 / 12, abs=1e-3) and mine[1]["met"] == "met"
    assert next(r for r in rows if r["numerator"] == "forget-04")["figure"].startswith("exact deletion step (first)")  # still the first
    result = {"demo": {"wall_seconds": 100.0}, "ratios": rows, "startup": {"summary": {}}, "compression": []}
    goals = {g: (m, ok) for g, m, ok in speed.goal_rows(result)}
    assert goals["a deletion step in a later `dvc repro` (the bank kept by seal) ≤ 2× the median learn step"] == ("1.67× (`forget-09`)", "met")
    assert goals["every deletion step ≤ 2× the median learn step"][1] == "NOT met"  # forget-04, the demo's first, is still counted


def test_the_approximate_deletion_is_judged_against_the_exact_path_from_the_same_parent() -> None:
    instead = {**_step("forget-05 as exact", "forget", 12.0, "exact", "del-b"), "order": speed.EXACT_INSTEAD}
    rows = speed.ratio_rows([*STEPS, instead], reference_seconds=40.0)
    like = [r for r in rows if r["figure"] == speed.LIKE_FOR_LIKE]
    assert [(r["numerator"], r["denominator"]) for r in like] == [("forget-05", "forget-05 as exact")]
    assert like[0]["ratio"] == pytest.approx(13 / 12, abs=1e-3) and like[0]["goal"] == speed.APPROXIMATE_OVER_EXACT and like[0]["met"] == "NOT met"
    after = next(r for r in rows if r["figure"] == "approximate deletion / the exact phase that followed it")
    assert after["denominator"] == "forget-05-exact" and after["goal"] is None  # still shown, the unflattering-or-not row beside it
    # the counterfactual is an exact deletion like any other: against the reference and the median learn step, with its label
    assert f"exact deletion step ({speed.EXACT_INSTEAD}) / median learn step" in {r["figure"] for r in rows}
    label = "every approximate deletion no slower than the exact path of its request from the same parent (≤ 1×)"
    goals = {g: (m, ok) for g, m, ok in speed.goal_rows({"demo": {"wall_seconds": 100.0}, "ratios": rows, "startup": {"summary": {}}, "compression": []})}
    assert goals[label] == ("worst 1.08× (`forget-05`)", "NOT met")
    faster = {**instead, "end_to_end": 15.0}
    rows = speed.ratio_rows([*STEPS, faster], reference_seconds=40.0)
    goals = {g: (m, ok) for g, m, ok in speed.goal_rows({"demo": {"wall_seconds": 100.0}, "ratios": rows, "startup": {"summary": {}}, "compression": []})}
    assert goals[label] == ("worst 0.87× (`forget-05`)", "met")
    # without the counterfactual the goal is not judged on the phase that followed: it says it was not measured
    result = {"demo": {"wall_seconds": 100.0}, "ratios": speed.ratio_rows(STEPS, 40.0), "steps": STEPS, "startup": {"summary": {}}, "compression": []}
    goals = {g: (m, ok) for g, m, ok in speed.goal_rows(result)}
    assert goals[label] == ("not measured in this run", "-")
