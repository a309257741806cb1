"""What every unlearning method shares: the forget/retain sets, a delta overlay, the Lightning loop.

Defaults are scaled to small data (see DESIGN.md "Lessons"): a fixed number of optimizer steps
rather than published epoch counts, and the behaviour suite, with retained accuracy blocking,
judges the result against the champion.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from edits.registry import Change, Operator, OperatorEnv
from edits.training import StepsModule, fit_steps, loader
from pipeline.core.errors import ConfigError
from pipeline.data import SampleSet, UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.compose import is_routed
from pipeline.model.delta import snapshot, weight_delta
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.routing import RoutedNetwork


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


SCOPES = ("owner", "network")


@dataclasses.dataclass(frozen=True)
class ScopedConfig:
    """What every approximate method's settings start with: where it runs on routed experts (:func:`owner_scoped`).

    ``owner`` (default): on the experts that learned the request; ``network``: on the whole network, as the papers do."""

    scope: str = "owner"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ConfigError(f"expected one of {', '.join(SCOPES)}, got {self.scope!r}", field="scope")


def owner_experts(net: nn.Module, env: OperatorEnv) -> list[tuple[int, frozenset[str]]] | None:
    """The experts of a routed ``net`` that trained on the request, each with its training lineage; ``None`` when
    the method must work on the whole network: ``net`` is not routed, or the clean base or an overlay folded over
    the experts (a stacked edit, a merge) trained on a deleted sample, so every expert carries it."""
    manifest, store = env.champion_manifest, env.components
    if not isinstance(net, RoutedNetwork) or manifest is None or store is None:
        return None
    forget = set(env.forget_ids)
    if set(store.sidecar(manifest.base).lineage) & forget:
        return None
    owners, index, served = [], 0, set(env.champion_lineage)
    for component_id in manifest.float_shadow().overlays:
        sidecar = store.sidecar(component_id)
        lineage = set(sidecar.lineage)
        if not is_routed(sidecar.meta):
            if lineage & forget:
                return None
            continue
        index += 1
        if lineage & forget:
            owners.append((index, frozenset(lineage & served)))
    return owners or None


def owner_scoped(fn: Operator) -> Operator:
    """Run an approximate method on the experts that learned the request, not on the whole routed network.

    On ``layout: routed`` a data subject of an update influenced one expert (its slice's overlay, over a clean
    base that never saw them): the method runs on that expert alone, with the expert's own training data as
    its retain set, and its delta is renamed into the routed network (``experts.<i>.``). The other experts and
    the base stay bit-identical, and each step costs one expert's forward and backward instead of one call per
    expert a batch routes to. This is the approximate counterpart of exact deletion's locality (SISA, Bourtoule
    et al. 2021: only the part that saw the sample changes). Elsewhere (the base trained on the request, a
    stacked network) ``fn`` runs on the whole network as before."""

    @functools.wraps(fn)
    def run(net: nn.Module, data: UmeData, config: object, env: OperatorEnv) -> Change:
        owners = owner_experts(net, env) if getattr(config, "scope", "owner") == "owner" else None
        if owners is None:
            return fn(net, data, config, env)
        assert isinstance(net, RoutedNetwork)
        tensors: dict[str, torch.Tensor] = {}
        lineage: set[str] = set()
        metas: list[dict] = []
        for index, expert_lineage in owners:
            change = fn(net.experts[index], data, config, dataclasses.replace(env, champion_lineage=expert_lineage))
            for draft in change.drafts:
                tensors.update({f"experts.{index}.{name}": t for name, t in draft.tensors.items()})
                lineage |= set(draft.lineage)
                metas.append(draft.meta)
        meta = {
            **metas[0],
            "forgotten_samples": sum(m.get("forgotten_samples", 0) for m in metas),
            "retain_samples": sum(m.get("retain_samples", 0) for m in metas),
            "experts": [index for index, _ in owners],
        }
        if len(metas) > 1:  # what each expert's run recorded (an SSD's chosen alpha and lambda, say), not only the first's
            meta["per_expert"] = {str(index): m for (index, _), m in zip(owners, metas, strict=True)}
        draft = ComponentDraft(kind="delta", tensors=tensors, lineage=sorted(lineage), meta=meta)
        return Change(drafts=[draft], notes={"experts": meta["experts"]})

    return run


# The method files take these from here, with the rest of their toolkit.
__all__ = ["ScopedConfig", "StepsModule", "fit_steps", "loader", "owner_scoped", "snapshot"]
