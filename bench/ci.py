"""``python -m bench.ci``: time ``bash .ci/run`` on a clean clone, as CI runs it, and record it.

Clones this checkout's ``HEAD`` into ``--workdir`` (a ``shared`` link beside the clone points at this
checkout's ``../shared``, as CI lays it out), runs ``bash .ci/run`` there with ``CI=true`` (a missing
engine fails instead of skipping), and writes ``bench/results/ci.json``: the whole wall time (install
included), pytest's own summary (passed, skipped, failed, the suite's seconds) and the provenance of
the clone. The README's CI row and docs/testing.md are generated from it (``python -m bench.headline``).
The clone's full log stays in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import provenance

SUMMARY = re.compile(r"=+ (?P<counts>[^=]*?) in (?P<seconds>[0-9.]+)s(?: \([0-9:]+\))? =+")


def pytest_summary(log: str) -> dict[str, Any]:
    """pytest's last summary line as numbers: passed, skipped, failed, errors, xfailed and the suite's seconds."""
    found = list(SUMMARY.finditer(log))
    if not found:
        raise ValueError("no pytest summary line in the log")
    last = found[-1]
    counts = {name: 0 for name in ("passed", "skipped", "failed", "errors", "xfailed", "xpassed")}
    for number, name in re.findall(r"(\d+) (\w+)", last.group("counts")):
        counts["errors" if name == "error" else name] = int(number)
    return {**counts, "suite_seconds": float(last.group("seconds"))}


def markdown(result: dict[str, Any]) -> str:
    """The CI figures for docs/testing.md (``python -m bench.tables`` pastes them)."""
    tests = ", ".join(f"{result[k]} {k}" for k in ("passed", "skipped", "xfailed", "failed", "errors") if result[k])
    return (
        "\n".join(
            [
                provenance.caption(result["provenance"]),
                "",
                "| figure | value |",
                "|---|---|",
                f"| `bash .ci/run`, clean clone, install included (goal ≤ 12 min) | {result['wall_seconds'] / 60:.1f} min ({result['wall_seconds']:.0f} s) |",
                f"| the suite alone (pytest's own time, two workers) | {result['suite_seconds']:.0f} s |",
                f"| everything else (venv, install, Debian package check, pytest start) | {result['wall_seconds'] - result['suite_seconds']:.0f} s |",
                f"| tests | {tests} |",
                f"| exit code | {result['exit_code']} |",
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ci", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ume-ci"), help="where the clone is made (emptied first)")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    clone = args.workdir / "main"
    subprocess.run(["git", "clone", "-q", str(provenance.ROOT), str(clone)], check=True)
    shared = (provenance.ROOT.parent / "shared").resolve()
    if shared.is_dir():
        (args.workdir / "shared").symlink_to(shared)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["CI"] = "true"
    log_path = args.workdir / "ci.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        rc = subprocess.run(["bash", ".ci/run"], cwd=clone, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    summary = pytest_summary(log)
    result = {
        "exit_code": rc,
        "wall_seconds": round(wall, 1),
        **summary,
        "log": str(log_path),
        "provenance": provenance.record("ci", argv, root=clone, configuration="default"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ci.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "ci.md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
