"""SalUn: saliency-masked random labelling.

Fan, Liu, Zhang, Wei, Wong and Liu 2024, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation" (ICLR). The saliency of a weight is
``|d CE(forget) / d w|``; only the top ``saliency_fraction`` of weights (by a global threshold) are
updated, by training on the forget samples with random wrong labels together with the retain set.
Approximate: a pinned ``delta`` overlay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edits.forget.common import ScopedConfig, StepsModule, delta_change, fit_steps, forget_meta, forget_set, loader, owner_scoped, retain_set, snapshot
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import SampleSet, UmeData


@dataclass(frozen=True)
class SalUnConfig(ScopedConfig):
    """Defaults: the top 50% salient weights, 100 steps at lr 0.01."""

    saliency_fraction: float = 0.5
    steps: int = 100
    batch_size: int = 64
    forget_batch_size: int = 32
    lr: float = 0.01


def saliency_mask(net: nn.Module, forget: SampleSet, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """1 for the ``fraction`` of weights with the largest forget-loss gradient magnitude, else 0."""
    net.eval()
    net.zero_grad(set_to_none=True)
    grads = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for x, y in loader(forget, 64, seed, shuffle=False):
        F.cross_entropy(net(x), y).backward()
    for n, p in net.named_parameters():
        if p.grad is not None:
            grads[n] = p.grad.detach().abs()
    net.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten() for g in grads.values()])
    k = max(1, int(len(flat) * fraction))
    threshold = torch.topk(flat, k).values.min()
    return {n: (g >= threshold).float() for n, g in grads.items()}


@register_method("forget", "salun", SalUnConfig)
@owner_scoped
def forget_salun(net: nn.Module, data: UmeData, config: SalUnConfig, env: OperatorEnv) -> Change:
    """Random-label the forget set and train only the salient weights, with retain batches."""
    forget, retain = forget_set(data, env), retain_set(data, env)
    before = snapshot(net)
    if len(forget) == 0:
        return delta_change(before, net, set(env.forget_ids), forget_meta("salun", config, forget, retain), used=retain)
    mask = saliency_mask(net, forget, config.saliency_fraction, env.seed)
    generator = torch.Generator().manual_seed(env.seed)
    classes = int(net(forget.x[:1]).shape[1])

    def loss(model: nn.Module, retain_batch, forget_batch, _i: int) -> torch.Tensor:
        xr, yr = retain_batch
        xf, yf = forget_batch
        shift = torch.randint(1, classes, yf.shape, generator=generator).to(yf.device)  # drawn on the CPU generator, on any device
        random_labels = (yf + shift) % classes
        return F.cross_entropy(model(xf), random_labels) + F.cross_entropy(model(xr), yr)

    module = StepsModule(net, loss, lr=config.lr, forget_loader=loader(forget, config.forget_batch_size, env.seed), grad_mask=mask)
    fit_steps(module, retain, steps=config.steps, batch_size=config.batch_size, env=env)
    return delta_change(before, net, set(env.forget_ids), forget_meta("salun", config, forget, retain), used=retain)
