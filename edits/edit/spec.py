"""Edit specs (``edits/specs/<name>.yaml``): which cases to fix, how to test generalisation and locality.

A spec names a pool of samples from the data layer (a slice, explicit sample ids, label filters)
and optionally a confusion to fix: ``top`` (the most frequent ``true -> predicted`` mistake the
model being edited makes on the pool, found at step time from its own confusion matrix) or an
explicit ``"4->9"``. The cases are split deterministically into training cases and a held-out set
of the same kind. Deleted samples never appear: the pool comes through :class:`UmeData`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pipeline.core.config import load_yaml, parse_dataclass, yaml_problem
from pipeline.core.errors import ConfigError, DataError
from pipeline.data import SampleSet, UmeData
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.net import predict_logits

EDIT_SCOPES = ("routed", "network")


@dataclass(frozen=True)
class EditCases:
    """Where the cases come from. Every given criterion must hold."""

    slice: str | None = None
    samples: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    confusion: str | None = None
    holdout_fraction: float = 0.5


@dataclass(frozen=True)
class EditTraining:
    """LoRA settings of the overlay and the locality term (KL to the champion on retained samples)."""

    rank: int = 8
    alpha: float = 16.0
    epochs: int = 30
    lr: float = 0.002
    batch_size: int = 32
    locality_weight: float = 2.0
    locality_samples: float = 16.0
    augment_shift: int = 1
    scope: str = "routed"  # on a routed champion: the experts the cases are sent to; "network": every expert


@dataclass(frozen=True)
class EditSpec:
    """One edit: what to fix, where to check locality, and how to train."""

    description: str
    cases: EditCases = field(default_factory=EditCases)
    locality: str = "canary"
    train: EditTraining = field(default_factory=EditTraining)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (for the component sidecar)."""
        return asdict(self)


def load_spec(path: str | Path) -> EditSpec:
    """Parse and validate a spec file; every error names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("edit spec not found", file=str(path))
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({yaml_problem(exc)})", file=str(path)) from None
    spec = parse_dataclass(EditSpec, raw, where="", file=str(path))
    cases = spec.cases
    if cases.slice is None and not cases.samples:
        raise ConfigError("name a 'slice' or a list of 'samples' to take the cases from", file=str(path), field="cases")
    if cases.confusion is not None:
        parse_confusion(cases.confusion, file=str(path))
    if not 0.0 < cases.holdout_fraction < 1.0:
        raise ConfigError(f"expected a fraction in (0, 1), got {cases.holdout_fraction}", file=str(path), field="cases.holdout_fraction")
    if spec.locality not in ("canary", "test"):
        raise ConfigError(f"expected 'canary' or 'test', got {spec.locality!r}", file=str(path), field="locality")
    t = spec.train
    for name in ("rank", "epochs", "batch_size"):
        if getattr(t, name) < 1:
            raise ConfigError(f"expected >= 1, got {getattr(t, name)}", file=str(path), field=f"train.{name}")
    if t.scope not in EDIT_SCOPES:
        raise ConfigError(f"expected one of {', '.join(EDIT_SCOPES)}, got {t.scope!r}", file=str(path), field="train.scope")
    if t.lr <= 0 or t.locality_weight < 0 or t.locality_samples < 0:
        raise ConfigError("lr must be > 0, locality_weight and locality_samples >= 0", file=str(path), field="train")
    return spec


def spec_hash(path: str | Path) -> str:
    """SHA-256 (first 16 hex) of the spec file's bytes: recorded so a changed spec is a new edit."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def parse_confusion(text: str, *, file: str = "edit spec") -> tuple[int, int] | None:
    """``"top"`` -> None (found at step time); ``"4->9"`` -> (4, 9)."""
    if text == "top":
        return None
    parts = text.split("->")
    try:
        true, predicted = (int(p.strip()) for p in parts)
    except ValueError:
        raise ConfigError(f"expected 'top' or '<true>-><predicted>' like '4->9', got {text!r}", file=file, field="cases.confusion") from None
    if true == predicted:
        raise ConfigError("a confusion needs two different labels", file=file, field="cases.confusion")
    return true, predicted


@dataclass(frozen=True)
class ResolvedEdit:
    """The concrete cases of an edit, as the model being edited sees them."""

    name: str
    scope_labels: tuple[int, ...]
    locality: str
    confusion: tuple[int, int] | None
    cases: SampleSet
    holdout: SampleSet

    def to_json(self) -> dict[str, Any]:
        """What the overlay's sidecar keeps so every later version can be checked (hashed ids only)."""
        return {
            "name": self.name,
            "scope_labels": list(self.scope_labels),
            "locality": self.locality,
            "confusion": list(self.confusion) if self.confusion else None,
            "cases": hash_sample_ids(self.cases.sample_ids),
            "holdout": hash_sample_ids(self.holdout.sample_ids),
        }


def top_confusion(net: torch.nn.Module, pool: SampleSet, num_classes: int) -> tuple[int, int]:
    """The most frequent ``(true, predicted)`` mistake of ``net`` on ``pool`` (ties: lowest labels)."""
    predicted = torch.cat([predict_logits(net, batch).argmax(1) for batch in pool.batches()]) if len(pool) else torch.zeros(0, dtype=torch.long)
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    counts.index_put_((pool.y, predicted), torch.ones(len(pool), dtype=torch.long), accumulate=True)
    counts.fill_diagonal_(0)
    if int(counts.max()) == 0:
        raise DataError(f"the model makes no mistake on {pool.name!r}: nothing to edit", field="cases.confusion")
    flat = int(torch.argmax(counts.flatten()))
    return flat // num_classes, flat % num_classes


def resolve_cases(
    spec: EditSpec, name: str, data: UmeData, net: torch.nn.Module, *, seed: int, confusion: str | None = None, file: str = "edit spec"
) -> ResolvedEdit:
    """Select the pool, find the confusion (``confusion`` overrides the spec: a replay), split the cases."""
    c = spec.cases
    pool = data.select(
        f"edit:{name}",
        slices=[c.slice] if c.slice else None,
        sample_ids=list(c.samples) if c.samples else None,
    )
    if c.labels:
        pool = pool.take([i for i, y in enumerate(pool.y.tolist()) if y in set(c.labels)])
    if len(pool) == 0:
        raise ConfigError("the cases select no (undeleted) sample", file=file, field="cases")
    pair = parse_confusion(confusion or c.confusion, file=file) if (confusion or c.confusion) else None
    if (confusion or c.confusion) == "top":
        pair = top_confusion(net, pool, len(data.classes))
    scope = tuple(sorted(set(pair))) if pair else tuple(sorted(set(pool.y.tolist())))
    in_scope = pool.take([i for i, y in enumerate(pool.y.tolist()) if y in scope], name=f"edit:{name}")
    order = np.random.default_rng(seed).permutation(len(in_scope))
    n_holdout = max(1, int(round(c.holdout_fraction * len(in_scope))))
    if len(in_scope) - n_holdout < 1:
        raise ConfigError(f"only {len(in_scope)} case(s): too few to split off a held-out set", file=file, field="cases")
    holdout = in_scope.take(sorted(order[:n_holdout].tolist()), name=f"edit:{name}:holdout")
    cases = in_scope.take(sorted(order[n_holdout:].tolist()), name=f"edit:{name}:cases")
    return ResolvedEdit(name=name, scope_labels=scope, locality=spec.locality, confusion=pair, cases=cases, holdout=holdout)
