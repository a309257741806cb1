"""``ume bench lifelong``: does a composition keep what each update taught, and can it still delete exactly?

Two streams built from scikit-learn's digits (16 px, greyscale), where every update slice teaches something
the clean base lacks:

- ``looks`` (domain-incremental): the embedded default of ``params.yaml`` itself (``data.looks``): the base
  holds the digits as scanned; ``u1`` brings them inverted (white background), ``u2`` rotated by 90 degrees,
  ``u3`` mirrored; owners, the atypical contributors and the held-out splits (test and canary samples by
  ``domain``) as ``ume prepare`` makes them, at each seed; ``u2``'s labels clean (in the demo they are all
  wrong, for the gate to block). Every slice holds all ten classes.
- ``classes`` (class-incremental): the base holds digits 0-3, ``u1`` 4-5, ``u2`` 6-7, ``u3`` 8-9; each slice
  keeps a quarter of its samples as its own held-out split. After every step ``i`` each composition is
evaluated on every slice's held-out split: the accuracy matrix ``R[i, j]``, from which ACC, BWT and FWT follow
(Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"; FWT against the base's own
accuracy on slice ``j``, ``R[0, j]``). The reference is one model of the same architecture trained on all
slices at once with the base's budget (``joint``).

Compositions, each built from ume's own parts (timm ``test_resnet``, peft LoRA, Lightning):

- ``parallel``: a LoRA adapter per slice trained on the clean base (licensed replay), folded at ``1/k``
  (ume's default before this benchmark: SISA's aggregation at adapter level);
- ``summed``: the same adapters folded at weight 1 (task arithmetic, Ilharco et al. 2023);
- ``stacked``: each adapter trained on the champion with replay from its lineage (every earlier slice);
- ``routed``: ume's ``layout: routed`` (``pipeline/model/routing.py``): the same adapters as ``parallel``, each
  kept whole as an expert (base + adapter), and a router made of each overlay's own detectors, fitted on its
  own training data only (Gaussians per class with a tied Ledoit-Wolf covariance over the 8x8-pooled image);
  an input goes to the expert whose slice detector scores it highest, if that beats the base's score (O3,
  Gao et al. 2024: use an adapter only when its out-of-distribution detector fires);
- ``routed-full``: as ``routed`` with full-rank experts (the whole network fine-tuned from the base);
- ``joint``: the reference, retrained from scratch on all promoted data.

Deletion: for one owner in each update slice, the components whose training data held the owner's samples
are rebuilt without them (exact by construction; the lineage accounting is checked, not assumed), and the
time is compared with one ``joint`` retraining. These are operator times: the gate that follows a deletion
step in ume (one evaluation of the candidate) is not included; ``ume bench forget-exact`` measures whole steps.

Results: ``bench/results/lifelong.json`` (``rows``: composition, stream, seed, step, slice, accuracy;
``summary`` per stream and composition), ``lifelong.md`` and ``lifelong.png`` (the R heat maps).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench import provenance
from edits.learn.lora import LoraLearnConfig
from pipeline.core.config import load_params
from pipeline.core.console import quiet_lightning
from pipeline.data.digits import build_digits_table
from pipeline.data.table import EVAL_SLICES, NO_OWNER
from pipeline.model.lora import LoraSettings, adapter_tensors, attach_lora, fold_lora, lora_targets
from pipeline.model.net import create_net, predict_logits
from pipeline.model.routing import Detector, RoutedNetwork, Router
from pipeline.model.training import Classifier

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ARCH, SIZE, CLASSES = "test_resnet", 16, 10
BASE_EPOCHS, BASE_LR = 30, 0.003  # params.yaml train.base
_LEARN = LoraLearnConfig(slice="-")  # the shipped defaults of edits/learn/lora.py
LEARN_EPOCHS, LEARN_LR, RANK, ALPHA = _LEARN.epochs, _LEARN.lr, _LEARN.rank, _LEARN.alpha
FULL_LR = 0.001
OWNER_SIZE = 20
COMPOSITIONS = ("parallel", "summed", "stacked", "routed", "routed-full", "joint")


# ------------------------------------------------------------------------------------------ data


@dataclass
class Slice:
    """One slice of a stream: training samples with their owners, and the slice's own held-out split."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    owners: np.ndarray
    x_eval: torch.Tensor
    y_eval: torch.Tensor

    def without(self, owner: str) -> Slice:
        """The slice with one owner's samples removed."""
        keep = torch.from_numpy(self.owners != owner)
        return Slice(self.name, self.x[keep], self.y[keep], self.owners[keep.numpy()], self.x_eval, self.y_eval)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.from_numpy(raw.target).long()


