"""One Lightning DataModule for every consumer, with the deleted set applied when the table opens.

The deleted set is the union of every deletion request in the ledger (hashed ids). :func:`open_data`
drops those rows before anything else can see them; :class:`SampleSet` selections and loaders only
ever index the filtered table, so training, replay, retain fine-tuning, calibration and behaviour
reference sets cannot read a deleted sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.core.errors import DataError
from pipeline.data.images import ImageStore
from pipeline.data.table import DELETION_ENTRY, EVAL_SLICES, NO_DOMAIN, NO_OWNER, SampleTable
from pipeline.model.lineage import hash_sample_id

if TYPE_CHECKING:
    from pipeline.data.training import TrainingData


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
class StoreRows:
    """Images of a selection, not yet read: rows of the table's image store."""

    store: ImageStore
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, keep: list[int]) -> StoreRows:
        """The rows at positions ``keep`` of this selection."""
        return StoreRows(self.store, self.positions[np.asarray(keep, dtype=np.int64)] if keep else self.positions[:0])

    def read(self, index: Sequence[int] | np.ndarray | slice) -> torch.Tensor:
        """Float inputs of the selection's rows at ``index``."""
        return to_float(self.store.read(self.positions[index]))


class SampleDataset(Dataset):
    """``(x, y)`` of a sample set, read from the image store in the process that asks (a DataLoader worker)."""

    def __init__(self, samples: SampleSet) -> None:
        self.inputs, self.y = samples.inputs, samples.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch in one read per run of consecutive rows (the DataLoader's batched fetch)."""
        x = self.inputs.read(np.asarray(indices, dtype=np.int64)) if isinstance(self.inputs, StoreRows) else self.inputs[torch.as_tensor(indices)]
        return list(zip(x, self.y[torch.as_tensor(indices)], strict=True))


@dataclass(frozen=True)
class SampleSet:
    """A selection of (non-deleted) samples: inputs, labels and their metadata, aligned.

    ``inputs`` is either a float tensor or :class:`StoreRows` (rows of the table's image store, read
    only when needed): :attr:`x` reads them all, :meth:`batches` and :meth:`dataset` a batch at a time.
    """

    name: str
    inputs: torch.Tensor | StoreRows
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

    @property
    def x(self) -> torch.Tensor:
        """Every input of the set as one float tensor (read from the store each time: prefer :meth:`batches` for large sets)."""
        return self.inputs.read(slice(None)) if isinstance(self.inputs, StoreRows) else self.inputs

    def batches(self, batch_size: int = 512) -> Iterator[torch.Tensor]:
        """The inputs in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.inputs.read(slice(start, stop)) if isinstance(self.inputs, StoreRows) else self.inputs[start:stop]

    def dataset(self) -> SampleDataset:
        """A torch dataset of ``(x, y)`` that reads images when a batch is fetched."""
        return SampleDataset(self)

    def take(self, keep: list[int], name: str | None = None) -> SampleSet:
        """The samples at positions ``keep``."""
        idx = torch.tensor(keep, dtype=torch.long)
        if isinstance(self.inputs, StoreRows):
            inputs: torch.Tensor | StoreRows = self.inputs.take(keep)
        else:
            inputs = self.inputs[idx] if keep else self.inputs[:0]
        return SampleSet(
            name=name or self.name,
            inputs=inputs,
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
        """This set followed by ``other`` (still unread when both are rows of the same store)."""
        a, b = self.inputs, other.inputs
        if isinstance(a, StoreRows) and isinstance(b, StoreRows) and a.store is b.store:
            inputs: torch.Tensor | StoreRows = StoreRows(a.store, np.concatenate([a.positions, b.positions]))
        else:
            inputs = torch.cat([self.x, other.x])
        return SampleSet(
            name=name or f"{self.name}+{other.name}",
            inputs=inputs,
            y=torch.cat([self.y, other.y]),
            sample_ids=self.sample_ids + other.sample_ids,
            groups=self.groups + other.groups,
            owners=self.owners + other.owners,
            slices=self.slices + other.slices if self.slices and other.slices else (),
        )


def _sample_set(name: str, rows: pd.DataFrame, store: ImageStore, positions: np.ndarray, idx: np.ndarray) -> SampleSet:
    """The rows at ``idx`` (their images at ``positions[idx]`` of ``store``, unread) as a :class:`SampleSet`."""
    picked = rows.iloc[idx]
    return SampleSet(
        name=name,
        inputs=StoreRows(store, positions[idx].astype(np.int64)),
        y=torch.from_numpy(picked["label"].to_numpy(dtype=np.int64).copy()),
        sample_ids=tuple(picked["sample_id"]),
        groups=tuple(picked["group"]),
        owners=tuple(picked["owner"]),
        slices=tuple(picked["slice"]),
    )


class UmeData:
    """The sample table with the deleted set removed, and loaders over selections of it.

    A plain class: what only evaluates never imports Lightning; :meth:`use_for_training` hands the
    Trainer a :class:`~pipeline.data.training.TrainingData` data module over one selection.
    """

    def __init__(
        self,
        table: SampleTable,
        deleted: frozenset[str] = frozenset(),
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        keep = np.array([hash_sample_id(s) not in deleted for s in table.rows["sample_id"]], dtype=bool)
        self.deleted_count = int((~keep).sum())
        self.rows = table.rows.loc[keep].reset_index(drop=True)
        self._store = table.images  # read by row, never whole: memory is the table plus a batch
        self._positions = np.flatnonzero(keep)  # store row of each row of ``self.rows``
        self._forgotten_rows = table.rows.loc[~keep].reset_index(drop=True)
        self._forgotten_positions = np.flatnonzero(~keep)
        self.classes = table.classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

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
        domains: Iterable[str] | None = None,
    ) -> SampleSet:
        """Samples matching every given criterion (deleted samples are never among them)."""
        mask = np.ones(len(self.rows), dtype=bool)
        if slices is not None:
            mask &= self.rows["slice"].isin(list(slices)).to_numpy()
        if domains is not None:
            mask &= self.rows["domain"].isin(list(domains)).to_numpy()
        if sample_ids is not None:
            mask &= self.rows["sample_id"].isin(list(sample_ids)).to_numpy()
        if hashed_ids is not None:
            wanted = set(hashed_ids)
            mask &= np.array([hash_sample_id(s) in wanted for s in self.rows["sample_id"]], dtype=bool)
        return _sample_set(name, self.rows, self._store, self._positions, np.flatnonzero(mask))

    def licensed(self, name: str = "licensed") -> SampleSet:
        """Training samples with no data subject (``owner`` empty): data a deletion request never names."""
        mask = (self.rows["owner"].fillna(NO_OWNER) == NO_OWNER).to_numpy() & ~self.rows["slice"].isin(list(EVAL_SLICES)).to_numpy()
        return _sample_set(name, self.rows, self._store, self._positions, np.flatnonzero(mask))

    def forgotten(self, name: str, hashed_ids: Iterable[str]) -> SampleSet:
        """Deleted samples of the given requests, for exactly two readers: the unlearning operator
        that removes their influence, and the forget checks that verify it. Never for training data
        of any other kind, replay, calibration or reference sets.
        """
        wanted = set(hashed_ids)
        idx = np.flatnonzero([hash_sample_id(s) in wanted for s in self._forgotten_rows["sample_id"]])
        return _sample_set(name, self._forgotten_rows, self._store, self._forgotten_positions, idx)

    def split(self, name: str) -> SampleSet:
        """A whole slice (``test``, ``canary``, ``base``, ``u1``...)."""
        if name not in set(self.rows["slice"]):
            raise DataError(f"no samples in slice {name!r} (have: {', '.join(self.slices)})", field="slice")
        return self.select(name, slices=[name])

    def heldout_domains(self) -> list[str]:
        """The slices that have a held-out split (test and canary samples of their ``domain``), ``base`` first."""
        mask = self.rows["slice"].isin(list(EVAL_SLICES)) & (self.rows["domain"] != NO_DOMAIN)
        found = set(self.rows.loc[mask, "domain"])
        return sorted(found, key=lambda d: (d != "base", d))

    def heldout(self, domain: str) -> SampleSet:
        """The held-out split of slice ``domain``: the test and canary samples with its look."""
        mask = (self.rows["slice"].isin(list(EVAL_SLICES)) & (self.rows["domain"] == domain)).to_numpy()
        return _sample_set(f"heldout:{domain}", self.rows, self._store, self._positions, np.flatnonzero(mask))

    def subsample(self, samples: SampleSet, count: int, *, seed: int) -> SampleSet:
        """A deterministic random subset of ``count`` samples of ``samples`` (all when fewer)."""
        if count >= len(samples):
            return samples
        keep = np.sort(np.random.default_rng(seed).permutation(len(samples))[:count]).tolist()
        return samples.take(keep)

    def use_for_training(self, samples: SampleSet) -> TrainingData:
        """A Lightning data module serving ``samples`` shuffled (seeded), in batches of ``batch_size``."""
        from pipeline.data.training import TrainingData

        if len(samples) == 0:
            raise DataError(f"nothing to train on: selection {samples.name!r} is empty", field="slice")
        return TrainingData(samples, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed)

    def loader(self, samples: SampleSet, batch_size: int = 256) -> DataLoader:
        """Ordered loader for evaluation."""
        return DataLoader(samples.dataset(), batch_size=batch_size, shuffle=False, num_workers=self.num_workers)


def open_data(
    prepared_dir: str | Path, ledger: EntrySource, *, batch_size: int = 64, num_workers: int = 0, seed: int = 0
) -> UmeData:
    """Open ``store/data`` with the ledger's deleted set applied: the only way consumers get data."""
    table = SampleTable.load(prepared_dir)
    return UmeData(table, deleted_hashed_ids(ledger), batch_size=batch_size, num_workers=num_workers, seed=seed)
