"""Which data made a version: the datasets a step's MLflow run logs as its inputs.

Every step's run lists, as MLflow dataset inputs, the rows it used, each as a dataset that carries
no data: a name, a digest (:func:`rows_digest`), a row count, and the prepared data as its source.
The input's context (MLflow's ``mlflow.data.context`` tag) says how the rows were used:

- ``training``: the rows a component made in this step was trained on (its lineage). A component
  whose sidecar names its ``slice`` (``learn/lora``, and its exact retrain) is split by the table's
  ``slice`` column into the slice's rows (named for the slice, e.g. ``u1``) and
- ``replay``: the other rows it was trained on (named ``<slice>.replay``, e.g. ``u1.replay``).
  Any other component (the clean base, an edit, a forget delta's retain rows, a merge, a
  quantization's calibration rows) gives one ``training`` dataset named for the slices its rows
  came from (``base``, ``base+u1``...).
- ``evaluation``: the gate's reference splits ``test``, ``canary`` and ``retain`` as the behaviour
  suite received them (a check may use a capped subsample of one: ``behaviors/limits.py``).
- ``forget``: a step's deletion request, named by its request id, over the request's samples.

Training, replay and evaluation rows never include a deleted sample: the data layer removes them
before anything reads the table, so a component trained after a deletion has a lineage without them,
and the splits are built from the filtered table. A deletion therefore shows as a changed digest in
the next runs (the ``forget`` input is the one whose rows are the deleted ones). Only names, digests
and counts are logged; no sample id, hashed or not, leaves ume through this module.

In the MLflow UI a run page's "Datasets" row shows each input as ``name (digest)`` with its context;
its drawer adds the row count (the profile), the digest and the source path (``store/data``, the
prepared data DVC tracks). Each input also carries the tags ``ume.step``, ``ume.manifest_hash`` (the
version the run proposed) and ``ume.prepared_data`` (the prepared table's content hash), which the
API returns (``run.inputs.dataset_inputs``) and the UI does not show.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.names import EVAL_SLICES
from pipeline.model.components import Component
from pipeline.model.lineage import hash_sample_id, hash_sample_ids

TRAINING, REPLAY, EVALUATION, FORGET = "training", "replay", "evaluation", "forget"
CONTEXTS = (TRAINING, REPLAY, EVALUATION, FORGET)
DIGEST_LENGTH = 16
EVALUATION_SPLITS = ("test", "canary", "retain")
NAMED_SLICES = 8
MAX_NAME = 500  # MLflow's limit on a dataset's name


def rows_digest(hashed_ids: Iterable[str]) -> str:
    """ume's content hash of a set of rows: the first 16 hex digits of SHA-256 over the sorted, distinct
    hashed sample ids (:func:`pipeline.model.lineage.hash_sample_id`), one per line.

    The same rows give the same digest in every run; removing one row changes it. Order and
    repetition do not count: it identifies a set of samples, not a loader's sequence.
    """
    text = "\n".join(sorted(set(hashed_ids)))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


@dataclass(frozen=True)
class DataInput:
    """One dataset input of a run: its name, the context it was used in, the digest and count of its rows."""

    name: str
    context: str
    digest: str
    rows: int

    @classmethod
    def of(cls, name: str, context: str, hashed_ids: Iterable[str]) -> DataInput:
        """The input over ``hashed_ids`` (hashed sample ids)."""
        ids = set(hashed_ids)
        return cls(name[:MAX_NAME], context, rows_digest(ids), len(ids))


def slice_names(hashed_ids: Iterable[str], slice_of: Mapping[str, str]) -> str:
    """The slices the rows came from, ``base`` first, joined by ``+`` (``rows`` when none is known; after
    ``NAMED_SLICES`` of them, ``+N more``: MLflow caps a dataset's name at 500 characters)."""
    found = sorted({slice_of[h] for h in hashed_ids if h in slice_of}, key=_slice_order)
    if len(found) > NAMED_SLICES:
        found = [*found[:NAMED_SLICES], f"{len(found) - NAMED_SLICES} more"]
    return "+".join(found) or "rows"


def _slice_order(name: str) -> tuple:
    """``base`` first, evaluation slices last, numbers in names by value (``u2`` before ``u10``)."""
    return (name != "base", name in EVAL_SLICES, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)])


def component_inputs(component: Component, slice_of: Mapping[str, str]) -> list[DataInput]:
    """The ``training`` (and ``replay``) inputs of one component made in this step, from its lineage.

    ``slice_of`` maps the hashed id of every row of the (filtered) table to its slice.
    """
    lineage = set(component.lineage)
    if not lineage:
        return []
    own = component.meta.get("slice")
    if not isinstance(own, str):
        return [DataInput.of(slice_names(lineage, slice_of), TRAINING, lineage)]
    trained = {h for h in lineage if slice_of.get(h) == own}
    inputs = [DataInput.of(own, TRAINING, trained)] if trained else []
    if lineage - trained:
        inputs.append(DataInput.of(f"{own}.{REPLAY}", REPLAY, lineage - trained))
    return inputs


def step_inputs(
    components: Sequence[Component],
    slice_of: Mapping[str, str],
    splits: Mapping[str, Sequence[str]],
    forget: tuple[str, Iterable[str]] | None = None,
) -> list[DataInput]:
    """Every input of a step's run: training and replay per new component, the evaluation splits, the request.

    ``splits`` maps a split name to its (raw) sample ids; an empty split is left out. ``forget`` is a
    request id and its hashed sample ids. Two inputs with the same name and digest are one.
    """
    out: dict[tuple[str, str], DataInput] = {}
    for component in components:
        for item in component_inputs(component, slice_of):
            out.setdefault((item.name, item.digest), item)
    for name, sample_ids in splits.items():
        if sample_ids:
            item = DataInput.of(name, EVALUATION, hash_sample_ids(sample_ids))
            out.setdefault((item.name, item.digest), item)
    if forget is not None:
        request_id, hashed = forget
        hashed = set(hashed)
        if hashed:
            item = DataInput.of(request_id, FORGET, hashed)
            out.setdefault((item.name, item.digest), item)
    return list(out.values())


def prepared_data_tag(data_dir: Path) -> dict[str, str]:
    """``{"ume.prepared_data": <content hash>}`` of the prepared table (its ``dataset.json``, written by ``ume prepare``); empty when unreadable."""
    try:
        content_hash = json.loads((data_dir / "dataset.json").read_text()).get("content_hash")
    except (OSError, ValueError):
        return {}
    return {"ume.prepared_data": content_hash} if isinstance(content_hash, str) else {}


def slices_by_hashed_id(sample_ids: Iterable[str], slices: Iterable[str]) -> dict[str, str]:
    """Hashed sample id -> slice, for the rows of a table (the ``slice_of`` of :func:`step_inputs`)."""
    return {hash_sample_id(sample_id): name for sample_id, name in zip(sample_ids, slices, strict=True)}
