"""The ``prepare`` stage: build the sample table into ``store/data`` and record its hash in the ledger."""

from __future__ import annotations

import os
import shutil
from typing import Any

from pipeline.core.faults import crash_point
from pipeline.data import prepare_data
from pipeline.data.rowkeys import RowKeys, key_store_dir
from pipeline.records.workspace import Workspace


def run_prepare(ws: Workspace) -> dict[str, Any]:
    """Stage the table (and its row keys) beside the old ones and swap them in: a bad source leaves both as they were."""
    staging = ws.data_dir.with_name(".data.staging")
    staged_keys = ws.data_dir.with_name(".data-keys.staging")
    for path in (staging, staged_keys):
        if path.exists():
            shutil.rmtree(path)
    keys = RowKeys.open(ws.data_dir)
    keys.path = staged_keys / keys.path.name  # known samples keep their keys; new ones are written here first
    try:
        info = prepare_data(ws.params, staging, keys)  # a folder's images are written there one by one
    except BaseException:
        for path in (staging, staged_keys):  # a bad image or manifest row: nothing half-written is left
            shutil.rmtree(path, ignore_errors=True)
        raise
    crash_point("prepare.staged")
    final_keys = key_store_dir(ws.data_dir)
    final_keys.mkdir(mode=0o700, exist_ok=True)
    os.replace(keys.path, final_keys / keys.path.name)  # the keys first: old rows keep theirs, so the old table still reads
    shutil.rmtree(staged_keys, ignore_errors=True)
    if ws.data_dir.exists():
        shutil.rmtree(ws.data_dir)
    os.replace(staging, ws.data_dir)
    ws.ledger.append("prepare", {"content_hash": info["content_hash"], "slices": info["slices"], "groups": info["groups"]})
    return info
