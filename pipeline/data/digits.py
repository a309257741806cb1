"""The embedded default: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, no download).

Each image is upsampled to ``image_size``. A ``minority_fraction`` of the samples, spread over
every class and slice, is re-rendered as if from a second scanner (thicker strokes, lower contrast,
grey background) and marked ``group=scanner_b``; the rest are ``scanner_a``. A ``field_fraction`` of
the contributors uploaded tilted phone photos (rotated by ``field_rotation`` degrees): the ``field``
slice, where a model trained on flat scans makes real, structured confusions for an ``edit`` step to
fix. Owners are simulated
contributors of ``owner_size_min..owner_size_max`` samples each; an owner's samples arrive together
in one slice, as an upload would. With ``licensed_base`` (the default) the ``base`` slice stands for
a licensed pretraining set: its samples have no owner (``NO_OWNER``), so the clean base holds no data
subject's samples and every owner's data enters through an overlay.

``vulnerable_owners`` contributors of every update slice are *atypical*: a small upload
(``VULNERABLE_SIZE`` samples) labelled with their own key map (every label shifted by an
owner-specific offset). A model memorises such
rare, atypical samples rather than generalising to them (Feldman 2020, "Does Learning Require
Memorization? A Short Tale about a Long Tail"); they are the data subjects for whom a deletion is
detectable, and the ones a forget check must be able to catch (Carlini et al. 2022, LiRA).
Their names are in ``dataset.json`` (``vulnerable_owners``).

``looks`` gives update slices a look the base never sees, so that learning them matters: ``inverted``
(a scanner that writes dark ink on white), ``rotated`` (uploads turned by 90 degrees), ``mirrored``
(scanned through the back of the page). Test and canary samples are spread evenly
over the base's look and every update slice's look; their ``domain`` names the slice, which makes
them that slice's held-out split (the accuracy matrix of continual learning, Lopez-Paz & Ranzato 2017).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.core.config import DataConfig
from pipeline.data.table import NO_OWNER, SampleTable, assign_content_ids

VULNERABLE_SIZE = 8  # samples of each atypical data subject: rare, so the gate's averages barely move
MAJORITY_GROUP = "scanner_a"
MINORITY_GROUP = "scanner_b"


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images (N x 1 x S x S, background 0) by ``degrees`` about their centre."""
    theta = math.radians(degrees)
    affine = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0]])
    grid = F.affine_grid(affine.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros").clamp(0, 1)


LOOKS = {
    "inverted": lambda x: 1.0 - x,
    "rotated": lambda x: torch.rot90(x, 1, dims=(2, 3)),
    "mirrored": lambda x: torch.flip(x, dims=(3,)),
}


def render(
    images8: np.ndarray,
    image_size: int,
    channels: int,
    minority: np.ndarray,
    tilted: np.ndarray | None = None,
    degrees: float = 0.0,
    looks: np.ndarray | None = None,
) -> torch.Tensor:
    """Digits (N x 8 x 8, values 0..16) -> uint8 N x C x S x S, the minority with the second scanner's look,
    and each sample with its slice's look (``looks``: a name of :data:`LOOKS` or empty per sample)."""
    x = torch.from_numpy(images8.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    if tilted is not None and tilted.any() and degrees:
        sel = torch.from_numpy(tilted)
        x[sel] = rotate(x[sel], degrees)
    if minority.any():
        sel = torch.from_numpy(minority)
        thick = F.max_pool2d(x[sel], kernel_size=3, stride=1, padding=1)
        x[sel] = 0.25 + 0.45 * thick
    for name, look in LOOKS.items():
        sel = torch.from_numpy(looks == name) if looks is not None else torch.zeros(len(x), dtype=torch.bool)
        if sel.any():
            x[sel] = look(x[sel]).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8)
    return x.repeat(1, channels, 1, 1) if channels == 3 else x


def _assign_owners(indices: np.ndarray, rng: np.random.Generator, lo: int, hi: int, start: int) -> tuple[dict[int, str], int]:
    owners: dict[int, str] = {}
    pos, number = 0, start
    while pos < len(indices):
        size = int(rng.integers(lo, hi + 1))
        if len(indices) - (pos + size) < lo:
            size = len(indices) - pos
        for i in indices[pos : pos + size]:
            owners[int(i)] = f"w{number:03d}"
        pos += size
        number += 1
    return owners, number


def _vulnerable_owners(slice_of_owner: dict[str, str], slices: list[str], per_slice: int, rng: np.random.Generator) -> dict[str, int]:
    """``per_slice`` owners of every update slice, each with its own label offset (1..9)."""
    chosen: dict[str, int] = {}
    if per_slice == 0:  # draw nothing: the table stays what it was without the option
        return chosen
    for name in slices:
        owners = sorted(o for o, s in slice_of_owner.items() if s == name)
        for owner in rng.permutation(owners)[:per_slice]:
            chosen[str(owner)] = int(rng.integers(1, 10))
    return chosen


def build_digits_table(config: DataConfig, seed: int) -> tuple[SampleTable, dict[str, object]]:
    """The default sample table, deterministic in ``seed``; also returns what was done to it."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images8 = digits.images
    labels = digits.target.astype(np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)

    n_test = int(round(config.test_fraction * n))
    n_canary = int(round(config.canary_fraction * n))
    test_idx, canary_idx, pool_idx = order[:n_test], order[n_test : n_test + n_canary], order[n_test + n_canary :]

    slice_of = np.empty(n, dtype=object)
    slice_of[test_idx] = "test"
    slice_of[canary_idx] = "canary"
    owner_of: dict[int, str] = {}
    next_owner = 1
    pool_owners, next_owner = _assign_owners(pool_idx, rng, config.owner_size_min, config.owner_size_max, next_owner)
    owner_of.update(pool_owners)
    owner_names = list(dict.fromkeys(pool_owners[int(i)] for i in pool_idx))
    n_field = int(round(config.field_fraction * len(owner_names)))
    slice_of_owner = {o: "field" for o in owner_names[len(owner_names) - n_field :]}
    owner_names = owner_names[: len(owner_names) - n_field]
    n_base = int(round(config.base_fraction * len(owner_names)))
    update_names = [f"u{k + 1}" for k in range(config.update_slices)]
    slice_of_owner.update({o: "base" for o in owner_names[:n_base]})
    rest = owner_names[n_base:]
    for k, owner in enumerate(rest):
        slice_of_owner[owner] = update_names[k * len(update_names) // len(rest)] if update_names else "base"
    for i in pool_idx:
        slice_of[i] = slice_of_owner[pool_owners[int(i)]]
    for split_idx in (test_idx, canary_idx):
        split_owners, next_owner = _assign_owners(split_idx, rng, config.owner_size_min, config.owner_size_max, next_owner)
        owner_of.update(split_owners)

    minority = np.zeros(n, dtype=bool)
    minority[rng.permutation(n)[: int(round(config.minority_fraction * n))]] = True

    noted: dict[str, object] = {}
    vulnerable: list[str] = []
    for owner, shift in _vulnerable_owners(slice_of_owner, update_names, config.vulnerable_owners, rng).items():
        # A small upload of its own: VULNERABLE_SIZE samples of ``owner``'s, under a new data subject.
        members = np.array([i for i in pool_idx if owner_of[int(i)] == owner])[:VULNERABLE_SIZE]
        subject = f"w{next_owner:03d}"
        next_owner += 1
        for i in members:
            owner_of[int(i)] = subject
        labels[members] = (labels[members] + shift) % 10
        vulnerable.append(subject)
    for slice_name, share in sorted(config.corrupt_labels.items()):
        members = np.flatnonzero(slice_of == slice_name)
        chosen = rng.permutation(members)[: int(round(share * len(members)))]
        shift = rng.integers(1, 10, size=len(chosen))
        labels[chosen] = (labels[chosen] + shift) % 10
        noted[slice_name] = {"samples": int(len(members)), "labels_corrupted": int(len(chosen))}

    if config.licensed_base:
        # The base slice stands for a licensed (or public) pretraining set: its samples have no data
        # subject, so no deletion by owner ever reaches the clean base; every owner arrives in an update.
        for i in np.flatnonzero(slice_of == "base"):
            owner_of[int(i)] = NO_OWNER
    domain_of = np.where(np.isin(slice_of, ("test", "canary")), "", slice_of).astype(object)
    if config.looks:  # every evaluation sample gets one look: the base's or an update slice's (its held-out split)
        domains = np.array(["base", *sorted(config.looks)], dtype=object)
        for split_idx in (test_idx, canary_idx):
            domain_of[split_idx] = domains[np.arange(len(split_idx)) % len(domains)][rng.permutation(len(split_idx))]
    look_of = np.array([config.looks.get(d, "") for d in domain_of], dtype=object)
    images = render(images8, config.image_size, config.channels, minority, slice_of == "field", config.field_rotation, look_of)
    ids = assign_content_ids(images.numpy(), labels)
    rows = pd.DataFrame(
        {
            "sample_id": ids,
            "label": labels,
            "group": np.where(minority, "scanner_b", "scanner_a"),
            "owner": [owner_of[i] for i in range(n)],
            "slice": slice_of.astype(str),
            "domain": domain_of.astype(str),
        }
    )
    table = SampleTable(rows=rows, images=images, classes=[str(c) for c in range(10)])
    return table, {"source": "sklearn.datasets.load_digits", "corrupt_labels": noted, "vulnerable_owners": vulnerable}
