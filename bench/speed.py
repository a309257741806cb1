"""``ume bench speed``: issue 31's speed figures in one run, on the default stream as it ships.

Run on a project that is a fresh clone with its virtual environment (``make .venv/.ume-installed``)::

    ume bench speed --project /path/to/clone [--startup-repeats 3] [--out bench/results]

In one run, in this order:

1. **The demo pipeline.** ``make clean`` in the project (not timed), then ``dvc repro`` timed whole (``make
   demo`` less the install and its closing ``ume status``), with the project's ``.venv/bin`` first on PATH
   as the Makefile puts it, and a fresh warm-process directory (``UME_WARM_DIR``): the first command runs cold
   and starts the warm process, as for a user's first ``make demo``. Each stage's wall time inside ``dvc repro``
   is the time from DVC's ``Running stage`` line to the next one (DVC's own bookkeeping included); each step's
   own seconds (and its operator's) come from ``store/steps/<id>.json``.
2. **The reference: one all-at-once training** (run ``--reference-repeats`` times, 3 by default; the run of
   median seconds is the reference, every run's seconds are reported). The same model (``model.arch``) trained from scratch with the
   base recipe (``train.base``: epochs, batch size, learning rate, augmentation) on all promoted data: every
   training sample in the lineage of a component the final champion composes (the base slice, each promoted
   learn step's slice and replay, whatever a promoted exact deletion retrained on), deleted samples never
   (the data layer drops them, an approximately forgotten owner included), test and canary never. It runs
   **in this process** (everything it imports is imported before the clock, as in a child of the warm
   process) and is timed from opening the data to its test accuracy; its end-to-end figure adds the training
   stage start-up measured in step 6 of this run for the mode the demo ran in (warm unless ``UME_WARM=0``),
   the same start-up every step's end-to-end figure adds to its own seconds. It pays no gate and no registry:
   it is the cheapest retrain a team could run, so the ratios are the least flattering to ume.
3. **Compression at batch 1 and 64** of the demo's final champion (cheap, so from this run): its float shadow,
   then each of its export transforms added in turn (the demo: channel pruning, then int8), latency on one torch
   thread (minimum of interleaved repeats, as ``ume bench compress`` times), size and test accuracy. The gate
   over its forward floor costs minutes to measure (``ume bench scale``): it is listed from ``scale.json``,
   with that file's commit and date, marked as not from this run.
4. **A deletion in a later ``dvc repro``**, as a request arrives in production: after the demo (whose ``seal`` stage
   ran ``ume references --ahead`` and so kept the reference bank full), ``ume forget --owner`` of a typical
   contributor of the first learned slice (the first by name that no request names and that is not one of the
   data's atypical owners), then ``dvc repro`` timed whole; the step's row says how many shadows its gate had to
   train again (those that had trained on the owner). ``params.yaml`` is restored afterwards.
5. **The approximate deletion's counterfactual**: the same request served by the exact path from the same parent
   (``exact_instead``: a copy of the project, the stream cut at the demo's approximate step with its method set to
   ``exact``, ``dvc repro step@<it>``). The approximate step is compared with it (goal ≤ 1×), like for like: the
   exact phase that follows an approximate one in the demo starts from what the approximate step's gate built (the
   shadows it trained), so that ratio is shown too, without a goal.
6. **Start-up per command**, cold (``UME_WARM=0``) and warm: ``bench.startup.one_repeat`` in fresh small
   projects (``ume prepare``, ``ume base``, ``ume step s01``, ``ume status``, ``ume audit --compose``, ``ume audit``), ``--startup-repeats``
   times per mode; min and median.
7. **Ratios** with the issue's goals, met or NOT met, every row shown: each learn step, each exact deletion
   step and the approximate one against the reference; each deletion step against the median learn step
   (blocked learn steps count: they did the same work); each approximate deletion against the exact path of
   the same request from the same parent (5.), and against the exact phase that followed it.

Writes ``<out>/speed.json`` (with its provenance record) and ``<out>/speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

# The goals (issue 31, "Goals"): each an upper bound.
LEARN_OVER_REFERENCE = 0.3
EXACT_OVER_REFERENCE = 0.3
DELETION_OVER_LEARN = 2.0
APPROXIMATE_OVER_EXACT = 1.0
DEMO_SECONDS = 180.0
TRAINING_STARTUP = 2.0
LIGHT_STARTUP = 1.0
GATE_OVER_FLOOR = 2.0
INT8_B1, INT8_B64 = 1.0, 0.6
PRUNE_SIZE_OR_LATENCY = 0.7

LATER_REPRO = "in a later `dvc repro`, the bank kept by seal"  # the order label of step 4's deletion
EXACT_INSTEAD = "exact instead, from the same parent, in a second `dvc repro`"  # the order label of step 5's counterfactual
LIKE_FOR_LIKE = "approximate deletion / exact deletion of the same request from the same parent"
DEMO_SAVED = ".ume-speed-demo.json"  # in the project: the last demo timing, for --reuse-demo
RUNNING = re.compile(r"Running stage '([^']+)'")


# --- pure parts -----------------------------------------------------------------------------------------------


def deletion_class(kind: str, method: str | None) -> str | None:
    """``exact`` or ``approximate`` for a deletion step (a forget step, or a retrain that pays deletion debt), else None."""
    if kind == "retrain":
        return "exact"
    if kind != "forget":
        return None
    return "exact" if (method or "exact") == "exact" else "approximate"


def met(value: float | None, goal: float | None) -> str:
    """``met`` / ``NOT met`` against an upper bound; ``-`` without a goal or a value."""
    if goal is None or value is None:
        return "-"
    return "met" if value <= goal else "NOT met"


def ratio_rows(steps: Sequence[dict[str, Any]], reference_seconds: float) -> list[dict[str, Any]]:
    """Every ratio the issue asks for, from end-to-end step seconds and the reference's.

    ``steps``: in stream order, each with ``step``, ``kind``, ``deletion`` (``exact``/``approximate``/None),
    ``request`` and ``end_to_end`` (seconds). Learn and exact deletion steps against the reference (goal
    0.3×), the approximate ones too (no goal of their own there); every deletion step against the median
    learn step (goal 2×); every approximate deletion against each exact step of the same request (goal 1×).
    """
    rows: list[dict[str, Any]] = []

    def add(figure: str, num: str, num_s: float, den: str, den_s: float, goal: float | None) -> None:
        value = num_s / den_s if den_s > 0 else None
        rows.append({"figure": figure, "numerator": num, "numerator_seconds": round(num_s, 2), "denominator": den,
                     "denominator_seconds": round(den_s, 2), "ratio": None if value is None else round(value, 3), "goal": goal,
                     "met": met(value, goal)})  # fmt: skip

    learn = [s for s in steps if s["kind"] == "learn"]
    deletions = [s for s in steps if s["deletion"]]
    first = deletions[0]["step"] if deletions else None

    def order_of(s: dict[str, Any]) -> str:
        return s.get("order") or ("first" if s["step"] == first else "later")

    for s in steps:
        if s["kind"] == "learn":
            add("learn step / all-at-once training", s["step"], s["end_to_end"], "all-at-once", reference_seconds, LEARN_OVER_REFERENCE)
        elif s["deletion"]:
            order = order_of(s)
            goal = EXACT_OVER_REFERENCE if s["deletion"] == "exact" else None
            add(f"{s['deletion']} deletion step ({order}) / all-at-once training", s["step"], s["end_to_end"], "all-at-once", reference_seconds, goal)
    if learn:
        median = statistics.median(s["end_to_end"] for s in learn)
        for s in deletions:
            order = order_of(s)
            add(f"{s['deletion']} deletion step ({order}) / median learn step", s["step"], s["end_to_end"], "median learn step", median, DELETION_OVER_LEARN)
    for s in deletions:
        if s["deletion"] != "approximate":
            continue
        for e in deletions:
            if e["deletion"] != "exact" or e["request"] is None or e["request"] != s["request"]:
                continue
            if e.get("order") == EXACT_INSTEAD:  # like for like: the same request, the same starting state, the other path
                add(LIKE_FOR_LIKE, s["step"], s["end_to_end"], e["step"], e["end_to_end"], APPROXIMATE_OVER_EXACT)
            else:  # the exact phase after it starts from what the approximate step's gate built (its shadows): no goal
                add("approximate deletion / the exact phase that followed it", s["step"], s["end_to_end"], e["step"], e["end_to_end"], None)
    return rows


def worst(rows: Iterable[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    """The row with the largest ratio among those whose figure starts with ``prefix``."""
    mine = [r for r in rows if r["figure"].startswith(prefix) and r["ratio"] is not None]
    return max(mine, key=lambda r: r["ratio"]) if mine else None


def startup_summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per mode, per command: min and median seconds over the repeats (``bench.startup.one_repeat`` rows).

    A training stage's figure is its start-up (wall time less its own work); ``prepare``, ``status`` and
    ``audit`` are whole processes.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        series = {
            "ume prepare": [r["stages"]["prepare"]["wall"] for r in mine],
            "ume base (start-up)": [r["stages"]["base"]["startup"] for r in mine],
            "ume step (start-up)": [r["stages"]["s01"]["startup"] for r in mine],
            "ume status": [r["light"]["status"] for r in mine],
            "ume audit": [r["light"]["audit"] for r in mine],
            "ume audit --compose": [r["light"]["audit --compose"] for r in mine if "audit --compose" in r["light"]],
        }
        out[mode] = {name: {"min": round(min(v), 3), "median": round(statistics.median(v), 3), "runs": len(v)} for name, v in series.items() if v}
    return out


def stage_walls(events: Sequence[tuple[str, float]], end: float) -> dict[str, float]:
    """Each stage's wall seconds inside ``dvc repro``: from its ``Running stage`` line to the next stage's (or the end)."""
    walls: dict[str, float] = {}
    for i, (stage, at) in enumerate(events):
        until = events[i + 1][1] if i + 1 < len(events) else end
        walls[stage] = round(until - at, 2)
    return walls


# --- measuring ------------------------------------------------------------------------------------------------


def promoted_samples(data: Any, lineage: Iterable[str]) -> Any:
    """All promoted data: the training samples (never test or canary) in ``lineage`` (hashed ids), deleted ones never.

    ``data`` is a :class:`pipeline.data.UmeData` (it has dropped the deleted set already).
    """
    from pipeline.data.table import EVAL_SLICES

    training = [s for s in data.slices if s not in EVAL_SLICES]
    return data.select("all-promoted", slices=training, hashed_ids=set(lineage))


def run_demo(project: Path, env: dict[str, str], log: Path, *, clean: bool = True) -> dict[str, Any]:
    """``make clean`` (not timed; ``clean``), then ``dvc repro`` timed whole; DVC's output goes to ``log``."""
    if clean:
        subprocess.run(["make", "clean"], cwd=project, env=env, check=True, capture_output=True)
    events: list[tuple[str, float]] = []
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            found = RUNNING.search(line)
            if found:
                events.append((found.group(1), time.perf_counter() - started))
                print(f"  {events[-1][1]:7.1f} s  {found.group(1)}", flush=True)
        code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"dvc repro failed in {project} (exit {code}); its output: {log}")
    return {"wall_seconds": round(wall, 2), "stage_walls": stage_walls(events, wall)}


