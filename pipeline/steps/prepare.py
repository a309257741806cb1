"""The ``prepare`` stage: build the sample table into ``store/data`` and record its hash in the ledger."""

from __future__ import annotations

import os
import shutil
from typing import Any

from pipeline.core.faults import crash_point
from pipeline.data import prepare_data
from pipeline.data.rowkeys import RowKeys
from pipeline.records.workspace import Workspace


def run_prepare(ws: Workspace) -> dict[str, Any]:
    """Stage the table beside the old one and swap it in: a bad source leaves the prepared data as it was."""
    staging = ws.data_dir.with_name(".data.staging")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        info = prepare_data(ws.params, staging, RowKeys.open(ws.data_dir))  # a folder's images are written there one by one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a bad image or manifest row: nothing half-written is left
        raise
    crash_point("prepare.staged")
    if ws.data_dir.exists():
        shutil.rmtree(ws.data_dir)
    os.replace(staging, ws.data_dir)
    ws.ledger.append("prepare", {"content_hash": info["content_hash"], "slices": info["slices"], "groups": info["groups"]})
    return info
