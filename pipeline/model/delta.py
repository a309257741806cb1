"""Weight-delta overlays: ``after - before`` for every tensor an operator changed.

Retrain-free unlearning methods (fine-tuning, NegGrad+, SCRUB, SSD, SalUn) change weights in place;
storing the difference keeps the result a removable overlay on top of the version it was made on.
Composition adds the delta back in a fixed order, so the same manifest gives the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.core.errors import ComponentError


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every floating-point tensor of the state dict."""
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def weight_delta(before: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s tensors minus ``before``, only where something changed."""
    out = {}
    for name, tensor in net.state_dict().items():
        if name in before and not torch.equal(before[name], tensor):
            out[name] = (tensor.detach() - before[name]).contiguous()
    return out


@torch.no_grad()
def apply_delta(net: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Add a stored delta to ``net`` (in place); every name must exist with the same shape."""
    state = net.state_dict()
    for name, delta in tensors.items():
        if name not in state or state[name].shape != delta.shape:
            raise ComponentError(f"delta tensor {name!r} does not fit this network", field="tensors")
        state[name].add_(delta.to(state[name].dtype))
    return net
