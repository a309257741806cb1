"""Benchmark of the approximate unlearning methods against retraining from scratch.

Run from the project root::

    .venv/bin/python -m bench.forget [--quick] [--out bench/results]

Per seed, an "original" model is trained on every training slice (base, u1, u2, u3) of the
embedded digits table without label corruption. Three deletion scenarios are then honoured:

- ``class``: every training sample of digit 7;
- ``random``: 10% of the training samples, drawn with the seed;
- ``owner``: every sample of 3 owners, drawn with the seed.

``retrain`` trains a new base from scratch on the training samples minus the forget set (same
settings and seed); ``finetune``, ``neggrad``, ``scrub``, ``ssd`` and ``salun`` are the project's
registered methods, called exactly as the forget step calls them, on the original model. The
sequential part honours owner requests one after another with ``ssd`` (each on the previous result)
and retrains at a few checkpoints.

Only the project's own code is used for data, training, the methods and the attacks; this module
only wires them together and measures.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from behaviors.mia import mia_scores
from bench import provenance
from edits.base import train_base
from edits.registry import OperatorEnv, get_method
from pipeline.core.config import BaseTrainConfig, DataConfig, Params, parse_params
from pipeline.data.digits import build_digits_table
from pipeline.data.module import SampleSet, UmeData
from pipeline.data.table import SampleTable
from pipeline.model.delta import apply_delta
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.net import predict_logits
from pipeline.model.training import make_trainer
from pipeline.records.deletion import DeletionRequest, make_request

TRAIN_SLICES = ("base", "u1", "u2", "u3")
APPROXIMATE = ("finetune", "neggrad", "scrub", "ssd", "salun")
SCENARIOS = ("class", "random", "owner")
FORGET_CLASS = 7
RANDOM_FRACTION = 0.10
OWNERS_PER_REQUEST = 3
BASE_EPOCHS = 20
SEQUENTIAL_METHOD = "ssd"
METRICS = ("forget_acc", "retain_acc", "test_acc", "mia_loss_acc", "mia_svc_acc", "seconds")
GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia_loss_acc")


@dataclass
class Setup:
    """What every scenario of one seed shares: the table, the params, the original model."""

    seed: int
    params: Params
    table: SampleTable
    full: UmeData
    train: SampleSet
    test: SampleSet
    original: nn.Module
    original_seconds: float

    @property
    def lineage(self) -> frozenset[str]:
        """Hashed ids of everything the original model was trained on."""
        return frozenset(hash_sample_ids(self.train.sample_ids))


@dataclass
class Scenario:
    """One deletion: a request, the raw ids it removes, and the classes it removes entirely."""

    name: str
    request: DeletionRequest
    forget_ids: tuple[str, ...]
    removed_classes: tuple[int, ...] = ()


def _quiet() -> None:
    """Silence Lightning's per-trainer banners (GPU available, seeds...)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _trainer_factory(params: Params) -> Callable[..., Any]:
    """``(epochs, steps=-1) -> Trainer`` as the forget step builds it, without a progress bar."""
    return lambda epochs, steps=-1: make_trainer(params.train, max_epochs=epochs, max_steps=steps)


def accuracy(net: nn.Module, samples: SampleSet) -> float:
    """Top-1 accuracy of ``net`` on ``samples`` (NaN on an empty set)."""
    if len(samples) == 0:
        return float("nan")
    return (predict_logits(net, samples.x).argmax(1) == samples.y).float().mean().item()


def _base_config() -> BaseTrainConfig:
    return replace(BaseTrainConfig(), epochs=BASE_EPOCHS)


def _train(params: Params, table: SampleTable, deleted: frozenset[str], seed: int) -> tuple[nn.Module, float]:
    """Train a base from scratch on the training slices minus ``deleted``; returns it and the seconds taken."""
    data = UmeData(table, deleted, seed=seed)
    samples = data.select("train", slices=TRAIN_SLICES)
    start = time.perf_counter()
    net, _ = train_base(
        data,
        samples,
        arch=params.model.arch,
        num_classes=params.model.num_classes,
        in_chans=params.data.channels,
        image_size=params.data.image_size,
        config=_base_config(),
        make_trainer=_trainer_factory(params),
        seed=seed,
    )
    return net, time.perf_counter() - start


def build_setup(seed: int) -> Setup:
    """The table (no label corruption) and the original model of one seed."""
    params = parse_params({"seed": seed, "train": {"progress_bar": False}})
    table, _ = build_digits_table(replace(DataConfig(), corrupt_labels={}), seed)
    full = UmeData(table, frozenset(), seed=seed)
    original, seconds = _train(params, table, frozenset(), seed)
    return Setup(
        seed=seed,
        params=params,
        table=table,
        full=full,
        train=full.select("train", slices=TRAIN_SLICES),
        test=full.split("test"),
        original=original,
        original_seconds=seconds,
    )


