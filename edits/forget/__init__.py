"""``forget`` steps: honour a deletion request. One file per method, same shape each.

Exact: ``exact`` (retrain only the affected overlays), ``retrain`` (everything from scratch).
Approximate (a pinned ``delta`` overlay, recorded as deletion debt): ``finetune``, ``neggrad``,
``scrub``, ``ssd``, ``salun``.
"""

from edits.forget import exact, finetune, neggrad, retrain, salun, scrub, ssd  # noqa: F401  (registers the methods)
from pipeline.records.deletion import EXACT_METHODS

__all__ = ["EXACT_METHODS"]
