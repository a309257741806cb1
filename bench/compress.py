"""Benchmark: compression of the champion (int8 quantization, magnitude pruning) and who pays for it.

Runs in one process on the current project's champion (after ``make demo``): an fp32 baseline, int8
quantization, and a sparsity sweep of global magnitude pruning, unstructured, structured (masked
dense) and structured with the channels removed (``structured: channels``: dependency-aware groups, the
network served smaller), the last also followed by int8, each through the same ``compress`` methods
the stream uses. For every row: bytes of the served weights, latency at batch 1 and 64 on one torch
thread (the minimum of interleaved repeats, as the budget behaviour times), test accuracy, accuracy per group on the
evaluation samples (test + canary), and whether the blocking forget checks of every past deletion still
pass (the real ``behaviors/test_forget.py`` specs). The plot shows accuracy by group against
sparsity: compressed models lose accuracy on the small group first (Hooker et al. 2019).

    python -m bench.compress [--params params.yaml] [--out bench/results] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import provenance

QUANTIZE = {"method": "quantize", "setting": "int8", "options": {}}
FINETUNE_STEPS = 150


def _prune(sparsity: float, structured: bool, finetune: bool, removed: bool = False, then_int8: bool = False) -> dict[str, Any]:
    kind = "structured" if structured else "unstructured"
    options: dict[str, Any] = {"sparsity": sparsity, "structured": "channels" if removed else structured}
    if finetune:
        options["finetune_steps"] = FINETUNE_STEPS
    setting = (
        f"{kind} {sparsity:.0%}"
        + (", channels removed" if removed else "")
        + (f" + {FINETUNE_STEPS} fine-tune steps" if finetune else "")
        + (" + int8" if then_int8 else "")
    )
    return {
        "method": "prune",
        "setting": setting,
        "sparsity": sparsity,
        "structured": structured,
        "remove_channels": removed,
        "finetune": finetune,
        "then_int8": then_int8,
        "options": options,
    }


SWEEP = [
    *(_prune(s, False, False) for s in (0.5, 0.52, 0.55, 0.6, 0.7, 0.8, 0.9)),
    *(_prune(s, False, True) for s in (0.8, 0.9, 0.95)),
    *(_prune(s, True, False) for s in (0.1, 0.2, 0.3)),
    *(_prune(s, True, True) for s in (0.3, 0.4, 0.5)),
    *(_prune(s, True, False, removed=True) for s in (0.05, 0.1, 0.15, 0.2, 0.3)),
    *(_prune(s, True, True, removed=True) for s in (0.2, 0.3, 0.4)),
    *(_prune(s, True, False, removed=True, then_int8=True) for s in (0.1, 0.2)),
]


def _latencies(nets: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Minimum milliseconds per forward for every net on one torch thread, interleaved so machine noise hits all
    alike (the minimum: noise only adds time; one thread: a two-thread forward stalls whenever another process
    holds a core, as the budget behaviour found)."""
    times: dict[str, list[float]] = {name: [] for name in nets}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for net in nets.values():
                net(x)
            for _ in range(repeats):
                for name, net in nets.items():
                    start = time.perf_counter()
                    net(x)
                    times[name].append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(threads)
    return {name: min(values) for name, values in times.items()}


def _accuracy(net: nn.Module, samples) -> float:
    from pipeline.model.net import predict_logits

    return float((predict_logits(net, samples.x).argmax(1) == samples.y).float().mean()) if len(samples) else float("nan")


def _forget_checks_pass(ws, net: nn.Module, manifest, champion_net: nn.Module, champion_manifest, data) -> bool | None:
    """The real forget specs on this network, as the gate reads them: False when a blocking one fails
    (advisory population attacks only warn; None when there is no deletion to check)."""
    from behaviors.build import build_context
    from behaviors.context import ModelUnderTest
    from behaviors.suite import run_suite

    context = build_context(
        ws,
        candidate=ModelUnderTest("candidate", None, net),
        candidate_manifest=manifest,
        champion=ModelUnderTest("champion", None, champion_net),
        champion_manifest=champion_manifest,
        step={"id": "bench", "kind": "compress"},
        data=data,
    )
    if not context.forget_cases:
        return None
    results = run_suite([str(Path(ws.params.behaviors.path) / "test_forget.py")], context)
    return not any(r.outcome == "failed" and r.blocking for r in results)


