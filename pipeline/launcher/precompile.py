"""Write bytecode for what ume imports, once, at install time (``make`` runs ``python -m pipeline.launcher.precompile``).

The Makefile installs with ``pip install --no-compile``: compiling all of torch, MLflow and the rest up
front is half of pip's time here, and Python would write bytecode on first import anyway. It does not when
``PYTHONDONTWRITEBYTECODE`` is set (as on our CI machines): then every cold ``ume`` process and every
``dvc`` stage compiles some 6,500 modules from source again, 8 of a cold ``ume audit``'s 13 s, measured
with cProfile (``builtins.compile``). This module turns bytecode writing on for itself and imports the
modules a stage, a report, a gate, every built-in method and DVC import, so their bytecode is written next
to them (``__pycache__``) and later processes read it, whatever the variable says. It changes no setting.
"""

from __future__ import annotations

import importlib
import sys
import time

from pipeline.launcher.server import PRELOAD

# Beyond the warm process's preload: what a step imports inside itself, and DVC's own command line.
LAZY = ("lightning", "peft", "torchmetrics", "torch.ao.quantization", "dvc.cli", "dvc.repo", "dvc.commands.repro", "pipeline.records.anchors")


def modules() -> list[str]:
    """Every module name to import: the warm preload, the lazy extras, and each built-in edit method's module."""
    from edits.registry import BUILTIN_METHODS

    return list(dict.fromkeys([*PRELOAD, *LAZY, *BUILTIN_METHODS.values()]))


def main() -> int:
    """Import every module of :func:`modules` with bytecode writing on; a module that fails to import is reported, not fatal."""
    sys.dont_write_bytecode = False
    start = time.perf_counter()
    failed = []
    for name in modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional extra missing here must not fail the install
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    print(f"precompile: bytecode written for {len(sys.modules)} modules in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    for line in failed:
        print(f"precompile: could not import {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
