"""Faults beyond a killed process (issue 18, item 4): the disk fills up while a component is written.

``store/components`` of a trained project is put on a tmpfs only a few KiB larger than what it holds,
so the learn step's new adapter cannot be stored. The step must stop with one clear error, leave no
temporary file and no half component, keep ``ume audit`` passing, and succeed once there is space.
Needs permission to mount a tmpfs (root in a container that allows it); skips and says why otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import ComponentError
from pipeline.steps import open_workspace, run_step
from tests.projects import project_audit

STEP = "s01-learn-u3"


def _mount(target: Path, size_kib: int) -> str | None:
    """Mount a tmpfs of ``size_kib`` at ``target``; the reason when this machine does not allow it."""
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(target)], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount exited {proc.returncode}")


def test_a_full_disk_while_writing_a_component_stops_cleanly_and_the_rerun_succeeds(trained_copy: Path) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command")
    components = trained_copy / "store" / "components"
    saved = trained_copy / "components-saved"
    shutil.copytree(components, saved)
    used_kib = sum(-(-p.stat().st_size // 4096) * 4 for p in saved.iterdir())
    why = _mount(components, used_kib + 8)
    if why is not None:
        shutil.rmtree(saved)
        pytest.skip(f"cannot mount a small tmpfs here ({why})")
    try:
        for path in saved.iterdir():
            shutil.copy2(path, components / path.name)
        raw = yaml.safe_load((trained_copy / "params.yaml").read_text())
        raw["stream"] = {STEP: {"kind": "learn", "parent": "base", "slice": "u3", "epochs": 1}}
        (trained_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        before = sorted(p.name for p in components.iterdir())

        with pytest.raises(ComponentError) as info:
            run_step(open_workspace(), STEP)
        assert "no space left" in str(info.value) and "nothing of this component was stored" in str(info.value)
        assert sorted(p.name for p in components.iterdir()) == before, "a temporary or half a component was left"
        assert open_workspace().step_record(STEP) is None
        assert project_audit(trained_copy) == []

        subprocess.run(["mount", "-o", "remount,size=65536k", str(components)], check=True)
        record = run_step(open_workspace(), STEP).record
        assert record["decision"] == "promoted" and record["version"] == 2
        assert project_audit(trained_copy) == []
    finally:
        subprocess.run(["umount", "-l", str(components)], capture_output=True)
        shutil.rmtree(saved, ignore_errors=True)
