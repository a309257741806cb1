"""What a stage prints: one line per decision, Lightning's progress bar, and nothing else unless asked.

``UME_VERBOSE=1`` (or ``ume --verbose``) brings back every metric on the terminal and Lightning's own
information lines. The metrics are always in the step's record, its report and its MLflow run.

Known third-party chatter is filtered where it is raised, by its exact message, never by silencing a whole
library or warning category: Lightning's hardware lines, its "Tip" advertising another logging service and
its end-of-fit notices; torch's FX quantization deprecation notices (:mod:`pipeline.model.quantize`).
"""

from __future__ import annotations

import logging
import os
import re

VERBOSE_ENV = "UME_VERBOSE"

# Lightning's INFO lines that say nothing about this run's result (lightning 2.5-2.6).
LIGHTNING_CHATTER = re.compile(
    r"^(💡 Tip:|GPU available:|TPU available:|HPU available:|IPU available:|Loading `train_dataloader` to estimate"
    r"|`Trainer\.fit` stopped: `max_(epochs|steps)=\d+` reached\.|You are using a CUDA device)"
)


def verbose() -> bool:
    """Whether the user asked for every metric and every library message (``UME_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropChatter(logging.Filter):
    """Drops Lightning's known information lines; lets everything else (warnings, errors) through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not LIGHTNING_CHATTER.match(record.getMessage())


_FILTER = _DropChatter()


def quiet_lightning() -> None:
    """Install the filter on the loggers Lightning writes its information lines to (idempotent; off when verbose)."""
    if verbose():
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