def run(params_path: Path, repeats: int) -> dict[str, Any]:
    """Measure every row on the champion of the project at ``params_path``."""
    from behaviors.context import ModelUnderTest
    from behaviors.test_fairness import group_metrics
    from edits import OperatorEnv, get_method
    from pipeline.data import open_data
    from pipeline.model.compose import compose, transform_network
    from pipeline.model.lineage import version_lineage
    from pipeline.model.quantize import model_bytes
    from pipeline.model.training import make_trainer
    from pipeline.steps import open_workspace

    started = time.time()
    ws = open_workspace(params_path)
    version = ws.registry.champion()
    champion = ws.manifest_of(version)
    float_manifest = champion.float_shadow()
    data = open_data(ws.data_dir, ws.ledger, seed=ws.params.seed)
    test = data.split("test")
    fairness = test.concat(data.split("canary"), name="fairness")
    num_classes = ws.params.model.num_classes
    env = OperatorEnv(
        step="bench",
        seed=ws.params.seed,
        make_trainer=lambda epochs, steps=-1: make_trainer(ws.params.train, max_epochs=epochs, max_steps=steps),
        champion_lineage=frozenset(version_lineage(float_manifest, ws.components)),
        champion_manifest=float_manifest,
        components=ws.components,
    )
    fp32 = compose(float_manifest, ws.components)
    nets: dict[str, nn.Module] = {"fp32": fp32}
    specs = {"fp32": {"method": "fp32", "setting": "fp32"}}
    def served_after(spec: dict[str, Any], drafts: list) -> tuple[nn.Module, Any]:
        """The float shadow with ``drafts`` applied, then ``spec``'s transform made on it and applied."""

        def shadow() -> nn.Module:
            net = compose(float_manifest, ws.components)
            for d in drafts:
                net = transform_network(net, d.tensors, d.meta, where="(unsaved transform)")
            return net

        method = get_method("compress", spec["method"])
        draft = method.fn(shadow(), data, method.parse_config(spec["options"], where="bench", file="bench"), env).transform
        return transform_network(shadow(), draft.tensors, draft.meta, where="(unsaved transform)"), draft

    for spec in (QUANTIZE, *SWEEP):
        served, draft = served_after(spec, [])
        if spec.get("then_int8"):  # a quantize step after the prune step, as the demo stream chains them
            served, _ = served_after(QUANTIZE, [draft])
        name = f"{spec['method']} {spec['setting']}"
        nets[name] = served
        specs[name] = spec
    b1 = _latencies(nets, test.x[:1], repeats)
    b64 = _latencies(nets, test.x[:64], repeats)
    rows = []
    for name, net in nets.items():
        spec = specs[name]
        rows.append(
            {
                "method": "prune + quantize" if spec.get("then_int8") else spec["method"],  # not a pruning row of the headline
                "setting": spec["setting"],
                "sparsity": spec.get("sparsity", 0.0),
                "structured": spec.get("structured", False),
                "remove_channels": spec.get("remove_channels", False),
                "finetune": spec.get("finetune", False),
                "then_int8": spec.get("then_int8", False),
                "size_bytes": model_bytes(net),
                "latency_ms_b1": round(b1[name], 4),
                "latency_ms_b64": round(b64[name], 4),
                "test_acc": round(_accuracy(net, test), 4),
                "group_acc": {g: round(m["accuracy"], 4) for g, m in group_metrics(ModelUnderTest(name, None, net), fairness, num_classes).items()},
                "forget_checks_pass": _forget_checks_pass(ws, net, float_manifest, fp32, float_manifest, data),
            }
        )
    base = rows[0]
    int8 = next(r for r in rows if r["method"] == "quantize")
    goals = {
        "int8_size_le_0.3x": int8["size_bytes"] <= 0.3 * base["size_bytes"],
        "int8_latency_b1_le_1.0x": int8["latency_ms_b1"] <= base["latency_ms_b1"],
        "int8_latency_b64_le_0.6x": int8["latency_ms_b64"] <= 0.6 * base["latency_ms_b64"],
        "int8_test_acc_drop_le_1pt": base["test_acc"] - int8["test_acc"] <= 0.01,
        "prune_size_or_latency_le_0.7x_within_1pt": any(
            min(r["size_bytes"] / base["size_bytes"], r["latency_ms_b1"] / base["latency_ms_b1"], r["latency_ms_b64"] / base["latency_ms_b64"]) <= 0.7
            and base["test_acc"] - r["test_acc"] <= 0.01
            for r in rows
            if r["method"] == "prune" and not r["then_int8"]
        ),
    }
    return {
        "champion": f"v{version}: {champion.describe()}",
        "machine": f"{platform.system()} {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "repeats": repeats,
        "timing": "minimum",
        "wall_seconds": round(time.time() - started, 1),
        "rows": rows,
        "goals": goals,
    }


