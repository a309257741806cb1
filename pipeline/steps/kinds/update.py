"""``learn``, ``edit``, ``retrain``, ``merge`` and ``compress`` steps: one operator from ``edits/`` on the champion."""

from __future__ import annotations

from typing import Any

from edits import get_method
from edits.merge.common import chosen_overlays, refuse_routed
from pipeline.core.config import Params, StepConfig
from pipeline.core.errors import ConfigError
from pipeline.model.compose import compose
from pipeline.model.quantize import check_quantizable
from pipeline.steps.context import Candidate, StepContext
from pipeline.steps.kind import StepKind, register_kind
from pipeline.steps.operate import operator_env, run_operator


def method_and_config(params: Params, step: StepConfig, method_name: str | None, options: dict[str, Any]) -> tuple[Any, Any]:
    """The step's registered method and its parsed config (errors name the step's field)."""
    method = get_method(step.kind, method_name, file=params.file, where=f"stream.{step.key}.method")
    return method, method.parse_config(options, where=f"stream.{step.key}", file=params.file)


@register_kind("learn", "edit", "retrain")
class UpdateKind(StepKind):
    """Learn from a new slice, apply an edit spec or retrain in full: one operator on the champion."""

    def validate(self, params: Params, step: StepConfig) -> None:
        """The method exists and its options parse."""
        method_and_config(params, step, step.method, step.options)

    def plan(self, ctx: StepContext) -> None:
        """Resolve the method and its config."""
        assert ctx.step is not None
        ctx.method_name = ctx.step.method
        ctx.plan = method_and_config(ctx.params, ctx.step, ctx.step.method, ctx.step.options)

    def operate(self, ctx: StepContext) -> Candidate:
        """Run the operator on the composed champion."""
        method, config = ctx.plan
        return run_operator(ctx, method, config, operator_env(ctx))


@register_kind("merge")
class MergeKind(UpdateKind):
    """Fold or combine overlays; the chosen overlays must be on the champion."""

    def plan(self, ctx: StepContext) -> None:
        """Refuse overlays the champion does not carry, and routed experts, before anything is written."""
        super().plan(ctx)
        assert ctx.step is not None and ctx.champion_manifest is not None
        chosen = tuple(ctx.step.options.get("overlays") or ())
        positions = chosen_overlays(ctx.champion_manifest, chosen, where=ctx.where, file=ctx.params.file)
        field = f"{ctx.where}.overlays" if chosen else f"{ctx.where}.method"
        refuse_routed(ctx.champion_manifest, ctx.ws.components, positions, where=field, file=ctx.params.file)


@register_kind("compress")
class CompressKind(UpdateKind):
    """Prune or quantize the champion as served; int8 comes last and only where the layers allow it."""

    def plan(self, ctx: StepContext) -> None:
        """Refuse a second compression after int8, and a network int8 cannot convert."""
        super().plan(ctx)
        ws, champion = ctx.ws, ctx.champion_manifest
        assert ctx.step is not None and champion is not None
        if any(ws.components.sidecar(t).meta.get("transform") == "quantize" for t in champion.transforms):
            raise ConfigError("the champion is already quantized: put compress steps before the quantize step", file=ctx.params.file, field=ctx.where)
        if (ctx.step.method or "quantize") == "quantize":
            size, channels = ctx.params.data.image_size, ctx.params.data.channels
            check_quantizable(compose(champion.float_shadow(), ws.components), (channels, size, size), file=ctx.params.file, field=f"{ctx.where}.method")
