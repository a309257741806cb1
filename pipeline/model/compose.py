"""Composition: a manifest (base + ordered overlays + export transforms) -> a ready network.

Composition always starts from the clean base and applies overlays in order with the same code
that trained them, so the same manifest gives bit-identical weights, and rolling back to an earlier
manifest restores that version's predictions exactly (DESIGN.md invariant 3).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from pipeline.core.errors import ComponentError
from pipeline.model.components import ComponentStore
from pipeline.model.delta import apply_delta
from pipeline.model.lora import LoraSettings, fold_lora
from pipeline.model.manifest import Manifest
from pipeline.model.net import create_net
from pipeline.model.prune import apply_masks
from pipeline.model.quantize import quantize


def build_base(store: ComponentStore, base_id: str) -> nn.Module:
    """The base network with its stored weights (strict: every tensor must fit)."""
    tensors, component = store.load(base_id)
    if component.kind != "base":
        raise ComponentError(f"expected a base component, got kind {component.kind!r}", file=str(store.sidecar_path(base_id)), field="kind")
    meta = component.meta
    try:
        net = create_net(meta["arch"], int(meta["num_classes"]), int(meta["in_chans"]), meta.get("image_size"))
    except KeyError as exc:
        raise ComponentError(f"base sidecar lacks {exc}", file=str(store.sidecar_path(base_id)), field="meta") from None
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
        raise ComponentError(f"weights do not fit {meta['arch']}: {first}", file=str(store.weights_path(base_id))) from None
    return net


def apply_overlay(net: nn.Module, store: ComponentStore, component_id: str) -> nn.Module:
    """Fold one overlay into ``net``."""
    tensors, component = store.load(component_id)
    if component.kind == "lora":
        return fold_lora(net, tensors, LoraSettings.from_json(component.meta.get("lora", {})))
    if component.kind == "delta":
        return apply_delta(net, tensors)
    raise ComponentError(f"cannot apply overlay kind {component.kind!r}", file=str(store.sidecar_path(component_id)), field="kind")


def apply_transform(net: nn.Module, store: ComponentStore, component_id: str) -> nn.Module:
    """Apply one stored export transform (pruning masks, int8 quantization) to ``net``."""
    tensors, component = store.load(component_id)
    return transform_network(net, tensors, component.meta, where=str(store.sidecar_path(component_id)))


def transform_network(net: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, *, where: str) -> nn.Module:
    """Apply a transform given its tensors and sidecar meta (also for an unsaved draft)."""
    kind = meta.get("transform")
    try:
        if kind == "prune":
            masks = {k.removeprefix("mask/"): v for k, v in tensors.items() if k.startswith("mask/")}
            delta = {k.removeprefix("delta/"): v for k, v in tensors.items() if k.startswith("delta/")}
            return apply_masks(net, masks, delta)
        if kind == "quantize":
            shape = meta["input_shape"]
            return quantize(net, tensors, torch.zeros(1, *shape))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ComponentError(f"transform does not fit this network ({exc})", file=where) from None
    raise ComponentError(f"unknown transform {kind!r}", file=where, field="meta.transform")


def compose(manifest: Manifest, store: ComponentStore) -> nn.Module:
    """The network of ``manifest`` in eval mode (overlays folded, then transforms applied); deterministic."""
    net = build_base(store, manifest.base)
    for component_id in manifest.overlays:
        net = apply_overlay(net, store, component_id)
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    for component_id in manifest.transforms:
        net = apply_transform(net, store, component_id)
    return net.eval()


def weights_hash(net: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (names and bytes): bit-identity check."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(name.encode())
        if tensor.is_quantized:
            tensor = tensor.int_repr()
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
