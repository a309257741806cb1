"""Build a :class:`~behaviors.context.BehaviorContext` from manifests (for steps and for standalone runs)."""

from __future__ import annotations

from typing import Any

from behaviors.context import BehaviorContext, EditCase, ForgetCase, ModelUnderTest, Splits, merged_thresholds
from pipeline.compose import compose
from pipeline.data import UmeData, open_data
from pipeline.data.table import EVAL_SLICES
from pipeline.deletion import DeletionLog
from pipeline.lineage import hash_sample_id, version_lineage
from pipeline.manifest import Manifest
from pipeline.workspace import Workspace


def model_under_test(ws: Workspace, name: str, manifest: Manifest, version: int | None) -> ModelUnderTest:
    """Compose ``manifest`` and wrap it for specs."""
    return ModelUnderTest(name=name, version=version, net=compose(manifest, ws.components), description=manifest.describe())


def build_context(
    ws: Workspace,
    *,
    candidate: ModelUnderTest,
    candidate_manifest: Manifest,
    champion: ModelUnderTest | None,
    champion_manifest: Manifest | None,
    step: dict[str, Any],
    data: UmeData | None = None,
) -> BehaviorContext:
    """Reference sets come from the data layer (deleted samples are already gone).

    ``retain`` is what the champion was trained on (what a change must not lose); without a
    champion it is what the candidate was trained on.
    """
    data = data or open_data(ws.data_dir, ws.ledger, seed=ws.params.seed)
    reference = champion_manifest or candidate_manifest
    cases = forget_cases(ws, data, step.get("request"))
    excluded = tuple(sorted({c.label for c in cases if c.scope == "class" and c.label is not None}))
    retain = data.select("retain", hashed_ids=version_lineage(reference, ws.components)).without_labels(excluded)
    splits = Splits(
        test=data.split("test").without_labels(excluded),
        canary=data.split("canary").without_labels(excluded),
        retain=retain,
    )
    return BehaviorContext(
        candidate=candidate,
        champion=champion,
        splits=splits,
        thresholds=merged_thresholds(ws.params.behaviors.thresholds),
        data=data,
        step=step,
        num_classes=ws.params.model.num_classes,
        forget_cases=cases,
        excluded_labels=excluded,
        edits=edit_cases(ws, data, candidate_manifest, step),
    )


def edit_cases(ws: Workspace, data: UmeData, manifest: Manifest, step: dict[str, Any]) -> list[EditCase]:
    """Every edit the candidate's overlays carry (merges carry the edits they absorbed)."""
    out = []
    for component_id, overlay_step in zip(manifest.overlays, manifest.overlay_steps, strict=True):
        for edit in ws.components.sidecar(component_id).meta.get("edits", []):
            out.append(
                EditCase(
                    name=edit["name"],
                    scope_labels=tuple(edit["scope_labels"]),
                    cases=data.select(f"edit:{edit['name']}:cases", hashed_ids=edit["cases"]),
                    holdout=data.select(f"edit:{edit['name']}:holdout", hashed_ids=edit["holdout"]),
                    current=step.get("kind") == "edit" and overlay_step == step.get("id"),
                    locality=edit.get("locality", "canary"),
                )
            )
    return out


def forget_cases(ws: Workspace, data: UmeData, current_request: str | None) -> list[ForgetCase]:
    """Every deletion the candidate must honour: resolved requests, plus the one being processed."""
    log = DeletionLog.read(ws.ledger)
    wanted = [r for r in log.requests if r in log.resolved or r == current_request]
    test = data.split("test")
    cases = []
    for rid in wanted:
        entry = log.requests[rid].data
        samples = data.forgotten(f"forgotten:{rid}", entry["hashed_ids"])
        influenced = entry.get("influenced_ids")
        if influenced is not None:  # only samples that influenced the served model can be "remembered"
            keep = set(influenced)
            trained = samples.take([i for i, s in enumerate(samples.sample_ids) if hash_sample_id(s) in keep])
        else:
            trained = samples.take([i for i, s in enumerate(samples.slices) if s not in EVAL_SLICES])
        if entry["scope"] == "class":
            label = data.classes.index(entry["label"])
            unseen = samples.take([i for i, s in enumerate(samples.slices) if s in EVAL_SLICES])
        else:
            label = None
            classes = set(trained.y.tolist())
            unseen = test.take([i for i, y in enumerate(test.y.tolist()) if y in classes])
        cases.append(ForgetCase(rid, entry["scope"], label, trained, unseen, current=rid == current_request))
    return cases


def standalone_context(ws: Workspace, version: int | None) -> BehaviorContext:
    """For ``pytest behaviors/``: the candidate is ``version`` (default: the champion), against the champion."""
    champion_version = ws.registry.champion()
    if champion_version is None:
        raise RuntimeError("no champion yet: run `dvc repro` (or `make demo`) first")
    target = version or champion_version
    champion_manifest = ws.manifest_of(champion_version)
    candidate_manifest = ws.manifest_of(target)
    candidate = model_under_test(ws, f"v{target}", candidate_manifest, target)
    champion = model_under_test(ws, f"v{champion_version}", champion_manifest, champion_version)
    return build_context(
        ws,
        candidate=candidate,
        candidate_manifest=candidate_manifest,
        champion=champion,
        champion_manifest=champion_manifest,
        step={"id": "standalone", "kind": "check", "version": target},
    )
