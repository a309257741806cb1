"""Exact deletion through overlays: retrain only the overlays a deleted sample influenced.

The idea of SISA (Bourtoule et al. 2021, "Machine Unlearning", IEEE S&P): split training so that
a deletion retrains only the parts that saw the sample; and of S3T (Chowdhury et al. 2024,
"Towards Scalable Exact Machine Unlearning Using Parameter-Efficient Fine-Tuning"), where the parts
are stacked adapters. The first overlay whose lineage holds a deleted sample, and every overlay
trained on top of it, are retrained with their recorded settings (learn and edit overlays) on
the remaining data; overlays
below are kept as they are. Exact by construction. When the clean base itself is affected, fall
back to ``base_fallback``: ``retrain`` (exact) or an approximate method (recorded deletion debt).

The second phase of a two-phase deletion: when an approximate method already served the request,
its forget overlays (those that ``cover`` the request's samples, not exact) are dropped, and every
overlay trained above them is retrained too (it was trained on a model they shaped), so the result
replaces the approximate overlay and pays the deletion debt.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from torch import nn

from edits.forget.retrain import RetrainConfig, retrain_from_scratch
from edits.registry import Change, OperatorEnv, get_method, register_method
from pipeline.data import UmeData
from pipeline.model.compose import compose
from pipeline.model.lineage import version_lineage
from pipeline.model.lora import LoraSettings, fold_lora

REPLAYABLE = ("learn/lora", "edit/lora")  # overlays retrained from their recorded settings


@dataclass(frozen=True)
class ExactConfig:
    """Defaults: a full retrain when the base is affected (exact, no debt)."""

    base_fallback: str = "retrain"


@register_method("forget", "exact", ExactConfig)
def forget_exact(net: nn.Module, data: UmeData, config: ExactConfig, env: OperatorEnv) -> Change:
    """Retrain the affected suffix of the overlay stack without the deleted samples."""
    manifest, store = env.champion_manifest, env.components
    if manifest is None or store is None:
        raise RuntimeError("exact needs the champion manifest and the component store")
    forget = set(env.forget_ids)
    if set(store.sidecar(manifest.base).lineage) & forget:
        if config.base_fallback == "retrain":
            change = retrain_from_scratch(net, data, RetrainConfig(), env)
            change.notes["reason"] = "the clean base was trained on a deleted sample: full retrain"
            return change
        method = get_method("forget", config.base_fallback, where="base_fallback")
        change = method.fn(net, data, method.parse_config({}, where="base_fallback", file="params.yaml"), env)
        change.notes.update({"reason": f"base affected: approximate {config.base_fallback}, deletion debt recorded", "debt": True})
        return change
    sidecars = [store.sidecar(cid) for cid in manifest.overlays]
    approximate = [i for i, sc in enumerate(sidecars) if set(sc.meta.get("covers", [])) & forget and not sc.meta.get("exact")]
    affected = [i for i, sc in enumerate(sidecars) if set(sc.lineage) & forget]
    if not affected and not approximate:
        return Change(notes={"reason": "no component of the champion was trained on these samples", "exact": True})
    first = min(affected + approximate)
    suffix = [(sc, step) for i, (sc, step) in enumerate(zip(sidecars, manifest.overlay_steps, strict=True)) if i >= first and i not in approximate]
    if any(sc.kind != "lora" or sc.meta.get("method") not in REPLAYABLE for sc, _ in suffix):
        change = retrain_from_scratch(net, data, RetrainConfig(), env)
        change.notes["reason"] = "an overlay without a replayable recipe (a merge or a forget delta) sits above the affected one: full retrain"
        return change
    prefix = manifest.truncated(first)
    current = compose(prefix, store)
    lineage = version_lineage(prefix, store)
    drafts = []
    for sidecar, step in suffix:
        method = get_method(*sidecar.meta["method"].split("/"))
        config_ = method.parse_config(sidecar.meta["config"], where=f"component {sidecar.id}", file=str(store.sidecar_path(sidecar.id)))
        trainable = copy.deepcopy(current)
        for p in trainable.parameters():
            p.requires_grad_(True)
        sub_env = dataclasses.replace(env, step=step, champion_lineage=frozenset(lineage))
        (draft,) = method.fn(trainable, data, config_, sub_env)
        draft = dataclasses.replace(draft, meta={**draft.meta, "overlay_step": step, "retrained_exactly_for": env.request.id if env.request else None})
        drafts.append(draft)
        current = fold_lora(copy.deepcopy(current), draft.tensors, LoraSettings.from_json(draft.meta["lora"])).eval()
        lineage |= set(draft.lineage)
    notes = {"exact": True, "retrained_steps": [s for _, s in suffix], "kept_overlays": first}
    if approximate:
        notes["replaced_approximate"] = [manifest.overlay_steps[i] for i in approximate]
    return Change(drafts=drafts, keep_overlays=first, notes=notes)