def step_rows(project: Path, walls: dict[str, float]) -> list[dict[str, Any]]:
    """Every step record of the finished demo, in stream order, with its method, request and stage wall."""
    from bench.demo import step_records
    from edits.registry import DEFAULT_METHOD
    from pipeline.core.config import load_params

    params = load_params(project / "params.yaml")
    order = ["base", *params.stream]
    rows = []
    for rec in sorted(step_records(project), key=lambda r: order.index(r["step"]) if r["step"] in order else len(order)):
        step = params.stream.get(rec["step"])
        kind = rec.get("kind") or (step.kind if step is not None else "base")
        method = (step.method if step is not None else None) or DEFAULT_METHOD.get(kind)  # a step without one runs its kind's default
        notes = rec.get("notes") or {}
        stage = "base" if rec["step"] == "base" else f"step@{rec['step']}"
        rows.append(
            {
                "step": rec["step"], "kind": kind, "method": method, "deletion": deletion_class(kind, method),
                "request": step.options.get("request") if step is not None else None, "decision": rec.get("decision"),
                "seconds": float(rec.get("seconds") or 0.0), "operator_seconds": notes.get("operator_seconds"),
                "stage_wall": walls.get(stage), "version": rec.get("version"), "reference_bank": rec.get("reference_bank"),
            }
        )  # fmt: skip
    return rows


