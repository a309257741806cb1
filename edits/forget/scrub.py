"""SCRUB: a student moves away from the teacher on the forget set and stays close on the retain set.

Kurmanji, Triantafillou, Hayes and Triantafillou 2023, "Towards Unbounded Machine Unlearning"
(NeurIPS). The teacher is the champion, frozen. Max-steps maximise ``KL(teacher || student)`` on
forget batches; min-steps minimise ``alpha * KL`` + ``gamma * CE`` on retain batches. The paper
alternates epochs; on small data we alternate steps (``max_every``: one max-step every N steps,
only during the first ``max_steps_until`` steps). Approximate: a pinned ``delta`` overlay.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edits.forget.common import ScopedConfig, StepsModule, delta_change, fit_steps, forget_meta, forget_set, loader, owner_scoped, retain_set, snapshot
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import UmeData


@dataclass(frozen=True)
class ScrubConfig(ScopedConfig):
    """Defaults: 120 steps, a max-step every 3rd step during the first 60, alpha 1, gamma 1, T 4."""

    steps: int = 120
    max_every: int = 3
    max_steps_until: int = 60
    batch_size: int = 64
    forget_batch_size: int = 32
    lr: float = 0.005
    alpha: float = 1.0
    gamma: float = 1.0
    temperature: float = 4.0


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(teacher || student)`` at temperature T, scaled by T^2 (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t


@register_method("forget", "scrub", ScrubConfig)
@owner_scoped
def forget_scrub(net: nn.Module, data: UmeData, config: ScrubConfig, env: OperatorEnv) -> Change:
    """Alternate max-steps on forget (away from the teacher) and min-steps on retain (towards it)."""
    forget, retain = forget_set(data, env), retain_set(data, env)
    before = snapshot(net)
    if len(forget) == 0:
        return delta_change(before, net, set(env.forget_ids), forget_meta("scrub", config, forget, retain), used=retain)
    teacher = copy.deepcopy(net).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(student: nn.Module, retain_batch, forget_batch, i: int) -> torch.Tensor:
        if i < config.max_steps_until and i % config.max_every == 0:
            xf, _ = forget_batch
            with torch.no_grad():
                target = teacher(xf)
            return -distill_kl(student(xf), target, config.temperature)
        xr, yr = retain_batch
        with torch.no_grad():
            target = teacher(xr)
        logits = student(xr)
        return config.alpha * distill_kl(logits, target, config.temperature) + config.gamma * F.cross_entropy(logits, yr)

    module = StepsModule(net, loss, lr=config.lr, forget_loader=loader(forget, config.forget_batch_size, env.seed), frozen=[teacher])
    fit_steps(module, retain, steps=config.steps, batch_size=config.batch_size, env=env)
    return delta_change(before, net, set(env.forget_ids), forget_meta("scrub", config, forget, retain), used=retain)
