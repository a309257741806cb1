"""Stages: ``prepare``, ``base`` and one ``step`` per stream entry, each one process and one lifecycle.

``lifecycle`` runs the same phases for every stage; ``kinds/`` holds one module per step kind with
only what differs (importing it registers them); ``evaluate`` runs the behaviour suite and the
gate; ``sync`` reads a person's alias move or ``ume.drop`` tag in the MLflow UI
as a rollback; ``operate`` runs an operator from ``edits/``; ``record`` writes the step record.
"""

from pipeline.steps import kinds  # noqa: F401  (registers the built-in step kinds)
from pipeline.steps.kinds.rollback import check_rollback_drop, check_rollback_to
from pipeline.steps.lifecycle import announce_sync, open_workspace, run_base, run_step, validate_params
from pipeline.steps.prepare import run_prepare
from pipeline.steps.sync import take_ui_requests

__all__ = [
    "announce_sync",
    "check_rollback_drop",
    "check_rollback_to",
    "open_workspace",
    "run_base",
    "run_prepare",
    "run_step",
    "take_ui_requests",
    "validate_params",
]
