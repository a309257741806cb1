"""Selective Synaptic Dampening (SSD): retrain-free unlearning by dampening forget-specific weights.

Foster, Schoepf and Brintrup 2024, "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening" (AAAI). The diagonal of the Fisher information (mean squared gradient of the
loss) is computed on the forget set (``I_f``) and on the full training data (``I_d``). Every
parameter with ``I_f > alpha * I_d`` is multiplied by ``min(lambda * I_d / I_f, 1)``. No training
loop: two passes of gradients. Approximate: a pinned ``delta`` overlay.

``alpha`` is the selection threshold: the paper uses 10 on CIFAR; on small data the Fisher of a
handful of samples is noisy, so ``alpha`` and ``lambda`` are selected per request on a small grid:
the most aggressive setting (smallest alpha, then smallest lambda) whose dampening keeps retain
accuracy within ``max_retain_drop`` of the champion, stopping at the first setting that brings
forget-set accuracy down to ``forget_target`` (for a class deletion; for sample deletions the
gentlest lambda that passes the retain budget is kept, since those samples should look unseen, not
misclassified).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edits.forget.common import ScopedConfig, delta_change, forget_meta, forget_set, loader, owner_scoped, retain_set, snapshot
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import SampleSet, UmeData
from pipeline.model.net import predict_logits


@dataclass(frozen=True)
class SSDConfig(ScopedConfig):
    """Defaults: alpha from 1..50 and lambda from 1..0.1, against a 1-point retain-accuracy budget."""

    alphas: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
    dampenings: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1)
    max_retain_drop: float = 0.01
    forget_target: float = 0.05
    batch_size: int = 32
    retain_samples: int = 1000


def diagonal_fisher(net: nn.Module, samples: SampleSet, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the cross-entropy per parameter (diagonal empirical Fisher)."""
    net.eval()
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    batches = 0
    for x, y in loader(samples, batch_size, seed, shuffle=False):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        for n, p in net.named_parameters():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
        batches += 1
    net.zero_grad(set_to_none=True)
    return {n: f / max(1, batches) for n, f in fisher.items()}


@torch.no_grad()
def dampen(net: nn.Module, original: dict[str, torch.Tensor], fisher_f: dict, fisher_d: dict, alpha: float, lam: float) -> None:
    """Reset ``net`` to ``original`` and dampen the selected parameters."""
    for n, p in net.named_parameters():
        p.copy_(original[n])
        selected = fisher_f[n] > alpha * fisher_d[n]
        factor = torch.clamp(lam * fisher_d[n] / fisher_f[n].clamp_min(1e-30), max=1.0)
        p.mul_(torch.where(selected, factor, torch.ones_like(factor)))


def _accuracy(net: nn.Module, samples: SampleSet) -> float:
    return (predict_logits(net, samples.x).argmax(1) == samples.y).float().mean().item() if len(samples) else 1.0


@register_method("forget", "ssd", SSDConfig)
@owner_scoped
def forget_ssd(net: nn.Module, data: UmeData, config: SSDConfig, env: OperatorEnv) -> Change:
    """Dampen parameters far more important to the forget set than to the training data."""
    forget, retain = forget_set(data, env), retain_set(data, env, cap=config.retain_samples)
    before = snapshot(net)
    meta = forget_meta("ssd", config, forget, retain)
    if len(forget) == 0:
        return delta_change(before, net, set(env.forget_ids), meta, used=retain)
    full = retain.concat(forget, name="full")
    fisher_d = diagonal_fisher(net, full, config.batch_size, env.seed)
    fisher_f = diagonal_fisher(net, forget, config.batch_size, env.seed)
    original = {n: p.detach().clone() for n, p in net.named_parameters()}
    baseline = _accuracy(net, retain)
    class_scope = env.request is not None and env.request.scope == "class"
    chosen = (max(config.alphas), config.dampenings[0])  # gentlest, when nothing fits the budget
    for alpha in sorted(config.alphas):
        passing = None
        for lam in config.dampenings if class_scope else config.dampenings[:1]:
            dampen(net, original, fisher_f, fisher_d, alpha, lam)
            if baseline - _accuracy(net, retain) > config.max_retain_drop:
                break
            passing = (alpha, lam)
            if _accuracy(net, forget) <= config.forget_target:
                break
        if passing is not None:
            chosen = passing
            break
    alpha, lam = chosen
    dampen(net, original, fisher_f, fisher_d, alpha, lam)
    meta["alpha_selected"], meta["lambda_selected"] = alpha, lam
    return delta_change(before, net, set(env.forget_ids), meta, used=retain)