def _owners(train: SampleSet) -> list[str]:
    """Training owners in first-seen order (deterministic for a table); licensed samples have none."""
    return [o for o in dict.fromkeys(train.owners) if o]


def make_scenario(name: str, setup: Setup) -> Scenario:
    """The deletion request of scenario ``name`` for this seed."""
    train, rng = setup.train, np.random.default_rng(1000 + setup.seed)
    if name == "class":
        ids = tuple(s for s, y in zip(train.sample_ids, train.y.tolist(), strict=True) if y == FORGET_CLASS)
        return Scenario(name, make_request({"label": str(FORGET_CLASS)}, "bench"), ids, (FORGET_CLASS,))
    if name == "random":
        count = int(round(RANDOM_FRACTION * len(train)))
        chosen = sorted(rng.permutation(len(train))[:count].tolist())
        ids = tuple(train.sample_ids[i] for i in chosen)
        return Scenario(name, make_request({"samples": list(ids)}, "bench"), ids)
    if name == "owner":
        owners = _owners(train)
        picked = {owners[i] for i in rng.permutation(len(owners))[:OWNERS_PER_REQUEST]}
        ids = tuple(s for s, o in zip(train.sample_ids, train.owners, strict=True) if o in picked)
        return Scenario(name, make_request({"samples": list(ids)}, "bench"), ids)
    raise ValueError(f"unknown scenario {name!r} (have: {', '.join(SCENARIOS)})")


def run_method(
    name: str, net: nn.Module, setup: Setup, request: DeletionRequest, forget_ids: Sequence[str], deleted: frozenset[str]
) -> tuple[nn.Module, float]:
    """Apply registered forget method ``name`` to a copy of ``net``; returns the unlearned net and seconds.

    ``deleted`` is every sample deleted so far (the data layer drops them); ``forget_ids`` is the
    request being processed. The method's weight delta is applied to a fresh copy of ``net``.
    """
    method = get_method("forget", name)
    hashed = frozenset(hash_sample_ids(forget_ids))
    data = UmeData(setup.table, deleted | hashed, seed=setup.seed)
    env = OperatorEnv(
        step="bench",
        seed=setup.seed,
        make_trainer=_trainer_factory(setup.params),
        champion_lineage=setup.lineage,
        champion_manifest=None,
        components=None,
        request=request,
        forget_ids=hashed,
    )
    start = time.perf_counter()
    change = method.fn(copy.deepcopy(net), data, method.config_cls(), env)
    seconds = time.perf_counter() - start
    out = copy.deepcopy(net)
    for draft in change.drafts:
        apply_delta(out, draft.tensors)
    return out.eval(), seconds


def evaluate(net: nn.Module, setup: Setup, scenario: Scenario) -> dict[str, float]:
    """Forget / retain / test accuracy and both membership attacks (forgotten vs unseen test samples)."""
    forget_set = set(scenario.forget_ids)
    train = setup.train
    forget = train.take([i for i, s in enumerate(train.sample_ids) if s in forget_set])
    retain = train.take([i for i, s in enumerate(train.sample_ids) if s not in forget_set]).without_labels(scenario.removed_classes)
    test = setup.test.without_labels(scenario.removed_classes)
    classes = set(forget.y.tolist())
    unseen = setup.test.take([i for i, y in enumerate(setup.test.y.tolist()) if y in classes])
    mia = mia_scores(predict_logits(net, forget.x), forget.y, predict_logits(net, unseen.x), unseen.y, seed=setup.seed)
    return {
        "forget_acc": accuracy(net, forget),
        "retain_acc": accuracy(net, retain),
        "test_acc": accuracy(net, test),
        "mia_loss_acc": mia["loss"],
        "mia_svc_acc": mia["confidence"],
        "forget_samples": len(forget),
    }