def _split(name: str, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, owner_start: int) -> Slice:
    order = rng.permutation(len(x))
    n_eval = len(x) // 4
    ev, tr = order[:n_eval], order[n_eval:]
    owners = np.array(["-" if name == "base" else f"{name}-w{owner_start + i // OWNER_SIZE:03d}" for i in range(len(tr))])
    return Slice(name, x[tr], y[tr], owners, x[ev], y[ev])


def default_stream(seed: int) -> list[Slice]:
    """The embedded default of ``params.yaml`` (its looks, owners and held-out splits, at ``seed``), with
    clean labels: the bad data drop of ``u2`` is the gate's to block, not a composition's to learn."""
    params = load_params(ROOT / "params.yaml")
    data = dataclasses.replace(params.data, corrupt_labels={})
    table, _ = build_digits_table(data, seed)
    rows = table.rows
    images = table.images.read(np.arange(len(table))).float() / 255
    labels = torch.from_numpy(rows["label"].to_numpy(dtype=np.int64).copy())
    slices = []
    for name in ["base", *sorted(data.looks)]:
        train = torch.from_numpy((rows["slice"] == name).to_numpy().copy())
        held = torch.from_numpy((rows["slice"].isin(EVAL_SLICES) & (rows["domain"] == name)).to_numpy().copy())
        owners = rows.loc[train.numpy(), "owner"].replace(NO_OWNER, "-").to_numpy()
        slices.append(Slice(name, images[train], labels[train], owners, images[held], labels[held]))
    return slices


def make_stream(kind: str, seed: int) -> list[Slice]:
    """The slices of a stream, base first."""
    if kind == "looks":
        return default_stream(seed)
    if kind != "classes":
        raise ValueError(f"unknown stream {kind!r}")
    x, y = _digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    groups = {"base": (0, 1, 2, 3), "u1": (4, 5), "u2": (6, 7), "u3": (8, 9)}
    slices = []
    for name, labels in groups.items():
        mask = torch.isin(y, torch.tensor(labels))
        slices.append(_split(name, x[mask], y[mask], rng, 0))
    return slices


# -------------------------------------------------------------------------------------- training


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch: int, seed: int, freeze_norm: bool) -> float:
    """Train ``net`` in place with ume's Classifier and a real Lightning Trainer; returns seconds."""
    quiet_lightning()
    started = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
    module = Classifier(net, lr=lr, weight_decay=1e-4, epochs=epochs, augment_shift=1, freeze_norm_stats=freeze_norm)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
    )
    trainer.fit(module, train_dataloaders=loader)
    net.eval()
    return time.perf_counter() - started