def champion_figures(project: Path) -> dict[str, Any]:
    """The final champion's test and held-out accuracies, as its step record gives them."""
    from bench.demo import step_records

    records = step_records(project)
    promoted = [r for r in records if r.get("decision") == "promoted"]
    if not promoted:
        return {}
    last = max(promoted, key=lambda r: r.get("version") or 0)
    heldout = ((last.get("continual") or {}).get("heldout_accuracy")) or {}
    return {"step": last["step"], "version": last.get("version"), "composition": last.get("composition"),
            "test_accuracy": (last.get("metrics") or {}).get("test_accuracy"), "heldout_accuracy": heldout,
            "heldout_mean": statistics.mean(heldout.values()) if heldout else None}  # fmt: skip


def typical_owner(project: Path) -> str:
    """The first owner by name of the first learned slice that no deletion request names and the data does not mark atypical."""
    import pandas as pd
    import yaml

    dataset = json.loads((project / "store" / "data" / "dataset.json").read_text())
    rows = pd.read_csv(project / "store" / "data" / "samples.csv")
    stream = yaml.safe_load((project / "params.yaml").read_text())["stream"]
    first_slice = next(e["slice"] for e in stream.values() if e.get("kind") == "learn")
    requested = {str((yaml.safe_load(p.read_text()) or {}).get("selector", {}).get("owner")) for p in (project / "requests").glob("*.yaml")}
    owners = sorted(set(rows.loc[rows["slice"] == first_slice, "owner"].dropna().astype(str)))
    skip = requested | set(dataset.get("vulnerable_owners") or [])
    return next(o for o in owners if o not in skip)


