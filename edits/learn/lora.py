"""Learn a new data slice as a LoRA overlay on top of the champion, with replay of retained samples.

LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685).
Replay of earlier samples against forgetting: Rolnick et al. 2019, "Experience Replay for
Continual Learning". The champion's weights and BatchNorm statistics stay frozen; only the
adapter trains, so the overlay can be dropped later and composition reproduces the model exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from edits.registry import OperatorEnv, register_method
from pipeline.data import UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.lora import LoraSettings, adapter_tensors, attach_lora, lora_targets
from pipeline.model.net import Classifier


@dataclass(frozen=True)
class LoraLearnConfig:
    """Settings of a ``learn`` step with ``method: lora`` (defaults tuned on the digits default)."""

    slice: str
    rank: int = 8
    alpha: float = 16.0
    epochs: int = 12
    lr: float = 0.003
    batch_size: int = 32
    replay: float = 1.0
    augment_shift: int = 1


@register_method("learn", "lora", LoraLearnConfig)
def learn_lora(net: nn.Module, data: UmeData, config: LoraLearnConfig, env: OperatorEnv) -> list[ComponentDraft]:
    """Train a LoRA adapter on the new slice plus ``replay`` x as many retained samples."""
    new = data.split(config.slice)
    replay_count = int(round(config.replay * len(new)))
    retained = data.select("replay", hashed_ids=env.champion_lineage) if replay_count else None
    train = new
    if retained is not None and len(retained):
        train = new.concat(data.subsample(retained, replay_count, seed=env.seed), name=f"{config.slice}+replay")
    settings = LoraSettings(rank=config.rank, alpha=config.alpha, targets=lora_targets(net))
    peft_net = attach_lora(net, settings, seed=env.seed)
    module = Classifier(peft_net, lr=config.lr, epochs=config.epochs, augment_shift=config.augment_shift, freeze_norm_stats=True)
    data.batch_size = config.batch_size
    env.make_trainer(config.epochs).fit(module, datamodule=data.use_for_training(train))
    return [
        ComponentDraft(
            kind="lora",
            tensors=adapter_tensors(peft_net),
            lineage=hash_sample_ids(train.sample_ids),
            meta={
                "method": "learn/lora",
                "config": asdict(config),
                "lora": settings.to_json(),
                "slice": config.slice,
                "new_samples": len(new),
                "replayed_samples": len(train) - len(new),
            },
        )
    ]
