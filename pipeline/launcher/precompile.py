"""Write bytecode for every installed module and ume's own, once, at install time (``make`` runs
``python -m pipeline.launcher.precompile``).

The Makefile installs with ``pip install --no-compile``: pip compiles one file at a time, and that is
half of its time here. Python would write bytecode on first import, except where
``PYTHONDONTWRITEBYTECODE`` is set (as on our CI machines): then every cold ``ume`` process, every
``dvc`` stage and every child of the warm process compiles from source what it imports (8 of a cold
``ume audit``'s 13 s, measured with cProfile: ``builtins.compile``).

An earlier version imported a list of modules with bytecode writing on. That missed what ume imports
only when it runs: scikit-learn in the router's detectors and the forget attacks, the pytest plugins
of installed packages in every gate, networkx, ``torch._export`` and ``torch._inductor`` when an int8
model is built, MLflow's SQLite dialect. Measured on the demo stream: every step still compiled 80 to 900
modules. So this compiles whole directories instead: the environment's ``site-packages`` and ume's own
packages, with :mod:`compileall` on every core (28 s on 2 cores for some 22,000 files, measured in a fresh install). It changes
no setting and no source file; a file that does not compile (a package's Python 2 test data) is skipped.
"""

from __future__ import annotations

import compileall
import os
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

OWN_PACKAGES = ("pipeline", "edits", "behaviors", "bench")


def directories() -> list[Path]:
    """Where to write bytecode: the environment's pure and platform library directories, then ume's packages."""
    paths = sysconfig.get_paths()
    roots = [Path(paths[key]) for key in ("purelib", "platlib")]
    here = Path(__file__).resolve().parents[2]
    roots += [here / name for name in OWN_PACKAGES]
    return [p for p in dict.fromkeys(roots) if p.is_dir()]


def main() -> int:
    """Compile every ``.py`` file under :func:`directories`; reports how many had no bytecode after it."""
    start = time.perf_counter()
    roots = directories()
    for root in roots:
        compileall.compile_dir(str(root), quiet=2, workers=os.cpu_count() or 1)
    missing = sum(1 for root in roots for _ in _without_bytecode(root))
    print(f"precompile: bytecode written under {len(roots)} directories in {time.perf_counter() - start:.1f} s; "
          f"{missing} files do not compile (left as they are)", file=sys.stderr)
    return 0


def _without_bytecode(root: Path) -> Iterator[Path]:
    """The ``.py`` files under ``root`` with no bytecode for this interpreter."""
    import importlib.util

    for path in root.rglob("*.py"):
        if not Path(importlib.util.cache_from_source(str(path))).exists():
            yield path


if __name__ == "__main__":
    raise SystemExit(main())
