"""``rollback`` steps: serve an earlier champion again (``to``) or drop one step's overlay (``drop``).

Both are refused before anything is written when they would serve deleted samples again
(DESIGN.md invariant 2) or when the target never passed the gate.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.core.config import Params, StepConfig
from pipeline.core.errors import ComponentError, ConfigError
from pipeline.model.components import ComponentStore
from pipeline.model.compose import compose, is_routed
from pipeline.model.manifest import Manifest
from pipeline.records import gate
from pipeline.records.deletion import DeletionLog, uncovered_requests
from pipeline.records.erasure import ErasureLog
from pipeline.records.workspace import Workspace
from pipeline.steps.context import Candidate, StepContext, current_champion
from pipeline.steps.kind import StepKind, register_kind
from pipeline.steps.operate import operator_env, reapply_transforms


def rollback_target(step: StepConfig, params: Params) -> tuple[str, Any]:
    """``("to", version)`` or ``("drop", step id)``, validated against ``params``."""
    opts = step.options
    where = f"stream.{step.key}"
    unknown = set(opts) - {"to", "drop", "reason"}
    if unknown:
        raise ConfigError("unknown key (allowed: to, drop, reason)", file=params.file, field=f"{where}.{sorted(unknown)[0]}")
    if ("to" in opts) == ("drop" in opts):
        raise ConfigError("a rollback names exactly one of 'to' (a version) or 'drop' (a step id)", file=params.file, field=where)
    if "to" in opts:
        if isinstance(opts["to"], bool) or not isinstance(opts["to"], int) or opts["to"] < 1:
            raise ConfigError(f"expected a version number >= 1, got {opts['to']!r}", file=params.file, field=f"{where}.to")
        return "to", opts["to"]
    if opts["drop"] not in params.stream or opts["drop"] == step.key:
        raise ConfigError(f"unknown step {opts['drop']!r}", file=params.file, field=f"{where}.drop")
    return "drop", opts["drop"]


def _refuse_reintroduction(ws: Workspace, target: Manifest, *, field: str, what: str, why: str) -> None:
    """Refuse ``target`` when it would serve (uncovered) samples of a request the champion does not."""
    log = DeletionLog.read(ws.ledger)
    if not log.requests:
        return
    carried = uncovered_requests(target, ws.components, log)
    version = gate.ledger_champion(ws.ledger)  # the alias may sit where a person put it (pipeline.steps.sync)
    already = uncovered_requests(ws.manifest_of(version), ws.components, log) if version else {}
    reintroduced = sorted(r for r in carried if r not in already)
    if reintroduced:
        raise ConfigError(f"refused: {what} request(s) {', '.join(reintroduced)}{why}", file=ws.params.file, field=field)


def check_rollback_to(ws: Workspace, target: int, *, field: str) -> None:
    """Refuse a rollback target that never passed the gate (or does not exist)."""
    promoted = {e.data["version"] for e in ws.ledger.of_type("decision") if e.data["decision"] == gate.PROMOTED}
    if target not in promoted:
        raise ConfigError(
            f"version {target} was never promoted through the gate; only earlier champions can be rolled back to"
            f" (promoted: {', '.join(map(str, sorted(promoted))) or 'none'})",
            file=ws.params.file,
            field=field,
        )
    erasure = ErasureLog.read(ws.ledger)
    if target in erasure.versions:
        by = sorted(rid for rid, e in erasure.done.items() if target in e.data["versions"])
        raise ConfigError(
            f"version {target}'s weights were erased with the data of request(s) {', '.join(by)} (`ume status`); it cannot be served again",
            file=ws.params.file,
            field=field,
        )
    _refuse_reintroduction(
        ws,
        ws.manifest_of(target),
        field=field,
        what=f"version {target} still carries the influence of deleted samples of",
        why="; serving it would undo those deletions",
    )


EXPERT_NAME = re.compile(r"(?:^|\.)experts\.(\d+)\.")


def shifted_overlays(manifest: Manifest, store: ComponentStore, step_id: str) -> list[str]:
    """The steps of ``manifest``'s other overlays that name an expert at or after ``step_id``'s own: dropping that
    expert renumbers the later ones, so their tensors (``experts.<i>.``: an owner-scoped deletion, a routed edit)
    would fold into another expert of the same shape, silently."""
    overlays = [(c, s, is_routed(store.sidecar(c).meta)) for c, s in zip(manifest.overlays, manifest.overlay_steps, strict=True)]
    routed = [s for _, s, expert in overlays if expert]
    if step_id not in routed:
        return []
    first = routed.index(step_id) + 1  # expert 0 is the base
    shifted = []
    for component_id, step, expert in overlays:
        if expert:
            continue
        named = {int(m.group(1)) for name in store.load(component_id)[0] for m in [EXPERT_NAME.search(name)] if m}
        if any(i >= first for i in named):
            shifted.append(step)
    return shifted


def check_rollback_drop(ws: Workspace, step_id: str, *, field: str) -> None:
    """Refuse to drop a step whose overlay the champion does not carry, or whose expert an overlay above it was made on."""
    version, manifest = current_champion(ws)
    if step_id not in manifest.overlay_steps and step_id not in manifest.transform_steps:
        raise ConfigError(
            f"the champion (v{version}: {manifest.describe()}) has no overlay or transform from step {step_id!r}",
            file=ws.params.file,
            field=field,
        )
    _refuse_reintroduction(
        ws,
        manifest.without_step(step_id),
        field=field,
        what=f"dropping {step_id!r} would serve deleted samples of",
        why=" again (the overlay is pinned until a retrain pays the deletion debt)",
    )
    shifted = shifted_overlays(manifest.float_shadow(), ws.components, step_id)
    if shifted:
        raise ConfigError(
            f"without {step_id!r} the experts after its own are renumbered, and the overlay(s) of {', '.join(shifted)} were made"
            " on its expert or a later one: drop that overlay first",
            file=ws.params.file,
            field=field,
        )
    try:  # an overlay made on the network with this step's expert cannot be served without it
        compose(manifest.without_step(step_id).float_shadow(), ws.components)
    except ComponentError as exc:
        raise ConfigError(
            f"without {step_id!r} the champion's other overlays do not fit ({exc}): an overlay above it was made on its expert;"
            " drop that overlay first",
            file=ws.params.file,
            field=field,
        ) from None


@register_kind("rollback")
class RollbackKind(StepKind):
    """Serve an earlier champion again, or the champion without one step."""

    def validate(self, params: Params, step: StepConfig) -> None:
        """Exactly one of ``to`` (a version) or ``drop`` (a known step)."""
        rollback_target(step, params)

    def plan(self, ctx: StepContext) -> None:
        """Refuse a target that never passed the gate or that would serve deleted samples again."""
        assert ctx.step is not None
        ctx.method_name = ctx.step.method
        how, target = ctx.plan = rollback_target(ctx.step, ctx.params)
        if how == "to":
            check_rollback_to(ctx.ws, int(target), field=f"{ctx.where}.to")
        else:
            check_rollback_drop(ctx.ws, str(target), field=f"{ctx.where}.drop")

    def operate(self, ctx: StepContext) -> Candidate:
        """The earlier version as registered, or the champion without the step (transforms re-derived)."""
        how, target = ctx.plan
        if how == "to":
            return Candidate(ctx.ws.manifest_of(int(target)), existing_version=int(target))
        champion = ctx.champion_manifest
        assert champion is not None and ctx.data is not None
        manifest, notes = champion.without_step(str(target)), {}
        if manifest.transforms and str(target) in champion.overlay_steps:
            # The float version changed under the transforms: re-derive them, as after any other step.
            manifest = reapply_transforms(ctx, manifest.float_shadow(), ctx.data, operator_env(ctx))
            notes["reapplied_transforms"] = list(champion.transform_steps)
        return Candidate(manifest, notes)

    def decide(self, ctx: StepContext, candidate: Candidate, decision: gate.Decision, results) -> tuple[gate.Decision, str]:
        """Rolling back to a version that already passed its gate: the suite runs for the record."""
        version = candidate.existing_version
        if version is None:
            return decision, "gate"
        failed = [r.name for r in results if r.outcome == "failed"]
        return gate.Decision(True, f"rollback to version {version}, which passed its gate earlier", [], failed), "rollback"
