"""The Lightning data module a Trainer fits on: one selection of samples, shuffled with a seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from pipeline.data.module import SampleSet


class TrainingData(L.LightningDataModule):
    """Serves ``training_set`` in shuffled batches; ``batch_size`` may be changed before fitting
    (:class:`~pipeline.model.training.SplitGlobalBatch` splits it among DDP processes)."""

    def __init__(self, samples: SampleSet, *, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.training_set = samples
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader over the training selection (seeded); the last partial batch is dropped
        when there is more than one batch."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.training_set.dataset(),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            drop_last=len(self.training_set) > self.batch_size,
        )
