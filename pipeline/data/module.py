"""One Lightning DataModule for every consumer, with the deleted set applied when the table opens.

The deleted set is the union of every deletion request in the ledger (hashed ids). :func:`open_data`
drops those rows before anything else can see them; :class:`SampleSet` selections and loaders only
ever index the filtered table, so training, replay, retain fine-tuning, calibration and behaviour
reference sets cannot read a deleted sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.core.errors import DataError
from pipeline.data.table import DELETION_ENTRY, EVAL_SLICES, NO_OWNER, SampleTable
from pipeline.model.lineage import hash_sample_id


class EntrySource(Protocol):
    """What the data layer reads from the ledger (``records.ledger.Ledger`` is one): entries of a type."""

    def of_type(self, *types: str) -> list[Any]: ...


def deleted_hashed_ids(ledger: EntrySource) -> frozenset[str]:
    """Union of the hashed sample ids of every deletion request recorded in the ledger."""
    out: set[str] = set()
    for entry in ledger.of_type(DELETION_ENTRY):
        out.update(entry.data.get("hashed_ids", []))
    return frozenset(out)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float inputs in [-1, 1], the model's input convention."""
    return images.float().div(255.0).sub(0.5).div(0.5)


@dataclass(frozen=True)
class SampleSet:
    """A selection of (non-deleted) samples: inputs, labels and their metadata, aligned."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    sample_ids: tuple[str, ...]
    groups: tuple[str, ...]
    owners: tuple[str, ...]
    slices: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        return f"SampleSet({self.name!r}, {len(self)} samples)"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        """Compact in hypothesis' falsifying examples (which use the IPython pretty protocol)."""
        printer.text(repr(self))  # type: ignore[attr-defined]

    def dataset(self) -> TensorDataset:
        """A torch dataset of ``(x, y)``."""
        return TensorDataset(self.x, self.y)

    def take(self, keep: list[int], name: str | None = None) -> SampleSet:
        """The samples at positions ``keep``."""
        idx = torch.tensor(keep, dtype=torch.long)
        return SampleSet(
            name=name or self.name,
            x=self.x[idx] if keep else self.x[:0],
            y=self.y[idx] if keep else self.y[:0],
            sample_ids=tuple(self.sample_ids[i] for i in keep),
            groups=tuple(self.groups[i] for i in keep),
            owners=tuple(self.owners[i] for i in keep),
            slices=tuple(self.slices[i] for i in keep) if self.slices else (),
        )

    def without_labels(self, labels: Iterable[int]) -> SampleSet:
        """The same set without samples of the given classes (measuring after a class deletion)."""
        drop = set(labels)
        if not drop:
            return self
        return self.take([i for i, y in enumerate(self.y.tolist()) if y not in drop])

    def concat(self, other: SampleSet, name: str | None = None) -> SampleSet:
        """This set followed by ``other``."""
        return SampleSet(
            name=name or f"{self.name}+{other.name}",
            x=torch.cat([self.x, other.x]),
            y=torch.cat([self.y, other.y]),
            sample_ids=self.sample_ids + other.sample_ids,
            groups=self.groups + other.groups,
            owners=self.owners + other.owners,
            slices=self.slices + other.slices if self.slices and other.slices else (),
        )


def _sample_set(name: str, rows: pd.DataFrame, images: torch.Tensor, idx: np.ndarray) -> SampleSet:
    """The rows at ``idx`` with their images, as a :class:`SampleSet`."""
    picked = rows.iloc[idx]
    return SampleSet(
        name=name,
        x=to_float(images[torch.from_numpy(idx.astype(np.int64))]),
        y=torch.from_numpy(picked["label"].to_numpy(dtype=np.int64).copy()),
        sample_ids=tuple(picked["sample_id"]),
        groups=tuple(picked["group"]),
        owners=tuple(picked["owner"]),
        slices=tuple(picked["slice"]),
    )


