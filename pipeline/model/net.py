"""The model: any timm architecture (``pretrained=False``) inside a LightningModule, and the Trainer.

:class:`Classifier` trains whatever parameters of ``net`` require grad. For overlays trained on top
of a composed model, ``freeze_norm_stats=True`` keeps BatchNorm running statistics fixed, so the
overlay's tensors are the *only* thing that changes and composing base + overlay reproduces the
trained model exactly. ``extra_loss`` lets an operator add a term (e.g. a KL locality penalty).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.core.console import quiet_lightning
from pipeline.core.errors import ConfigError
from pipeline.core.faults import CRASH_AT_ENV, crash_point
from pipeline.core.ranks import is_primary

warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


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


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


class Classifier(L.LightningModule):
    """Cross-entropy training of ``net`` with AdamW and a cosine schedule; logs loss and accuracy."""

    def __init__(
        self,
        net: nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        epochs: int = 1,
        augment_shift: int = 0,
        freeze_norm_stats: bool = False,
        extra_loss: ExtraLoss | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.augment_shift = augment_shift
        self.freeze_norm_stats = freeze_norm_stats
        self.extra_loss = extra_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.net(x)

    def train(self, mode: bool = True) -> Classifier:
        """Lightning calls this each epoch; norm statistics stay frozen when asked."""
        super().train(mode)
        if mode and self.freeze_norm_stats:
            set_norm_eval(self.net)
        return self

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step on a batch."""
        x, y = batch
        x = random_shift(x, self.augment_shift)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self.net, x, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        self.log("train_acc", acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW over the trainable parameters, cosine-annealed over the run."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class CrashDuringTraining(L.Callback):
    """The ``train.batch`` crash point of the reliability harness (added only when it is armed)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the second optimizer step, SIGKILL the process if the harness asked for it."""
        if batch_idx == 1:
            crash_point("train.batch")


class ShareRankZeroState(L.Callback):
    """After training on several processes, every rank holds rank 0's weights and buffers, bit for bit.

    DDP keeps the parameters in step, but each rank updates BatchNorm running statistics from its
    own last batch. Every rank then runs the same behaviour suite and takes the gate's branches
    (a forget fallback trains again, collectively), so every rank must hold the same model.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Broadcast every tensor of the module's state from rank 0 (a no-op on one process)."""
        if trainer.world_size <= 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in pl_module.state_dict().values():
                if tensor.is_contiguous():
                    dist.broadcast(tensor, src=0)
                else:
                    buffer = tensor.contiguous()
                    dist.broadcast(buffer, src=0)
                    tensor.copy_(buffer)


class SplitGlobalBatch(L.Callback):
    """``batch_size`` is the global batch: with N processes each takes ``batch_size // N`` per step.

    A DDP run then makes as many optimizer steps per epoch as one process, with the same learning
    rate schedule, and reaches the same accuracy (measured in docs/scaling-out.md); Lightning's own meaning
    (each device takes the whole batch) halves the steps on two processes. Applies to training
    through a data module with a ``batch_size`` (the base and ``learn`` steps); loaders an operator
    builds itself keep their batch per device.
    """

    def __init__(self) -> None:
        self._saved: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Split the data module's batch among the processes, before its loader is built."""
        data = trainer.datamodule
        batch = getattr(data, "batch_size", None)
        if trainer.world_size > 1 and isinstance(batch, int) and self._saved is None:
            self._saved = batch
            data.batch_size = max(1, batch // trainer.world_size)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the data module its batch size back."""
        if self._saved is not None:
            trainer.datamodule.batch_size = self._saved
            self._saved = None


class FiniteAfterMixedPrecision(L.Callback):
    """After training in a mixed precision, every weight must be finite, or the run stops naming ``train.precision``.

    Measured with torch 2.14.1: on the CPU, the bfloat16 backward of a stride-2 3x3 convolution whose
    input is 1x1 (an image too small for the network's last stage, e.g. 16 px digits in
    ``test_resnet``) returns garbage for the kernel taps that see only padding, and the weights end
    NaN. The component store would refuse them anyway; this says why, and what to change.
    """

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checked after every epoch, so a broken run stops early."""
        self.check(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """And once more at the end (a run cut short by ``max_steps``)."""
        self.check(pl_module)

    def check(self, pl_module: L.LightningModule) -> None:
        """Raise :class:`ConfigError` on the first non-finite parameter."""
        for name, param in pl_module.named_parameters():
            if not torch.isfinite(param).all():
                device = param.device.type
                raise ConfigError(
                    f"training in {self.precision} on the {device} left non-finite values in {name!r}"
                    + (
                        " (PyTorch's CPU bfloat16 convolution backward is wrong for a stride-2 convolution on a 1x1 feature map:"
                        " images too small for the network); use 32-true on the CPU, larger images, or a GPU"
                        if device == "cpu"
                        else "; use 32-true or bf16-mixed"
                    ),
                    file="params.yaml",
                    field="train.precision",
                )


def _callbacks(train: TrainConfig) -> list[L.Callback]:
    callbacks: list[L.Callback] = [ShareRankZeroState()]
    if train.global_batch:
        callbacks.append(SplitGlobalBatch())
    if train.precision not in ("32-true", "32"):
        callbacks.append(FiniteAfterMixedPrecision(train.precision))
    if os.environ.get(CRASH_AT_ENV, "").startswith("train."):
        callbacks.append(CrashDuringTraining())
    return callbacks


def make_trainer(train: TrainConfig, *, max_epochs: int, logger: Any = None, max_steps: int = -1) -> L.Trainer:
    """A real Lightning Trainer with its progress bar; scale out by changing ``train`` in params.yaml.

    With ``strategy: ddp`` and several devices or nodes, only the primary rank gets the logger
    (followers write nothing, :mod:`pipeline.core.ranks`), and every rank ends with rank 0's state.
    On the CPU every algorithm is deterministic; elsewhere (``gpu``, ``auto``) some CUDA kernels
    have no deterministic implementation (the backward of adaptive average pooling, which every
    timm ResNet has), so Lightning's ``deterministic="warn"`` uses deterministic ones where they
    exist and warns instead of stopping. Lightning moves the module back to the CPU after ``fit``.
    """
    quiet_lightning()
    return L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,
        logger=logger if logger is not None and is_primary() else False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=train.progress_bar,
        deterministic=True if train.accelerator == "cpu" else "warn",
        log_every_n_steps=1,
        callbacks=_callbacks(train),
    )


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
    net.eval()
    device = net_device(net)
    outs = [net(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)

