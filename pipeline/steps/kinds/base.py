"""The ``base`` stage: train the clean base on the ``base`` slice (from a team's own backbone if given)."""

from __future__ import annotations

from typing import Any

from edits.base import train_base
from pipeline.core.config import BASE_STEP
from pipeline.data import UmeData, open_data
from pipeline.model.manifest import Manifest
from pipeline.model.net import check_checkpoint, create_net, load_backbone
from pipeline.steps.context import Candidate, StepContext
from pipeline.steps.kind import StepKind, register_kind
from pipeline.steps.record import record_component


@register_kind("base")
class BaseKind(StepKind):
    """The first stage: no champion to start from; gated on absolute checks only."""

    needs_champion = False

    def resume_allowed(self, ctx: StepContext, decisions) -> bool:
        """A base is retrained, never finished from the ledger (nothing sits below it)."""
        return False

    def plan(self, ctx: StepContext) -> None:
        """Check the team's checkpoint (hash and shapes) before anything is written: a bad file changes nothing."""
        params, path = ctx.params, ctx.params.checkpoint_path
        if path is None:
            return
        ctx.plan = {"path": str(path), "sha256": check_checkpoint(path, params.model.checkpoint_sha256, file=params.file)}
        net = create_net(params.model.arch, params.model.num_classes, params.data.channels, params.data.image_size)
        load_backbone(net, path, file=params.file)

    def started(self, ctx: StepContext) -> dict[str, Any]:
        """The architecture and the pretrained backbone, if any."""
        return {"kind": "base", "arch": ctx.params.model.arch, "pretrained": ctx.plan}

    def run_params(self, ctx: StepContext) -> dict[str, Any]:
        """The architecture and the base's training recipe."""
        return {"arch": ctx.params.model.arch, **{f"train.{k}": v for k, v in vars(ctx.params.train.base).items()}}

    def open_data(self, ctx: StepContext) -> UmeData:
        """The data module with the base recipe's batch size."""
        params = ctx.params
        return open_data(ctx.ws.data_dir, ctx.ws.ledger, batch_size=params.train.base.batch_size, num_workers=params.train.num_workers, seed=params.seed)

    def operate(self, ctx: StepContext) -> Candidate:
        """Train the base and store it as the only component of the candidate."""
        params = ctx.params
        assert ctx.data is not None
        _, draft = train_base(
            ctx.data,
            ctx.data.split("base"),
            arch=params.model.arch,
            num_classes=params.model.num_classes,
            in_chans=params.data.channels,
            image_size=params.data.image_size,
            config=params.train.base,
            make_trainer=ctx.make_trainer(),
            seed=params.seed,
            pretrained=ctx.plan,
        )
        component = ctx.ws.components.save(draft, parent=None)
        record_component(ctx.ws, BASE_STEP, component)
        return Candidate(Manifest(base=component.id))
