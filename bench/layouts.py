"""Exact deletion of every kind of owner, for two overlay layouts side by side (issue 15's benchmark).

For each seed and layout a project is built with the real runner (prepare, base, learn u1, u2, u3,
no label corruption). Then, from that same state, ``owners_per_slice`` owners of every slice that
has owners are deleted one at a time with ``forget/exact``, called as the forget step calls it;
its wall time is compared with a full retrain (``retrain/full``) measured in the same project, and
the result's test accuracy is measured on the test split.

Layouts:
- ``stacked`` (ume's layout until now): the base slice belongs to data subjects (``licensed_base:
  false``), each learn overlay is trained on the champion (on top of the ones below) and replays
  the champion's lineage. A deletion retrains the first affected overlay and all above it, and an
  owner of the base costs a full retrain.
- ``parallel``: the base slice is licensed data with no data subjects, each learn overlay is trained
  on the clean base alone and composed side by side, and replays only licensed samples. A deletion
  retrains only the overlay that saw the owner.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
LAYOUTS: dict[str, dict[str, Any]] = {
    "stacked": {"licensed_base": False, "learn": {"layout": "stacked", "replay_from": "lineage"}},
    "parallel": {"licensed_base": True, "learn": {"layout": "parallel", "replay_from": "licensed"}},
}


def _params(root: Path, seed: int, layout: str) -> dict[str, Any]:
    """``bench.forget_exact``'s project (base + u1, u2, u3), in ``layout``."""
    from bench.forget_exact import _params as stream_params

    raw = stream_params(root, seed)
    raw["data"]["licensed_base"] = LAYOUTS[layout]["licensed_base"]
    for step in raw["stream"].values():
        step.update(LAYOUTS[layout]["learn"])
    return raw


def _accuracy(net: torch.nn.Module, samples) -> float:
    from pipeline.model.net import predict_logits

    with torch.no_grad():
        return float((predict_logits(net, samples.x).argmax(1) == samples.y).float().mean())


def _delete(ws, owner: str, method_name: str) -> tuple[float, float, bool, str]:
    """Honour ``owner``'s deletion on the champion with ``method_name`` (nothing written to the ledger)."""
    from edits import OperatorEnv, get_method
    from pipeline.data import UmeData
    from pipeline.data.table import SampleTable
    from pipeline.model.compose import compose
    from pipeline.model.lineage import hash_sample_ids, version_lineage
    from pipeline.model.manifest import Manifest
    from pipeline.model.training import make_trainer
    from pipeline.records.deletion import make_request, resolve

    manifest = ws.manifest_of(ws.registry.champion()).float_shadow()
    request = make_request({"owner": owner}, "benchmark", method_name)
    table = SampleTable.load(ws.data_dir)
    hashed = frozenset(hash_sample_ids(resolve(request, table)))
    data = UmeData(table, hashed, seed=ws.params.seed)  # the deleted set applied, as the ledger's would be
    method = get_method("forget", method_name)
    env = OperatorEnv(
        step="f",
        seed=ws.params.seed,
        make_trainer=lambda epochs, steps=-1: make_trainer(ws.params.train, max_epochs=epochs, max_steps=steps),
        champion_lineage=frozenset(version_lineage(manifest, ws.components)),
        champion_manifest=manifest,
        components=ws.components,
        request=request,
        forget_ids=hashed,
    )
    net = compose(manifest, ws.components)
    for p in net.parameters():
        p.requires_grad_(True)
    started = time.perf_counter()
    change = method.fn(net, data, method.parse_config({}, where="bench", file="bench"), env)
    seconds = time.perf_counter() - started
    result = manifest if change.keep_overlays is None else manifest.truncated(change.keep_overlays)
    if change.drop_overlays:
        result = result.without_positions(change.drop_overlays)
    if change.new_base is not None:
        result = Manifest(base=ws.components.save(change.new_base, parent=None).id)
    for draft in change.drafts:
        result = result.with_overlay(ws.components.save(draft, parent=manifest.hash).id, draft.meta.get("overlay_step", "f"))
    exact = not version_lineage(result, ws.components) & hashed
    return seconds, _accuracy(compose(result, ws.components), data.split("test")), exact, result.describe()


