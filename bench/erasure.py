"""Benchmark: what erasure costs, what the other mechanism would cost, and a content search of every store after it.

Runs on a project whose stream erased at least one request (after ``make demo``). In one run:

- each erasure's own seconds (recorded in its ``erasure`` ledger entry) against the deletion step that made the
  request exact (its step record's seconds), and against ``dvc gc --workspace --force`` on a copy of the project
  (the garbage collection a "rewrite and collect" erasure would need after every deletion);
- crypto-shredding's price on every read: reading every live row of ``store/data`` decrypted, against the same
  rows from an unencrypted copy (min of repeats, in one process);
- what rewriting ``store/data`` instead would cost: on the copy, the erased rows are zeroed in place and
  ``dvc repro --dry`` lists the stages DVC would then rerun, with the seconds they took when they ran;
- a content search after the erasure: every file of the project (store, DVC cache, MLflow's local artifacts,
  git) for the erased samples' pixel rows as the source gives them, and for a whole-file copy of an erased
  component (its recorded SHA-256). ``tests/test_erasure.py`` holds the controls (the same search finds the
  weights and keys before an erasure, and an unencrypted file's rows).

    python -m bench.erasure [--project .] [--out bench/results] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance

SKIP = {".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def _files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        if any(part in SKIP for part in path.relative_to(root).parts):
            continue
        if path.is_file() and not path.is_symlink():
            out.append(path)
    return out


def _erased_pixels(ws: Any, hashed: set[str]) -> list[bytes]:
    """The erased samples' pixel rows as the source gives them (the embedded digits; a folder source is the user's)."""
    from pipeline.data.digits import build_digits_table
    from pipeline.model.lineage import hash_sample_id

    if ws.params.data.source != "digits":
        return []
    table, _ = build_digits_table(ws.params.data, ws.params.seed)
    positions = [i for i, s in enumerate(table.rows["sample_id"]) if hash_sample_id(s) in hashed]
    return [table.images.read([i]).numpy().tobytes() for i in positions]


def content_search(root: Path, pixels: list[bytes], sha256s: set[str]) -> dict[str, Any]:
    """Files holding an erased pixel row, or whose bytes are an erased component's."""
    hits: list[str] = []
    searched = 0
    files = _files(root)
    for path in files:
        blob = path.read_bytes()
        searched += len(blob)
        if hashlib.sha256(blob).hexdigest() in sha256s or any(row in blob for row in pixels):
            hits.append(str(path.relative_to(root)))
    return {"files": len(files), "bytes": searched, "pixel_rows": len(pixels), "components": len(sha256s), "hits": hits}


def read_cost(ws: Any, repeats: int) -> dict[str, float]:
    """Seconds to read every live row decrypted, against the same rows from an unencrypted copy."""
    from pipeline.data.images import MemoryImages, write_store
    from pipeline.data.rowkeys import RowKeys
    from pipeline.data.table import SampleTable

    table = SampleTable.load(ws.data_dir)
    keys = RowKeys.open(ws.data_dir)
    live = np.array([i for i, s in enumerate(table.rows["sample_id"]) if not keys.is_erased(s)])
    encrypted = table.images
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_store(MemoryImages(encrypted.read(live)), Path(tmp) / "plain.safetensors")
        order = np.arange(len(live))

        def best(read: Any, rows: np.ndarray) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                for chunk in range(0, len(rows), 4096):
                    read(rows[chunk : chunk + 4096])
                times.append(time.perf_counter() - start)
            return min(times)

        decrypted = best(encrypted.read, live)
        unencrypted = best(plain.read, order)
    return {"rows": len(live), "decrypted_s": round(decrypted, 5), "unencrypted_s": round(unencrypted, 5), "per_row_us": round(1e6 * decrypted / len(live), 2)}


