"""What a behaviour run looks at: the candidate, the champion, the data splits and the thresholds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.data import SampleSet, UmeData
from pipeline.model.net import predict_logits

if TYPE_CHECKING:
    from behaviors.cache import RowCache
    from behaviors.references import ReferenceBank

DEFAULT_THRESHOLDS: dict[str, float] = {
    "min_test_accuracy": 0.90,
    "max_test_accuracy_drop": 0.02,
    "max_retained_accuracy_drop": 0.02,
    "max_class_recall_drop": 0.10,
    "min_canary_agreement": 0.90,
    "max_calibration_error_increase": 0.05,
    "brightness_delta": 0.03,
    "min_brightness_agreement": 0.95,
    "forget_accuracy_tolerance": 0.05,
    "max_forgotten_class_recall": 0.10,
    "max_mia_accuracy": 0.70,
    "max_forget_member_share": 0.15,
    "max_group_accuracy_gap": 0.10,
    "max_group_gap_increase": 0.05,
    "min_group_loss_p_value": 0.05,
    "max_size_ratio": 1.05,
    "max_latency_ratio": 1.5,
    "min_perturbation_agreement": 0.90,
    "min_edit_success": 0.90,
    "min_edit_holdout_success": 0.75,
    "min_edit_locality": 0.97,
    "min_slice_gain": 0.10,
    "max_slice_forgetting": 0.05,
}


@dataclass
class ModelUnderTest:
    """A composed version with a prediction cache (one forward pass per split).

    With ``cache`` and ``key`` (the manifest hash: a version cannot change), rows computed by an
    earlier gate are read from :class:`~behaviors.cache.RowCache` and new ones written to it: the
    champion's logits were computed when it was promoted, so a gate runs only the candidate.
    """

    name: str
    version: int | None
    net: nn.Module = field(repr=False)
    description: str = ""
    key: str | None = None
    cache: RowCache | None = field(default=None, repr=False)
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def logits(self, samples: SampleSet) -> torch.Tensor:
        """Cached logits on a named sample set."""
        key = f"{samples.name}:{len(samples)}:{hash(samples.sample_ids)}"
        if key not in self._cache:
            self._cache[key] = self.rows("logits", samples, self._forward_set)
        return self._cache[key]

    def rows(self, kind: str, samples: SampleSet, compute: Callable[[SampleSet], torch.Tensor]) -> torch.Tensor:
        """Per-sample rows of ``kind`` (``compute``'s output), from the persistent cache where this model has one."""
        if self.cache is None or self.key is None:
            return compute(samples)
        return self.cache.rows(self.key, kind, samples, compute)

    def _forward_set(self, samples: SampleSet) -> torch.Tensor:
        # a batch at a time: an evaluation set is never held as one tensor of images
        outs = [predict_logits(self.net, batch) for batch in samples.batches(512)]
        return torch.cat(outs) if outs else predict_logits(self.net, samples.x)

    def predictions(self, samples: SampleSet) -> torch.Tensor:
        """Cached arg-max predictions."""
        return self.logits(samples).argmax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Uncached logits for arbitrary inputs (for property-based specs)."""
        return predict_logits(self.net, x)


@dataclass
class Splits:
    """The reference sets, already filtered by the deleted set."""

    test: SampleSet
    canary: SampleSet
    retain: SampleSet
    extra: dict[str, SampleSet] = field(default_factory=dict)

    def __getitem__(self, name: str) -> SampleSet:
        return {"test": self.test, "canary": self.canary, "retain": self.retain, **self.extra}[name]


@dataclass
class ForgetCase:
    """One deletion the candidate must honour: its forgotten samples and a comparison set.

    ``forgotten`` are the request's samples that were training data; ``unseen`` are samples the
    model never trained on, of the same classes (test samples for a sample/owner deletion; the
    deleted class's own test and canary samples for a class deletion). ``control`` is the
    un-forgotten model (the champion the request arrived on): every forget check is run on it
    too, and a check it passes as well is inconclusive.
    """

    request_id: str
    scope: str
    label: int | None
    forgotten: SampleSet
    unseen: SampleSet
    current: bool
    control: ModelUnderTest | None = None
    control_note: str = ""


@dataclass
class ErasedCase:
    """A resolved request whose data was erased: its pixels cannot be read, so its checks rest on the evidence recorded
    at resolution and on the lineage proof: how many of its samples the candidate's components were trained on
    (``carried``, must be 0), against the un-forgotten version's (``control_carried``, from the sidecars that stay)."""

    request_id: str
    erased_at: str
    carried: int
    control_carried: int | None
    evidence: str


@dataclass
class EditCase:
    """One edit the candidate carries: its cases, a held-out set of the same kind, the labels in scope.

    ``current`` marks the edit made by the step under test (its locality is checked against the
    champion); every earlier edit the candidate carries must still succeed (a merge may not lose it).
    """

    name: str
    scope_labels: tuple[int, ...]
    cases: SampleSet
    holdout: SampleSet
    current: bool
    locality: str = "canary"


@dataclass
class BehaviorContext:
    """Everything the fixtures hand to specs."""

    candidate: ModelUnderTest
    champion: ModelUnderTest | None
    splits: Splits
    thresholds: dict[str, float]
    data: UmeData
    step: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10
    forget_cases: list[ForgetCase] = field(default_factory=list)
    excluded_labels: tuple[int, ...] = ()
    edits: list[EditCase] = field(default_factory=list)
    report_dir: Path | None = None
    references: ReferenceBank | None = None
    references_note: str = ""
    heldout: dict[str, SampleSet] = field(default_factory=dict)  # each slice's held-out split (pipeline/data/table.py: domain)
    learned: tuple[str, ...] = ()  # the slices with a held-out split whose samples the candidate was trained on
    champion_learned: tuple[str, ...] = ()  # the same for the champion
    clean_base: ModelUnderTest | None = None  # the candidate's clean base alone: the learning guards' control
    erased: list[ErasedCase] = field(default_factory=list)  # resolved requests whose pixels and weights were erased


def merged_thresholds(overrides: dict[str, float]) -> dict[str, float]:
    """Defaults updated with ``params.yaml``'s ``behaviors.thresholds``."""
    return {**DEFAULT_THRESHOLDS, **overrides}