def bench_layout(seed: int, layout: str, owners_per_slice: int, log) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One seed and layout: build the stream, time a full retrain, then delete sampled owners one at a time."""
    from pipeline.steps import open_workspace, run_base, run_prepare, run_step

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(yaml.safe_dump(_params(root, seed, layout), sort_keys=False))
        os.chdir(root)
        ws = open_workspace(root / "params.yaml")
        run_prepare(ws)
        run_base(ws)
        for key in ("s1", "s2", "s3"):
            record = run_step(ws, key).record
            log(f"seed {seed} {layout} {key}: {record['decision']} {', '.join(record['failing'])}")
        from pipeline.model.compose import compose

        champion = ws.manifest_of(ws.registry.champion())
        from pipeline.data import open_data

        stream_acc = _accuracy(compose(champion, ws.components), open_data(ws.data_dir, ws.ledger).split("test"))
        rows_table = pd.read_csv(root / "store" / "data" / "samples.csv").fillna({"owner": ""})
        train = rows_table[(rows_table["owner"] != "") & rows_table["slice"].isin(["base", "u1", "u2", "u3"])]  # what the stream trained on
        rng = np.random.default_rng(1000 + seed)
        sampled = []
        for slice_name in sorted(train["slice"].unique()):
            owners = sorted(train.loc[train["slice"] == slice_name, "owner"].unique())
            sampled += [(slice_name, str(o)) for o in rng.permutation(owners)[:owners_per_slice]]
        any_owner = sampled[0][1]
        _delete(ws, any_owner, "retrain")  # a warm-up: the first training in a process pays one-off costs
        retrain_seconds, retrain_acc, _, _ = _delete(ws, any_owner, "retrain")
        rows = []
        for slice_name, owner in sampled:
            seconds, acc, exact, composition = _delete(ws, owner, "exact")
            rows.append({
                "owner": owner, "slice": slice_name, "layout": layout, "seed": seed, "exact": exact,
                "seconds": round(seconds, 3), "retrain_seconds": round(retrain_seconds, 3), "test_acc": round(acc, 6),
                "composition": composition,
            })
            log(f"seed {seed} {layout} {slice_name} {owner}: {seconds:.1f}s ({seconds / retrain_seconds:.2f}x retrain) acc {acc:.4f} {composition}")
        os.chdir(REPO)
        summary = {"seed": seed, "layout": layout, "stream_test_acc": round(stream_acc, 6), "retrain_test_acc": round(retrain_acc, 6),
                   "retrain_seconds": round(retrain_seconds, 3), "champion": champion.describe()}
        return rows, summary


def owners_markdown(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], chosen: str) -> str:
    """Per layout: exact share, cost as a fraction of a full retrain (median, worst), accuracy, per slice."""
    lines = [
        "| layout | owners x seeds | exact | cost / retrain: median | worst | stream test acc | test acc after deletion (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        sel = [r for r in rows if r["layout"] == layout]
        if not sel:
            continue
        ratios = [r["seconds"] / r["retrain_seconds"] for r in sel]
        stream = [s["stream_test_acc"] for s in summaries if s["layout"] == layout]
        lines.append(
            f"| {layout}{' (default)' if layout == chosen else ''} | {len(sel)} | {100 * sum(r['exact'] for r in sel) / len(sel):.0f}% | "
            f"{statistics.median(ratios):.3f} | {max(ratios):.3f} | {100 * statistics.mean(stream):.2f} | "
            f"{100 * statistics.mean(r['test_acc'] for r in sel):.2f} |"
        )
    lines += ["", "| layout | slice | owners x seeds | cost / retrain: median | worst |", "|---|---|---|---|---|"]
    for layout in LAYOUTS:
        for slice_name in sorted({r["slice"] for r in rows if r["layout"] == layout}):
            sel = [r["seconds"] / r["retrain_seconds"] for r in rows if r["layout"] == layout and r["slice"] == slice_name]
            lines.append(f"| {layout} | {slice_name} | {len(sel)} | {statistics.median(sel):.3f} | {max(sel):.3f} |")
    return "\n".join(lines) + "\n"


def choose_layout(rows: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> str:
    """The layout with the smaller worst-case cost among those every owner deletion of which is exact and
    whose stream accuracy is within 0.5 points of the stacked layout's."""
    stacked = statistics.mean(s["stream_test_acc"] for s in summaries if s["layout"] == "stacked")
    best, best_worst = "stacked", float("inf")
    for layout in LAYOUTS:
        sel = [r for r in rows if r["layout"] == layout]
        accuracy = statistics.mean(s["stream_test_acc"] for s in summaries if s["layout"] == layout)
        worst = max(r["seconds"] / r["retrain_seconds"] for r in sel)
        if all(r["exact"] for r in sel) and accuracy >= stacked - 0.005 and worst < best_worst:
            best, best_worst = layout, worst
    return best


__all__ = ["LAYOUTS", "bench_layout", "choose_layout", "owners_markdown"]