def bench_scenario(setup: Setup, scenario: Scenario, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows for the original model, ``retrain`` and every approximate method on one scenario."""
    rows: list[dict[str, Any]] = []

    def record(method: str, net: nn.Module, seconds: float) -> None:
        row = {"scenario": scenario.name, "method": method, "seed": setup.seed, **evaluate(net, setup, scenario), "seconds": seconds}
        rows.append(row)
        log(f"  {scenario.name:6s} {method:8s} forget {row['forget_acc']:.3f} retain {row['retain_acc']:.3f} test {row['test_acc']:.3f} "
            f"mia {row['mia_loss_acc']:.3f}/{row['mia_svc_acc']:.3f} {seconds:6.1f}s")

    record("original", setup.original, 0.0)
    hashed = frozenset(hash_sample_ids(scenario.forget_ids))
    net, seconds = _train(setup.params, setup.table, hashed, setup.seed)
    record("retrain", net, seconds)
    for name in APPROXIMATE:
        net, seconds = run_method(name, setup.original, setup, scenario.request, scenario.forget_ids, frozenset())
        record(name, net, seconds)
    return rows


def _seq_row(setup: Setup, request: int, method: str, net: nn.Module, forgotten: SampleSet, seconds: float) -> dict[str, Any]:
    """One row of the sequential run: test accuracy, accuracy on everything deleted so far, seconds."""
    test_acc, forget_acc = accuracy(net, setup.test), accuracy(net, forgotten)
    return {"seed": setup.seed, "request": request, "method": method, "test_acc": test_acc, "forget_acc": forget_acc, "seconds": seconds}


def bench_sequential(setup: Setup, requests: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``requests`` owner deletions in a row: cumulative ``ssd``, and ``retrain`` every 5th request and at the end."""
    owners = _owners(setup.train)
    order = [owners[i] for i in np.random.default_rng(2000 + setup.seed).permutation(len(owners))[:requests]]
    train = setup.train
    rows: list[dict[str, Any]] = [
        {"seed": setup.seed, "request": 0, "method": "original", "test_acc": accuracy(setup.original, setup.test), "forget_acc": math.nan, "seconds": 0.0}
    ]
    net, deleted, gone = setup.original, frozenset[str](), set[str]()
    for k, owner in enumerate(order, start=1):
        ids = [s for s, o in zip(train.sample_ids, train.owners, strict=True) if o == owner]
        net, seconds = run_method(SEQUENTIAL_METHOD, net, setup, make_request({"owner": owner}, "bench"), ids, deleted)
        deleted |= frozenset(hash_sample_ids(ids))
        gone.update(ids)
        forgotten = train.take([i for i, s in enumerate(train.sample_ids) if s in gone])
        rows.append(_seq_row(setup, k, SEQUENTIAL_METHOD, net, forgotten, seconds))
        if k % 5 == 0 or k == requests:
            fresh, retrain_seconds = _train(setup.params, setup.table, deleted, setup.seed)
            rows.append(_seq_row(setup, k, "retrain", fresh, forgotten, retrain_seconds))
        log(f"  seq {k:2d} owner {owner} ({len(ids)} samples): " + ", ".join(f"{r['method']} test {r['test_acc']:.3f}" for r in rows if r["request"] == k))
    return rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per scenario and method; the gap to ``retrain`` (same seed) in points; time over retrain's."""
    reference = {(r["scenario"], r["seed"]): r for r in rows if r["method"] == "retrain"}
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["scenario"] == scenario):
            group = [r for r in rows if r["scenario"] == scenario and r["method"] == method]
            entry: dict[str, Any] = {"scenario": scenario, "method": method, "seeds": len(group)}
            entry.update({m: _mean([r[m] for r in group]) for m in METRICS})
            gaps = [_mean([abs(r[m] - reference[(scenario, r["seed"])][m]) for m in GAP_METRICS]) * 100 for r in group]
            entry["gap_to_retrain_points"] = _mean(gaps)
            retrain_seconds = _mean([reference[(scenario, r["seed"])]["seconds"] for r in group])
            entry["time_vs_retrain"] = entry["seconds"] / retrain_seconds if retrain_seconds else math.nan
            out.append(entry)
    return out


