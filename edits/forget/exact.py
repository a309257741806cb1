"""Exact deletion through overlays: retrain only the overlays a deleted sample influenced.

The idea of SISA (Bourtoule et al. 2021, "Machine Unlearning", IEEE S&P): split training so that
a deletion retrains only the parts that saw the sample; and of S3T (Chowdhury et al. 2024,
"Towards Scalable Exact Machine Unlearning Using Parameter-Efficient Fine-Tuning"), where the parts
are stacked adapters. The overlays whose lineage holds a deleted sample, and every overlay
trained on top of the first of them (a stacked learn overlay, an edit), are retrained with their
recorded settings on the remaining data; overlays below, and parallel or routed overlays trained on
the clean base alone, are kept as they are (a routed overlay's detectors are refitted with it).
Exact by construction. When the clean base itself is affected, fall back to ``base_fallback``:
``retrain`` (exact) or an approximate method (recorded deletion debt).

The second phase of a two-phase deletion: when an approximate method already served the request,
its forget overlays (those that ``cover`` the request's samples, not exact) are dropped, and every
overlay trained above them is retrained too (it was trained on a model they shaped), so the result
replaces the approximate overlay and pays the deletion debt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from edits.forget.retrain import RetrainConfig, retrain_from_scratch
from edits.registry import Change, OperatorEnv, as_change, get_method, register_method
from pipeline.data import UmeData
from pipeline.model.compose import compose, trained_on_base
from pipeline.model.lineage import version_lineage

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
    approximate = [
        i
        for i, sc in enumerate(sidecars)
        if set(sc.meta.get("covers", [])) & forget and not sc.meta.get("exact") and not _still_covers_others(manifest, store, i, forget)
    ]
    affected = [i for i, sc in enumerate(sidecars) if set(sc.lineage) & forget]
    if not affected and not approximate:
        return Change(notes={"reason": "no component of the champion was trained on these samples", "exact": True})
    first = min(affected + approximate)
    # Rebuilt: the affected overlays, and every overlay above the first change that was trained on the
    # composition below it (stacked). A parallel overlay trained on the clean base alone stays.
    rebuild = [i for i in range(first, len(sidecars)) if i not in approximate and (i in affected or not _parallel(sidecars[i]))]
    if any(sidecars[i].kind != "lora" or sidecars[i].meta.get("method") not in REPLAYABLE for i in rebuild):
        change = retrain_from_scratch(net, data, RetrainConfig(), env)
        change.notes["reason"] = "an overlay without a replayable recipe (a merge or a forget delta) sits above the affected one: full retrain"
        return change
    kept = manifest.without_positions([*rebuild, *approximate])
    lineage = version_lineage(kept, store)
    drafts = []
    for i in rebuild:
        sidecar, step = sidecars[i], manifest.overlay_steps[i]
        method = get_method(*sidecar.meta["method"].split("/"))
        config_ = method.parse_config(sidecar.meta["config"], where=f"component {sidecar.id}", file=str(store.sidecar_path(sidecar.id)))
        trainable = compose(kept.float_shadow(), store, drafts)  # what it was trained on: the float kept overlays and those rebuilt so far
        for p in trainable.parameters():
            p.requires_grad_(True)
        sub_env = dataclasses.replace(env, step=step, champion_lineage=frozenset(lineage))
        (draft,) = as_change(method.fn(trainable, data, config_, sub_env)).drafts  # an edit returns a Change (its experts noted)
        draft = dataclasses.replace(draft, meta={**draft.meta, "overlay_step": step, "retrained_exactly_for": env.request.id if env.request else None})
        drafts.append(draft)
        lineage |= set(draft.lineage)
    suffix = [(sidecars[i], manifest.overlay_steps[i]) for i in rebuild]
    notes = {"exact": True, "retrained_steps": [s for _, s in suffix], "kept_overlays": len(kept.overlays)}
    if approximate:
        notes["replaced_approximate"] = [manifest.overlay_steps[i] for i in approximate]
    return Change(drafts=drafts, drop_overlays=[*rebuild, *approximate], notes=notes)


def _still_covers_others(manifest, store, position: int, forget: set[str]) -> bool:
    """Whether the approximate overlay at ``position`` also covers samples of *other* requests that the rest of the
    version still carries (e.g. a group's approximate deletion over a base trained on it, while this request is one
    owner of that group): dropping it would serve those deleted samples again, so it stays (found by the state machine,
    bench.stream_machine, 2026-12-04: a group's SSD overlay dropped by an owner's exact deletion, the champion revoked)."""
    others = set(store.sidecar(manifest.overlays[position]).meta.get("covers", [])) - forget
    return bool(others & version_lineage(manifest.without_positions([position]), store))


def _parallel(sidecar) -> bool:
    """An overlay trained on the clean base alone (``learn/lora`` with ``layout: parallel`` or ``routed``)."""
    return trained_on_base(sidecar.meta)
