"""The demo stream with a ResNet-18 on a GPU in bf16 mixed precision, timed stage by stage.

    python -m bench.gpu_demo [--arch resnet18] [--precision bf16-mixed] [--devices 1] [--out bench/results]

Copies this project (code, ``params.yaml``, ``requests/``, DVC files; no store, no registry) into a
temporary directory, sets ``model.arch``, ``train.accelerator: gpu``, ``train.precision`` (and, with
``--devices N`` > 1, ``strategy: ddp``), then runs the README's main job there: ``dvc repro`` of the
whole stream on the embedded default data. Each stage's wall time (its ``ume`` process included) is
read from DVC's ``Running stage`` lines as they arrive; each step's own time and decision from its
step record. Results: ``bench/results/gpu_demo.json``.

Without a CUDA GPU it says so and exits with status 2, having run nothing. ``--accelerator cpu``
(with ``--arch test_resnet --base-epochs 10 --steps 1`` to be quick) times the same plumbing on the
CPU instead (bf16 there needs ``--image-size 32`` or more: PyTorch's CPU bf16 backward is wrong on
the 1x1 maps that 16 px images leave in the last stage, and ume stops naming ``train.precision``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(
    ".venv", "store", "mlruns", "mlartifacts", "mlflow.db", ".git", "tmp", "cache", "config.local", "dvc.lock", "__pycache__",
    ".hypothesis", "*.egg-info", "dvc_plots", "certificates", "bench", "docs", "tests", ".pytest_cache", ".ruff_cache",
)
STAGE_LINE = re.compile(r"^Running stage '(?P<stage>[^']+)'")
NO_GPU = 2


def project(dest: Path, args: argparse.Namespace) -> Path:
    """A fresh copy of this project with the GPU settings in its ``params.yaml``."""
    shutil.copytree(REPO, dest, ignore=IGNORE)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["model"]["arch"] = args.arch
    raw["train"].update(accelerator=args.accelerator, devices=args.devices, precision=args.precision, progress_bar=False)
    if args.devices > 1:
        raw["train"]["strategy"] = "ddp"
    if args.base_epochs is not None:
        raw["train"]["base"]["epochs"] = args.base_epochs
    if args.image_size is not None:
        raw["data"]["image_size"] = args.image_size
    if args.steps is not None:
        raw["stream"] = dict(list(raw["stream"].items())[: args.steps])
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def timed_repro(root: Path, log_path: Path) -> tuple[dict[str, float], float, int]:
    """``dvc repro`` in ``root``: seconds per stage (from one ``Running stage`` line to the next), total, exit status."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    stages: dict[str, float] = {}
    current, started = None, time.perf_counter()
    since = started
    with open(log_path, "w") as log, subprocess.Popen(
        ["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            match = STAGE_LINE.match(line.strip())
            if match:
                now = time.perf_counter()
                if current is not None:
                    stages[current] = round(now - since, 2)
                current, since = match["stage"], now
                print(f"  {match['stage']} ...", flush=True)
        status = proc.wait()
    end = time.perf_counter()
    if current is not None:
        stages[current] = round(end - since, 2)
    return stages, round(end - started, 2), status


def step_records(root: Path) -> dict[str, dict[str, Any]]:
    """Each step's own seconds, decision and version, from ``store/steps/<id>.json``."""
    out = {}
    for path in sorted((root / "store" / "steps").glob("*.json")):
        record = json.loads(path.read_text())
        out[path.stem] = {k: record.get(k) for k in ("seconds", "decision", "version", "world_size")}
    return out


def device_name(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu", "auto"])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--devices", type=int, default=1, help="GPUs; more than 1 trains with strategy: ddp")
    parser.add_argument("--base-epochs", type=int, default=None, help="override train.base.epochs (default: params.yaml's)")
    parser.add_argument("--steps", type=int, default=None, help="run only the first N stream steps (default: all)")
    parser.add_argument("--image-size", type=int, default=None, help="override data.image_size (default: params.yaml's 16)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project (its path is printed)")
    args = parser.parse_args(argv)

    import torch

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print(
            "bench.gpu_demo: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); nothing was run. "
            "Run it on a machine with a GPU, or pass --accelerator cpu to time the same stream on the CPU.",
            file=sys.stderr,
        )
        return NO_GPU
    if args.accelerator == "gpu" and args.devices > torch.cuda.device_count():
        print(f"bench.gpu_demo: --devices {args.devices}, but torch sees {torch.cuda.device_count()} GPU(s)", file=sys.stderr)
        return NO_GPU

    tmp = Path(tempfile.mkdtemp(prefix="ume-gpu-demo-"))
    root = project(tmp / "project", args)
    print(f"bench.gpu_demo: {args.arch}, {args.accelerator} x{args.devices}, {args.precision}, in {root}", flush=True)
    stages, total, status = timed_repro(root, tmp / "dvc-repro.log")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "dvc repro",
        "arch": args.arch,
        "accelerator": args.accelerator,
        "devices": args.devices,
        "precision": args.precision,
        "image_size": args.image_size or 16,
        "device": device_name(args.accelerator),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "exit_status": status,
        "total_seconds": total,
        "stage_seconds": stages,
        "steps": step_records(root),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "gpu_demo.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    width = max((len(s) for s in stages), default=5)
    for stage, seconds in stages.items():
        step = result["steps"].get(stage.split("@")[-1], {})
        extra = f"  step {step['seconds']} s, {step['decision']}" if step.get("seconds") is not None else ""
        print(f"  {stage:<{width}}  {seconds:8.1f} s{extra}")
    print(f"  {'total':<{width}}  {total:8.1f} s   -> {out}")
    if status != 0:
        print(f"bench.gpu_demo: dvc repro exited {status}; its log: {tmp / 'dvc-repro.log'}", file=sys.stderr)
    elif not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