def _fmt(value: float, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(summary: list[dict[str, Any]], sequential: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown: per-scenario means, then the sequential run."""
    lines = [
        "# Unlearning benchmark",
        "",
        f"{meta['machine']}; {meta['date']}; seeds {meta['seeds']}; {meta['wall_seconds']:.0f} s"
        + ("." if meta["complete"] else " so far (INCOMPLETE: partial results)."),
        "",
        "Accuracies in %, membership-inference (MIA) attack accuracy in % (chance 50). Gap: mean absolute difference to `retrain`",
        "over forget/retain/test accuracy and loss-MIA, in points (lower is closer to the gold standard). Time: method seconds / retrain seconds.",
        "For `class`, retain and test accuracy are on the remaining classes.",
        "",
        "| scenario | method | forget acc | retain acc | test acc | MIA loss | MIA SVC | gap to retrain (pts) | time (s) | time / retrain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        cells = [
            e["scenario"],
            e["method"],
            _fmt(e["forget_acc"] * 100, ".1f"),
            _fmt(e["retain_acc"] * 100, ".1f"),
            _fmt(e["test_acc"] * 100, ".1f"),
            _fmt(e["mia_loss_acc"] * 100, ".1f"),
            _fmt(e["mia_svc_acc"] * 100, ".1f"),
            _fmt(e["gap_to_retrain_points"], ".2f"),
            _fmt(e["seconds"], ".1f"),
            _fmt(e["time_vs_retrain"], ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Sequential owner requests ({SEQUENTIAL_METHOD}, cumulative; retrain at checkpoints)",
        "",
        "Test accuracy in % (mean over seeds); forget acc is on every sample deleted so far.",
        "",
        "| request | method | test acc | forget acc | time (s) |",
        "|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["request"], r["method"]) for r in sequential)
    for request, method in keys:
        group = [r for r in sequential if r["request"] == request and r["method"] == method]
        lines.append(
            f"| {request} | {method} | {_fmt(_mean([r['test_acc'] for r in group]) * 100, '.1f')} | "
            f"{_fmt(_mean([r['forget_acc'] for r in group]) * 100, '.1f')} | {_fmt(_mean([r['seconds'] for r in group]), '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Forget accuracy against test accuracy, one panel per scenario, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 4), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        for k, method in enumerate(methods):
            group = [r for r in rows if r["scenario"] == scenario and r["method"] == method]
            marker = "*" if method == "retrain" else "o"
            xs, ys = [r["test_acc"] * 100 for r in group], [r["forget_acc"] * 100 for r in group]
            ax.scatter(xs, ys, label=method, color=colours(k), marker=marker, s=80 if marker == "*" else 36)
        ax.set_title(f"{scenario} deletion")
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("forget-set accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine() -> str:
    cpu = f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return f"{platform.system()} {platform.machine()}, {cpu}, Python {platform.python_version()}"


def _clean(value: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, so the JSON is strict (shared by the benches)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run_forget_bench(out_dir: Path, seeds: Sequence[int] = (0, 1, 2), sequential_requests: int = 20, quick: bool = False) -> dict:
    """Run the benchmark, write ``forget.json``, ``forget_sequential.json``, ``forget.md`` and ``forget.png`` under ``out_dir``.

    ``quick``: one seed, the ``owner`` scenario only and 3 sequential requests (a smoke run).
    Returns the content of ``forget.json`` with the sequential rows under ``"sequential"``.
    """
    _quiet()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenarios = ("owner",) if quick else SCENARIOS
    seeds = tuple(seeds)[:1] if quick else tuple(seeds)
    sequential_requests = min(sequential_requests, 3) if quick else sequential_requests

    def log(message: str) -> None:
        print(message, flush=True)

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sequential: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}

    def write(complete: bool) -> dict[str, Any]:
        """Write every output from what has been measured so far (a partial run still leaves results)."""
        summary = summarize(rows)
        meta.update(
            machine=_machine(),
            date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            seeds=list(seeds),
            scenarios=list(scenarios),
            quick=quick,
            complete=complete,
            base_epochs=BASE_EPOCHS,
            wall_seconds=time.perf_counter() - start,
        )
        meta["provenance"] = provenance.record(
            "forget", configuration="methods compared on one model trained on every slice at once (no stream, no label corruption, no looks)"
        )
        result = {"rows": rows, "summary": summary, **meta}
        (out_dir / "forget.json").write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
        seq = {"rows": sequential, "method": SEQUENTIAL_METHOD, "requests": sequential_requests, **meta}
        (out_dir / "forget_sequential.json").write_text(json.dumps(_clean(seq), indent=1, allow_nan=False) + "\n")
        (out_dir / "forget.md").write_text(markdown(summary, sequential, meta))
        if rows:
            plot(rows, out_dir / "forget.png")
        return result

    for seed in seeds:
        setup = build_setup(seed)
        log(f"seed {seed}: original trained in {setup.original_seconds:.1f}s, test acc {accuracy(setup.original, setup.test):.3f}")
        for name in scenarios:
            rows += bench_scenario(setup, make_scenario(name, setup), log)
            write(complete=False)
        if sequential_requests > 0:
            sequential += bench_sequential(setup, sequential_requests, log)
            write(complete=False)
    result = write(complete=True)
    log(f"done in {meta['wall_seconds']:.0f}s; wrote {out_dir}/forget.json, forget_sequential.json, forget.md, forget.png")
    return {**result, "sequential": sequential}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.forget [--quick] [--out DIR] [--seeds 0 1 2] [--requests 20]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.forget", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, the owner scenario, 3 sequential requests")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory (default bench/results)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--requests", type=int, default=20, help="sequential owner requests (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: 2 threads on a shared 2-core machine ran 10x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_forget_bench(args.out, seeds=tuple(args.seeds), sequential_requests=args.requests, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