def later_deletion(project: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """``ume forget --owner`` of a typical owner, then ``dvc repro`` timed whole; ``params.yaml`` and ``requests/`` restored after."""
    import yaml

    params, requests = project / "params.yaml", project / "requests"
    saved, had = params.read_text(), set(requests.glob("*")) if requests.is_dir() else set()
    owner = typical_owner(project)
    try:
        before = set(yaml.safe_load(saved)["stream"])
        subprocess.run(["ume", "forget", "--owner", owner, "--reason", "ume bench speed: a later request"], cwd=project, env=env, check=True,
                       capture_output=True, timeout=600)  # fmt: skip
        stream = yaml.safe_load(params.read_text())["stream"]
        key = next(k for k in stream if k not in before)
        entry = stream[key]
        run = run_demo(project, env, log, clean=False)
        record = json.loads((project / "store" / "steps" / f"{key}.json").read_text())
    finally:
        params.write_text(saved)
        for path in set(requests.glob("*")) - had if requests.is_dir() else ():
            path.unlink()
    return {"owner": owner, "step": key, "wall_seconds": run["wall_seconds"], "stage_walls": run["stage_walls"], "record": record, "entry": entry}


def approximate_step(project: Path) -> tuple[str, dict[str, Any]] | None:
    """The stream's first approximate deletion step (a ``forget`` whose method is not exact) and its entry, or None."""
    import yaml

    stream = yaml.safe_load((project / "params.yaml").read_text())["stream"] or {}
    return next(((k, e) for k, e in stream.items() if deletion_class(e.get("kind", ""), e.get("method")) == "approximate"), None)


def exact_instead(project: Path, env: dict[str, str], work: Path, key: str) -> dict[str, Any]:
    """The counterfactual of the approximate step ``key``: the same request served exactly, from the same parent.

    In a copy of the project (its ``.venv`` linked, ``make clean`` run there, not timed), the stream cut to ``key``
    and its ancestors with ``key``'s method set to ``exact``; then ``dvc repro step@<key>`` timed whole. The copy runs
    every step up to the parent again (same seeds, same defaults), so the exact path starts where the approximate one
    did: the same model, the same reference bank (the parent's record says what its gate trained; the step's record
    says what this one trained). The copy is removed afterwards; the project is not touched."""
    import yaml

    copy = work / "exact-instead"
    shutil.copytree(project, copy, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
    (copy / ".venv").symlink_to(project / ".venv")
    try:
        subprocess.run(["make", "clean"], cwd=copy, env=env, check=True, capture_output=True)
        raw = yaml.safe_load((copy / "params.yaml").read_text())
        stream = raw["stream"]
        chain = [key]
        while stream[chain[-1]].get("parent") in stream:
            chain.append(stream[chain[-1]]["parent"])
        entry = {k: v for k, v in stream[key].items() if k != "fallback"} | {"method": "exact"}
        raw["stream"] = {k: (entry if k == key else v) for k, v in stream.items() if k in chain}
        (copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        started = time.perf_counter()
        with open(work / "dvc-repro-exact-instead.log", "w") as out:
            proc = subprocess.run(["dvc", "repro", f"step@{key}"], cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"dvc repro step@{key} (exact instead) failed in {copy} (exit {proc.returncode}); its output: {out.name}")
        record = json.loads((copy / "store" / "steps" / f"{key}.json").read_text())
        parent = chain[1] if len(chain) > 1 else "base"
        parent_record = json.loads((copy / "store" / "steps" / f"{parent}.json").read_text())
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return {"step": key, "entry": entry, "wall_seconds": round(wall, 2), "record": record, "parent": parent,
            "parent_decision": parent_record.get("decision"), "parent_reference_bank": parent_record.get("reference_bank")}  # fmt: skip


def train_reference(project: Path) -> dict[str, Any]:
    """One all-at-once training of the same model on all promoted data with ``train.base``, in this process."""
    import dataclasses

    import lightning  # noqa: F401  (imported before the clock, as in a warm child)
    import torch

    from edits.base import train_base
    from pipeline.data import open_data
    from pipeline.model.lineage import version_lineage
    from pipeline.model.net import predict_logits
    from pipeline.model.training import make_trainer
    from pipeline.records.workspace import Workspace

    with contextlib.chdir(project):
        ws = Workspace.open("params.yaml")
        params = ws.params
        version = ws.registry.champion()
        manifest = ws.manifest_of(version)
        lineage = version_lineage(manifest, ws.components)
        train_cfg = dataclasses.replace(params.train, progress_bar=False)
        started = time.perf_counter()
        data = open_data(ws.data_dir, ws.ledger, batch_size=params.train.base.batch_size, num_workers=params.train.num_workers, seed=params.seed)
        samples = promoted_samples(data, lineage)
        opened = time.perf_counter()
        net, _ = train_base(
            data, samples, arch=params.model.arch, num_classes=params.model.num_classes, in_chans=params.data.channels,
            image_size=params.data.image_size, config=params.train.base, seed=params.seed,
            make_trainer=lambda epochs: make_trainer(train_cfg, max_epochs=epochs),
        )  # fmt: skip
        trained = time.perf_counter()
        test = data.split("test")
        with torch.inference_mode():
            test_acc = float((predict_logits(net, test.x).argmax(1) == test.y).float().mean())
            evaluated = time.perf_counter()
            heldout = {}
            for domain in data.heldout_domains():
                part = data.heldout(domain)
                heldout[domain] = round(float((predict_logits(net, part.x).argmax(1) == part.y).float().mean()), 4)
        return {
            "champion_version": version,
            "composition": manifest.describe(),
            "samples": len(samples),
            "samples_by_slice": dict(sorted(Counter(samples.slices).items())),
            "deleted_samples": data.deleted_count,
            "epochs": params.train.base.epochs,
            "open_seconds": round(opened - started, 2),
            "train_seconds": round(trained - opened, 2),
            "seconds": round(evaluated - started, 2),
            "test_accuracy": round(test_acc, 4),
            "heldout_accuracy": heldout,
            "heldout_mean": round(statistics.mean(heldout.values()), 4) if heldout else None,
        }


def median_reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median seconds (the same seed and data: only the clock differs), with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return ordered[(len(ordered) - 1) // 2] | {"repeat_seconds": [r["seconds"] for r in runs]}


def _repeats(ref: dict[str, Any]) -> str:
    """The reference's repeats as ``a, b, c s`` (one run before ``--reference-repeats`` existed)."""
    seconds = ref.get("repeat_seconds") or [ref["seconds"]]
    return f"{len(seconds)} run(s): " + ", ".join(f"{x:.1f}" for x in seconds) + " s"


def compression_rows(project: Path, repeats: int) -> list[dict[str, Any]]:
    """The champion's float shadow, then each export transform added in turn: size, latency at batch 1 and 64, test accuracy."""
    import torch

    from bench.compress import _latencies
    from pipeline.data import open_data
    from pipeline.model.compose import compose
    from pipeline.model.manifest import Manifest
    from pipeline.model.net import predict_logits
    from pipeline.model.quantize import model_bytes
    from pipeline.records.workspace import Workspace

    with contextlib.chdir(project):
        ws = Workspace.open("params.yaml")
        champion = ws.manifest_of(ws.registry.champion())
        data = open_data(ws.data_dir, ws.ledger, seed=ws.params.seed)
        test = data.split("test")
        nets: dict[str, torch.nn.Module] = {"fp32 (float shadow)": compose(champion.float_shadow(), ws.components)}
        for n, step in enumerate(champion.transform_steps, start=1):
            partial = Manifest(champion.base, champion.overlays, champion.transforms[:n], champion.overlay_steps, champion.transform_steps[:n])
            nets[f"+ {step}"] = compose(partial, ws.components)
        x = test.x
        b1, b64 = _latencies(nets, x[:1], repeats), _latencies(nets, x[:64], repeats)
        rows = []
        previous: str | None = None
        for name, net in nets.items():
            with torch.inference_mode():
                acc = float((predict_logits(net, test.x).argmax(1) == test.y).float().mean())
            rows.append({"model": name, "size_bytes": model_bytes(net), "latency_ms_b1": round(b1[name], 4), "latency_ms_b64": round(b64[name], 4),
                         "test_accuracy": round(acc, 4), "against": previous})  # fmt: skip
            previous = name
        return rows


def from_scale(results: Path) -> dict[str, Any] | None:
    """``gate_over_forward_floor`` from ``scale.json``, with that file's commit, date and staleness (not this run's)."""
    path = results / "scale.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    prov = data.get("provenance") or {}
    return {"file": "scale.json", "commit": prov.get("commit"), "date": (prov.get("date") or "")[:10], "configuration": prov.get("configuration"),
            "gate_over_forward_floor": data.get("gate_over_forward_floor"), "stale": provenance.stale_note("scale.md", results)}  # fmt: skip


def measure_startup(repeats: int, work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """``bench.startup.one_repeat`` per mode and repeat (alternating the order), without its whole-project ``dvc repro``."""
    from bench.startup import MODES, one_repeat
    from pipeline.core import warm

    envs = {"cold": env | {warm.WARM_ENV: "0"}, "warm": {k: v for k, v in env.items() if k != warm.WARM_ENV}}
    runs = []
    for repeat in range(repeats):
        for mode in MODES if repeat % 2 == 0 else reversed(MODES):
            runs.append(one_repeat(work, mode, envs[mode], repro=False))
            print(f"  start-up repeat {repeat + 1} {mode}: {json.dumps(runs[-1])}", flush=True)
    return runs


# --- writing --------------------------------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def goal_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The issue's goals: (goal, measured, met)."""
    rows: list[tuple[str, str, str]] = []
    demo = result["demo"]
    rows.append(
        (f"demo pipeline (`dvc repro` after `make clean`) ≤ {DEMO_SECONDS:.0f} s", f"{demo['wall_seconds']:.0f} s", met(demo["wall_seconds"], DEMO_SECONDS))
    )
    groups = (
        (f"every learn step ≤ {LEARN_OVER_REFERENCE:g}× the all-at-once training", lambda r: r["figure"].startswith("learn step")),
        (f"every exact deletion step ≤ {EXACT_OVER_REFERENCE:g}× the all-at-once training",
         lambda r: r["figure"].startswith("exact deletion") and r["denominator"] == "all-at-once"),
        (f"every deletion step ≤ {DELETION_OVER_LEARN:g}× the median learn step", lambda r: r["denominator"] == "median learn step"),
        ("every approximate deletion no slower than the exact path of its request from the same parent (≤ 1×)", lambda r: r["figure"] == LIKE_FOR_LIKE),
    )  # fmt: skip
    later = [r for r in result["ratios"] if LATER_REPRO in r["figure"] and r["denominator"] == "median learn step"]
    if later:
        r = later[0]
        rows.append((f"a deletion step in a later `dvc repro` (the bank kept by seal) ≤ {DELETION_OVER_LEARN:g}× the median learn step",
                     f"{_x(r['ratio'])} (`{r['numerator']}`)", r["met"]))  # fmt: skip
    for label, wanted in groups:
        pool = [r for r in result["ratios"] if wanted(r)]
        w = worst(pool, "")
        if w is not None:
            rows.append((label, f"worst {_x(w['ratio'])} (`{w['numerator']}`)", "met" if all(r["met"] == "met" for r in pool) else "NOT met"))
        elif "approximate" in label and any(s.get("deletion") == "approximate" for s in result.get("steps", [])):
            rows.append((label, "not measured in this run", "-"))
    start = result["startup"]["summary"]
    for mode in ("cold", "warm"):
        if mode not in start:
            continue
        figures = start[mode]
        train = max(figures["ume base (start-up)"]["median"], figures["ume step (start-up)"]["median"])
        status, audit = figures["ume status"]["median"], figures["ume audit"]["median"]
        light = max(status, audit)
        composing = figures.get("ume audit --compose")
        paid = "" if composing is None else f"; an audit that composes the champion (the first after a new champion or an upgrade): {composing['median']:.2f} s"
        rows.append((f"training-stage start-up ≤ {TRAINING_STARTUP:g} s ({mode}, median)", f"{train:.2f} s", met(train, TRAINING_STARTUP)))
        rows.append(
            (
                f"`ume status` / `ume audit` ≤ {LIGHT_STARTUP:g} s ({mode}, median, whole process)",
                f"{light:.2f} s (status {status:.2f} s, audit {audit:.2f} s{paid})",
                met(light, LIGHT_STARTUP),
            )
        )
    comp = result["compression"]
    by_name = {r["model"]: r for r in comp}
    for r in comp:
        if r["against"] is None:
            continue
        base = by_name[r["against"]]
        b1, b64 = r["latency_ms_b1"] / base["latency_ms_b1"], r["latency_ms_b64"] / base["latency_ms_b64"]
        size = r["size_bytes"] / base["size_bytes"]
        points = 100 * (base["test_accuracy"] - r["test_accuracy"])
        if size < 0.5:  # int8: a quarter of the bytes
            ok = b1 <= INT8_B1 and b64 <= INT8_B64 and points <= 1.0
            rows.append((f"int8 (`{r['model'][2:]}`) ≤ {INT8_B1:g}× at batch 1, ≤ {INT8_B64:g}× at batch 64, within 1 point (this run)",
                         f"{b1:.2f}× / {b64:.2f}×, {points:+.1f} points lost", "met" if ok else "NOT met"))  # fmt: skip
        else:
            ok = min(size, b1, b64) <= PRUNE_SIZE_OR_LATENCY and points <= 1.0
            rows.append((f"pruning (`{r['model'][2:]}`) ≤ {PRUNE_SIZE_OR_LATENCY:g}× size or latency, within 1 point (this run)",
                         f"size {size:.2f}×, {b1:.2f}× / {b64:.2f}× at batch 1 / 64, {points:+.1f} points lost", "met" if ok else "NOT met"))  # fmt: skip
    scale = result.get("from_files", {}).get("scale")
    if scale and scale.get("gate_over_forward_floor") is not None:
        g = scale["gate_over_forward_floor"]
        note = f"**not from this run**: from scale.json ({scale['commit']}, {scale['date']})" + ("; stale" if scale.get("stale") else "")
        rows.append((f"gate ≤ {GATE_OVER_FLOOR:g}× the forward floor at 16×", f"{g:.2f}× ({note})", met(g, GATE_OVER_FLOOR)))
    return rows


def markdown(result: dict[str, Any]) -> str:
    """Goals, every step against the reference, the ratios, start-up, compression, what is not from this run."""
    ref, demo, champ = result["reference"], result["demo"], result["champion"]
    startup_s, mode = result["stage_startup_seconds"], result["demo_mode"]
    lines = [
        f"One run, {result['seconds']:.0f} s in all: the demo pipeline, the all-at-once training, start-up per command, compression."
        f" End to end = a stage's own seconds (its step record) + the training-stage start-up measured in this run"
        f" ({mode}, median: {startup_s:.2f} s); the all-at-once training is timed in-process from opening the data to its test accuracy,"
        f" plus the same start-up. The demo pipeline: `dvc repro` after `make clean`, {demo['wall_seconds']:.0f} s;"
        f" its step stages' own seconds sum to {sum(s['seconds'] for s in result['steps']):.0f} s.",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        *(f"| {g} | {m} | {ok} |" for g, m, ok in goal_rows(result)),
        "",
        "| all-at-once training (the reference) | |",
        "|---|---|",
        f"| data | {ref['samples']} samples ({', '.join(f'{k} {v}' for k, v in ref['samples_by_slice'].items())}): every training sample"
        f" in the lineage of champion v{ref['champion_version']} (`{ref['composition']}`), {ref['deleted_samples']} deleted samples left out |",
        f"| recipe | `train.base`, {ref['epochs']} epochs, from scratch |",
        f"| seconds | {ref['seconds']:.1f} in-process (open data {ref['open_seconds']:.1f}, train {ref['train_seconds']:.1f}, test;"
        f" the median of {_repeats(ref)}); {result['reference_end_to_end']:.1f} end to end |",
        f"| test accuracy | {100 * ref['test_accuracy']:.1f}% (the champion: {_pct(champ.get('test_accuracy'))}) |",
        f"| held-out accuracy per slice, mean | {_heldout(ref['heldout_accuracy'])}, mean {_pct(ref['heldout_mean'])} "
        f"(the champion: {_heldout(champ.get('heldout_accuracy') or {})}, mean {_pct(champ.get('heldout_mean'))}) |",
        "",
        "| step | kind | method | decision | own s | operator s | gate and rest s | shadows trained in the gate"
        " | stage wall in `dvc repro` s | end to end s | × all-at-once |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["steps"]:
        op = s["operator_seconds"]
        rest = None if op is None else s["seconds"] - op
        bank = s.get("reference_bank")
        trained = "-" if not bank else f"{bank['trained']} of {bank['shadows']} ({bank['seconds']:.1f} s)"
        name = f"`{s['step']}`" + (f" ({s['order']})" if s.get("order") else "")
        lines.append(
            f"| {name} | {s['kind']} | {s['method'] or '-'} | {s['decision']} | {s['seconds']:.1f} | {_s(op)} | {_s(rest)} | {trained} | {_s(s['stage_wall'])}"
            f" | {s['end_to_end']:.1f} | {_x(s['end_to_end'] / result['reference_end_to_end'])} |"
        )
    for s in result["steps"]:
        if s.get("order") != EXACT_INSTEAD:
            continue
        own = s["step"].removesuffix(" as exact")
        approx = next((a for a in result["steps"] if a["step"] == own), None)
        bank, parent_bank = s.get("reference_bank") or {}, s.get("parent_reference_bank") or {}
        approx_bank = (approx or {}).get("reference_bank") or {}
        lines += [
            "",
            f"`{s['step']}`: the request of `{own}` served by the exact path instead, from the same parent (`{s['parent']}`, {s['parent_decision']}"
            f" again in the second run, its gate trained {parent_bank.get('trained', '-')} shadow(s)), in a copy of the project:"
            f" `dvc repro step@{own}` {s['repro_seconds']:.0f} s in all; its gate trained {bank.get('trained', '-')} shadow(s),"
            f" the approximate step's {approx_bank.get('trained', '-')}. The exact phase that followed the approximate one in the demo"
            " starts from the shadows the approximate step's gate trained, so its ratio below has no goal.",
        ]
    lines += ["", "| ratio (end to end) | step | against | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for r in result["ratios"]:
        goal = "-" if r["goal"] is None else f"≤ {r['goal']:g}×"
        lines.append(
            f"| {r['figure']} | `{r['numerator']}` {r['numerator_seconds']:.1f} s | {r['denominator']} {r['denominator_seconds']:.1f} s"
            f" | {_x(r['ratio'])} | {goal} | {r['met']} |"
        )
    summary = result["startup"]["summary"]
    modes = [m for m in ("cold", "warm") if m in summary]
    lines += ["", f"| start-up per command (s; {result['startup']['repeats']} runs each) | " + " | ".join(f"{m} min | {m} median" for m in modes) + " |",
              "|---|" + "---:|---:|" * len(modes)]  # fmt: skip
    for name in summary[modes[0]] if modes else ():
        lines.append(f"| `{name}` | " + " | ".join(f"{summary[m][name]['min']:.2f} | {summary[m][name]['median']:.2f}" for m in modes) + " |")
    lines += ["", "| the final champion, each export transform added in turn (this run) | size | b1 ms | b64 ms | × previous b1 / b64 | test acc |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    by_name = {r["model"]: r for r in result["compression"]}
    for r in result["compression"]:
        prev = by_name.get(r["against"]) if r["against"] else None
        rel = "-" if prev is None else f"{r['latency_ms_b1'] / prev['latency_ms_b1']:.2f}× / {r['latency_ms_b64'] / prev['latency_ms_b64']:.2f}×"
        lines.append(
            f"| `{r['model']}` | {r['size_bytes'] / 1024:.0f} KiB | {r['latency_ms_b1']:.3f} | {r['latency_ms_b64']:.3f} | {rel}"
            f" | {100 * r['test_accuracy']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _heldout(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}%" for k, v in values.items()) or "-"


def main(argv: Sequence[str] | None = None) -> int:
    """``ume bench speed --project DIR``."""
    parser = argparse.ArgumentParser(prog="ume bench speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="a fresh clone of the project with its .venv (make .venv/.ume-installed); required unless --render")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reference-repeats", type=int, default=3, help="all-at-once trainings (the median is the reference)")
    parser.add_argument("--startup-repeats", type=int, default=3, help="fresh small projects per mode (cold, warm) for the start-up figures")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument(
        "--reuse-demo",
        action="store_true",
        help=f"do not rerun the demo: reuse the finished one in --project and the timing an earlier run saved there ({DEMO_SAVED})",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite speed.md from speed.json (runs nothing)")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((args.out / "speed.json").read_text())
        (args.out / "speed.md").write_text(markdown(result))
        return 0
    if args.project is None:
        parser.error("the following arguments are required: --project")
    from pipeline.core import warm

    project = args.project.resolve()
    bin_dir = project / ".venv" / "bin"
    if not (bin_dir / "ume").exists() or not (project / "dvc.yaml").is_file():
        raise SystemExit(f"{project}: not a project with its virtual environment (run `make .venv/.ume-installed` there)")
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="ume-speed-"))
    env = {k: v for k, v in os.environ.items() if k not in (warm.DIR_ENV,)}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
            warm.DIR_ENV: str(work / "warm")}  # fmt: skip
    (work / "warm").mkdir(mode=0o700)
    demo_mode = "warm" if env.get(warm.WARM_ENV, "1") != "0" and warm.enabled() else "cold"
    try:
        if args.reuse_demo:
            demo = json.loads((project / DEMO_SAVED).read_text())
            print(f"1/7 the demo pipeline: reusing the run of {demo['date']} in {project}", flush=True)
        else:
            print(f"1/7 the demo pipeline in {project} (make clean, then dvc repro)", flush=True)
            demo = run_demo(project, env, work / "dvc-repro.log")
            demo["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            (project / DEMO_SAVED).write_text(json.dumps(demo, indent=1) + "\n")  # --reuse-demo reads it
        print(f"  dvc repro: {demo['wall_seconds']:.1f} s", flush=True)
        print(f"2/7 the all-at-once training on all promoted data, {args.reference_repeats} time(s)", flush=True)
        reference = median_reference([train_reference(project) for _ in range(args.reference_repeats)])
        print(f"  {reference['samples']} samples, {reference['seconds']:.1f} s (median of {reference['repeat_seconds']}), test accuracy"
              f" {reference['test_accuracy']:.4f}", flush=True)
        print("3/7 compression of the final champion at batch 1 and 64", flush=True)
        compression = compression_rows(project, args.latency_repeats)
        later = None
        if not args.reuse_demo:  # a reused demo may hold this request already
            print("4/7 a deletion request in a later `dvc repro` (the bank kept by seal)", flush=True)
            later = later_deletion(project, env, work / "dvc-repro-later.log")
            print(f"  {later['step']} (owner {later['owner']}): dvc repro {later['wall_seconds']:.1f} s, the step {later['record']['seconds']:.1f} s,"
                  f" reference bank {later['record'].get('reference_bank')}", flush=True)  # fmt: skip
        instead = None
        approximate = approximate_step(project)
        if approximate is not None:
            print(f"5/7 {approximate[0]}'s request served exactly instead, from the same parent (a copy of the project, a second `dvc repro`)",
                  flush=True)  # fmt: skip
            instead = exact_instead(project, env, work, approximate[0])
            print(f"  dvc repro step@{approximate[0]}: {instead['wall_seconds']:.1f} s, the step {instead['record']['seconds']:.1f} s,"
                  f" reference bank {instead['record'].get('reference_bank')}", flush=True)  # fmt: skip
        print(f"6/7 start-up per command, {args.startup_repeats} fresh small project(s) per mode", flush=True)
        os.environ[warm.DIR_ENV] = env[warm.DIR_ENV]
        if demo_mode == "warm":  # started and listening before anything is timed, as bench.startup does
            subprocess.run([str(bin_dir / "ume"), "warm", "start"], cwd=project, env=env, capture_output=True, timeout=300)
        runs = measure_startup(args.startup_repeats, work, {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"})
    finally:
        subprocess.run([str(bin_dir / "ume"), "warm", "stop"], cwd=project, env=env, capture_output=True)
        with contextlib.suppress(Exception):
            warm.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("7/7 ratios", flush=True)
    summary = startup_summary(runs)
    startup_s = summary[demo_mode]["ume step (start-up)"]["median"]
    steps = step_rows(project, demo["stage_walls"])
    if later is not None:  # its record is in the project now: listed once, with its order
        steps = [s for s in steps if s["step"] != later["step"]]
        rec, method = later["record"], later["entry"].get("method") or "exact"
        steps.append(
            {
                "step": later["step"], "kind": "forget", "method": method, "deletion": deletion_class("forget", method),
                "request": later["entry"].get("request"), "decision": rec.get("decision"), "seconds": float(rec.get("seconds") or 0.0),
                "operator_seconds": (rec.get("notes") or {}).get("operator_seconds"), "stage_wall": later["stage_walls"].get(f"step@{later['step']}"),
                "version": rec.get("version"), "reference_bank": rec.get("reference_bank"), "order": LATER_REPRO, "owner": later["owner"],
                "repro_seconds": later["wall_seconds"],
            }
        )  # fmt: skip
    if instead is not None:
        rec = instead["record"]
        steps.append(
            {
                "step": f"{instead['step']} as exact", "kind": "forget", "method": "exact", "deletion": "exact", "request": instead["entry"].get("request"),
                "decision": rec.get("decision"), "seconds": float(rec.get("seconds") or 0.0),
                "operator_seconds": (rec.get("notes") or {}).get("operator_seconds"), "stage_wall": None, "version": rec.get("version"),
                "reference_bank": rec.get("reference_bank"), "order": EXACT_INSTEAD,
                "repro_seconds": instead["wall_seconds"], "parent": instead["parent"], "parent_decision": instead["parent_decision"],
                "parent_reference_bank": instead["parent_reference_bank"],
            }
        )  # fmt: skip
    for s in steps:
        s["end_to_end"] = round(s["seconds"] + startup_s, 2)
    reference_e2e = round(reference["seconds"] + startup_s, 2)
    shipped = provenance.fingerprint(tuple(provenance.PARTS), project / "params.yaml") == provenance.fingerprint(tuple(provenance.PARTS))
    setup = "default" if shipped else f"a project whose params.yaml differs from the shipped one ({project / 'params.yaml'})"
    result: dict[str, Any] = {
        "demo": demo,
        "demo_mode": demo_mode,
        "stage_startup_seconds": startup_s,
        "steps": steps,
        "champion": champion_figures(project),
        "reference": reference,
        "reference_end_to_end": reference_e2e,
        "ratios": ratio_rows(steps, reference_e2e),
        "startup": {"repeats": args.startup_repeats, "summary": summary, "runs": runs},
        "compression": compression,
        "from_files": {"scale": from_scale(args.out)},
        "seconds": round(time.time() - started, 1),
    }
    result["goals"] = [{"goal": g, "measured": m, "met": ok} for g, m, ok in goal_rows(result)]
    result["provenance"] = provenance.record(
        "speed", argv, configuration=setup, root=project, wall_seconds=demo["wall_seconds"], seconds=result["seconds"],
        reference="in-process all-at-once training plus the training-stage start-up measured in the same run",
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "speed.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
