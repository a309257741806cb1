"""``ume prepare``: build the sample table from the configured source and write ``store/data``."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import Params
from pipeline.core.errors import DataError
from pipeline.data.digits import build_digits_table
from pipeline.data.folder import build_folder_table
from pipeline.data.rowkeys import RowKeys
from pipeline.data.table import EVAL_SLICES, NO_DOMAIN


def prepare_data(params: Params, out_dir: str | Path, keys: RowKeys | None = None) -> dict[str, object]:
    """Build and save the table, each image under its row key in ``keys`` (default: beside ``out_dir``); returns ``dataset.json``'s content."""
    keys = keys or RowKeys.open(out_dir)
    if params.data.source == "digits":
        table, notes = build_digits_table(params.data, params.seed)
    else:
        table, notes = build_folder_table(params.data, params.seed, Path(out_dir) / "images.safetensors", keys)
    if len(table.classes) != params.model.num_classes:
        raise DataError(
            f"the data has {len(table.classes)} classes but model.num_classes is {params.model.num_classes}",
            file=params.file,
            field="model.num_classes",
        )
    for split in ("base", "test", "canary"):
        if not (table.rows["slice"] == split).any():
            raise DataError(f"the data has no '{split}' samples", file=params.file, field="data")
    rows = table.rows
    evaluation = rows["slice"].isin(EVAL_SLICES) & (rows["domain"] != NO_DOMAIN)
    unknown = sorted(set(rows.loc[evaluation, "domain"]) - set(rows.loc[~rows["slice"].isin(EVAL_SLICES), "slice"]))
    if unknown:
        where = params.data.manifest or params.file
        raise DataError(f"test or canary samples name domain {unknown[0]!r}, which no training slice has", file=where, field="domain")
    return table.save(out_dir, extra=notes, keys=keys)
