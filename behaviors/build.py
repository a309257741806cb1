"""Build a :class:`~behaviors.context.BehaviorContext` from manifests (for steps and for standalone runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from behaviors.cache import RowCache
from behaviors.context import BehaviorContext, EditCase, ErasedCase, ForgetCase, ModelUnderTest, Splits, merged_thresholds
from behaviors.limits import limit_thresholds
from pipeline.core.config import ReferenceConfig
from pipeline.core.errors import UmeError
from pipeline.data import SampleSet, UmeData, open_data
from pipeline.data.table import EVAL_SLICES, NO_DOMAIN
from pipeline.model.compose import compose
from pipeline.model.lineage import hash_sample_id, version_lineage
from pipeline.model.manifest import Manifest
from pipeline.records.deletion import DeletionLog
from pipeline.records.erasure import ErasureLog
from pipeline.records.workspace import Workspace

if TYPE_CHECKING:
    import lightning as L


def model_under_test(ws: Workspace, name: str, manifest: Manifest, version: int | None) -> ModelUnderTest:
    """Compose ``manifest`` and wrap it for specs, its rows cached under the manifest hash (:mod:`behaviors.cache`)."""
    net = compose(manifest, ws.components)
    return ModelUnderTest(name=name, version=version, net=net, description=manifest.describe(), key=manifest.hash, cache=row_cache(ws))


def row_cache(ws: Workspace) -> RowCache:
    """The project's cache of what gates computed (``store/cache``), shared by every model of this process."""
    root = ws.store_dir / "cache"
    cached = _ROW_CACHES.get(root)
    if cached is None or cached.writable != ws.primary:
        cached = _ROW_CACHES[root] = RowCache(root, writable=ws.primary)
    return cached


