"""Start-up: commands that do not train import no training stack (issue 31, item 1).

Asserted on the import graph, never on a time: after the command ran, ``sys.modules`` of its
process holds no Lightning, peft or transformers. Times are measured in ``bench/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.projects import command_env

TRAINING_STACK = ("lightning", "peft", "transformers", "torchmetrics")

RUN_AND_LIST = """
import json, sys
from pipeline.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("MODULES=" + json.dumps(sorted(m for m in sys.modules if "." not in m)))
sys.exit(code)
"""


def loaded_by(cwd: Path, *args: str) -> set[str]:
    """The top-level modules a ``ume`` command has imported when it ends (it must succeed)."""
    proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST, *args], cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


@pytest.mark.parametrize("command", [("status",), ("audit",), ("status", "--json")])
def test_commands_that_do_not_train_import_no_training_stack(trained_copy: Path, command: tuple[str, ...]) -> None:
    loaded = loaded_by(trained_copy, *command)
    if command[0] == "audit":
        assert {"torch", "timm"} <= loaded  # it composed the champion: the check looked at a process that did real work
    assert not loaded & set(TRAINING_STACK), f"ume {' '.join(command)} imported {sorted(loaded & set(TRAINING_STACK))}"


def test_a_compose_only_step_path_imports_no_training_stack() -> None:
    """The step machinery, the registry and the quantize method load without Lightning or peft."""
    code = (
        "import sys, json\n"
        "import pipeline.steps, edits\n"
        "from edits import get_method\n"
        "get_method('compress', 'quantize')\n"
        "import pipeline.model.compose, behaviors.build\n"
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=command_env(), capture_output=True, text=True, timeout=300, check=True)
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "torch" in loaded and not loaded & {"lightning", "peft", "transformers"}


def test_every_builtin_method_is_where_the_registry_says() -> None:
    """BUILTIN_METHODS names each built-in method's module; importing them all registers exactly those."""
    code = (
        "import json\n"
        "from edits.registry import BUILTIN_METHODS, list_methods\n"
        "print(json.dumps([sorted([list(k) for k in BUILTIN_METHODS]), sorted([m.kind, m.name] for m in list_methods())]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=command_env(), capture_output=True, text=True, timeout=300, check=True)
    declared, registered = json.loads(proc.stdout.strip().splitlines()[-1])
    assert declared == registered
