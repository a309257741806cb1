"""Start-up: commands that do not train import no training stack (issue 31, item 1).

Asserted on the import graph, never on a time: after the command ran, ``sys.modules`` of its
process holds no Lightning, peft or transformers. Times are measured in ``bench/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.projects import command_env

TRAINING_STACK = ("lightning", "peft", "transformers", "torchmetrics")
STATUS_NEEDS_NONE_OF = ("torch", "mlflow", "sqlalchemy", "pandas", "timm")  # status and a repeated audit read files and the sqlite registry only
SIGNING_STACK = ("model_signing", "sigstore", "securesystemslib", "in_toto_attestation")  # only where a key is set (issue 27)

RUN_AND_LIST = """
import json, sys
from pipeline.cli import main
seen = {}
for command in json.loads(sys.argv[1]):
    try:
        main(command)
    except SystemExit as exc:
        assert exc.code in (0, None), (command, exc.code)
    seen[" ".join(command)] = sorted(m for m in sys.modules if "." not in m)
print("MODULES=" + json.dumps(seen))
"""


def loaded_after(cwd: Path, *commands: list[str]) -> dict[str, set[str]]:
    """The top-level modules imported once each ``ume`` command has run, in order, in one fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, json.dumps(list(commands))], cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    return {k: set(v) for k, v in json.loads(line.removeprefix("MODULES=")).items()}


def test_commands_that_do_not_train_import_no_training_stack(trained_copy: Path) -> None:
    """``ume audit --compose`` composes the champion (torch and timm, nothing of the training stack); then ``ume status`` and
    ``ume audit`` in a fresh process load neither torch, MLflow nor pandas: the registry and the runs' anchors are read
    straight from the sqlite file, and the champion this code just composed is taken from its record. With no signing
    key, no model signing or in-toto library either."""
    composing = loaded_after(trained_copy, ["audit", "--compose"])["audit --compose"]
    assert {"torch", "timm"} <= composing  # the audit composed the champion: the check looked at real work
    loaded = loaded_after(trained_copy, ["status"], ["audit"])
    for command, modules in {**loaded, "audit --compose": composing}.items():
        assert not modules & set(TRAINING_STACK), f"ume {command} imported {sorted(modules & set(TRAINING_STACK))}"
        assert not modules & set(SIGNING_STACK), f"ume {command} imported {sorted(modules & set(SIGNING_STACK))} with no key set"
    for command in ("status", "audit"):
        assert not loaded[command] & set(STATUS_NEEDS_NONE_OF), f"ume {command} imported {sorted(loaded[command] & set(STATUS_NEEDS_NONE_OF))}"


def test_a_compose_only_step_path_imports_no_training_stack() -> None:
    """The step machinery, the registry and the quantize method load without Lightning or peft; and
    BUILTIN_METHODS names each built-in method's module (importing them all registers exactly those)."""
    code = (
        "import sys, json\n"
        "import pipeline.steps, edits\n"
        "from edits import get_method\n"
        "get_method('compress', 'quantize')\n"
        "import pipeline.model.compose, behaviors.build\n"
        "light = sorted(m for m in sys.modules if '.' not in m)\n"
        "from edits.registry import BUILTIN_METHODS, list_methods\n"
        "declared = sorted([list(k) for k in BUILTIN_METHODS])\n"
        "registered = sorted([m.kind, m.name] for m in list_methods())\n"
        "print(json.dumps([light, declared, registered]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=command_env(), capture_output=True, text=True, timeout=300, check=True)
    light, declared, registered = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torch" in light and not set(light) & {"lightning", "peft", "transformers"}
    assert declared == registered
