"""Training helpers every method kind shares: seeded loaders and a Lightning module run for a fixed number of steps.

Forget methods (NegGrad, SCRUB, SalUn, fine-tune) and the pruning fine-tune all train through
:class:`StepsModule` and :func:`fit_steps`, with the Trainer the step lifecycle hands them (progress bar,
MLflow logger, strategy), so none of them writes a loop of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader

from edits.registry import OperatorEnv
from pipeline.data import SampleSet
from pipeline.model.net import set_norm_eval


def loader(samples: SampleSet, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A seeded loader over a sample set (images read a batch at a time)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(samples.dataset(), batch_size=batch_size, shuffle=shuffle, generator=generator)


def cycle(loader_: DataLoader):
    """Endless iteration over a loader."""
    while True:
        yield from loader_


class StepsModule(L.LightningModule):
    """A Lightning module whose training step is a method-specific loss over paired batches.

    ``loss_fn(net, retain_batch, forget_batch, step_index)`` returns the loss to minimise; the
    forget batch comes from an endless cycle over the forget set (None when not needed). Lightning
    moves the module and the retain batch to the training device; this module moves the forget
    batch, the gradient masks and the ``frozen`` models ``loss_fn`` also calls (a teacher) there.
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable[[nn.Module, tuple, tuple | None, int], torch.Tensor],
        *,
        lr: float,
        forget_loader: DataLoader | None,
        params: list[nn.Parameter] | None = None,
        grad_mask: dict[str, torch.Tensor] | None = None,
        frozen: list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self.lr = lr
        self._forget_iter = cycle(forget_loader) if forget_loader is not None else None
        self._params = params
        self.grad_mask = grad_mask
        self._frozen = list(frozen or [])  # a plain list: not submodules (no state, no train mode, no optimizer)

    def on_fit_start(self) -> None:
        """Frozen models and gradient masks go to the training device (a no-op on the CPU)."""
        for model in self._frozen:
            model.to(self.device)
        if self.grad_mask:
            self.grad_mask = {n: m.to(self.device) for n, m in self.grad_mask.items()}

    def train(self, mode: bool = True) -> StepsModule:
        """BatchNorm statistics stay fixed: the overlay is the weight delta only."""
        super().train(mode)
        if mode:
            set_norm_eval(self.net)
        return self

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One step of the method's loss."""
        forget_batch = move_data_to_device(next(self._forget_iter), self.device) if self._forget_iter is not None else None
        loss = self.loss_fn(self.net, batch, forget_batch, batch_idx)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_after_backward(self) -> None:
        """Saliency masks (SalUn) zero the gradient outside the mask."""
        if self.grad_mask:
            for name, p in self.net.named_parameters():
                if p.grad is not None and name in self.grad_mask:
                    p.grad.mul_(self.grad_mask[name])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm at 5: ascent and random-label terms must not blow the model up."""
        torch.nn.utils.clip_grad_norm_([p for p in self.net.parameters() if p.grad is not None], max_norm=5.0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD with momentum, as in the unlearning papers' reference code."""
        params = self._params or [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)


def fit_steps(module: StepsModule, retain: SampleSet, *, steps: int, batch_size: int, env: OperatorEnv) -> None:
    """Run ``steps`` optimisation steps of ``module`` over (cycled) retain batches with Lightning."""
    epochs = max(1, -(-steps * batch_size // max(1, len(retain))))
    trainer = env.make_trainer(epochs, steps)
    trainer.fit(module, train_dataloaders=loader(retain, batch_size, env.seed))
