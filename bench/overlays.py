"""Benchmark: serving latency of the base, of LoRA overlays left unmerged, and of the folded network.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685)
adds a low-rank update ``B @ A * alpha/r`` to a frozen weight. Our overlays are peft LoRA adapters
on every ``nn.Linear`` and ungrouped ``nn.Conv2d`` (:func:`pipeline.model.lora.lora_targets`), rank 8,
alpha 16. The variants, all built from the same freshly initialised timm network:

- ``base``: the plain network, no overlay.
- ``unmerged-N`` (N = 1, 3, 5): the base wrapped by peft with N adapters that are *all active at
  once*. Every adapted layer runs its frozen weight and then, per adapter, the two small LoRA
  layers, and adds the results: the overlays stay separate tensors and cost extra work per call.
- ``folded``: the ``unmerged-5`` network after peft's ``merge_and_unload()``: each overlay's
  ``B @ A * alpha/r`` is added into the weight it adapts, and the peft wrappers are removed. The
  result is a plain network with the base's architecture again; this is what composition serves.

The adapters' B matrices get non-zero random values (peft starts them at zero), so the overlays
really change the outputs; the run checks that ``unmerged-N`` differs from ``base`` and that
``folded`` equals ``unmerged-5`` within 1e-4. Latency is measured on CPU in one process, in eval
mode under ``torch.inference_mode``, with torch's default thread count (or ``--threads``): after a warm-up, each round
times one call per variant and batch size (1 and 64 images), the variants in a shuffled order per
round so that machine noise falls on all of them alike; a row reports the median over rounds.

    python -m bench.overlays [--arch test_resnet] [--rounds 200] [--out bench/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peft
import torch
import yaml
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from bench import provenance
from pipeline.model.lora import LoraSettings, attach_lora, lora_targets
from pipeline.model.net import create_net

REPO = Path(__file__).resolve().parents[1]
RANK = 8
ALPHA = 16.0
OVERLAY_COUNTS = (1, 3, 5)
BATCH_SIZES = (1, 64)
FOLD_TOLERANCE = 1e-4
B_STD = 0.05
CONTROL = "base-copy"
GOAL_FOLDED = 1.05
GOAL_UNMERGED5 = 1.5
DEFAULT_ROUNDS = 200
DEFAULT_WARMUP = 20
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice for this machine, before any --threads

Variants = dict[str, tuple[nn.Module, int]]
"""``{variant: (network, overlays)}``."""


def _require(condition: bool, message: str) -> None:
    """Like ``assert``, but also under ``python -O``."""
    if not condition:
        raise AssertionError(message)


def _project_defaults() -> dict[str, Any]:
    """Architecture, classes, channels and image size from the project's params.yaml."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return {
        "arch": str(raw["model"]["arch"]),
        "num_classes": int(raw["model"]["num_classes"]),
        "in_chans": int(raw["data"]["channels"]),
        "image_size": int(raw["data"]["image_size"]),
    }


def _randomize_b(peft_net: nn.Module, adapter: str, seed: int) -> None:
    """Give adapter ``adapter``'s B matrices non-zero random values (peft initialises them to 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_net.modules():
            if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_B", {}):
                weight = module.lora_B[adapter].weight
                weight.copy_(torch.randn(weight.shape, generator=gen) * B_STD)


def overlaid(base: nn.Module, n: int, seed: int) -> nn.Module:
    """A copy of ``base`` wrapped by peft with ``n`` LoRA adapters, all active at once, in eval mode."""
    settings = LoraSettings(rank=RANK, alpha=ALPHA, targets=lora_targets(base))
    peft_net = attach_lora(copy.deepcopy(base), settings, seed=seed)
    names = ["default"] + [f"overlay{i}" for i in range(2, n + 1)]
    for name in names[1:]:
        peft_net.add_adapter(name, copy.deepcopy(peft_net.peft_config["default"]))
    for i, name in enumerate(names):
        _randomize_b(peft_net, name, seed + 1 + i)
    peft_net.base_model.set_adapter(names, inference_mode=True)
    _require(list(peft_net.base_model.active_adapters) == names, f"not every overlay is active: {peft_net.base_model.active_adapters}")
    return peft_net.eval()


def fold(peft_net: nn.Module) -> nn.Module:
    """Merge every active adapter of a copy of ``peft_net`` into its weights: a plain network again."""
    folded = copy.deepcopy(peft_net).merge_and_unload().eval()
    left = [name for name, m in folded.named_modules() if isinstance(m, BaseTunerLayer)]
    _require(not left, f"folding left peft layers behind: {left[:3]}")
    return folded


def build_variants(arch: str, num_classes: int, in_chans: int, seed: int) -> Variants:
    """``{variant: (network, overlays)}`` for base, unmerged-1/3/5 and folded."""
    torch.manual_seed(seed)
    base = create_net(arch, num_classes, in_chans).eval()
    variants: Variants = {"base": (base, 0)}
    for n in OVERLAY_COUNTS:
        variants[f"unmerged-{n}"] = (overlaid(base, n, seed), n)
    variants["folded"] = (fold(variants[f"unmerged-{max(OVERLAY_COUNTS)}"][0]), max(OVERLAY_COUNTS))
    return variants


@torch.inference_mode()
def check_outputs(variants: Variants, x: torch.Tensor) -> dict[str, float]:
    """Assert the overlays change the outputs and folding preserves them; returns max abs differences."""
    out = {name: net(x) for name, (net, _) in variants.items()}
    diffs = {f"{name}_vs_base": float((out[name] - out["base"]).abs().max()) for name in out if name != "base"}
    for n in OVERLAY_COUNTS:
        _require(diffs[f"unmerged-{n}_vs_base"] > 10 * FOLD_TOLERANCE, f"unmerged-{n} computes the same outputs as base")
    last = f"unmerged-{max(OVERLAY_COUNTS)}"
    diffs[f"folded_vs_{last}"] = float((out["folded"] - out[last]).abs().max())
    _require(diffs[f"folded_vs_{last}"] <= FOLD_TOLERANCE, f"folded differs from {last} by {diffs[f'folded_vs_{last}']:.2e}")
    return diffs


def _time_call(net: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one forward pass."""
    start = time.perf_counter()
    net(x)
    return (time.perf_counter() - start) * 1000.0


