"""Structured pruning that pays: coupled output channels ranked, masked, then physically removed.

Channel groups come from :mod:`pipeline.model.channel_groups` (dependency-aware, after DepGraph, Fang
et al. 2023, "DepGraph: Towards Any Structural Pruning", CVPR). A channel's importance is the mean
``|w|`` of its weights in every producing layer of its group, averaged over those layers (the L1
filter criterion of Li et al. 2017, "Pruning Filters for Efficient ConvNets", ICLR, taken over the
group as DepGraph does); one global ranking across groups, never a whole group.

The masks zero a removed channel's producing weights and biases and its BatchNorm's scale and shift,
so in the masked dense network the channel is exactly zero wherever it is read. :func:`remove_channels`
then slices those channels out of every member of the group (producers' rows, norms, consumers'
input columns): a smaller network computing the same function, up to float summation order. Which
channels go is read from the masks alone, so the same transform always composes to the same network.
A routed network is pruned expert by expert (names ``experts.<i>.``), under one global ranking.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pipeline.model.channel_groups import ChannelGroup, channel_groups
from pipeline.model.routing import RoutedNetwork


def _parts(net: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name prefix, network)`` for each independently shaped network: the experts of a routed one."""
    if isinstance(net, RoutedNetwork):
        for i, expert in enumerate(net.experts):
            yield f"experts.{i}.", expert
    else:
        yield "", net


def prefixed_groups(net: nn.Module) -> list[tuple[str, ChannelGroup]]:
    """Every prunable channel group of ``net`` with the state-dict prefix of its network."""
    return [(prefix, g) for prefix, part in _parts(net) for g in channel_groups(part)]


def _modules(net: nn.Module) -> dict[str, nn.Module]:
    return dict(net.named_modules())


def channel_masks(net: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks (uint8, 1 = kept) removing a ``sparsity`` share of all grouped channels, at least one kept per group.

    Masked: producers' ``weight`` (whole rows) and ``bias``, norms' ``weight`` and ``bias``. Raises
    ``ValueError`` when ``net`` has no prunable channel group."""
    groups = prefixed_groups(net)
    if not groups:
        raise ValueError("the network has no channel group that can be removed (no Conv2d/Linear whose channels are free)")
    modules = _modules(net)
    scores = []
    for prefix, g in groups:
        rows = [modules[prefix + p].weight.detach().abs().flatten(1).mean(1) for p in g.producers]
        scores.append(torch.stack(rows).mean(0))
    flat = torch.cat(scores)
    k = int(sparsity * flat.numel())
    masks: dict[str, torch.Tensor] = {}
    threshold = torch.kthvalue(flat, k).values if k > 0 else None
    for (prefix, g), score in zip(groups, scores, strict=True):
        keep = score > threshold if threshold is not None else torch.ones_like(score, dtype=torch.bool)
        if not keep.any():  # never a whole group: keep its strongest channel
            keep[score.argmax()] = True
        for name in g.producers:
            module = modules[prefix + name]
            masks[f"{prefix}{name}.weight"] = keep.view(-1, *([1] * (module.weight.dim() - 1))).expand_as(module.weight).to(torch.uint8).contiguous()
            if module.bias is not None:
                masks[f"{prefix}{name}.bias"] = keep.to(torch.uint8)
        for name in g.norms:
            module = modules[prefix + name]
            for tensor in ("weight", "bias"):
                if getattr(module, tensor, None) is not None:
                    masks[f"{prefix}{name}.{tensor}"] = keep.to(torch.uint8)
    return masks


def kept_channels(net: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[str, ChannelGroup, torch.Tensor]]:
    """For each channel group with a removed channel: the indices it keeps, read from ``masks``.

    A channel is removed when every producer's weight mask drops its whole row, and then the group's
    biases and norms must drop it too (else it is not zero where it is read): ``ValueError`` otherwise."""
    out = []
    for prefix, g in prefixed_groups(net):
        rows = []
        for name in g.producers:
            mask = masks.get(f"{prefix}{name}.weight")
            if mask is None:
                break
            rows.append(mask.flatten(1).amax(1) > 0)
        if len(rows) != len(g.producers):
            if rows:
                raise ValueError(f"mask of {prefix}{g.producers[len(rows)]}.weight missing from a channel group that other masks prune")
            continue
        if any(not torch.equal(rows[0], r) for r in rows[1:]):
            raise ValueError(f"the masks of {[prefix + p for p in g.producers]} remove different channels of one coupled group")
        keep = rows[0]
        if bool(keep.all()):
            continue
        if not keep.any():
            raise ValueError(f"the masks remove every channel of {prefix}{g.producers[0]}")
        modules = _modules(net)
        for name in g.producers + g.norms:
            for tensor in ("bias", "weight") if name in g.norms else ("bias",):
                if getattr(modules[prefix + name], tensor, None) is None:
                    continue
                mask = masks.get(f"{prefix}{name}.{tensor}")
                if mask is None or bool((mask.bool() & ~keep).any()):
                    raise ValueError(f"mask of {prefix}{name}.{tensor} keeps a channel its group removes")
        out.append((prefix, g, torch.nonzero(keep).flatten()))
    return out


@torch.no_grad()
def remove_channels(net: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Slice the channels ``masks`` remove (see :func:`kept_channels`) out of ``net``, in place; returns ``net``."""
    plan = kept_channels(net, masks)  # read everything before changing any shape
    modules = _modules(net)
    for prefix, g, keep in plan:
        for name in g.producers:
            module = modules[prefix + name]
            module.weight = nn.Parameter(module.weight[keep].clone(), requires_grad=module.weight.requires_grad)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias[keep].clone(), requires_grad=module.bias.requires_grad)
            _set_size(module, "out_channels" if isinstance(module, nn.Conv2d) else "out_features", len(keep))
        for name in g.norms:
            module = modules[prefix + name]
            for tensor in ("weight", "bias"):
                value = getattr(module, tensor)
                if value is not None:
                    setattr(module, tensor, nn.Parameter(value[keep].clone(), requires_grad=value.requires_grad))
            for buffer in ("running_mean", "running_var"):
                if getattr(module, buffer) is not None:
                    setattr(module, buffer, getattr(module, buffer)[keep].clone())
            module.num_features = len(keep)
        for name in g.consumers:
            module = modules[prefix + name]
            module.weight = nn.Parameter(module.weight[:, keep].clone(), requires_grad=module.weight.requires_grad)
            _set_size(module, "in_channels" if isinstance(module, nn.Conv2d) else "in_features", len(keep))
    return net


def _set_size(module: nn.Module, attr: str, size: int) -> None:
    setattr(module, attr, size)