def rewrite_and_gc(project: Path, hashed: set[str]) -> dict[str, Any]:
    """On a copy: ``dvc gc -w -f`` (timed), then the rows zeroed in store/data and the stages DVC would rerun."""
    from pipeline.data.images import ImageFile
    from pipeline.data.table import SampleTable
    from pipeline.model.lineage import hash_sample_id

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(project, copy, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
        start = time.perf_counter()
        gc = subprocess.run(["dvc", "gc", "--workspace", "--force"], cwd=copy, capture_output=True, text=True)
        gc_seconds = time.perf_counter() - start
        rows = SampleTable.load(copy / "store" / "data").rows
        images = ImageFile(copy / "store" / "data" / "images.safetensors")
        zeroed = [i for i, s in enumerate(rows["sample_id"]) if hash_sample_id(s) in hashed]
        with open(images.path, "r+b") as fh:
            for i in zeroed:
                fh.seek(images.data_start + i * images.item_bytes)
                fh.write(bytes(images.item_bytes))
        dry = subprocess.run(["dvc", "repro", "--dry"], cwd=copy, capture_output=True, text=True)
    stages = re.findall(r"^Running stage '([^']+)'", dry.stdout, flags=re.M)
    if "base" in stages:  # a retrained base writes a new record, and every step depends on its parent's record
        records = sorted((project / "store" / "steps").glob("*.json"), key=lambda p: p.stat().st_mtime)
        stages += [f"step@{p.stem}" for p in records if p.stem != "base" and f"step@{p.stem}" not in stages]
    seconds = 0.0
    for stage in stages:
        key = "base" if stage == "base" else stage.removeprefix("step@")
        record = project / "store" / "steps" / f"{key}.json"
        if record.exists():
            seconds += float(json.loads(record.read_text()).get("seconds") or 0.0)
    return {"gc_seconds": round(gc_seconds, 2), "gc_ok": gc.returncode == 0, "rewrite_reruns": stages, "rewrite_rerun_step_seconds": round(seconds, 1)}


def run(project: Path, repeats: int) -> dict[str, Any]:
    """Every figure, from the project in ``project``."""
    from pipeline.records.deletion import DeletionLog
    from pipeline.records.erasure import ErasureLog
    from pipeline.records.workspace import Workspace

    with contextlib.chdir(project):
        ws = Workspace.open("params.yaml")
        log, erasure = DeletionLog.read(ws.ledger), ErasureLog.read(ws.ledger)
        if not erasure.done:
            raise SystemExit("no erased request in this project: run the stream first (make demo)")
        rows = []
        for entry in {e.hash: e for e in erasure.done.values()}.values():
            d = entry.data
            steps = [log.resolved[r].step for r in d["requests"] if r in log.resolved]
            step_seconds = sum(float((ws.step_record(s) or {}).get("seconds") or 0.0) for s in steps if s)
            rows.append(
                {
                    "requests": d["requests"], "step": ", ".join(s for s in steps if s), "step_seconds": round(step_seconds, 2),
                    "erasure_seconds": d.get("seconds"), "rows": d["rows"], "components": len(d["components"]), "versions": len(d["versions"]),
                    "dvc_objects": len(d["dvc_objects"]), "mlflow_artifacts": d["mlflow_artifacts_deleted"], "reports": len(d["reports"]),
                    "cache_files": d["cache_files"], "reference_shadows": d["reference_shadows"],
                }
            )  # fmt: skip
        hashed = log.hashed_ids(list(erasure.done))
        pixels = _erased_pixels(ws, hashed)
        sha256s = {c["sha256"] for e in erasure.done.values() for c in e.data["components"]}
        pending = [r for r in log.requests if r not in erasure.done]
        reads = read_cost(ws, repeats)
    search = content_search(project, pixels, sha256s)
    collect = rewrite_and_gc(project, hashed)
    return {
        "machine": {"cores": os.cpu_count(), "cpu": platform.machine()},
        "erasures": rows,
        "not_erased": pending,
        "reads": reads,
        "collect": collect,
        "search": search,
    }


def markdown(result: dict[str, Any]) -> str:
    """Three tables: each erasure against its deletion step and a dvc gc; reads; the content search."""
    collect, reads, search = result["collect"], result["reads"], result["search"]
    reruns = collect["rewrite_reruns"]
    lines = [
        "| erased request(s) | deletion step | step s | erasure s | erasure / step | `dvc gc -w -f` s | rows | components | versions "
        "| DVC objects | MLflow artifacts |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["erasures"]:
        ratio = f"{r['erasure_seconds'] / r['step_seconds']:.2f}×" if r["step_seconds"] and r["erasure_seconds"] is not None else "-"
        seconds = "-" if r["erasure_seconds"] is None else f"{r['erasure_seconds']:.2f}"
        lines.append(
            f"| {', '.join(r['requests'])} | {r['step']} | {r['step_seconds']:.1f} | {seconds} | {ratio} | {collect['gc_seconds']:.1f} | "
            f"{r['rows']} | {r['components']} | {r['versions']} | {r['dvc_objects']} | {r['mlflow_artifacts']} |"
        )
    lines += [
        "",
        "| reading every live row of store/data | seconds | per row |",
        "|---|---|---|",
        f"| decrypted (AES-256-CTR, a key per row) | {reads['decrypted_s']:.4f} | {reads['per_row_us']:.2f} µs |",
        f"| the same {reads['rows']} rows unencrypted | {reads['unencrypted_s']:.4f} | {1e6 * reads['unencrypted_s'] / reads['rows']:.2f} µs |",
        "",
        "| the other mechanism: rewrite store/data in place | |",
        "|---|---|",
        f"| stages `dvc repro` would rerun | {len(reruns)} ({', '.join(reruns[:4])}{', …' if len(reruns) > 4 else ''}) |",
        f"| their steps' recorded seconds | {collect['rewrite_rerun_step_seconds']:.0f} |",
        "",
        "| content search after erasure | |",
        "|---|---|",
        f"| files searched (store, DVC cache, mlruns, git) | {search['files']} ({search['bytes'] / 1e6:.0f} MB) |",
        f"| erased pixel rows searched for / erased components (whole-file copies) | {search['pixel_rows']} / {search['components']} |",
        f"| files that hold one | {len(search['hits'])} |",
        f"| requests not erased (not exact) | {', '.join(result['not_erased']) or 'none'} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``ume bench erasure``."""
    parser = argparse.ArgumentParser(prog="ume bench erasure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    project = args.project.resolve()
    result = run(project, args.repeats)
    shipped = provenance.fingerprint(tuple(provenance.PARTS), project / "params.yaml") == provenance.fingerprint(tuple(provenance.PARTS))
    setup = "default" if shipped else f"a project whose params.yaml differs from the shipped one ({project / 'params.yaml'})"
    result["provenance"] = provenance.record("erasure", argv, configuration=setup)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "erasure.json").write_text(json.dumps(result, indent=1))
    (args.out / "erasure.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
