"""NegGrad+: gradient ascent on the forget set balanced by descent on the retain set.

Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning" (NeurIPS), Sec. 5: the loss is
``beta * CE(retain) - (1 - beta) * CE(forget)``. The ascent term is clipped at ``max_forget_loss``
so it cannot blow the model up on small data. Approximate: a pinned ``delta`` overlay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edits.forget.common import ScopedConfig, StepsModule, delta_change, fit_steps, forget_meta, forget_set, loader, owner_scoped, retain_set, snapshot
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import UmeData


@dataclass(frozen=True)
class NegGradConfig(ScopedConfig):
    """Defaults: 100 steps, beta 0.9, lr 0.005, forget loss clipped at 5 nats."""

    steps: int = 100
    batch_size: int = 64
    forget_batch_size: int = 32
    lr: float = 0.005
    beta: float = 0.9
    max_forget_loss: float = 5.0


@register_method("forget", "neggrad", NegGradConfig)
@owner_scoped
def forget_neggrad(net: nn.Module, data: UmeData, config: NegGradConfig, env: OperatorEnv) -> Change:
    """Descend on retain, ascend (clipped) on forget."""
    forget, retain = forget_set(data, env), retain_set(data, env)
    before = snapshot(net)
    if len(forget) == 0:
        return delta_change(before, net, set(env.forget_ids), forget_meta("neggrad", config, forget, retain), used=retain)

    def loss(model: nn.Module, retain_batch, forget_batch, _i: int) -> torch.Tensor:
        xr, yr = retain_batch
        xf, yf = forget_batch
        forget_loss = F.cross_entropy(model(xf), yf).clamp(max=config.max_forget_loss)
        return config.beta * F.cross_entropy(model(xr), yr) - (1 - config.beta) * forget_loss

    module = StepsModule(net, loss, lr=config.lr, forget_loader=loader(forget, config.forget_batch_size, env.seed))
    fit_steps(module, retain, steps=config.steps, batch_size=config.batch_size, env=env)
    return delta_change(before, net, set(env.forget_ids), forget_meta("neggrad", config, forget, retain), used=retain)
