"""What every merge keeps: lineage, deletion pins and edits of the overlays it absorbs."""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.model.components import Component, ComponentStore
from pipeline.model.compose import is_routed
from pipeline.model.manifest import Manifest


def merged_bookkeeping(sidecars: list[Component], steps: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The union of lineage, and meta carrying the union of ``covers`` and ``edits`` and the provenance."""
    lineage: set[str] = set()
    covers: set[str] = set()
    edits: list[dict[str, Any]] = []
    for sidecar in sidecars:
        lineage.update(sidecar.lineage)
        covers.update(sidecar.meta.get("covers", []))
        edits.extend(sidecar.meta.get("edits", []))
    meta: dict[str, Any] = {
        "merged_from": [{"id": s.id, "step": step, "method": s.meta.get("method")} for s, step in zip(sidecars, steps, strict=True)],
        "edits": edits,
    }
    if covers:
        meta["covers"] = sorted(covers)
        meta["exact"] = False
    return sorted(lineage), meta


def chosen_overlays(manifest: Manifest, chosen: tuple[str, ...], *, where: str, file: str = "params.yaml") -> list[int]:
    """Positions in ``manifest`` of the overlays produced by the ``chosen`` steps (all when empty)."""
    if not chosen:
        return list(range(len(manifest.overlays)))
    positions = []
    for step in chosen:
        hits = [i for i, s in enumerate(manifest.overlay_steps) if s == step]
        if not hits:
            raise ConfigError(
                f"the champion ({manifest.describe()}) has no overlay from step {step!r}", file=file, field=f"{where}.overlays"
            )
        positions.extend(hits)
    return sorted(set(positions))


def refuse_routed(manifest: Manifest, store: ComponentStore, positions: list[int], *, where: str, file: str = "params.yaml") -> None:
    """A merge may not take a routed overlay: folding experts together averages away what each slice taught."""
    routed = [manifest.overlay_steps[i] for i in positions if is_routed(store.sidecar(manifest.overlays[i]).meta)]
    if routed:
        raise ConfigError(
            f"the overlays of {', '.join(map(repr, routed))} are routed experts (layout: routed): a merge would fold them into"
            " one network and lose the routing; remove this merge step, or learn with layout: parallel",
            file=file,
            field=where,
        )
