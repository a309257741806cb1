"""Composition: a manifest (base + ordered overlays + export transforms) -> a ready network.

Composition always starts from the clean base and applies overlays in order with the same code
that trained them, so the same manifest gives bit-identical weights, and rolling back to an earlier
manifest restores that version's predictions exactly (DESIGN.md invariant 3).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core.errors import ComponentError
from pipeline.model.components import ComponentDraft, ComponentStore
from pipeline.model.delta import apply_delta
from pipeline.model.lora import LoraSettings, fold_lora
from pipeline.model.manifest import Manifest
from pipeline.model.net import create_net
from pipeline.model.prune import apply_masks
from pipeline.model.quantize import quantize
from pipeline.model.routing import Detector, RoutedNetwork, Router, split_router_tensors
from pipeline.model.shrink import remove_channels


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


def trained_on_base(meta: dict) -> bool:
    """An overlay trained on the clean base alone (``layout: parallel`` or ``routed``): a deletion elsewhere leaves it be."""
    return meta.get("trained_on") == "base"


def is_routed(meta: dict) -> bool:
    """An overlay kept whole as an expert behind the router (``layout: routed``, ``pipeline/model/routing.py``)."""
    return meta.get("layout") == "routed"


def is_parallel(meta: dict) -> bool:
    """An overlay trained on the clean base alone, folded side by side with its peers (``layout: parallel``)."""
    return trained_on_base(meta) and not is_routed(meta)


def overlay_weights(metas: Sequence[dict]) -> list[float]:
    """1 for a stacked (or routed) overlay; ``1/k`` for each of the ``k`` parallel ones: their mean correction
    of the base, as SISA aggregates its shards (Bourtoule et al. 2021), here at adapter level (S3T,
    Chowdhury et al. 2024). A function of the manifest alone, so composition stays deterministic."""
    k = sum(1 for meta in metas if is_parallel(meta))
    return [1.0 / k if is_parallel(meta) else 1.0 for meta in metas]


def fold_overlay(net: nn.Module, kind: str, tensors: dict[str, torch.Tensor], meta: dict, weight: float = 1.0, *, where: str = "overlay") -> nn.Module:
    """Fold one overlay (given its tensors and sidecar meta) into ``net`` at ``weight``.

    An overlay made on a network without experts (its names lack ``experts.``: a NegGrad+ delta or an edit
    on a champion before any routed overlay), folded into a :class:`RoutedNetwork`, changes every expert the
    same way, as it changed the one network it was made on.
    """
    if isinstance(net, RoutedNetwork) and tensors and not any(".experts." in f".{k}" for k in tensors):
        for i, expert in enumerate(net.experts):
            net.experts[i] = fold_overlay(expert, kind, tensors, meta, weight, where=where)
        return net
    if kind == "lora":
        tensors, _ = split_router_tensors(tensors)  # a routed overlay's detectors are the router's, not the weights'
        settings = LoraSettings.from_json(meta.get("lora", {}))
        return fold_lora(net, tensors, dataclasses.replace(settings, alpha=settings.alpha * weight))
    if kind == "delta" and weight == 1.0:
        return apply_delta(net, tensors)
    raise ComponentError(f"cannot apply overlay kind {kind!r} at weight {weight}", file=where, field="kind")


def apply_overlay(net: nn.Module, store: ComponentStore, component_id: str, weight: float = 1.0) -> nn.Module:
    """Fold one stored overlay into ``net``."""
    tensors, component = store.load(component_id)
    return fold_overlay(net, component.kind, tensors, component.meta, weight, where=str(store.sidecar_path(component_id)))


def apply_transform(net: nn.Module, store: ComponentStore, component_id: str) -> nn.Module:
    """Apply one stored export transform (pruning masks, int8 quantization) to ``net``."""
    tensors, component = store.load(component_id)
    return transform_network(net, tensors, component.meta, where=str(store.sidecar_path(component_id)))


def transform_network(net: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, *, where: str) -> nn.Module:
    """Apply a transform given its tensors and sidecar meta (also for an unsaved draft).

    A prune transform with ``meta.remove_channels`` serves the network with the channels its masks
    remove sliced out (``pipeline/model/shrink.py``); without it (every transform made before), masked dense."""
    kind = meta.get("transform")
    try:
        if kind == "prune":
            masks = {k.removeprefix("mask/"): v for k, v in tensors.items() if k.startswith("mask/")}
            delta = {k.removeprefix("delta/"): v for k, v in tensors.items() if k.startswith("delta/")}
            net = apply_masks(net, masks, delta)
            return remove_channels(net, masks) if meta.get("remove_channels") is True else net
        if kind == "quantize":
            shape = meta["input_shape"]
            return quantize(net, tensors, torch.zeros(1, *shape), meta.get("backend", "x86"))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ComponentError(f"transform does not fit this network ({exc})", file=where) from None
    raise ComponentError(f"unknown transform {kind!r}", file=where, field="meta.transform")


@dataclass(frozen=True)
class _Overlay:
    kind: str
    tensors: Callable[[], dict[str, torch.Tensor]]
    meta: dict
    where: str


def _overlays(manifest: Manifest, store: ComponentStore, pending: Sequence[ComponentDraft]) -> list[_Overlay]:
    stored = [
        _Overlay(sc.kind, lambda cid=cid: store.load(cid)[0], sc.meta, str(store.sidecar_path(cid)))
        for cid, sc in ((cid, store.sidecar(cid)) for cid in manifest.overlays)
    ]
    return stored + [_Overlay(d.kind, lambda d=d: d.tensors, d.meta, "pending overlay") for d in pending]


def routed_network(base: nn.Module, routed: Sequence[tuple[dict[str, torch.Tensor], dict, str]]) -> RoutedNetwork:
    """Expert 0 is ``base``; expert ``i`` is ``base`` with the ``i``-th routed overlay folded at weight 1;
    the router is made of the overlays' own detectors (``(tensors, meta, where)`` each)."""
    experts: list[nn.Module] = [base]
    slices, references = [], []
    for tensors, meta, where in routed:
        adapter, router = split_router_tensors(tensors)
        try:
            slices.append(Detector.from_tensors(router, "slice"))
            references.append(Detector.from_tensors(router, "reference"))
        except KeyError as exc:
            raise ComponentError(f"routed overlay lacks its detector tensor {exc}", file=where, field="tensors") from None
        experts.append(fold_overlay(copy.deepcopy(base), "lora", adapter, meta, 1.0, where=where))
    return RoutedNetwork(experts, Router(slices, references))


def compose(manifest: Manifest, store: ComponentStore, pending: Sequence[ComponentDraft] = ()) -> nn.Module:
    """The network of ``manifest`` in eval mode (overlays folded, then transforms applied); deterministic.

    ``pending``: overlays not stored yet (an operator's drafts), composed after the manifest's own.
    Routed overlays (``layout: routed``) first become experts over the clean base, behind their router;
    the other overlays then fold in order into that routed network (or into the base when none is routed).
    """
    net = build_base(store, manifest.base)
    overlays = _overlays(manifest, store, pending)
    routed = [o for o in overlays if is_routed(o.meta)]
    if routed:
        net = routed_network(net, [(o.tensors(), o.meta, o.where) for o in routed])
    others = [o for o in overlays if not is_routed(o.meta)]
    for overlay, weight in zip(others, overlay_weights([o.meta for o in others]), strict=True):
        net = fold_overlay(net, overlay.kind, overlay.tensors(), overlay.meta, weight, where=overlay.where)
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
