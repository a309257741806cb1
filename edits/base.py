"""Training a base network from scratch: the ``base`` stage and full retrains share this."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch import nn

from pipeline.components import ComponentDraft
from pipeline.config import BaseTrainConfig
from pipeline.data import SampleSet, UmeData
from pipeline.lineage import hash_sample_ids
from pipeline.model import Classifier, create_net


def train_base(
    data: UmeData,
    samples: SampleSet,
    *,
    arch: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    config: BaseTrainConfig,
    make_trainer: Callable[[int], L.Trainer],
    seed: int,
    meta: dict | None = None,
) -> tuple[nn.Module, ComponentDraft]:
    """Train a fresh timm network on ``samples``; returns it and its ``base`` component draft."""
    L.seed_everything(seed, workers=True, verbose=False)
    net = create_net(arch, num_classes, in_chans)
    module = Classifier(net, lr=config.lr, weight_decay=config.weight_decay, epochs=config.epochs, augment_shift=config.augment_shift)
    data.batch_size = config.batch_size
    make_trainer(config.epochs).fit(module, datamodule=data.use_for_training(samples))
    draft = ComponentDraft(
        kind="base",
        tensors=dict(net.state_dict()),
        lineage=hash_sample_ids(samples.sample_ids),
        meta={
            "method": "base",
            "arch": arch,
            "num_classes": num_classes,
            "in_chans": in_chans,
            "image_size": image_size,
            "classes": data.classes,
            "train": {k: getattr(config, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "augment_shift")},
            **(meta or {}),
        },
    )
    return net.eval(), draft
