"""LoRA overlays with peft: choose target layers, attach an adapter, read it out, fold it in.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds ``B @ A * alpha/r``
to a frozen weight. We target every ``nn.Linear`` and every ungrouped ``nn.Conv2d``: peft cannot
merge grouped or depthwise convolutions, and an overlay we cannot fold is one we cannot serve
without overhead. Training and composition share these helpers, so an overlay is applied exactly
the way it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from pipeline.core.errors import ComponentError


@dataclass(frozen=True)
class LoraSettings:
    """What a LoRA overlay needs to be re-attached: rank, scale and the exact target layers."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """For the component sidecar."""
        raw = asdict(self)
        raw["targets"] = list(self.targets)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoraSettings:
        """From a component sidecar's ``meta.lora``."""
        try:
            return cls(rank=int(raw["rank"]), alpha=float(raw["alpha"]), targets=tuple(raw["targets"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ComponentError(f"malformed LoRA settings ({exc})", field="meta.lora") from None


def lora_targets(net: nn.Module) -> tuple[str, ...]:
    """Names of the layers LoRA can adapt and merge: Linear and ungrouped Conv2d."""
    names = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            names.append(name)
    return tuple(names)


def lora_config(settings: LoraSettings) -> LoraConfig:
    """The peft config of an overlay (no dropout, no bias: the adapter is the whole change)."""
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets), lora_dropout=0.0, bias="none")


def attach_lora(net: nn.Module, settings: LoraSettings, *, seed: int = 0) -> nn.Module:
    """Wrap ``net`` with a fresh trainable adapter (B = 0, so outputs start unchanged)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(net, lora_config(settings))


def adapter_tensors(peft_net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors, as peft names them (without the adapter name)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_net).items()}


def fold_lora(net: nn.Module, tensors: dict[str, torch.Tensor], settings: LoraSettings) -> nn.Module:
    """Apply a stored adapter to ``net`` and merge it into the weights; returns the plain network."""
    peft_net = attach_lora(net, settings)
    result = set_peft_model_state_dict(peft_net, tensors)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ComponentError(f"adapter tensors do not fit this network: {unexpected[:3]}", field="tensors")
    return peft_net.merge_and_unload()
