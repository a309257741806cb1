"""Lightning training of a timm network: :class:`Classifier`, its callbacks and the Trainer.

Kept apart from :mod:`pipeline.model.net` so that what only composes or evaluates a model (the
gate of a compress step, ``ume audit``, ``status``) never imports Lightning.

:class:`Classifier` trains whatever parameters of ``net`` require grad. For overlays trained on top
of a composed model, ``freeze_norm_stats=True`` keeps BatchNorm running statistics fixed, so the
overlay's tensors are the *only* thing that changes and composing base + overlay reproduces the
trained model exactly. ``extra_loss`` lets an operator add a term (e.g. a KL locality penalty).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.core.console import quiet_lightning
from pipeline.core.errors import ConfigError
from pipeline.core.faults import CRASH_AT_ENV, crash_point
from pipeline.core.ranks import is_primary
from pipeline.model.net import random_shift, set_norm_eval

warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


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
