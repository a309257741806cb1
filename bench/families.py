"""Which timm families run every step kind: a tiny stream per architecture on the real runner.

    python -m bench.families [--archs test_resnet test_vit test_efficientnet test_convnext] [--out bench/results]

For each architecture a project is made in a temporary directory from this repository's
``params.yaml`` (digits at ``--image-size`` px, short training), and the real stages run in-process:
``prepare``, ``base``, then one step of every kind: ``learn`` (LoRA), ``forget`` with ``exact`` and
with ``ssd``, ``edit`` (LoRA, the repository's edit spec with fewer epochs), ``merge`` (``fold``),
``compress`` (``prune``, then ``quantize``). Each cell is ``ok (<decision>)``, ``refused: <the
error ume printed>`` (a clear error naming the field) or ``failed: <exception>`` (a bug).
Results: ``bench/results/families.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import provenance

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("test_resnet", "test_vit", "test_efficientnet", "test_convnext")
STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("learn", {"kind": "learn", "slice": "u1", "epochs": 3}),
    ("forget/exact", {"forget": "exact"}),
    ("forget/ssd", {"forget": "ssd"}),
    ("edit", {"kind": "edit", "spec": "edit-spec.yaml"}),
    ("merge/fold", {"kind": "merge", "method": "fold"}),
    ("compress/prune", {"kind": "compress", "method": "prune", "sparsity": 0.3}),
    ("compress/quantize", {"kind": "compress", "method": "quantize"}),
)


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _project(root: Path, arch: str, image_size: int) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"]["store"] = str(root / "store")
    raw["registry"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    raw["behaviors"]["path"] = str(REPO / "behaviors")
    raw["behaviors"]["references"] = {"shadows": 4, "min_shadows": 4}
    raw["data"]["image_size"] = image_size
    raw["data"]["corrupt_labels"] = {}
    raw["model"]["arch"] = arch
    raw["train"]["progress_bar"] = False
    raw["train"]["base"]["epochs"] = 6
    # The matrix asks whether each step kind *runs*; the gate's quality bounds are the demo's business.
    from behaviors.context import DEFAULT_THRESHOLDS

    raw["behaviors"]["thresholds"] = {k: 0.0 if k.startswith("min_") else 1e9 for k in DEFAULT_THRESHOLDS if k.startswith(("min_", "max_"))}
    raw["behaviors"]["thresholds"]["forget_accuracy_tolerance"] = 1e9
    del raw["stream"]
    spec = yaml.safe_load((REPO / "edits" / "specs" / "tilted-field.yaml").read_text())
    spec["train"]["epochs"] = 5
    (root / "edit-spec.yaml").write_text(yaml.safe_dump(spec))
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False) + "stream:\n")
    return root / "params.yaml"


def _owner(ws, slice_name: str, skip: set[str]) -> str:
    from pipeline.data.table import SampleTable

    table = SampleTable.load(ws.data_dir).rows
    return next(o for o in table.loc[table["slice"] == slice_name, "owner"] if o not in skip)


def run_family(arch: str, image_size: int, log: Callable[[str], None]) -> dict[str, str]:
    """Every step kind on ``arch``; the outcome of each."""
    from pipeline.cli import append_stream_step, main
    from pipeline.core.errors import UmeError
    from pipeline.steps import open_workspace, run_base, run_prepare, run_step

    out: dict[str, str] = {}
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=f"ume-{arch}-") as tmp:
        root = Path(tmp)
        params = _project(root, arch, image_size)
        os.chdir(root)
        try:
            try:
                ws = open_workspace(params)
                run_prepare(ws)
                record = run_base(ws).record
                out["base"] = f"ok ({record['decision']})"
            except UmeError as exc:
                out["base"] = f"refused: {exc}"
                return out
            except Exception as exc:  # noqa: BLE001  (a bug: recorded, the matrix goes on)
                out["base"] = f"failed: {type(exc).__name__}: {exc}"
                return out
            parent, used = "base", set()
            for n, (name, step) in enumerate(STEPS, start=1):
                key = f"s{n:02d}"
                started = time.perf_counter()
                try:
                    if "forget" in step:
                        owner = _owner(open_workspace(params), "u1", used)
                        used.add(owner)
                        try:
                            main(["--params", str(params), "forget", "--owner", owner, "--method", step["forget"], "--defer-exact", "--reason", "bench"])
                        except SystemExit as code:
                            if code.code:
                                raise UmeError(f"`ume forget` exited {code.code}") from None
                        key = list(yaml.safe_load(params.read_text())["stream"])[-1]
                    else:
                        append_stream_step(params, key, {**step, "parent": parent})
                    record = run_step(open_workspace(params), key).record
                    out[name] = f"ok ({record['decision']}{': ' + ', '.join(record['failing']) if record['failing'] else ''})"
                except UmeError as exc:
                    out[name] = f"refused: {exc}"
                except Exception as exc:  # noqa: BLE001
                    out[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                parent = key if key in yaml.safe_load(params.read_text())["stream"] else parent
                log(f"{arch:18s} {name:18s} {out[name][:110]} ({time.perf_counter() - started:.1f} s)")
        finally:
            os.chdir(old)
    return out


def markdown(results: dict[str, dict[str, str]], meta: dict[str, Any]) -> str:
    """One row per architecture, one column per step kind."""
    columns = ["base", *(name for name, _ in STEPS)]
    lines = [
        "# Step kinds by timm family",
        "",
        f"{meta['machine']}; {meta['date']}; digits at {meta['image_size']} px, short training; {meta['wall_seconds']:.0f} s.",
        "",
        "`ok (decision)`: the step ran through the gate (the matrix lowers the accuracy bounds: it asks whether a step",
        "kind runs, not whether it is good); `refused`: ume stopped with a clear error; `failed`: an exception (a bug).",
        "",
        "| arch | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arch, row in results.items():
        lines.append(f"| `{arch}` | " + " | ".join(row.get(c, "not run").replace("|", "/") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``ume bench families``."""
    parser = argparse.ArgumentParser(prog="ume bench families", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    _quiet()
    started = time.perf_counter()
    results = {arch: run_family(arch, args.image_size, print) for arch in args.archs}
    meta = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "image_size": args.image_size,
        "wall_seconds": time.perf_counter() - started,
    }
    prov = provenance.record("families", argv, configuration=f"other architectures ({', '.join(args.archs)}) at {args.image_size} px, short training")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "families.json").write_text(json.dumps({"families": results, "meta": meta, "provenance": prov}, indent=1))
    (args.out / "families.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