class UmeData(L.LightningDataModule):
    """The sample table with the deleted set removed, and loaders over selections of it."""

    def __init__(
        self,
        table: SampleTable,
        deleted: frozenset[str] = frozenset(),
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        keep = np.array([hash_sample_id(s) not in deleted for s in table.rows["sample_id"]], dtype=bool)
        self.deleted_count = int((~keep).sum())
        self.rows = table.rows.loc[keep].reset_index(drop=True)
        self._images = table.images[torch.from_numpy(keep)]
        self._forgotten_rows = table.rows.loc[~keep].reset_index(drop=True)
        self._forgotten_images = table.images[torch.from_numpy(~keep)]
        self.classes = table.classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._train: SampleSet | None = None

    @property
    def slices(self) -> list[str]:
        """Slice names present (after deletion)."""
        return sorted(self.rows["slice"].unique())

    def select(
        self,
        name: str,
        *,
        slices: Iterable[str] | None = None,
        sample_ids: Iterable[str] | None = None,
        hashed_ids: Iterable[str] | None = None,
    ) -> SampleSet:
        """Samples matching every given criterion (deleted samples are never among them)."""
        mask = np.ones(len(self.rows), dtype=bool)
        if slices is not None:
            mask &= self.rows["slice"].isin(list(slices)).to_numpy()
        if sample_ids is not None:
            mask &= self.rows["sample_id"].isin(list(sample_ids)).to_numpy()
        if hashed_ids is not None:
            wanted = set(hashed_ids)
            mask &= np.array([hash_sample_id(s) in wanted for s in self.rows["sample_id"]], dtype=bool)
        return _sample_set(name, self.rows, self._images, np.flatnonzero(mask))

    def licensed(self, name: str = "licensed") -> SampleSet:
        """Training samples with no data subject (``owner`` empty): data a deletion request never names."""
        mask = (self.rows["owner"].fillna(NO_OWNER) == NO_OWNER).to_numpy() & ~self.rows["slice"].isin(list(EVAL_SLICES)).to_numpy()
        return _sample_set(name, self.rows, self._images, np.flatnonzero(mask))

    def forgotten(self, name: str, hashed_ids: Iterable[str]) -> SampleSet:
        """Deleted samples of the given requests, for exactly two readers: the unlearning operator
        that removes their influence, and the forget checks that verify it. Never for training data
        of any other kind, replay, calibration or reference sets.
        """
        wanted = set(hashed_ids)
        idx = np.flatnonzero([hash_sample_id(s) in wanted for s in self._forgotten_rows["sample_id"]])
        return _sample_set(name, self._forgotten_rows, self._forgotten_images, idx)

    def split(self, name: str) -> SampleSet:
        """A whole slice (``test``, ``canary``, ``base``, ``u1``...)."""
        if name not in set(self.rows["slice"]):
            raise DataError(f"no samples in slice {name!r} (have: {', '.join(self.slices)})", field="slice")
        return self.select(name, slices=[name])

    def subsample(self, samples: SampleSet, count: int, *, seed: int) -> SampleSet:
        """A deterministic random subset of ``count`` samples of ``samples`` (all when fewer)."""
        if count >= len(samples):
            return samples
        keep = np.sort(np.random.default_rng(seed).permutation(len(samples))[:count]).tolist()
        return samples.take(keep)

    def use_for_training(self, samples: SampleSet) -> UmeData:
        """Set the selection ``train_dataloader`` serves; returns ``self`` for chaining."""
        if len(samples) == 0:
            raise DataError(f"nothing to train on: selection {samples.name!r} is empty", field="slice")
        self._train = samples
        return self

    @property
    def training_set(self) -> SampleSet:
        """The selection set by :meth:`use_for_training`."""
        if self._train is None:
            raise RuntimeError("call use_for_training() before fitting")
        return self._train

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader over the training selection (seeded)."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.training_set.dataset(),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            drop_last=len(self.training_set) > self.batch_size,
        )

    def loader(self, samples: SampleSet, batch_size: int = 256) -> DataLoader:
        """Ordered loader for evaluation."""
        return DataLoader(samples.dataset(), batch_size=batch_size, shuffle=False, num_workers=self.num_workers)


def open_data(
    prepared_dir: str | Path, ledger: EntrySource, *, batch_size: int = 64, num_workers: int = 0, seed: int = 0
) -> UmeData:
    """Open ``store/data`` with the ledger's deleted set applied: the only way consumers get data."""
    table = SampleTable.load(prepared_dir)
    return UmeData(table, deleted_hashed_ids(ledger), batch_size=batch_size, num_workers=num_workers, seed=seed)
