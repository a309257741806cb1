"""Magnitude pruning as an export transform: binary masks (and an optional fine-tune delta) per weight.

Global magnitude pruning (Han et al. 2015, "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS): one threshold on ``|w|`` across every Conv2d and Linear weight.
Structured: whole output channels ranked globally by their L1 norm per weight (Li et al. 2017,
"Pruning Filters for Efficient ConvNets", ICLR), never a whole layer. The component stores the
masks (uint8) and, when the step fine-tuned, the weight delta; composing applies
``w <- (w + delta) * mask``, so the same manifest gives the same weights. These masks run dense;
structured pruning that removes the channels it prunes is :mod:`pipeline.model.shrink`.
"""

from __future__ import annotations

import torch
from torch import nn

MASK_SUFFIX = ".__mask__"


def prunable(net: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every Conv2d and Linear, by state-dict name."""
    out = {}
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out[f"{name}.weight" if name else "weight"] = module.weight
    return out


def global_masks(net: nn.Module, sparsity: float, *, structured: bool) -> dict[str, torch.Tensor]:
    """Keep-masks (1 = kept) removing a ``sparsity`` share of weights (or of output channels)."""
    weights = prunable(net)
    if structured:
        scores = {k: w.detach().abs().flatten(1).mean(1) for k, w in weights.items()}
    else:
        scores = {k: w.detach().abs() for k, w in weights.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(sparsity * flat.numel())
    if k == 0:
        return {name: torch.ones_like(w, dtype=torch.uint8) for name, w in weights.items()}
    threshold = torch.kthvalue(flat, k).values
    masks = {}
    for name, w in weights.items():
        keep = scores[name] > threshold
        if structured:
            if not keep.any():  # never remove a whole layer: keep its strongest channel
                keep[scores[name].argmax()] = True
            keep = keep.view(-1, *([1] * (w.dim() - 1))).expand_as(w)
        masks[name] = keep.to(torch.uint8).contiguous()
    return masks


def sparsity_of(masks: dict[str, torch.Tensor]) -> float:
    """Share of masked-out weights."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(1, total)


@torch.no_grad()
def apply_masks(net: nn.Module, masks: dict[str, torch.Tensor], delta: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """``w <- (w + delta) * mask`` in place; every name must exist with the same shape."""
    state = net.state_dict()
    for name, d in (delta or {}).items():
        if name not in state or state[name].shape != d.shape:
            raise ValueError(f"delta tensor {name!r} does not fit this network")
        state[name].add_(d.to(state[name].device, state[name].dtype))
    for name, mask in masks.items():
        if name not in state or state[name].shape != mask.shape:
            raise ValueError(f"mask {name!r} does not fit this network")
        state[name].mul_(mask.to(state[name].device, state[name].dtype))
    return net
