"""What every unlearning method shares: the forget/retain sets, a delta overlay, the Lightning loop.

Defaults are scaled to small data (see DESIGN.md "Lessons"): a fixed number of optimizer steps
rather than published epoch counts, and the behaviour suite, with retained accuracy blocking,
judges the result against the champion.
"""

from __future__ import annotations

import torch
from torch import nn

from edits.registry import Change, OperatorEnv
from edits.training import StepsModule, fit_steps, loader
from pipeline.data import SampleSet, UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.delta import snapshot, weight_delta
from pipeline.model.lineage import hash_sample_ids


def request_hashed_ids(data: UmeData, env: OperatorEnv) -> set[str]:
    """Hashed ids of the request being processed (from the ledger, via the data layer's filter)."""
    if env.request is None:
        raise RuntimeError("a forget method needs the request")
    return set(env.forget_ids)


def forget_set(data: UmeData, env: OperatorEnv) -> SampleSet:
    """The request's samples that actually influenced the champion (the only ones to unlearn)."""
    wanted = request_hashed_ids(data, env) & set(env.champion_lineage)
    return data.forgotten("forget", wanted)


def retain_set(data: UmeData, env: OperatorEnv, cap: int | None = None) -> SampleSet:
    """What the champion was trained on, minus every deletion (the data layer already removed them)."""
    retain = data.select("retain", hashed_ids=env.champion_lineage)
    return data.subsample(retain, cap, seed=env.seed) if cap else retain


def delta_change(before: dict[str, torch.Tensor], net: nn.Module, covers: set[str], meta: dict, used: SampleSet | None = None) -> Change:
    """A ``delta`` overlay from ``before`` to ``net`` that covers the unlearned samples.

    Its lineage is the retain data it was computed with (those samples influenced it, so a later
    deletion of one of them must treat this overlay as affected).
    """
    lineage = hash_sample_ids(used.sample_ids) if used is not None else []
    draft = ComponentDraft(kind="delta", tensors=weight_delta(before, net), lineage=lineage, meta={**meta, "covers": sorted(covers), "exact": False})
    return Change(drafts=[draft])


def forget_meta(method: str, config: object, forget: SampleSet, retain: SampleSet) -> dict:
    """Sidecar meta common to forget overlays."""
    from dataclasses import asdict

    return {"method": f"forget/{method}", "config": asdict(config), "forgotten_samples": len(forget), "retain_samples": len(retain)}


# The method files take these from here, with the rest of their toolkit.
__all__ = ["StepsModule", "fit_steps", "loader", "snapshot"]