def markdown(result: dict[str, Any]) -> str:
    """The README table."""
    rows = result["rows"]
    groups = sorted(rows[0]["group_acc"])
    base = rows[0]
    accs = " | ".join(f"acc {g}" for g in groups)
    head = f"| method | setting | size | × fp32 size | b1 ms | × fp32 b1 | b64 ms | × fp32 b64 | test acc | {accs} | blocking forget checks |"
    lines = [
        f"Champion {result['champion']}; {result['machine']}; {result['date']}; latency on one torch thread, "
        f"{result.get('timing', 'median')} of {result['repeats']} interleaved repeats.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        forget = {True: "pass", False: "FAIL", None: "n/a"}[r["forget_checks_pass"]]
        accs = " | ".join(f"{r['group_acc'].get(g, float('nan')):.2%}" for g in groups)
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['size_bytes'] / 1024:.0f} KiB | {r['size_bytes'] / base['size_bytes']:.2f} | "
            f"{r['latency_ms_b1']:.3f} | {r['latency_ms_b1'] / base['latency_ms_b1']:.2f} | "
            f"{r['latency_ms_b64']:.3f} | {r['latency_ms_b64'] / base['latency_ms_b64']:.2f} | "
            f"{r['test_acc']:.2%} | {accs} | {forget} |"
        )
    goals = ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["goals"].items())
    lines += ["", f"Goals: {goals}."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy by group against sparsity, unstructured and structured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    groups = sorted(rows[0]["group_acc"])
    colours = ("tab:blue", "tab:red", "tab:green")
    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = (("unstructured", False, False, "-"), ("structured", True, False, "--"), ("channels removed", True, True, ":"))

    def pruned(r: dict[str, Any], structured: bool, removed: bool, finetune: bool) -> bool:
        return (r["method"] == "prune" and r["structured"] == structured and r.get("remove_channels", False) == removed
                and r["finetune"] == finetune and not r.get("then_int8", False))

    for label, structured, removed, style in kinds:
        pts = [rows[0]] + [r for r in rows if pruned(r, structured, removed, False)]
        for group, colour in zip(groups, colours, strict=False):
            ax.plot([r["sparsity"] for r in pts], [r["group_acc"][group] for r in pts], style, marker="o", color=colour, label=f"{group}, {label}")
    ax.set_xlabel("sparsity (share of weights, or of channels when structured)")
    ax.set_ylabel("accuracy (test + canary)")
    for (label, structured, removed, _), marker in zip(kinds, ("^", "s", "D"), strict=True):
        tuned = [r for r in rows if pruned(r, structured, removed, True)]
        for group, colour in zip(groups, colours, strict=False):
            ax.scatter([r["sparsity"] for r in tuned], [r["group_acc"][group] for r in tuned], marker=marker, color=colour, s=40,
                       label=f"{group}, {label} + fine-tune")
    ax.set_title("Pruning the champion: accuracy by group")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """``ume bench compress``."""
    parser = argparse.ArgumentParser(prog="ume bench compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    result = run(args.params, args.repeats)
    shipped = provenance.fingerprint(tuple(provenance.PARTS), args.params) == provenance.fingerprint(tuple(provenance.PARTS))
    setup = "default" if shipped else f"the champion of a project whose params.yaml differs from the shipped one ({args.params})"
    result["provenance"] = provenance.record("compress", argv, configuration=setup)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compress.json").write_text(json.dumps(result, indent=1))
    (args.out / "compress.md").write_text(markdown(result))
    plot(result, args.out / "compress.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