_ROW_CACHES: dict[Path, RowCache] = {}


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
    champion it is what the candidate was trained on. Every forget case gets its control (the
    un-forgotten model); owner and sample deletions get the reference bank of the candidate's base.
    """
    data = data or open_data(ws.data_dir, ws.ledger, seed=ws.params.seed)
    reference = champion_manifest or candidate_manifest
    current = (ws.registry.champion() if champion is None else champion.version, champion)
    cases = forget_cases(ws, data, step.get("request"), current_champion=current)
    bank, bank_note = None, ""
    if any(c.scope == "samples" for c in cases):
        bank, bank_note = reference_bank(ws, data, candidate_manifest)
    excluded = tuple(sorted({c.label for c in cases if c.scope == "class" and c.label is not None}))
    retain = data.select("retain", hashed_ids=version_lineage(reference, ws.components)).without_labels(excluded)
    heldout = {d: data.heldout(d).without_labels(excluded) for d in data.heldout_domains()}
    candidate_lineage = version_lineage(candidate_manifest, ws.components)
    champion_learned = learned_slices(data, version_lineage(champion_manifest, ws.components), heldout) if champion_manifest else ()
    learned = learned_slices(data, candidate_lineage, heldout)
    canary = data.split("canary")
    if heldout:  # drift is judged on what the reference version already knew: a slice it never learned is expected to move
        canary = data.select("canary", slices=["canary"], domains=[NO_DOMAIN, *(champion_learned if champion_manifest else learned)])
    splits = Splits(
        test=data.split("test").without_labels(excluded),
        canary=canary.without_labels(excluded),
        retain=retain,
    )
    if heldout:  # test and canary samples of the slices each version was taught (fairness is judged there)
        for name, domains in (("taught", learned), ("known", champion_learned if champion_manifest else learned)):
            splits.extra[name] = data.select(name, slices=list(EVAL_SLICES), domains=[NO_DOMAIN, *domains]).without_labels(excluded)
    return BehaviorContext(
        candidate=candidate,
        champion=champion,
        splits=splits,
        thresholds=merged_thresholds({**ws.params.behaviors.thresholds, **limit_thresholds(ws.params.behaviors)}),
        data=data,
        step=step,
        num_classes=ws.params.model.num_classes,
        forget_cases=cases,
        excluded_labels=excluded,
        edits=edit_cases(ws, data, candidate_manifest, step),
        references=bank,
        references_note=bank_note,
        heldout={d: samples for d, samples in heldout.items() if len(samples)},
        learned=learned,
        champion_learned=champion_learned,
        clean_base=model_under_test(ws, "clean base", Manifest(base=candidate_manifest.base), None) if heldout else None,
        erased=erased_cases(ws, candidate_lineage),
    )


def learned_slices(data: UmeData, lineage: set[str] | frozenset[str], heldout: dict[str, Any]) -> tuple[str, ...]:
    """The slices with a held-out split that some sample of ``lineage`` belongs to (what a version was taught)."""
    if not heldout:
        return ()
    trained = data.rows.loc[~data.rows["slice"].isin(list(EVAL_SLICES))]
    hit = {sl for sid, sl in zip(trained["sample_id"], trained["slice"], strict=True) if sl in heldout and hash_sample_id(sid) in lineage}
    return tuple(d for d in heldout if d in hit)


def shadow_trainer(ws: Workspace) -> Callable[[int], L.Trainer]:
    """Trainers for reference overlays: one device, no logger, no progress bar per shadow."""
    train = dataclasses.replace(ws.params.train, devices=1, num_nodes=1, strategy="auto", progress_bar=False)

    def make(epochs: int) -> L.Trainer:
        from pipeline.model.training import make_trainer

        return make_trainer(train, max_epochs=epochs)

    return make


def shadow_workers(ws: Workspace) -> int:
    """Shadows trained at once (:func:`behaviors.references.open_bank`'s ``workers``): one worker process per CPU when
    they train on the CPU; one at a time on an accelerator (a forked process cannot share its device)."""
    from behaviors.references import usable_cpus

    accelerator = ws.params.train.accelerator
    if accelerator == "cpu" or (accelerator == "auto" and not _accelerator_present()):
        return usable_cpus()
    return 1


def _accelerator_present() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


RECIPE_FIELDS = ("epochs", "rank", "alpha", "lr", "batch_size", "replay", "augment_shift")


def _shadow_recipe(ws: Workspace, manifest: Manifest) -> ReferenceConfig:
    """Shadows are trained as the version's data subjects were: with the recorded recipe of its
    first ``learn`` overlay (LiRA's references must match the target's training); the
    ``behaviors.references`` settings apply when the version has none."""
    config = ws.params.behaviors.references
    for component_id in manifest.overlays:
        meta = ws.components.sidecar(component_id).meta
        if meta.get("method") == "learn/lora":
            recorded = meta.get("config", {})
            return dataclasses.replace(config, **{k: recorded[k] for k in RECIPE_FIELDS if k in recorded})
    return config


def reference_bank(ws: Workspace, data: UmeData, manifest: Manifest, *, fill: bool = False):
    """The reference bank of ``manifest``'s clean base (opened, purged, topped up; ``fill``: to every
    shadow, as ``ume references`` does ahead of a deletion), or None and why."""
    from behaviors.references import capped_pool, open_bank, reference_pool

    float_manifest = manifest.float_shadow()
    base_lineage = set(ws.components.sidecar(manifest.base).lineage)
    overlay_lineage: set[str] = set()
    for component_id in float_manifest.overlays:
        overlay_lineage |= set(ws.components.sidecar(component_id).lineage)
    pool = capped_pool(reference_pool(data, overlay_lineage, base_lineage), ws.params.behaviors.max_reference_pool, ws.params.seed)
    config = _shadow_recipe(ws, float_manifest)
    # The bank's key: what shapes a shadow's training; how many there are and how they are scored do not (a bank is reused across both)
    recipe = hashlib.sha256(json.dumps({k: getattr(config, k) for k in RECIPE_FIELDS}, sort_keys=True).encode()).hexdigest()[:12]
    bank = open_bank(
        ws.store_dir / "references" / manifest.base / recipe,
        compose(Manifest(base=manifest.base), ws.components),
        data=data,
        pool=pool,
        replay=data.select("reference-replay", hashed_ids=base_lineage),
        deleted=DeletionLog.read(ws.ledger).hashed_ids(),
        config=config,
        make_trainer=shadow_trainer(ws),
        seed=ws.params.seed,
        base_lineage=frozenset(base_lineage),
        cache=row_cache(ws),
        fill=fill,
        workers=shadow_workers(ws),
    )
    if bank is None:
        return None, "no reference models: the version has no overlay trained on data subjects outside the clean base"
    return bank, ""


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


def served_version(ws: Workspace, request_id: str) -> int | None:
    """The un-forgotten control of a request: the champion its first forget step started from (recorded
    when the request was first resolved; a two-phase deletion keeps it), else the one it arrived on."""
    log = DeletionLog.read(ws.ledger)
    resolved = log.first_resolved.get(request_id)
    if resolved is not None and resolved.data.get("control_version") is not None:
        return int(resolved.data["control_version"])
    steps = [k for k, s in ws.params.stream.items() if s.kind == "forget" and s.options.get("request") == request_id]
    started = [e for e in ws.ledger.of_type("step_started") if e.step in steps and e.data.get("champion") is not None]
    if started:
        return int(started[-1].data["champion"])
    entry = log.requests.get(request_id)
    served = entry.data.get("served_version") if entry is not None else None
    return int(served) if served is not None else None


def forget_cases(
    ws: Workspace, data: UmeData, current_request: str | None, *, current_champion: tuple[int | None, ModelUnderTest | None] = (None, None)
) -> list[ForgetCase]:
    """Every deletion the candidate must honour: resolved requests, plus the one being processed.

    Each case carries its control: the champion the request arrived on (composed from the
    registry; the current champion for the request being processed).
    """
    log = DeletionLog.read(ws.ledger)
    controls: dict[int, ModelUnderTest | None] = {}
    if current_champion[0] is not None and current_champion[1] is not None:
        controls[current_champion[0]] = current_champion[1]
    erased = ErasureLog.read(ws.ledger).done  # their pixels are gone: erased_cases() judges them by lineage
    wanted = [r for r in log.requests if (r in log.resolved or r == current_request) and r not in erased]
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
            unseen = _unseen_like(data, test, trained)
        # The request being processed is judged against the champion its step started from, unless an
        # earlier phase already resolved it (that champion is then the approximately forgotten model).
        first_time = rid == current_request and rid not in log.resolved
        version = current_champion[0] if first_time else served_version(ws, rid)
        control, note = None, "no record of the version the request arrived on"
        if version is not None:
            if version not in controls:
                try:
                    controls[version] = model_under_test(ws, f"control v{version}", ws.manifest_of(version), version)
                except (UmeError, KeyError, FileNotFoundError) as exc:
                    controls[version] = None
                    note = f"the un-forgotten version v{version} cannot be composed: {exc}"
            control = controls[version]
            note = "" if control is not None else note
        cases.append(ForgetCase(rid, entry["scope"], label, trained, unseen, current=rid == current_request, control=control, control_note=note))
    return cases


def erased_cases(ws: Workspace, candidate_lineage: set[str]) -> list[ErasedCase]:
    """Every erased request, with the lineage proof: its samples in the candidate's lineage and in its control's."""
    log, erasure = DeletionLog.read(ws.ledger), ErasureLog.read(ws.ledger)
    cases = []
    for rid, entry in erasure.done.items():
        hashed = set(log.requests[rid].data["hashed_ids"])
        version = served_version(ws, rid)
        control = None
        if version is not None:
            try:
                control = len(version_lineage(ws.manifest_of(version), ws.components) & hashed)
            except (UmeError, KeyError, FileNotFoundError):
                control = None
        resolved = log.resolved.get(rid)
        evidence = (resolved.data.get("note") or "") if resolved is not None else ""
        cases.append(ErasedCase(rid, str(entry.data["erased_at"]), len(candidate_lineage & hashed), control, evidence))
    return cases


def _unseen_like(data: UmeData, test: SampleSet, trained: SampleSet) -> SampleSet:
    """Test samples of the forgotten samples' classes, and of their look where their slices have a held-out split.

    A deleted owner of a slice with a look the base never saw (``data.looks``) is compared with unseen
    samples of that look: against test samples of every look, an exact retrain that still generalises to
    the look would look "remembered".
    """
    classes = set(trained.y.tolist())
    looks = set(trained.slices) & set(data.heldout_domains())
    pool = data.select("test", slices=["test"], domains=looks) if looks else test
    return pool.take([i for i, y in enumerate(pool.y.tolist()) if y in classes])


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
