"""Combine LoRA overlays into one adapter with peft's ``add_weighted_adapter``.

``cat`` concatenates the adapters (rank = sum of ranks): the exact sum of their weight changes.
``linear`` averages A and B separately (cheap, approximate). ``ties`` is TIES-Merging (Yadav et al.
2023, "TIES-Merging: Resolving Interference When Merging Models", NeurIPS): trim to the top
``density`` magnitudes, elect a sign, average the agreeing values. ``dare_ties`` first applies DARE
(Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a
Free Lunch", ICML): random drop with rescaling, seeded here so the merge is reproducible. The
approximate methods can lose an edit or regress: the ordinary behaviour suite decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from peft import set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from torch import nn

from edits.merge.common import chosen_overlays, merged_bookkeeping, refuse_routed
from edits.registry import Change, OperatorEnv, register_method
from pipeline.core.errors import ConfigError
from pipeline.data import UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.compose import build_base, is_parallel, overlay_weights
from pipeline.model.lora import LoraSettings, attach_lora, lora_config

MERGED = "merged"


@dataclass(frozen=True)
class WeightedMergeConfig:
    """Which overlays (step ids; default: every LoRA overlay), their weights and the kept density."""

    overlays: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    density: float = 0.7


def _merge(combination: str, config: WeightedMergeConfig, env: OperatorEnv) -> Change:
    manifest, store = env.champion_manifest, env.components
    if manifest is None or store is None:
        raise RuntimeError("a merge needs the champion manifest and the component store")
    where = f"stream.{env.step}"
    positions = chosen_overlays(manifest, config.overlays, where=where)
    refuse_routed(manifest, store, positions, where=f"{where}.overlays" if config.overlays else f"{where}.method")
    sidecars = [store.sidecar(manifest.overlays[i]) for i in positions]
    if not config.overlays:
        positions = [i for i, s in zip(positions, sidecars, strict=True) if s.kind == "lora"]
        sidecars = [s for s in sidecars if s.kind == "lora"]
    for i, sidecar in zip(positions, sidecars, strict=True):
        if sidecar.kind != "lora":
            raise ConfigError(
                f"overlay of step {manifest.overlay_steps[i]!r} is a {sidecar.kind!r}, not LoRA: only `fold` absorbs it",
                file="params.yaml",
                field=f"{where}.overlays",
            )
    if len(sidecars) < 2:
        if config.overlays:
            raise ConfigError(f"a merge needs at least two LoRA overlays, got {len(sidecars)}", file="params.yaml", field=f"{where}.overlays")
        # Merging "every LoRA overlay" when an earlier step (e.g. a full retrain) left fewer than two: nothing to do.
        return Change(notes={"merged_steps": [], "reason": f"the champion has {len(sidecars)} LoRA overlay(s): nothing to merge"})
    composed = overlay_weights([store.sidecar(c).meta for c in manifest.overlays])
    parallel = {i for i, c in enumerate(manifest.overlays) if is_parallel(store.sidecar(c).meta)}
    if parallel & set(positions) and not parallel <= set(positions):
        raise ConfigError(
            "the merge takes some of the parallel overlays but not all: their mean would change; merge all of them, or use `fold`",
            file="params.yaml",
            field=f"{where}.overlays",
        )
    # By default each adapter keeps the weight composition gives it (1, or 1/k for k parallel overlays).
    weights = list(config.weights) or [composed[i] for i in positions]
    if len(weights) != len(sidecars):
        raise ConfigError(f"expected {len(sidecars)} weights, got {len(weights)}", file="params.yaml", field=f"{where}.weights")
    if not 0.0 < config.density <= 1.0:
        raise ConfigError(f"expected a fraction in (0, 1], got {config.density}", file="params.yaml", field=f"{where}.density")
    settings = [LoraSettings.from_json(s.meta["lora"]) for s in sidecars]
    if len({s.targets for s in settings}) != 1:
        raise ConfigError("the overlays adapt different layers and cannot be merged into one adapter", file="params.yaml", field=f"{where}.overlays")
    # The adapters are loaded side by side on the clean base; the merged adapter is read out alone.
    peft_net = attach_lora(build_base(store, manifest.base), settings[0], seed=env.seed)
    names = ["default", *(f"a{k}" for k in range(1, len(sidecars)))]
    for name, sidecar, setting in zip(names, sidecars, settings, strict=True):
        if name != "default":
            peft_net.add_adapter(name, lora_config(setting))
        tensors, _ = store.load(sidecar.id)
        set_peft_model_state_dict(peft_net, tensors, adapter_name=name)
    with torch.random.fork_rng():
        torch.manual_seed(env.seed)
        peft_net.add_weighted_adapter(names, weights, MERGED, combination_type=combination, density=config.density)
    merged_config = peft_net.peft_config[MERGED]
    tensors = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(peft_net, adapter_name=MERGED).items()}
    lineage, meta = merged_bookkeeping(sidecars, [manifest.overlay_steps[i] for i in positions])
    merged_settings = LoraSettings(rank=int(merged_config.r), alpha=float(merged_config.lora_alpha), targets=settings[0].targets)
    draft = ComponentDraft(
        kind="lora",
        tensors=tensors,
        lineage=lineage,
        meta={**meta, "method": f"merge/{combination}", "config": asdict(config), "lora": merged_settings.to_json()},
    )
    return Change(drafts=[draft], drop_overlays=tuple(positions), notes={"merged_steps": [manifest.overlay_steps[i] for i in positions]})


def _register(combination: str) -> None:
    def merge(net: nn.Module, data: UmeData, config: WeightedMergeConfig, env: OperatorEnv) -> Change:
        return _merge(combination, config, env)

    merge.__doc__ = f"Merge LoRA overlays into one adapter with peft add_weighted_adapter ({combination})."
    merge.__name__ = f"merge_{combination}"
    register_method("merge", combination, WeightedMergeConfig)(merge)


for _combination in ("cat", "linear", "ties", "dare_ties"):
    _register(_combination)
