"""Global magnitude pruning (unstructured or whole output channels), with an optional short fine-tune.

Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks" (NeurIPS);
structured channel pruning after Li et al. 2017, "Pruning Filters for Efficient ConvNets" (ICLR).
With ``structured: channels``, the channels are ranked by dependency-aware groups (DepGraph, Fang et al.
2023, CVPR; :mod:`pipeline.model.shrink`) and composing removes them, so the served network is smaller
and faster; without it the masks run dense, as transforms made before did.
Compressed models lose accuracy unevenly, mostly on small groups (Hooker et al. 2019, "What Do
Compressed Deep Neural Networks Forget?"): the fairness behaviours gate exactly that. The
fine-tune uses retained samples only (the data layer), with the masks enforced after every step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edits.registry import Change, OperatorEnv, register_method
from edits.training import StepsModule, fit_steps
from pipeline.core.errors import ConfigError
from pipeline.data import UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.delta import snapshot
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.prune import apply_masks, global_masks, prunable, sparsity_of
from pipeline.model.shrink import channel_masks

CHANNELS = "channels"  # ``structured: channels``: remove the pruned channels (pipeline/model/shrink.py)


@dataclass(frozen=True)
class PruneConfig:
    """Share of weights (or channels, when ``structured``) to remove, and optional fine-tune steps.

    ``structured``: ``false`` (single weights), ``true`` (whole output channels, masked dense) or
    ``"channels"`` (coupled channel groups, removed from the served network: smaller and faster)."""

    sparsity: float = 0.5
    structured: bool | str = False
    finetune_steps: int = 0
    lr: float = 0.01
    batch_size: int = 64


class _MaskedSteps(StepsModule):
    """Fine-tune with the pruned weights held at zero."""

    def __init__(self, net: nn.Module, masks: dict[str, torch.Tensor], **kwargs) -> None:
        super().__init__(net, lambda n, batch, _f, _i: nn.functional.cross_entropy(n(batch[0]), batch[1]), forget_loader=None, **kwargs)
        self.masks = masks

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Re-apply the masks after each optimiser step."""
        apply_masks(self.net, self.masks)


@register_method("compress", "prune", PruneConfig)
def compress_prune(net: nn.Module, data: UmeData, config: PruneConfig, env: OperatorEnv) -> Change:
    """Mask the smallest weights globally; optionally fine-tune the rest on retained samples."""
    if not 0.0 < config.sparsity < 1.0:
        raise ConfigError(f"expected a fraction in (0, 1), got {config.sparsity}", file="params.yaml", field=f"stream.{env.step}.sparsity")
    masks = _masks(net, config, env)
    before = snapshot(net)
    apply_masks(net, masks)
    lineage: list[str] = []
    delta: dict[str, torch.Tensor] = {}
    if config.finetune_steps > 0:
        retained = data.select("retain", hashed_ids=env.champion_lineage)
        for p in net.parameters():
            p.requires_grad_(False)
        trained = prunable(net)
        for p in trained.values():
            p.requires_grad_(True)
        fit_steps(_MaskedSteps(net, masks, lr=config.lr), retained, steps=config.finetune_steps, batch_size=config.batch_size, env=env)
        after = snapshot(apply_masks(net, masks))
        masked = {k: before[k] * masks[k].to(before[k].dtype) if k in masks else before[k] for k in sorted(set(masks) | set(trained))}
        delta = {k: after[k] - before[k] for k, v in masked.items() if not torch.equal(after[k], v)}
        lineage = hash_sample_ids(retained.sample_ids)
    tensors = {f"mask/{k}": v for k, v in masks.items()} | {f"delta/{k}": v.contiguous() for k, v in delta.items()}
    draft = ComponentDraft(
        kind="transform",
        tensors=tensors,
        lineage=lineage,
        meta={"method": "compress/prune", "transform": "prune", "config": asdict(config), "sparsity": round(sparsity_of(masks), 6)}
        | ({"remove_channels": True} if config.structured == CHANNELS else {}),
    )
    return Change(transform=draft)


def _masks(net: nn.Module, config: PruneConfig, env: OperatorEnv) -> dict[str, torch.Tensor]:
    """Keep-masks for ``config``: dependency-aware channel groups for ``structured: channels``, else global magnitude."""
    field = f"stream.{env.step}.structured"
    if isinstance(config.structured, bool):
        return global_masks(net, config.sparsity, structured=config.structured)
    if config.structured != CHANNELS:
        raise ConfigError(f"expected true, false or {CHANNELS!r}, got {config.structured!r}", file="params.yaml", field=field)
    try:
        return channel_masks(net, config.sparsity)
    except (ValueError, TypeError, NotImplementedError) as exc:  # torch.fx's TraceError is a ValueError
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot remove channels of {type(net).__name__}: {first}", file="params.yaml", field=field) from None