def train_from_scratch(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[nn.Module, float]:
    """The base's recipe (params.yaml ``train.base``)."""
    torch.manual_seed(seed)
    net = create_net(ARCH, CLASSES, 1)
    seconds = _fit(net, x, y, epochs=BASE_EPOCHS, lr=BASE_LR, batch=64, seed=seed, freeze_norm=False)
    return net, seconds


def _with_replay(
    new: Slice, pool_x: torch.Tensor, pool_y: torch.Tensor, seed: int, pool_owners: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    """The slice plus as many replayed samples from the pool (``replay: 1.0``), and the owners of what was used (lineage)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool_x), generator=g)[: len(new.x)]
    replayed = set(pool_owners[pick.numpy()]) if pool_owners is not None else {"-"}
    return torch.cat([new.x, pool_x[pick]]), torch.cat([new.y, pool_y[pick]]), set(new.owners) | replayed


def train_adapter(under: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[dict[str, torch.Tensor], LoraSettings, float]:
    """A LoRA adapter on ``under`` (weights and norm statistics frozen), as ``edits/learn/lora.py`` trains one."""
    net = copy.deepcopy(under)
    for p in net.parameters():
        p.requires_grad_(True)
    settings = LoraSettings(rank=RANK, alpha=ALPHA, targets=lora_targets(net))
    peft_net = attach_lora(net, settings, seed=seed)
    seconds = _fit(peft_net, x, y, epochs=LEARN_EPOCHS, lr=LEARN_LR, batch=32, seed=seed, freeze_norm=True)
    return adapter_tensors(peft_net), settings, seconds


def train_full_expert(base: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[nn.Module, float]:
    """Every weight of a copy of the base fine-tuned on the slice (norm statistics frozen)."""
    net = copy.deepcopy(base)
    for p in net.parameters():
        p.requires_grad_(True)
    seconds = _fit(net, x, y, epochs=LEARN_EPOCHS, lr=FULL_LR, batch=32, seed=seed, freeze_norm=True)
    return net, seconds


def fold(base: nn.Module, adapters: list[tuple[dict[str, torch.Tensor], LoraSettings]], weight: float) -> nn.Module:
    """The base with adapters folded in at ``weight`` each (ume's compose)."""
    net = copy.deepcopy(base)
    for tensors, settings in adapters:
        net = fold_lora(net, tensors, LoraSettings(settings.rank, settings.alpha * weight, settings.targets))
    return net.eval()


# ------------------------------------------------------------------------------------- measuring


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy."""
    with torch.no_grad():
        return float((predict_logits(net, x).argmax(1) == y).float().mean())


def latency_ratio(net: nn.Module, base: nn.Module, x: torch.Tensor, reps: int = 40) -> float:
    """``net``'s forward time over ``base``'s on the same batch ``x``, timed alternately (one call of each per
    round, so drift and contention hit both), fastest call of each: the cost of the network, not of the machine."""
    net.eval()
    base.eval()
    with torch.no_grad():
        for _ in range(3):
            net(x)
            base(x)
        times: dict[str, list[float]] = {"net": [], "base": []}
        for _ in range(reps):
            for name, model in (("net", net), ("base", base)):
                t = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t)
    return min(times["net"]) / min(times["base"])


def served_batch(slices: list[Slice], batch: int, seed: int) -> torch.Tensor:
    """``batch`` held-out inputs drawn evenly at random from every slice's split: a mixed batch as served."""
    x = torch.cat([s.x_eval for s in slices])
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:batch]
    return x[pick]


def cl_metrics(r: list[list[float]]) -> dict[str, float]:
    """ACC, BWT, FWT of an accuracy matrix (rows: after step i; columns: slice j; row 0 = the base)."""
    t = len(r) - 1
    acc = statistics.mean(r[t])
    bwt = statistics.mean(r[t][j] - r[j][j] for j in range(t)) if t else 0.0
    fwt = statistics.mean(r[j - 1][j] - r[0][j] for j in range(1, t + 1)) if t else 0.0
    return {"acc": acc, "bwt": bwt, "fwt": fwt}


def run_stream(kind: str, seed: int, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every composition on one stream and seed: accuracy rows and per-composition figures."""
    slices = make_stream(kind, seed)
    base_slice, updates = slices[0], slices[1:]
    base, base_seconds = train_from_scratch(base_slice.x, base_slice.y, seed)
    evals = [(s.x_eval, s.y_eval) for s in slices]

    def row_of(net: nn.Module) -> list[float]:
        return [accuracy(net, x, y) for x, y in evals]

    r: dict[str, list[list[float]]] = {c: [row_of(base)] for c in COMPOSITIONS if c != "joint"}
    adapters, adapter_seconds, stacked, stacked_seconds, full, full_seconds = [], [], [], [], [], []
    slice_detectors: list[Detector] = []
    reference_detectors: list[Detector] = []

    def routed(experts: list[nn.Module]) -> RoutedNetwork:
        return RoutedNetwork(experts, Router(slice_detectors, reference_detectors))

    lineage_x, lineage_y, lineage_owners = base_slice.x, base_slice.y, base_slice.owners
    used: dict[str, set[str]] = {"base": set(base_slice.owners)}  # component -> owners of its training data
    champion_stacked = base
    for i, new in enumerate(updates, start=1):
        x, y, owners = _with_replay(new, base_slice.x, base_slice.y, seed + i)  # licensed replay: base samples only
        used[f"adapter-{i}"] = used[f"expert-{i}"] = used[f"detector-{i}"] = owners
        tensors, settings, seconds = train_adapter(base, x, y, seed + i)
        adapters.append((tensors, settings))
        adapter_seconds.append(seconds)
        sx, sy, used[f"stacked-{i}"] = _with_replay(new, lineage_x, lineage_y, seed + i, lineage_owners)  # lineage replay: every earlier slice
        s_tensors, s_settings, seconds = train_adapter(champion_stacked, sx, sy, seed + i)
        stacked.append((s_tensors, s_settings))
        stacked_seconds.append(seconds)
        champion_stacked = fold(champion_stacked, [(s_tensors, s_settings)], 1.0)
        expert, seconds = train_full_expert(base, x, y, seed + i)
        full.append(expert)
        full_seconds.append(seconds)
        slice_detectors.append(Detector.fit(new.x, new.y))  # as edits/learn/lora.py does for layout: routed
        reference_detectors.append(Detector.fit(x[len(new.x) :], y[len(new.x) :]))  # the replayed samples
        lineage_x, lineage_y = torch.cat([lineage_x, new.x]), torch.cat([lineage_y, new.y])
        lineage_owners = np.concatenate([lineage_owners, new.owners])
        experts = [base] + [fold(base, [a], 1.0) for a in adapters]
        r["parallel"].append(row_of(fold(base, adapters, 1.0 / i)))
        r["summed"].append(row_of(fold(base, adapters, 1.0)))
        r["stacked"].append(row_of(champion_stacked))
        r["routed"].append(row_of(routed(experts)))
        r["routed-full"].append(row_of(routed([base, *full])))
        log(f"  {kind} seed {seed} step {i}: " + ", ".join(f"{c} {statistics.mean(rows[-1]):.3f}" for c, rows in r.items()))
    joint_x = torch.cat([s.x for s in slices])
    joint_y = torch.cat([s.y for s in slices])
    joint, joint_seconds = train_from_scratch(joint_x, joint_y, seed)
    joint_row = row_of(joint)
    served = {
        "parallel": fold(base, adapters, 1.0 / len(adapters)),
        "summed": fold(base, adapters, 1.0),
        "stacked": champion_stacked,
        "routed": routed([base] + [fold(base, [a], 1.0) for a in adapters]),
        "routed-full": routed([base, *full]),
        "joint": joint,
    }
    batches = {b: served_batch(slices, b, seed) for b in (1, 64)}
    routed_final = served["routed"]
    all_eval_x = torch.cat([s.x_eval for s in slices])
    truth = torch.cat([torch.full((len(s.x_eval),), i) for i, s in enumerate(slices)])
    with torch.no_grad():
        routing_accuracy = float((routed_final.router(all_eval_x) == truth).float().mean())

    # Deletion: one owner of each update slice; rebuild exactly what saw them, timed against a joint retrain.
    deletion: dict[str, list[float]] = {c: [] for c in COMPOSITIONS}
    exact: dict[str, list[bool]] = {c: [] for c in COMPOSITIONS}
    for i, new in enumerate(updates, start=1):
        owner = sorted(set(new.owners))[0]
        kept = new.without(owner)
        x, y, _ = _with_replay(kept, base_slice.x, base_slice.y, seed + 100 + i)
        _, _, adapter_s = train_adapter(base, x, y, seed + 100 + i)
        started = time.perf_counter()
        Detector.fit(kept.x, kept.y)
        Detector.fit(x[len(kept.x) :], y[len(kept.x) :])
        detector_s = time.perf_counter() - started
        _, full_s = train_full_expert(base, x, y, seed + 100 + i)
        # stacked: the slice's adapter and every later one (their lineage replay holds the owner), in sequence
        stacked_s = adapter_s + sum(stacked_seconds[i:])
        retrain_s = joint_seconds
        deletion["parallel"].append(adapter_s / retrain_s)
        deletion["summed"].append(adapter_s / retrain_s)
        deletion["routed"].append((adapter_s + detector_s) / retrain_s)
        deletion["routed-full"].append((full_s + detector_s) / retrain_s)
        deletion["stacked"].append(stacked_s / retrain_s)
        deletion["joint"].append(1.0)
        # lineage accounting: which components' training data held the owner, and are they all rebuilt?
        served_parts = {
            "parallel": ["base", *(f"adapter-{k}" for k in range(1, len(updates) + 1))],
            "routed": ["base", *(f"{kind_}-{k}" for k in range(1, len(updates) + 1) for kind_ in ("adapter", "detector"))],
            "routed-full": ["base", *(f"{kind_}-{k}" for k in range(1, len(updates) + 1) for kind_ in ("expert", "detector"))],
            "stacked": ["base", *(f"stacked-{k}" for k in range(1, len(updates) + 1))],
        }
        served_parts["summed"] = served_parts["parallel"]
        held = {c: {p for p in parts if owner in used[p]} for c, parts in served_parts.items()} | {"joint": {"joint"}}
        rebuilt = {  # what the deletion above retrained (stacked: the slice's adapter and every later one)
            "parallel": {f"adapter-{i}"},
            "summed": {f"adapter-{i}"},
            "routed": {f"adapter-{i}", f"detector-{i}"},
            "routed-full": {f"expert-{i}", f"detector-{i}"},
            "stacked": {f"stacked-{j}" for j in range(i, len(updates) + 1)},
            "joint": {"joint"},
        }
        for c in COMPOSITIONS:
            exact[c].append(held[c] <= rebuilt[c])

    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for c in COMPOSITIONS:
        matrix = r[c] if c != "joint" else [joint_row]
        for step, values in enumerate(matrix):
            for j, value in enumerate(values):
                at = step if c != "joint" else len(updates)
                rows.append({"composition": c, "stream": kind, "seed": seed, "step": at, "slice": slices[j].name, "accuracy": value})
        figures = cl_metrics(matrix) if c != "joint" else {"acc": statistics.mean(joint_row), "bwt": None, "fwt": None}
        lat = {b: latency_ratio(served[c], base, batches[b]) for b in (1, 64)}
        summary[c] = {
            **figures,
            "joint_acc": statistics.mean(joint_row),
            "matrix": matrix,
            "deletion_exact_share": statistics.mean(exact[c]),
            "deletion_cost_median": statistics.median(deletion[c]),
            "deletion_cost_worst": max(deletion[c]),
            "latency_ratio_b1": lat[1],
            "latency_ratio_b64": lat[64],
        }
    summary["routed"]["routing_accuracy"] = routing_accuracy
    summary["routed-full"]["routing_accuracy"] = routing_accuracy
    summary["_seconds"] = {
        "base": base_seconds,
        "joint": joint_seconds,
        "adapter_median": statistics.median(adapter_seconds),
        "full_expert_median": statistics.median(full_seconds),
    }
    return rows, summary


def aggregate(per_seed: dict[str, list[dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean over seeds (and the spread of ACC) per stream and composition."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = (
        "acc", "bwt", "fwt", "joint_acc", "deletion_exact_share", "deletion_cost_median", "deletion_cost_worst",
        "latency_ratio_b1", "latency_ratio_b64", "routing_accuracy",
    )
    for stream, runs in per_seed.items():
        out[stream] = {}
        for c in COMPOSITIONS:
            entry: dict[str, Any] = {"seeds": len(runs)}
            for k in keys:
                values = [run[c][k] for run in runs if run[c].get(k) is not None]
                if values:
                    entry[k] = statistics.mean(values)
            entry["deletion_cost_worst"] = max(run[c]["deletion_cost_worst"] for run in runs)
            entry["acc_min"] = min(run[c]["acc"] for run in runs)
            entry["acc_max"] = max(run[c]["acc"] for run in runs)
            entry["matrix_mean"] = np.mean([run[c]["matrix"] for run in runs], axis=0).round(4).tolist()
            out[stream][c] = entry
    return out


def eligible(summary: dict[str, dict[str, dict[str, Any]]], max_cost: float = 0.3) -> list[str]:
    """The compositions whose deletions are all exact and cost at most ``max_cost`` x a retrain, on every stream."""
    return [
        c for c in COMPOSITIONS if c != "joint"
        and all(summary[s][c]["deletion_exact_share"] == 1.0 and summary[s][c]["deletion_cost_worst"] <= max_cost for s in summary)
    ]


def choose(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The best worst-stream ACC among the :func:`eligible` compositions; where none is, among those whose deletions are all exact."""
    pool = eligible(summary) or [c for c in COMPOSITIONS if c != "joint" and all(summary[s][c]["deletion_exact_share"] == 1.0 for s in summary)]
    return max(pool, key=lambda c: min(summary[s][c]["acc"] for s in summary))


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def markdown(summary: dict[str, dict[str, dict[str, Any]]], chosen: str, seeds: list[int], seconds: float) -> str:
    """The tables for the README and docs."""
    rule = (
        "best worst-stream ACC among those whose every deletion is exact and costs at most 0.3x a retrain"
        if eligible(summary)
        else "no composition's deletions all cost at most 0.3x a retrain: best worst-stream ACC among those whose every deletion is exact"
    )
    lines = [
        f"`ume bench lifelong`, {time.strftime('%Y-%m-%d')}, seeds {', '.join(map(str, seeds))}, {seconds:.0f} s on this 2-core machine."
        f" Composition chosen: **{chosen}** ({rule}). Means over seeds; ACC, BWT, FWT in points; deletion cost = operator time of"
        " an owner's exact deletion over one joint retraining (gate not included); latency: the fastest of 40 alternating calls"
        " against the base's, on a mixed batch of held-out inputs, at batch 1 / 64.",
        "",
    ]
    for stream, table in summary.items():
        lines += [
            f"Stream `{stream}`:",
            "",
            "| composition | ACC | ACC range | BWT | FWT | joint ACC | exact deletions | deletion cost median / worst | latency b1 / b64 | routing accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in COMPOSITIONS:
            e = table[c]
            routing = f"{100 * e['routing_accuracy']:.1f}%" if "routing_accuracy" in e else "-"
            lines.append(
                f"| `{c}` | {100 * e['acc']:.1f} | {100 * e['acc_min']:.1f}-{100 * e['acc_max']:.1f} | {_points(e.get('bwt'))} | {_points(e.get('fwt'))}"
                f" | {100 * e['joint_acc']:.1f} | {100 * e['deletion_exact_share']:.0f}% | {e['deletion_cost_median']:.3f} / {e['deletion_cost_worst']:.3f}"
                f" | {e['latency_ratio_b1']:.2f} / {e['latency_ratio_b64']:.2f} | {routing} |"
            )
        lines.append("")
    lines += [
        f"Per stream, the chosen composition (`{chosen}`) against the reference and the earlier default:",
        "",
        f"| stream | `{chosen}` ACC | BWT | joint ACC | `parallel` ACC | `stacked` ACC | deletion cost worst | latency b1 / b64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stream, table in summary.items():
        e = table[chosen]
        lines.append(
            f"| `{stream}` | {100 * e['acc']:.1f} | {_points(e.get('bwt'))} | {100 * e['joint_acc']:.1f} | {100 * table['parallel']['acc']:.1f}"
            f" | {100 * table['stacked']['acc']:.1f} | {e['deletion_cost_worst']:.3f} | {e['latency_ratio_b1']:.2f} / {e['latency_ratio_b64']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def heatmaps(summary: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """R (rows: after step i; columns: slice j) per stream and composition, means over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in COMPOSITIONS if c != "joint"]
    fig, axes = plt.subplots(len(summary), len(comps), figsize=(3 * len(comps), 3 * len(summary)), squeeze=False)
    for row, (stream, table) in enumerate(summary.items()):
        for col, c in enumerate(comps):
            ax = axes[row][col]
            m = np.array(table[c]["matrix_mean"])
            ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", color="white" if m[i, j] < 0.6 else "black", fontsize=8)
            ax.set_xticks(range(m.shape[1]), ["base", "u1", "u2", "u3"][: m.shape[1]])
            ax.set_yticks(range(m.shape[0]), [f"after {s}" for s in ["base", "u1", "u2", "u3"][: m.shape[0]]])
            ax.set_title(f"{stream}: {c} (ACC {100 * table[c]['acc']:.1f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run every stream and seed, write lifelong.{json,md,png}."""
    parser = argparse.ArgumentParser(prog="ume bench lifelong", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--streams", nargs="+", default=["looks", "classes"], choices=["looks", "classes"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    rows: list[dict[str, Any]] = []
    per_seed: dict[str, list[dict[str, dict[str, Any]]]] = {s: [] for s in args.streams}
    for stream in args.streams:
        for seed in args.seeds:
            found, summary = run_stream(stream, seed, print)
            rows += found
            per_seed[stream].append(summary)
    summary = aggregate(per_seed)
    chosen = choose(summary)
    seconds = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "provenance": provenance.record(
            "lifelong",
            argv,
            configuration=f"every composition on the looks and classes streams, {BASE_EPOCHS}-epoch bases and {LEARN_EPOCHS}-epoch learn steps",
            seeds=args.seeds,
            arch=ARCH,
            image_size=SIZE,
            base_epochs=BASE_EPOCHS,
            learn_epochs=LEARN_EPOCHS,
            rank=RANK,
            seconds=round(seconds, 1),
        ),
        "rows": rows,
        "summary": summary,
        "per_seed_seconds": [run["_seconds"] for runs in per_seed.values() for run in runs],
        "composition_chosen": chosen,
    }
    (args.out / "lifelong.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "lifelong.md").write_text(markdown(summary, chosen, args.seeds, seconds))
    heatmaps(summary, args.out / "lifelong.png")
    print((args.out / "lifelong.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
