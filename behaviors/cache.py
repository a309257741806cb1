"""What a gate computed for a model that cannot change, kept for the next gate.

A registered version is immutable (its manifest hash names the components it composes), a shadow of
the reference bank too (the hash of its sidecar), and a sample id is the hash of the image and its
label (:func:`pipeline.data.table.content_sample_id`). So a model's logits on a sample, or its LiRA
statistic, never change: the gate that promoted a version already computed them on the evaluation
sets, and the next gate, where that version is the champion (or a forget check's control), reads
them instead of running the champion again. The next gate then runs only the candidate forward.

``store/cache/<model key>/<kind>.safetensors``: one row per sample, the ids in the file's metadata.
A derived store like the reference bank: not a DVC output, safe to delete (the next gate recomputes),
written atomically (a crash leaves the old file or the new one), and a file that does not read is a
miss, never an error. Only the missing samples are computed, in batches of their own: a batch's
composition can move a logit in its last float bits, never by a margin a decision may rest on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.data import SampleSet

log = logging.getLogger("ume.cache")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class RowCache:
    """Per-sample rows (logits, statistics) of immutable models, read and written a file per model and kind."""

    def __init__(self, root: Path, *, writable: bool = True) -> None:
        self.root = Path(root)
        self.writable = writable  # a DDP follower reads the primary's cache and writes nothing
        self._tables: dict[tuple[str, str], tuple[dict[str, int], torch.Tensor | None]] = {}

    def folder(self, model_key: str) -> Path:
        """The folder of one model's files (``/`` in a key makes subfolders)."""
        return self.root.joinpath(*(_SAFE.sub("_", part) for part in model_key.split("/")))

    def path(self, model_key: str, kind: str) -> Path:
        """The file of one model's rows of one kind."""
        return self.folder(model_key) / f"{_SAFE.sub('_', kind)}.safetensors"

    def rows(self, model_key: str, kind: str, samples: SampleSet, compute: Callable[[SampleSet], torch.Tensor]) -> torch.Tensor:
        """The rows of ``samples`` in order: read where known, ``compute`` (on the missing samples only) for the rest."""
        if not len(samples):
            return compute(samples)
        index, values = self._table(model_key, kind)
        found = [index.get(sample_id) for sample_id in samples.sample_ids]
        missing = [i for i, row in enumerate(found) if row is None]
        if not missing:
            assert values is not None
            return values[torch.tensor(found, dtype=torch.long)]
        first: dict[str, int] = {}
        for i in missing:  # a set may name a sample twice: compute and store it once
            first.setdefault(samples.sample_ids[i], i)
        positions = list(first.values())
        fresh = compute(samples if len(positions) == len(samples) else samples.take(positions)).detach().cpu()
        if len(fresh) != len(positions):
            raise ValueError(f"cache {kind!r} of {model_key}: {len(fresh)} rows computed for {len(positions)} samples")
        base = 0 if values is None else len(values)
        if values is not None and (values.dtype != fresh.dtype or values.shape[1:] != fresh.shape[1:]):
            index, values, base = {}, None, 0  # rows of another shape or type (a changed head): start over
        index = {**index, **{sample_id: base + k for k, sample_id in enumerate(first)}}
        values = fresh if values is None else torch.cat([values, fresh])
        self._tables[(model_key, kind)] = (index, values)
        self._save(model_key, kind, index, values)
        out = [index[sample_id] for sample_id in samples.sample_ids]
        return values[torch.tensor(out, dtype=torch.long)]

    def drop(self, model_key: str) -> None:
        """Forget every row of one model, on disk and here (a bench measuring a candidate's first gate; erasure)."""
        self._tables = {key: table for key, table in self._tables.items() if key[0] != model_key}
        folder = self.folder(model_key)
        if self.writable and folder.exists():
            shutil.rmtree(folder)

    def drop_samples(self, erased: Callable[[str], bool]) -> int:
        """Remove the rows of every sample ``erased`` names from every file, on disk and here (erasure); the number
        of files rewritten (an unreadable one is removed: it is a miss anyway)."""
        self._tables.clear()
        changed = 0
        for path in sorted(self.root.rglob("*.safetensors")) if self.writable and self.root.is_dir() else []:
            index, values = self._load(path)
            if values is None:
                path.unlink(missing_ok=True)
                changed += 1
                continue
            kept = sorted(((row, sample_id) for sample_id, row in index.items() if not erased(sample_id)))
            if len(kept) < len(index):
                self._write(path, {sample_id: k for k, (_, sample_id) in enumerate(kept)}, values[[row for row, _ in kept]])
                changed += 1
        return changed

    def _table(self, model_key: str, kind: str) -> tuple[dict[str, int], torch.Tensor | None]:
        key = (model_key, kind)
        if key not in self._tables:
            self._tables[key] = self._load(self.path(model_key, kind))
        return self._tables[key]

    @staticmethod
    def _load(path: Path) -> tuple[dict[str, int], torch.Tensor | None]:
        if not path.exists():
            return {}, None
        try:
            with safe_open(str(path), framework="pt") as f:
                ids = json.loads((f.metadata() or {})["ids"])
                values = f.get_tensor("values")
            if len(ids) != len(values):
                raise ValueError(f"{len(ids)} ids for {len(values)} rows")
            return {sample_id: i for i, sample_id in enumerate(ids)}, values
        except Exception as exc:  # a cache that does not read is a miss: the gate recomputes and rewrites it
            log.warning("evaluation cache %s unreadable (%s): recomputing", path, exc)
            return {}, None

    def _save(self, model_key: str, kind: str, index: dict[str, int], values: torch.Tensor) -> None:
        if self.writable:
            self._write(self.path(model_key, kind), index, values)

    @staticmethod
    def _write(path: Path, index: dict[str, int], values: torch.Tensor) -> None:
        """One file, atomically: ``values`` with the sample id of each row in the metadata."""
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = sorted(index, key=index.__getitem__)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"values": values.contiguous()}, str(tmp), metadata={"ids": json.dumps(ids), "format": "ume-row-cache/1"})
        os.replace(tmp, path)
