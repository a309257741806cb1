"""The sample table: one row per sample (id, label, group, owner, slice, domain) plus its images.

``domain`` says which slice's kind of data a sample is: a training row's is its own slice; an
evaluation row (``test``, ``canary``) names the slice whose look it has, which makes it part of that
slice's held-out split (continual-learning metrics and the learning guards), or is empty when unknown.

Stored in a prepared directory as ``samples.csv``, ``images.safetensors`` (N x C x H x W, uint8)
and ``dataset.json`` (counts and the content hash of the whole table). The rows are small and held
in memory; the images are an :class:`~pipeline.data.images.ImageStore` read by row
(:class:`~pipeline.data.images.ImageFile` when loaded), never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.core.errors import DataError
from pipeline.data.images import ImageFile, ImageStore, MemoryImages, iter_chunks, write_store
from pipeline.data.names import COLUMNS, DELETION_ENTRY, EVAL_SLICES, NO_DOMAIN, NO_OWNER
from pipeline.data.rowkeys import RowKeys

__all__ = ["COLUMNS", "DELETION_ENTRY", "EVAL_SLICES", "NO_DOMAIN", "NO_OWNER", "SampleTable"]


def default_domains(rows: pd.DataFrame) -> pd.Series:
    """A training row's domain is its slice; an evaluation row's is unknown unless the source says."""
    return rows["slice"].where(~rows["slice"].isin(EVAL_SLICES), NO_DOMAIN)


def content_sample_id(image: np.ndarray, label: int, occurrence: int = 0) -> str:
    """Stable id from the image bytes and label; ``occurrence`` separates exact duplicates."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update(f"|{int(label)}|{occurrence}".encode())
    return digest.hexdigest()[:16]


class ContentIds:
    """Content-hash ids assigned one sample at a time, unique even for exact duplicate images."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def add(self, image: np.ndarray, label: int) -> str:
        """The id of the next sample (the n-th exact duplicate of an image and label gets occurrence n)."""
        base = content_sample_id(image, int(label))
        occurrence = self.seen.get(base, 0)
        self.seen[base] = occurrence + 1
        return base if occurrence == 0 else content_sample_id(image, int(label), occurrence)


def assign_content_ids(images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Content-hash ids for every sample, unique even for exact duplicate images."""
    ids = ContentIds()
    return [ids.add(image, int(label)) for image, label in zip(images, labels, strict=True)]


@dataclass
class SampleTable:
    """Rows (a DataFrame with :data:`COLUMNS`) aligned with ``images`` (uint8, N x C x H x W; a tensor is wrapped)."""

    rows: pd.DataFrame
    images: ImageStore
    classes: list[str]

    def __post_init__(self) -> None:
        if isinstance(self.images, torch.Tensor):
            self.images = MemoryImages(self.images)
        if "domain" not in self.rows:
            self.rows = self.rows.assign(domain=default_domains(self.rows))
        if len(self.rows) != len(self.images):
            raise DataError(f"{len(self.rows)} rows but {len(self.images)} images")
        if self.rows["sample_id"].duplicated().any():
            dup = self.rows.loc[self.rows["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise DataError(f"duplicate sample_id {dup!r}", field="sample_id")

    def __len__(self) -> int:
        return len(self.rows)

    def heldout_mask(self) -> pd.Series:
        """The evaluation rows that belong to some slice's held-out split."""
        return self.rows["slice"].isin(EVAL_SLICES) & (self.rows["domain"] != NO_DOMAIN)

    def content_hash(self) -> str:
        """SHA-256 over rows and image bytes: the dataset's identity in the ledger."""
        digest = hashlib.sha256()
        digest.update(self.rows[list(COLUMNS)].to_csv(index=False).encode())
        for chunk in iter_chunks(self.images):
            digest.update(chunk.numpy().tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, object]:
        """Counts per slice and group, for ``dataset.json`` and the README."""
        return {
            "samples": len(self),
            "classes": self.classes,
            "image_shape": list(self.images.shape[1:]),
            "slices": {k: int(v) for k, v in self.rows["slice"].value_counts().sort_index().items()},
            "groups": {k: int(v) for k, v in self.rows["group"].value_counts().sort_index().items()},
            "heldout": {k: int(v) for k, v in self.rows.loc[self.heldout_mask(), "domain"].value_counts().sort_index().items()},
            "owners": int(self.rows.loc[self.rows["owner"] != NO_OWNER, "owner"].nunique()),
            "samples_without_owner": int((self.rows["owner"] == NO_OWNER).sum()),
        }

    def save(self, directory: str | Path, extra: dict[str, object] | None = None, keys: RowKeys | None = None) -> dict[str, object]:
        """Write the prepared directory, each image encrypted under its row key (``keys``: the key store of the
        directory the data will live in; default: beside ``directory``); returns the ``dataset.json`` content."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.rows[list(COLUMNS)].to_csv(directory / "samples.csv", index=False)
        target = directory / "images.safetensors"
        if not (isinstance(self.images, ImageFile) and self.images.path.resolve() == target.resolve()):
            keys = keys or RowKeys.open(directory)  # a folder source already wrote (and encrypted) its images there, one by one
            row_keys = keys.assign(list(self.rows["sample_id"]))
            keys.save()  # the keys first: a crash then leaves unused keys, never rows no key opens
            write_store(self.images, target, row_keys)
        info = {**self.summary(), "content_hash": self.content_hash(), **(extra or {})}
        (directory / "dataset.json").write_text(json.dumps(info, indent=1, sort_keys=True))
        return info

    @classmethod
    def load(cls, directory: str | Path) -> SampleTable:
        """Read a prepared directory written by :meth:`save`."""
        directory = Path(directory)
        csv_path = directory / "samples.csv"
        if not csv_path.exists():
            raise DataError("prepared data not found; run `ume prepare` (or `dvc repro`) first", file=str(csv_path))
        rows = pd.read_csv(csv_path, dtype={"sample_id": str, "group": str, "owner": str, "slice": str, "domain": str})
        rows["owner"] = rows["owner"].fillna(NO_OWNER)  # CSV writes an empty owner, pandas reads it back as NaN
        if "domain" in rows:  # data prepared before domains existed gets the default in __post_init__
            rows["domain"] = rows["domain"].fillna(NO_DOMAIN)
        images_path = directory / "images.safetensors"
        images = ImageFile(images_path)  # the header only: dtype and shape are checked, no image is read
        if images.encrypted and len(images) == len(rows):
            images.bind_keys(RowKeys.open(directory).bind(list(rows["sample_id"]), file=str(images_path)))
        info = json.loads((directory / "dataset.json").read_text())
        shape = "x".join(str(n) for n in images.shape[1:])
        expected = "x".join(str(n) for n in info.get("image_shape", images.shape[1:]))
        if shape != expected or len(images) != len(rows):
            raise DataError(
                f"{len(images)} images of {shape} but samples.csv has {len(rows)} rows and dataset.json records {expected}"
                " (replaced or modified); rerun `ume prepare`",
                file=str(images_path),
            )
        return cls(rows=rows, images=images, classes=list(info["classes"]))
