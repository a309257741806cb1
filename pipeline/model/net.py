"""The model: any timm architecture (``pretrained=False``), its checkpoints and inference.

Training (Lightning's module, callbacks and Trainer) lives in :mod:`pipeline.model.training`, so
that composing and evaluating a model never imports Lightning.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pipeline.core.canonical import file_sha256
from pipeline.core.errors import ConfigError


def check_arch(arch: str, file: str = "params.yaml") -> None:
    """Fail with a clear error when ``arch`` is not a timm model name."""
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown timm architecture {arch!r}{hint}", file=file, field="model.arch")


def create_net(arch: str, num_classes: int, in_chans: int, image_size: int | None = None) -> nn.Module:
    """A freshly initialised timm network; weights come only from our safetensors components.

    Families with a fixed input size (ViT's patch grid and position embedding) are built for
    ``image_size``; convolutional families take any size and do not accept the argument.
    """
    if image_size is not None:
        try:
            return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=image_size)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)


def check_checkpoint(path: str | Path, expected_sha256: str | None, *, file: str = "params.yaml", field: str = "model.checkpoint") -> str:
    """The checkpoint exists and (when pinned) has the expected sha256; returns its sha256."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}", file=file, field=field)
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ConfigError(f"checkpoint {path} has sha256 {digest}, expected {expected_sha256}", file=file, field=f"{field}_sha256")
    return digest


def load_backbone(net: nn.Module, path: str | Path, *, file: str = "params.yaml", field: str = "model.checkpoint") -> list[str]:
    """Load a pretrained state dict (safetensors only) into ``net``; returns the head tensors kept fresh.

    Every tensor of ``net`` must come from the checkpoint with its shape, except the classifier
    head, which is re-initialised when its shape differs (another number of classes).
    """
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"not a readable safetensors file: {path} ({exc})", file=file, field=field) from None
    state = net.state_dict()
    head = _classifier_keys(net)
    unexpected = sorted(set(tensors) - set(state))
    if unexpected:
        raise ConfigError(f"{path} holds {unexpected[0]!r}, which this architecture does not have ({len(unexpected)} such tensors)", file=file, field=field)
    merged, fresh = dict(state), []
    for name, value in state.items():
        if name not in tensors:
            if name in head or name.endswith("num_batches_tracked"):
                fresh.append(name)
                continue
            raise ConfigError(f"{path} lacks {name!r} (not a checkpoint of this architecture)", file=file, field=field)
        if tensors[name].shape != value.shape:
            if name in head:
                fresh.append(name)
                continue
            raise ConfigError(f"{path}: {name!r} has shape {tuple(tensors[name].shape)}, the model needs {tuple(value.shape)}", file=file, field=field)
        merged[name] = tensors[name].to(value.dtype)
    net.load_state_dict(merged, strict=True)
    return fresh


def _classifier_keys(net: nn.Module) -> set[str]:
    """State-dict names of the classifier head (timm's ``get_classifier``)."""
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    if head is None:
        return set()
    for prefix, module in net.named_modules():
        if module is head:
            return {f"{prefix}.{k}" if prefix else k for k in module.state_dict()}
    return set()


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in x and y (zero-padded edges are the background -1).

    The offsets are drawn on the CPU from the seeded global generator (the same draws whatever the
    device); the crops are views of ``x``'s padded copy, stacked on its device.
    """
    if pixels <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels), value=-1.0)
    dx = torch.randint(0, 2 * pixels + 1, (n,)).tolist()
    dy = torch.randint(0, 2 * pixels + 1, (n,)).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def set_norm_eval(net: nn.Module) -> None:
    """Put every normalisation layer in eval mode (running statistics stay fixed)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def net_device(net: nn.Module) -> torch.device:
    """Where ``net``'s parameters (else buffers) live; the CPU for a net without tensors."""
    for tensor in net.parameters():
        return tensor.device
    for tensor in net.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``net`` in eval mode for a tensor of inputs (float32, on CPU).

    Each batch goes to the device ``net`` is on (a net left on a GPU works too); the logits come
    back to the CPU as float32, so every consumer (metrics, numpy, scikit-learn) can read them.
    """
    if any(module.training for module in net.modules()):  # Module.eval() rewrites every module's flag: a routed net has thousands
        net.eval()
    device = net_device(net)
    outs = [net(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)