@torch.inference_mode()
def measure(variants: Variants, inputs: dict[int, torch.Tensor], rounds: int, warmup: int, seed: int) -> dict[str, dict[int, list[float]]]:
    """Per variant and batch size, ``rounds`` timings (ms), interleaved across variants in a shuffled order per round."""
    for net, _ in variants.values():
        for x in inputs.values():
            for _ in range(warmup):
                net(x)
    order = list(variants)
    rng = random.Random(seed)
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in inputs} for name in variants}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            for b, x in inputs.items():
                times[name][b].append(_time_call(variants[name][0], x))
    return times


@torch.inference_mode()
def macs_per_image(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one image through every Conv2d and Linear (base layers and LoRA A/B alike)."""
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total += out.numel() // len(x) * per_output

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        net(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def make_rows(variants: Variants, times: dict[str, dict[int, list[float]]], x: torch.Tensor) -> list[dict[str, Any]]:
    """One row per variant: median latency per batch size, its quartiles, the ratio to base, and MACs per image."""
    base = {b: statistics.median(times["base"][b]) for b in BATCH_SIZES}
    base_macs = macs_per_image(variants["base"][0], x)
    rows = []
    for name, (net, overlays) in variants.items():
        macs = macs_per_image(net, x)
        row: dict[str, Any] = {"variant": name, "overlays": overlays, "mmacs_per_image": round(macs / 1e6, 3), "macs_ratio": round(macs / base_macs, 4)}
        for b in BATCH_SIZES:
            med = statistics.median(times[name][b])
            row[f"latency_ms_b{b}"] = round(med, 4)
            row[f"ratio_b{b}"] = round(med / base[b], 4)
            row[f"p25_ms_b{b}"] = round(_quantile(times[name][b], 0.25), 4)
            row[f"p75_ms_b{b}"] = round(_quantile(times[name][b], 0.75), 4)
            row[f"min_ms_b{b}"] = round(min(times[name][b]), 4)
        rows.append(row)
    return rows


def noise_floor(times: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
    """Median latency of an identical copy of base, timed alongside, over base's: how far noise alone moves a ratio."""
    ratios = {f"ratio_b{b}": round(statistics.median(times[CONTROL][b]) / statistics.median(times["base"][b]), 4) for b in BATCH_SIZES}
    return {"variant": CONTROL, "what": "an identical deep copy of base, timed in the same rounds; not a row", **ratios}


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two goals; each is met only when it holds at batch 1 *and* at batch 64."""
    by = {r["variant"]: r for r in rows}
    last = f"unmerged-{max(OVERLAY_COUNTS)}"
    per_batch = {
        f"b{b}": {
            f"folded_le_{GOAL_FOLDED}x_base": by["folded"][f"ratio_b{b}"] <= GOAL_FOLDED,
            f"unmerged5_le_{GOAL_UNMERGED5}x_base": by[last][f"ratio_b{b}"] <= GOAL_UNMERGED5,
        }
        for b in BATCH_SIZES
    }
    keys = list(per_batch[f"b{BATCH_SIZES[0]}"])
    met = {k: all(per_batch[f"b{b}"][k] for b in BATCH_SIZES) for k in keys}
    return {**met, "rule": "a goal is met when it holds at batch 1 and at batch 64 (median latency ratio to base)", **per_batch}


def _machine() -> str:
    cpu = f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return f"{platform.system()} {platform.machine()}, {cpu}, Python {platform.python_version()}, peft {peft.__version__}"


def markdown(result: dict[str, Any]) -> str:
    """The table of rows and one line on the goals."""
    g, c = result["goals"], result["control"]
    lines = [
        "# Serving latency with LoRA overlays",
        "",
        f"{result['machine']}; {result['date']}; {result['arch']}, {result['in_chans']}x{result['image_size']}x{result['image_size']} inputs; "
        f"LoRA rank {result['rank']}, alpha {result['alpha']:g} on {result['lora_targets']} layers; "
        f"median of {result['rounds']} interleaved rounds after {result['warmup']} warm-up calls; "
        f"{result['threads']} torch thread(s) (torch default here: {result['default_threads']}); {result['wall_seconds']:.0f} s.",
        "",
        "| variant | overlays | b1 ms | b64 ms | × base b1 | × base b64 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['overlays']} | {r['latency_ms_b1']:.3f} | {r['latency_ms_b64']:.3f} | {r['ratio_b1']:.2f} | {r['ratio_b64']:.2f} |"
        )

    def verdict(key: str) -> str:
        return "met" if g[key] else "NOT met"

    fk, uk = f"folded_le_{GOAL_FOLDED}x_base", f"unmerged5_le_{GOAL_UNMERGED5}x_base"
    macs = ", ".join(f"{r['variant']} {r['macs_ratio']:.2f}×" for r in result["rows"] if r["variant"] != "base")
    lines += [
        "",
        f"Noise floor: an identical copy of base, timed in the same rounds, came out at {c['ratio_b1']:.2f}× (b1) and "
        f"{c['ratio_b64']:.2f}× (b64) of base. Folded has exactly the base's layers and weight shapes.",
        "",
        f"Multiply-accumulates per image relative to base (Conv2d and Linear, LoRA A/B included): {macs}.",
        "",
        f"Goals (each must hold at batch 1 and at batch 64): folded ≤ {GOAL_FOLDED}× base: **{verdict(fk)}** "
        f"(b1 {g['b1'][fk]}, b64 {g['b64'][fk]}); 5 unmerged overlays ≤ {GOAL_UNMERGED5}× base: **{verdict(uk)}** "
        f"(b1 {g['b1'][uk]}, b64 {g['b64'][uk]}).",
    ]
    return "\n".join(lines) + "\n"


def run_overlay_bench(
    out_dir: Path,
    arch: str | None = None,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = DEFAULT_WARMUP,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the variants, check their outputs, time them; write ``overlays.json`` and ``overlays.md`` under ``out_dir``."""
    start = time.perf_counter()
    cfg = _project_defaults()
    if arch is not None:
        cfg["arch"] = arch
    variants = build_variants(cfg["arch"], cfg["num_classes"], cfg["in_chans"], seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg["in_chans"], cfg["image_size"], cfg["image_size"])
    inputs = {b: torch.randn((b, *shape), generator=gen) for b in BATCH_SIZES}
    diffs = check_outputs(variants, inputs[max(BATCH_SIZES)])
    log(f"outputs: {diffs}")
    control = copy.deepcopy(variants["base"][0])
    times = measure({**variants, CONTROL: (control, 0)}, inputs, rounds, warmup, seed)
    rows = make_rows(variants, times, inputs[min(BATCH_SIZES)])
    result: dict[str, Any] = {
        "rows": rows,
        "goals": goals(rows),
        "control": noise_floor(times),
        "max_abs_output_diff": diffs,
        **cfg,
        "rank": RANK,
        "alpha": ALPHA,
        "lora_targets": len(lora_targets(variants["base"][0])),
        "b_std": B_STD,
        "batch_sizes": list(BATCH_SIZES),
        "rounds": rounds,
        "warmup": warmup,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "default_threads": DEFAULT_THREADS,
        "machine": _machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "provenance": provenance.record(
            "overlays", configuration=f"a freshly initialised {cfg['arch']} with rank-{RANK} overlays on every LoRA target (serving cost only: no training)"
        ),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    (out_dir / "overlays.md").write_text(markdown(result))
    log(markdown(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.overlays [--arch ARCH] [--rounds 200] [--warmup 20] [--seed 0] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.overlays", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="timm architecture (default: model.arch of params.yaml)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"timed rounds per variant and batch size (default {DEFAULT_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"warm-up calls per variant and batch size (default {DEFAULT_WARMUP})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network, the overlays, the inputs and the order (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own default for this machine)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="output directory (default bench/results)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_overlay_bench(args.out, arch=args.arch, rounds=args.rounds, warmup=args.warmup, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
