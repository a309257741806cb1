"""Run an operator from ``edits/`` on the composed champion and turn its :class:`Change` into a candidate.

A compress step works on the champion as served (its transforms included, so pruning can be
followed by quantization); every other step works on the float shadow, and the champion's export
transforms are then re-derived from their recorded recipes on the result.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from edits import OperatorEnv, get_method
from edits.registry import Method, as_change
from pipeline.core.errors import DataError
from pipeline.core.seeding import seed_everything
from pipeline.data import UmeData
from pipeline.model.compose import compose
from pipeline.model.lineage import version_lineage
from pipeline.model.manifest import Manifest
from pipeline.records.deletion import DeletionLog, DeletionRequest
from pipeline.steps.context import Candidate, StepContext
from pipeline.steps.record import record_component


def operator_env(ctx: StepContext, request: DeletionRequest | None = None) -> OperatorEnv:
    """What an operator may know of the workspace: the champion, its lineage, the request, a Trainer factory."""
    ws, champion = ctx.ws, ctx.champion_manifest
    assert champion is not None
    return OperatorEnv(
        step=ctx.key,
        seed=ctx.params.seed,
        make_trainer=ctx.make_trainer(),
        champion_lineage=frozenset(version_lineage(champion, ws.components)),
        champion_manifest=champion,
        components=ws.components,
        request=request,
        forget_ids=frozenset(DeletionLog.read(ws.ledger).hashed_ids([request.id])) if request else frozenset(),
    )


def run_operator(ctx: StepContext, method: Method, config: Any, env: OperatorEnv) -> Candidate:
    """Compose the champion, run the operator, store its components; returns the candidate."""
    ws, key, champion = ctx.ws, ctx.key, ctx.champion_manifest
    assert champion is not None and ctx.data is not None
    seed_everything(ctx.params.seed)
    source = champion if method.kind == "compress" else champion.float_shadow()
    net = compose(source, ws.components)
    for p in net.parameters():
        p.requires_grad_(True)
    operator_started = time.time()
    try:
        change = method.fn(net, ctx.data, config, env)
    except DataError as exc:
        if exc.file is None:
            exc = DataError(exc.message, file=ws.params.file, field=f"stream.{key}.{exc.field or 'slice'}")
        raise exc from None
    change = as_change(change)
    manifest = source if change.keep_overlays is None else source.truncated(change.keep_overlays)
    if change.drop_overlays:
        manifest = manifest.without_positions(change.drop_overlays)
    if change.new_base is not None:
        component = ws.components.save(change.new_base, parent=champion.hash)
        record_component(ws, key, component)
        manifest = Manifest(base=component.id)
    for draft in change.drafts:
        component = ws.components.save(draft, parent=champion.hash)
        record_component(ws, key, component)
        manifest = manifest.with_overlay(component.id, draft.meta.get("overlay_step", key))
    notes: dict[str, Any] = {"method": f"{method.kind}/{method.name}", **change.notes}
    if change.transform is not None:
        component = ws.components.save(change.transform, parent=champion.hash)
        record_component(ws, key, component)
        manifest = manifest.with_transform(component.id, key)
    elif champion.transforms:
        manifest = reapply_transforms(ctx, manifest, ctx.data, env)
        notes["reapplied_transforms"] = list(champion.transform_steps)
    notes["operator_seconds"] = round(time.time() - operator_started, 3)
    return Candidate(manifest, notes)


def reapply_transforms(ctx: StepContext, manifest: Manifest, data: UmeData, env: OperatorEnv) -> Manifest:
    """Re-derive the champion's export transforms, in order, on the new float version."""
    ws, champion = ctx.ws, ctx.champion_manifest
    assert champion is not None
    for transform_id, transform_step in zip(champion.transforms, champion.transform_steps, strict=True):
        sidecar = ws.components.sidecar(transform_id)
        sidecar_file = str(ws.components.sidecar_path(transform_id))
        method = get_method(*sidecar.meta["method"].split("/"), file=sidecar_file, where="meta.method")
        config = method.parse_config(sidecar.meta["config"], where="meta.config", file=sidecar_file)
        seed_everything(ctx.params.seed)
        net = compose(manifest, ws.components)
        for p in net.parameters():
            p.requires_grad_(True)
        sub_env = dataclasses.replace(env, step=transform_step, champion_lineage=frozenset(version_lineage(manifest.float_shadow(), ws.components)))
        change = method.fn(net, data, config, sub_env)
        component = ws.components.save(change.transform, parent=manifest.hash)
        record_component(ws, ctx.key, component)
        manifest = manifest.with_transform(component.id, transform_step)
    return manifest
