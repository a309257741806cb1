"""The data layer: the sample table, its sources (embedded digits, image folder + manifest CSV),
preparation into ``store/data`` and the one DataModule that serves every consumer.

Deleted samples are removed when the table is opened (:func:`open_data`), so no consumer
(training, replay, retain fine-tuning, calibration, behaviour reference sets) can ever read one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.data.module import SampleSet, UmeData, open_data
    from pipeline.data.prepare import prepare_data
    from pipeline.data.table import SampleTable

_WHERE = {
    "SampleSet": "pipeline.data.module",
    "UmeData": "pipeline.data.module",
    "open_data": "pipeline.data.module",
    "prepare_data": "pipeline.data.prepare",
    "SampleTable": "pipeline.data.table",
}
__all__ = ["SampleSet", "SampleTable", "UmeData", "open_data", "prepare_data"]


def __getattr__(name: str) -> Any:
    """Import lazily: reading the table (``ume status``, ``ume forget``) should not pay for Lightning."""
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
