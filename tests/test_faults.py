"""Faults beyond a killed process (issue 18, item 4): the disk fills up while a component is written.

Two ways to fill the disk: ``store/components`` of a trained project put on a tmpfs only a few KiB
larger than what it holds (needs permission to mount: root in a container that allows it; skips and
says why otherwise), and, needing no permission at all, the component store's ``open`` replaced by one
whose write stores half of its bytes and then fails with ``ENOSPC``, as a full disk does. Either way the
learn step's new adapter cannot be stored: the step must stop with one clear error, leave no temporary
file and no half component, keep ``ume audit`` passing, and succeed once there is space.
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import ComponentError
from pipeline.model import components as component_store
from pipeline.steps import open_workspace, run_step
from tests.projects import assert_decided_by_its_checks, project_audit

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
        _fails_cleanly_then_succeeds(trained_copy, lambda: subprocess.run(["mount", "-o", "remount,size=65536k", str(components)], check=True))
    finally:
        subprocess.run(["umount", "-l", str(components)], capture_output=True)
        shutil.rmtree(saved, ignore_errors=True)


class _HalfWritten:
    """A file whose ``write`` stores half of the bytes and then fails as a full disk does."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        self._fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> _HalfWritten:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _full_disk_open(path, mode: str = "r", *args, **kwargs):
    """``open`` for the component store on a full disk: writing fails half-way with ENOSPC."""
    fh = builtins.open(path, mode, *args, **kwargs)
    return _HalfWritten(fh) if "w" in mode else fh


def test_a_disk_full_half_way_through_a_write_stops_cleanly_without_root(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same contract with ENOSPC injected at the write (no mount needed: runs on every CI machine)."""
    monkeypatch.setattr(component_store, "open", _full_disk_open, raising=False)
    _fails_cleanly_then_succeeds(trained_copy, lambda: monkeypatch.delattr(component_store, "open"))


def _fails_cleanly_then_succeeds(project: Path, free_space) -> None:
    """A one-epoch learn step on a full disk: one clear error, nothing left; after ``free_space()``, the same step is promoted."""
    components = project / "store" / "components"
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["stream"] = {STEP: {"kind": "learn", "parent": "base", "slice": "u3", "epochs": 1}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = sorted(p.name for p in components.iterdir())

    with pytest.raises(ComponentError) as info:
        run_step(open_workspace(), STEP)
    assert "no space left" in str(info.value) and "nothing of this component was stored" in str(info.value)
    assert sorted(p.name for p in components.iterdir()) == before, "a temporary or half a component was left"
    assert open_workspace().step_record(STEP) is None
    assert project_audit(project) == []

    free_space()
    record = run_step(open_workspace(), STEP).record
    assert record["version"] == 2
    assert_decided_by_its_checks(record)  # a one-epoch step: its outcome is the gate's, not this test's
    assert sorted(p.name for p in components.iterdir()) != before, "the rerun stored its component"
    assert project_audit(project) == []

