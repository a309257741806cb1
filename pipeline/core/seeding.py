"""Seeding every generator a step draws from, without importing Lightning.

The same state as ``lightning.seed_everything(seed, workers=True)``: Python's ``random``, NumPy's
global generator and torch's (every device), plus the two environment variables through which
Lightning's Trainer seeds data-loader workers and spawned processes. A step that only composes or
quantizes then stays free of Lightning's import; one that trains gets identical draws.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> int:
    """Seed ``random``, NumPy and torch with ``seed``; set ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS=1``."""
    seed = int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    return seed
