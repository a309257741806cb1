"""Retrain from scratch without the deleted samples: the gold standard every method is measured against.

Exact by construction (Cao and Yang 2015, "Towards Making Systems Forget with Machine Unlearning",
name the naive baseline; Bourtoule et al. 2021 use it as the reference). The new base is trained on
everything the champion learned from (base slice and every learned slice) minus every deletion,
with the base's own training settings; the overlays are folded away, and any deletion debt is paid.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edits.base import train_base
from edits.registry import Change, OperatorEnv, register_method
from pipeline.core.config import BaseTrainConfig
from pipeline.data import UmeData
from pipeline.model.net import check_checkpoint


@dataclass(frozen=True)
class RetrainConfig:
    """Defaults: the base's own recorded training settings; ``epochs`` overrides them when set."""

    epochs: int | None = None


def retrain_from_scratch(net: nn.Module, data: UmeData, config: RetrainConfig, env: OperatorEnv) -> Change:
    """Train a new base on the champion's lineage minus every deleted sample."""
    if env.champion_manifest is None or env.components is None:
        raise RuntimeError("retrain needs the champion manifest and the component store")
    base = env.components.sidecar(env.champion_manifest.base).meta
    train = dict(base["train"])
    if config.epochs is not None:
        train["epochs"] = config.epochs
    samples = data.select("retrain", hashed_ids=env.champion_lineage)
    _, draft = train_base(
        data,
        samples,
        arch=base["arch"],
        num_classes=int(base["num_classes"]),
        in_chans=int(base["in_chans"]),
        image_size=int(base["image_size"]),
        config=BaseTrainConfig(**train),
        make_trainer=env.make_trainer,
        seed=env.seed,
        meta={"method": "retrain", "exact": True, "retrained_from": env.champion_manifest.hash},
        pretrained=_same_backbone(base.get("pretrained")),
    )
    return Change(new_base=draft, keep_overlays=0, notes={"exact": True, "retrained_samples": len(samples)})


def _same_backbone(pretrained: dict | None) -> dict | None:
    """A retrain starts from the backbone the base started from, if the file is still that one."""
    if pretrained is None:
        return None
    check_checkpoint(pretrained["path"], pretrained["sha256"], file="the base's sidecar", field="meta.pretrained.path")
    return {"path": pretrained["path"], "sha256": pretrained["sha256"]}


@register_method("forget", "retrain", RetrainConfig)
def forget_retrain(net: nn.Module, data: UmeData, config: RetrainConfig, env: OperatorEnv) -> Change:
    """Honour a deletion by retraining everything without the deleted samples."""
    return retrain_from_scratch(net, data, config, env)


@register_method("retrain", "full", RetrainConfig)
def retrain_full(net: nn.Module, data: UmeData, config: RetrainConfig, env: OperatorEnv) -> Change:
    """Pay back all deletion debt: a clean base without any deleted sample, no overlays."""
    return retrain_from_scratch(net, data, config, env)
