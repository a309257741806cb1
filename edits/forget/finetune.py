"""Retain-only fine-tuning: keep training on what remains and let the forget set fade.

The simplest unlearning baseline (e.g. Golatkar et al. 2020, "Eternal Sunshine of the Spotless
Net"; used as "FT" by Kurmanji et al. 2023 and Fan et al. 2024). Approximate: produces a pinned
``delta`` overlay that covers the request's samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from edits.forget.common import ScopedConfig, StepsModule, delta_change, fit_steps, forget_meta, forget_set, owner_scoped, retain_set, snapshot
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import UmeData


@dataclass(frozen=True)
class FinetuneConfig(ScopedConfig):
    """Defaults: 150 SGD steps of 64 retain samples at lr 0.01 (about 8 epochs of the digits retain set)."""

    steps: int = 150
    batch_size: int = 64
    lr: float = 0.01


@register_method("forget", "finetune", FinetuneConfig)
@owner_scoped
def forget_finetune(net: nn.Module, data: UmeData, config: FinetuneConfig, env: OperatorEnv) -> Change:
    """Fine-tune on the retain set only."""
    forget, retain = forget_set(data, env), retain_set(data, env)
    before = snapshot(net)

    def loss(model: nn.Module, retain_batch, _forget_batch, _i: int):
        x, y = retain_batch
        return F.cross_entropy(model(x), y)

    fit_steps(StepsModule(net, loss, lr=config.lr, forget_loader=None), retain, steps=config.steps, batch_size=config.batch_size, env=env)
    return delta_change(before, net, set(env.forget_ids), forget_meta("finetune", config, forget, retain), used=retain)
