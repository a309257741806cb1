"""``ume bench startup``: what a command pays before and after its own work, cold and with the warm process.

For each mode (``cold``: ``UME_WARM=0``, every command its own interpreter that imports torch, timm,
Lightning and MLflow; ``warm``: the warm process of docs/start-up.md, started and waited for before
anything is timed) and each repeat, in a fresh small project (this repository's pipeline, an 8-epoch base
and one 3-epoch learn step on the embedded digits):

- ``ume prepare``, ``ume base``, ``ume step s01`` run one after the other, each timed as a whole process;
  a stage's *start-up* is its wall time less the seconds its step record gives for its own work (from
  its step context to its record), so it holds the interpreter, the imports, reading ``params.yaml``,
  opening the workspace and the exit;
- ``ume status``, ``ume audit --compose`` (composes the champion: what the first audit after a new champion
  or an upgrade pays; ``seal`` runs it in every ``dvc repro``) and ``ume audit`` again (the champion taken
  from the record the first one left) on the finished project, whole process;
- the whole ``dvc repro`` of the same project (prepare, base, s01, seal) from nothing: the end-to-end
  figure a user waits for.

The warm process's own one-time import time is read from its log. Medians over the repeats; every run is
in the JSON. Writes ``bench/results/startup.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench import provenance
from bench.crash import IGNORE, REPO
from pipeline.core import warm

RESULTS = REPO / "bench" / "results"
MODES = ("cold", "warm")
STAGES = (("prepare", ("prepare",)), ("base", ("base",)), ("s01", ("step", "s01")))
LIGHT = (("status", ("status",)), ("audit --compose", ("audit", "--compose")), ("audit", ("audit",)))  # in this order: the second audit finds the record
LIGHT_NOTES = {"audit --compose": " (composes the champion)", "audit": " (again: the champion from the record)"}


def make_project(dest: Path) -> Path:
    """This repository's pipeline with an 8-epoch base and one 3-epoch learn step (the crash harness's project), as a fresh git project."""
    shutil.copytree(REPO, dest, ignore=IGNORE)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["train"]["progress_bar"] = False
    raw["train"]["base"]["epochs"] = 8
    raw["behaviors"]["thresholds"].update(max_group_accuracy_gap=0.5, max_group_gap_increase=0.2, max_latency_ratio=1000.0)
    raw["stream"] = {"s01": {"kind": "learn", "parent": "base", "slice": "u1", "epochs": 3}}
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def timed(cwd: Path, argv: Sequence[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole command; raises with its output when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode} in {cwd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def own_seconds(project: Path, step: str) -> float:
    """The seconds a stage's step record gives for its own work (0 for ``prepare``, which has no record)."""
    record = project / "store" / "steps" / f"{step}.json"
    return float(json.loads(record.read_text())["seconds"]) if record.exists() else 0.0


def one_repeat(work: Path, mode: str, env: dict[str, str], *, repro: bool = True) -> dict[str, Any]:
    """Every timed command of one mode in one fresh project (``repro``: also a whole ``dvc repro`` of another)."""
    project = make_project(work / f"{mode}-{time.monotonic_ns()}")
    row: dict[str, Any] = {"mode": mode, "stages": {}, "light": {}}
    for name, args in STAGES:
        wall = timed(project, ["ume", *args], env)
        own = own_seconds(project, name)
        row["stages"][name] = {"wall": round(wall, 3), "own": round(own, 3), "startup": round(wall - own, 3)}
    for name, args in LIGHT:
        row["light"][name] = round(timed(project, ["ume", *args], env), 3)
    shutil.rmtree(project, ignore_errors=True)
    if repro:
        fresh = make_project(work / f"{mode}-repro-{time.monotonic_ns()}")
        row["dvc_repro"] = round(timed(fresh, ["dvc", "repro"], env), 3)
        shutil.rmtree(fresh, ignore_errors=True)
    return row


