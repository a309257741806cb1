"""LoRA overlays with peft: choose target layers, attach an adapter, read it out, fold it in.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds ``B @ A * alpha/r``
to a frozen weight. We target every ``nn.Linear`` and every ungrouped ``nn.Conv2d``: peft cannot
merge grouped or depthwise convolutions, and an overlay we cannot fold is one we cannot serve
without overhead. Training attaches adapters with peft; :func:`fold_lora` adds each adapter's
``B @ A * alpha/r`` to its layer's weight with the same arithmetic as peft's ``merge_and_unload``
(``get_delta_weight`` of its Linear and Conv2d layers), checked against peft in the tests. Folding
needs no peft, so composing a model (the gate, ``ume audit``) never imports peft and transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import ComponentError

if TYPE_CHECKING:
    from peft import LoraConfig

PEFT_PREFIX = "base_model.model."  # how peft names the wrapped network's modules in an adapter's state dict


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
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets), lora_dropout=0.0, bias="none")


def attach_lora(net: nn.Module, settings: LoraSettings, *, seed: int = 0) -> nn.Module:
    """Wrap ``net`` with a fresh trainable adapter (B = 0, so outputs start unchanged)."""
    from peft import get_peft_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(net, lora_config(settings))


def adapter_tensors(peft_net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors, as peft names them (without the adapter name)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_net).items()}


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """The weight change of one adapted layer: ``B @ A * scale`` (Linear), its convolution form (Conv2d).

    For a k x k convolution peft's ``lora_A`` is a k x k convolution into ``r`` channels and
    ``lora_B`` a 1 x 1 one out of them; their composition is the convolution of A's kernels with B.
    """
    if lora_a.dim() == 2:
        return (lora_b @ lora_a) * scale
    if lora_a.shape[2:] == (1, 1):
        return (lora_b.flatten(1) @ lora_a.flatten(1))[:, :, None, None] * scale
    return F.conv2d(lora_a.transpose(0, 1), lora_b).transpose(0, 1) * scale


def fold_lora(net: nn.Module, tensors: dict[str, torch.Tensor], settings: LoraSettings) -> nn.Module:
    """Add a stored adapter's weight change to ``net``'s layers, in place; returns ``net``."""
    scale = settings.alpha / settings.rank
    modules = dict(net.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
                pairs.setdefault(key[len(PEFT_PREFIX) : -len(suffix)], {})[part] = value
    unfit = [name for name, pair in pairs.items() if len(pair) != 2 or not isinstance(modules.get(name), nn.Linear | nn.Conv2d)]
    if unfit or len(tensors) != 2 * len(pairs):
        odd = unfit or sorted(k for k in tensors if not k.startswith(PEFT_PREFIX) or "lora_" not in k)
        raise ComponentError(f"adapter tensors do not fit this network: {odd[:3]}", field="tensors")
    for name, pair in pairs.items():
        want_a, want_b = _adapter_shapes(modules[name], settings.rank)
        if tuple(pair["lora_A"].shape) != want_a or tuple(pair["lora_B"].shape) != want_b:
            raise ComponentError(
                f"adapter tensors do not fit this network: size mismatch for {name!r}: lora_A {tuple(pair['lora_A'].shape)}, "
                f"lora_B {tuple(pair['lora_B'].shape)}; the layer needs {want_a} and {want_b} at rank {settings.rank}",
                field="tensors",
            )
    with torch.no_grad():
        for name, pair in pairs.items():
            weight = modules[name].weight
            delta = lora_delta(pair["lora_A"].float(), pair["lora_B"].float(), scale)
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    return net


def _adapter_shapes(layer: nn.Linear | nn.Conv2d, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of ``lora_A`` and ``lora_B`` that peft gives an adapter of ``layer`` at ``rank``."""
    if isinstance(layer, nn.Linear):
        return (rank, layer.in_features), (layer.out_features, rank)
    return (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
