"""A user's own data: an image folder plus a manifest CSV ``path,label[,group,owner,slice,sample_id]``.

``path`` is relative to the folder. ``label`` is a class name (any string; classes are sorted).
``slice`` is ``base``, ``test``, ``canary`` or an update slice name; rows without one (or a manifest
without the column) are split like the default (:func:`assign_slices`): evaluation samples by
``test_fraction``/``canary_fraction``, training contributors by ``base_fraction`` into ``base`` and
the others over ``u1..u<update_slices>``. ``sample_id`` defaults to a content hash of the decoded image and label.
Every problem names the manifest, the line and the column.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError
from pipeline.data.images import ImageWriter
from pipeline.data.rowkeys import RowKeys
from pipeline.data.table import EVAL_SLICES, NO_DOMAIN, NO_OWNER, ContentIds, SampleTable

REQUIRED = ("path", "label")
OPTIONAL = ("group", "owner", "slice", "sample_id", "domain")
LICENSED_OWNER = "-"  # the manifest's mark for an image with no data subject


def _read_image(path: Path, size: int, channels: int, where: str, manifest: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > Image.MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{where}: image is {width}x{height} pixels, too large to decode safely (at most {Image.MAX_IMAGE_PIXELS}): {path}",
                    file=manifest,
                    field="path",
                )
            if img.mode in ("F", "I;16F") and not np.isfinite(np.asarray(img, dtype=np.float32)).all():
                raise DataError(f"{where}: image has NaN or infinite pixel values (expected finite pixels): {path}", file=manifest, field="path")
            img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{where}: image not found: {path}", file=manifest, field="path") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image too large to decode safely ({exc}): {path}", file=manifest, field="path") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: not a readable image: {path} ({exc})", file=manifest, field="path") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _check_inside(given: str, folder: Path, inside: Path, where: str, manifest: str) -> None:
    """A manifest ``path`` names a file inside ``data.folder``: not absolute, not climbing out with ``..``,
    not a symlink resolving elsewhere. Checked for every row before any image is opened."""
    if Path(given).is_absolute():
        raise DataError(f"{where}: path is absolute: {given} (paths are relative to data.folder {folder})", file=manifest, field="path")
    target = (folder / given).resolve()
    if not target.is_relative_to(inside):
        raise DataError(f"{where}: path leads outside data.folder {folder}: {given} -> {target}", file=manifest, field="path")


def build_folder_table(config: DataConfig, seed: int, images_path: str | Path, keys: RowKeys | None = None) -> tuple[SampleTable, dict[str, object]]:
    """Read the manifest, then decode the images one by one into ``images_path`` (never all in memory);
    assign missing slices, owners and ids deterministically."""
    folder = Path(config.folder or "")
    manifest = Path(config.manifest or "")
    if not folder.is_dir():
        raise DataError("image folder not found", file=str(folder), field="data.folder")
    if not manifest.is_file():
        raise DataError("manifest CSV not found", file=str(manifest), field="data.manifest")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in REQUIRED:
            if col not in header:
                raise DataError(f"missing required column (have: {', '.join(header)})", file=str(manifest), field=col)
        unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
        if unknown:
            raise DataError(f"unknown column (allowed: {', '.join(REQUIRED + OPTIONAL)})", file=str(manifest), field=unknown[0])
        records = list(reader)
    if not records:
        raise DataError("manifest has no rows", file=str(manifest))
    inside = folder.resolve()
    for line, rec in enumerate(records, start=2):
        if not rec["path"] or not rec["label"]:
            raise DataError(f"line {line}: empty path or label", file=str(manifest), field="path" if not rec["path"] else "label")
        _check_inside(rec["path"], folder, inside, f"line {line}", str(manifest))
    labels = [rec["label"].strip() for rec in records]
    classes = sorted(set(labels))
    label_ids = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
    writer = ImageWriter(images_path, len(records), (config.channels, config.image_size, config.image_size), encrypted=True)
    keys = keys or RowKeys.open(Path(images_path).parent)  # each row encrypted under its own key (pipeline/data/rowkeys.py)
    content = ContentIds()
    content_ids = []
    try:
        for line, (rec, label) in enumerate(zip(records, label_ids, strict=True), start=2):
            image = _read_image(folder / rec["path"], config.image_size, config.channels, f"line {line}", str(manifest))
            content_ids.append(content.add(image, int(label)))
            writer.append(image, [keys.key_for(rec.get("sample_id") or content_ids[-1])])
        keys.save()  # the keys before the file is complete: a crash leaves unused keys, never rows no key opens
    except BaseException:
        writer.abort()  # a bad image: no partial file is left behind
        raise
    images = writer.close()
    ids = [rec.get("sample_id") or None for rec in records]
    ids = [given or auto for given, auto in zip(ids, content_ids, strict=True)]
    first_line: dict[str, int] = {}
    for line, sample_id in enumerate(ids, start=2):
        if sample_id in first_line:
            raise DataError(
                f"line {line}: duplicate sample_id {sample_id!r} (first on line {first_line[sample_id]}); ids must be unique",
                file=str(manifest),
                field="sample_id",
            )
        first_line[sample_id] = line

    # ``-``: no data subject (licensed or public data, never named by a deletion); empty: the image is its own subject.
    owners = [NO_OWNER if (rec.get("owner") or "").strip() == LICENSED_OWNER else (rec.get("owner") or f"o{i:05d}") for i, rec in enumerate(records)]
    given = [(rec.get("slice") or "").strip() for rec in records]
    slices = assign_slices(given, owners, config, seed)
    rows = pd.DataFrame(
        {
            "sample_id": ids,
            "label": label_ids,
            "group": [rec.get("group") or "all" for rec in records],
            "owner": owners,
            "slice": slices,
        }
    )
    # ``domain``: a test or canary image's slice look (its held-out split); a training image's domain is its slice.
    given_domains = [(rec.get("domain") or "").strip() for rec in records]
    rows["domain"] = [d if d and sl in EVAL_SLICES else (sl if sl not in EVAL_SLICES else NO_DOMAIN) for d, sl in zip(given_domains, slices, strict=True)]
    table = SampleTable(rows=rows, images=images, classes=classes)
    counts = pd.Series(slices).value_counts().to_dict()
    return table, {"source": str(manifest), "slices_assigned": sum(1 for g in given if not g), "slice_counts": counts}


def assign_slices(given: list[str], owners: list[str], config: DataConfig, seed: int) -> list[str]:
    """Slices for rows whose manifest gives none, split like the default data.

    ``test_fraction`` and ``canary_fraction`` of those rows become evaluation samples; the rest are
    training contributors (whole owners together, as an upload would arrive). Training rows with no
    data subject (owner ``-`` in the manifest) go to ``base``; when there are any, every owner goes
    to ``u1..u<update_slices>``, so the clean base holds nobody's data. Without them, ``base_fraction``
    of the owners go to ``base`` (their deletion then costs a full retrain) and the others to the
    update slices. Rows with a slice keep it.
    """
    rng = np.random.default_rng(seed)
    open_rows = [i for i, g in enumerate(given) if not g]
    out = list(given)
    order = [open_rows[k] for k in rng.permutation(len(open_rows))]
    n_test = int(round(config.test_fraction * len(open_rows)))
    n_canary = int(round(config.canary_fraction * len(open_rows)))
    for rank, i in enumerate(order):
        if rank < n_test:
            out[i] = "test"
        elif rank < n_test + n_canary:
            out[i] = "canary"
    train_rows = [i for i in open_rows if not out[i]]
    licensed = [i for i in train_rows if owners[i] == NO_OWNER]
    for i in licensed:
        out[i] = "base"
    train_rows = [i for i in train_rows if owners[i] != NO_OWNER]
    contributors = list(dict.fromkeys(owners[i] for i in sorted(train_rows)))
    contributors = [contributors[k] for k in rng.permutation(len(contributors))]
    if not config.update_slices:
        n_base = len(contributors)
    elif licensed or any(owners[i] == NO_OWNER for i, g in enumerate(given) if g == "base"):
        n_base = 0  # the base is licensed data: every data subject arrives in an update slice
    else:
        n_base = int(round(config.base_fraction * len(contributors)))
    updates = [f"u{k + 1}" for k in range(config.update_slices)]
    rest = contributors[n_base:]
    slice_of = {o: "base" for o in contributors[:n_base]}
    slice_of.update({o: updates[k * len(updates) // len(rest)] for k, o in enumerate(rest)})
    for i in train_rows:
        out[i] = slice_of[owners[i]]
    return out
