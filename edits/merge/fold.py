"""Fold every overlay of the champion into one weight delta: serving needs a single addition, no adapters.

The folded overlay is the composed weights minus the clean base, so base + fold reproduces the
champion's predictions. It keeps the union of every overlay's lineage, deletion pins (``covers``)
and edits; a later exact deletion that touches it retrains from the clean base (a fold has no
training recipe to replay), so folding trades cheap exact deletion for serving simplicity.
Model soups (Wortsman et al. 2022, ICML) motivate serving one set of weights instead of many.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edits.merge.common import merged_bookkeeping, refuse_routed
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.compose import build_base
from pipeline.model.delta import snapshot, weight_delta


@dataclass(frozen=True)
class FoldConfig:
    """Folding takes every overlay; nothing to set."""


@register_method("merge", "fold", FoldConfig)
def merge_fold(net: nn.Module, data: UmeData, config: FoldConfig, env: OperatorEnv) -> Change:
    """Replace every overlay by one delta overlay (composed weights minus the clean base)."""
    manifest, store = env.champion_manifest, env.components
    if manifest is None or store is None:
        raise RuntimeError("a fold needs the champion manifest and the component store")
    if not manifest.overlays:  # the stream goes on: an earlier step (e.g. a full retrain) left nothing to fold
        return Change(notes={"merged_steps": [], "reason": "the champion has no overlay: nothing to fold"})
    refuse_routed(manifest, store, list(range(len(manifest.overlays))), where=f"stream.{env.step}.method")
    base = snapshot(build_base(store, manifest.base))
    sidecars = [store.sidecar(cid) for cid in manifest.overlays]
    lineage, meta = merged_bookkeeping(sidecars, list(manifest.overlay_steps))
    draft = ComponentDraft(kind="delta", tensors=weight_delta(base, net), lineage=lineage, meta={**meta, "method": "merge/fold"})
    return Change(drafts=[draft], drop_overlays=tuple(range(len(manifest.overlays))), notes={"merged_steps": list(manifest.overlay_steps)})
