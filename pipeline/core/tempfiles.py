"""Temporary files of atomic writes, and sweeping the ones a killed process left behind.

Every write that must never be seen half done goes to ``.<name>.<pid>.tmp`` in the target's
directory, is fsynced where it matters, and is renamed over the target (``os.replace`` is atomic
on POSIX). Readers only ever open the final names, so a crash leaves at most an orphan temporary
file; :func:`sweep_stale_temporaries` removes those whose writer is no longer alive.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temporaries(root: Path) -> list[Path]:
    """Remove ``.<name>.<pid>.tmp`` files under ``root`` whose process is gone; returns them."""
    removed: list[Path] = []
    if not root.exists():
        return removed
    for path in root.rglob(".*.tmp"):
        match = TEMP_NAME.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
