"""Training a base network from scratch: the ``base`` stage and full retrains share this."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from pipeline.core.config import BaseTrainConfig
from pipeline.core.seeding import seed_everything
from pipeline.data import SampleSet, UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.net import create_net, load_backbone

if TYPE_CHECKING:
    import lightning as L


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
    pretrained: dict | None = None,
) -> tuple[nn.Module, ComponentDraft]:
    """Train a timm network on ``samples``; returns it and its ``base`` component draft.

    Fresh weights, or with ``pretrained`` (``{"path", "sha256"}``, checked by the caller) a fine-tune
    of a backbone the team already has; the head is re-initialised when its shape differs.
    """
    from pipeline.model.training import Classifier

    seed_everything(seed)
    net = create_net(arch, num_classes, in_chans, image_size)
    if pretrained is not None:
        pretrained = {**pretrained, "fresh_head": load_backbone(net, pretrained["path"])}
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
            "pretrained": pretrained,
            **(meta or {}),
        },
    )
    return net.eval(), draft
