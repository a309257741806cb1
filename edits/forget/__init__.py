"""``forget`` steps: honour a deletion request. One file per method, same shape each.

Exact: ``exact`` (retrain only the affected overlays), ``retrain`` (everything from scratch).
Approximate (a pinned ``delta`` overlay, recorded as deletion debt): ``finetune``, ``neggrad``,
``scrub``, ``ssd``, ``salun``.
"""

from pipeline.records.deletion import EXACT_METHODS

__all__ = ["EXACT_METHODS"]