def medians(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """The median of every figure over one mode's repeats."""
    mine = [r for r in rows if r["mode"] == mode]
    out: dict[str, Any] = {"stages": {}, "light": {}}
    for name, _ in STAGES:
        out["stages"][name] = {k: round(statistics.median(r["stages"][name][k] for r in mine), 3) for k in ("wall", "own", "startup")}
    for name, _ in LIGHT:
        if all(name in r["light"] for r in mine):
            out["light"][name] = round(statistics.median(r["light"][name] for r in mine), 3)
    out["dvc_repro"] = round(statistics.median(r["dvc_repro"] for r in mine), 3)
    return out


def markdown(summary: dict[str, Any], prov: dict[str, Any]) -> str:
    """The start-up table (cold against warm, and their ratio) with its provenance."""
    cold, hot = summary["cold"], summary["warm"]

    def row(label: str, a: float, b: float) -> str:
        return f"| {label} | {a:.2f} | {b:.2f} | {b / a:.2f}× |"

    lines = [
        "# Start-up: cold processes against the warm process",
        "",
        f"{provenance.caption(prov)} Median of {prov['repeats']} repeats.",
        "",
        "| figure (seconds, whole process) | cold | warm | warm / cold |",
        "|---|---:|---:|---:|",
    ]
    for name in ("base", "s01"):
        command = " ".join(dict(STAGES)[name])
        lines.append(
            row(
                f"`ume {command}` start-up (a training stage: its wall time less its own work)", cold["stages"][name]["startup"], hot["stages"][name]["startup"]
            )
        )
    lines.append(row("`ume prepare` (trains nothing; no step record: the whole process)", cold["stages"]["prepare"]["wall"], hot["stages"]["prepare"]["wall"]))
    for name in ("base", "s01"):
        lines.append(row(f"`ume {' '.join(dict(STAGES)[name])}`, the whole process", cold["stages"][name]["wall"], hot["stages"][name]["wall"]))
    for name, _ in LIGHT:
        if name in cold["light"] and name in hot["light"]:
            lines.append(row(f"`ume {name}`{LIGHT_NOTES.get(name, '')}", cold["light"][name], hot["light"][name]))
    lines.append(row("**`dvc repro` of the whole project, end to end**", cold["dvc_repro"], hot["dvc_repro"]))
    lines += [
        "",
        f"The warm process itself imports once: {prov['warm_import_seconds']} s (paid in the background by the first command, "
        "which runs cold). A stage's own work is shorter warm too: the modules it imports inside its step are imported already.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both modes ``--repeats`` times (alternating), write startup.{json,md}."""
    parser = argparse.ArgumentParser(prog="ume bench startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only rewrite startup.md from startup.json (runs nothing)")
    args = parser.parse_args(argv)
    if args.render:
        recorded = json.loads((args.out / "startup.json").read_text())
        (args.out / "startup.md").write_text(markdown(recorded["summary"], recorded["provenance"]))
        return 0
    if not warm.enabled():
        print("ume bench startup: the warm process is off here (UME_WARM=0, or no pidfd/fd passing)", file=sys.stderr)
        return 2
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="ume-startup-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("UME_")}
    base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
    envs = {"cold": base_env | {warm.WARM_ENV: "0"}, "warm": base_env | {warm.DIR_ENV: str(work / "warm")}}
    os.environ[warm.DIR_ENV] = envs["warm"][warm.DIR_ENV]
    log = warm.socket_path().with_suffix(".log")
    if not warm.start(wait=True):
        raise SystemExit(f"the warm process did not start; see {log}")
    found = re.search(r"after ([0-9.]+) s of imports", log.read_text())
    rows: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else reversed(MODES):
                rows.append(one_repeat(work, mode, envs[mode]))
                print(f"repeat {repeat + 1} {mode}: {json.dumps(rows[-1])}", flush=True)
    finally:
        warm.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {mode: medians(rows, mode) for mode in MODES}
    prov = provenance.record(
        "startup",
        argv,
        configuration="a fresh small project per repeat: this repository's pipeline, an 8-epoch base and one 3-epoch learn step",
        repeats=args.repeats,
        warm_import_seconds=float(found.group(1)) if found else None,
        seconds=round(time.time() - started, 1),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps({"provenance": prov, "summary": summary, "runs": rows}, indent=1) + "\n")
    (args.out / "startup.md").write_text(markdown(summary, prov))
    print((args.out / "startup.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
