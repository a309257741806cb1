"""Record what the demo stream did: ``ume status`` of a finished ``make demo``, with its provenance.

Run in a checkout where ``make demo`` (``dvc repro``) has just finished::

    python -m bench.demo --wall-seconds 412   # the measured wall time of `make demo`, install excluded

writes ``bench/results/demo.{json,md}``: the commit, date and machine, each step's decision and seconds
(from ``store/steps/``), and the status table exactly as ``ume status`` printed it. The README and
``docs/stream.md`` show that file (``python -m bench.tables``), so the walkthrough is the run's own words.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import provenance

ROOT = Path(__file__).resolve().parent.parent


def step_records(root: Path) -> list[dict]:
    """Every step record of the finished run, in the order the steps ran."""
    records = [{"step": p.stem, **json.loads(p.read_text())} for p in (root / "store" / "steps").glob("*.json")]
    return sorted(records, key=lambda r: (r.get("version") or 0, r["step"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout where `make demo` ran (default: this one)")
    parser.add_argument("--wall-seconds", type=float, default=None, help="measured wall time of `make demo` (install excluded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    ume = Path(sys.executable).with_name("ume")
    status = subprocess.run([str(ume), "status"], cwd=args.root, capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    if status.returncode != 0:
        print(f"ume status failed in {args.root}: {status.stderr.strip()}", file=sys.stderr)
        return 1
    records = step_records(args.root)
    fields = ("step", "kind", "decision", "seconds", "failing")
    steps = [{**{k: r.get(k) for k in fields}, "operator_seconds": (r.get("notes") or {}).get("operator_seconds")} for r in records]
    stage_seconds = round(sum(s["seconds"] or 0 for s in steps), 1)
    prov = provenance.record("demo", argv, root=args.root.resolve(), wall_seconds=args.wall_seconds, stage_seconds=stage_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.json").write_text(json.dumps({"provenance": prov, "steps": steps, "status": status.stdout}, indent=1) + "\n")
    wall = f"`make demo` took {args.wall_seconds:.0f} s end to end (install excluded); " if args.wall_seconds else ""
    (args.out / "demo.md").write_text(
        f"`make demo` at commit {prov['commit']}, {prov['date'][:10]}, on {prov['machine']['cores']} cores, {prov['machine']['arch']}: "
        f"{wall}its {len(steps)} step stages sum to {stage_seconds:.0f} s. `ume status` then printed:\n\n"
        f"```\n{status.stdout.rstrip()}\n```\n"
    )
    print((args.out / "demo.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
