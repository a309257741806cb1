"""Version manifests: base + an ordered list of overlays + export transforms.

A manifest is plain data; its hash (SHA-256 of the canonical JSON) names the version everywhere:
in the ledger, in MLflow tags and in step records. Composing the same manifest always gives
bit-identical weights (see :mod:`pipeline.model.compose`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.canonical import canonical_json
from pipeline.core.errors import ComponentError


@dataclass(frozen=True)
class Manifest:
    """What a version is made of, in application order."""

    base: str
    overlays: tuple[str, ...] = ()
    transforms: tuple[str, ...] = ()
    overlay_steps: tuple[str, ...] = field(default=())
    transform_steps: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (tuples become lists; no ``transform_steps`` key when there are none)."""
        raw = asdict(self)
        if not self.transform_steps:
            raw.pop("transform_steps")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in raw.items()}

    @property
    def component_ids(self) -> tuple[str, ...]:
        """Every component of the version: the base, its overlays, its transforms."""
        return (self.base, *self.overlays, *self.transforms)

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON: the version's identity."""
        return hashlib.sha256(canonical_json(self.to_json()).encode()).hexdigest()

    def with_overlay(self, component_id: str, step: str) -> Manifest:
        """A new manifest with one more overlay on top, produced by ``step``."""
        return Manifest(
            base=self.base,
            overlays=(*self.overlays, component_id),
            transforms=self.transforms,
            overlay_steps=(*self.overlay_steps, step),
            transform_steps=self.transform_steps,
        )

    def with_transform(self, component_id: str, step: str) -> Manifest:
        """A new manifest with one more export transform (applied after every overlay)."""
        return Manifest(
            base=self.base,
            overlays=self.overlays,
            transforms=(*self.transforms, component_id),
            overlay_steps=self.overlay_steps,
            transform_steps=(*self.transform_steps, step),
        )

    def float_shadow(self) -> Manifest:
        """The same version without export transforms: what later steps train on."""
        return Manifest(base=self.base, overlays=self.overlays, overlay_steps=self.overlay_steps)

    def truncated(self, keep: int) -> Manifest:
        """The same base with only the first ``keep`` overlays."""
        return Manifest(base=self.base, overlays=self.overlays[:keep], transforms=(), overlay_steps=self.overlay_steps[:keep])

    def with_base(self, base: str) -> Manifest:
        """A new base with no overlays (after a full retrain)."""
        return Manifest(base=base)

    def without_step(self, step: str) -> Manifest:
        """A new manifest without the overlays and transforms that ``step`` produced."""
        kept = [(c, s) for c, s in zip(self.overlays, self.overlay_steps, strict=True) if s != step]
        kept_t = [(c, s) for c, s in zip(self.transforms, self.transform_steps, strict=True) if s != step]
        return Manifest(
            base=self.base,
            overlays=tuple(c for c, _ in kept),
            transforms=tuple(c for c, _ in kept_t),
            overlay_steps=tuple(s for _, s in kept),
            transform_steps=tuple(s for _, s in kept_t),
        )

    def without_positions(self, positions: tuple[int, ...]) -> Manifest:
        """A new manifest without the overlays at ``positions`` (a merge replaces them)."""
        drop = set(positions)
        kept = [(c, s) for i, (c, s) in enumerate(zip(self.overlays, self.overlay_steps, strict=True)) if i not in drop]
        return Manifest(
            base=self.base,
            overlays=tuple(c for c, _ in kept),
            transforms=self.transforms,
            overlay_steps=tuple(s for _, s in kept),
            transform_steps=self.transform_steps,
        )

    def describe(self) -> str:
        """``base + s1 + s2`` style one-liner."""
        return " + ".join(["base", *self.overlay_steps, *(f"[{t}]" for t in self.transform_steps)])

    @classmethod
    def from_json(cls, raw: Any, *, file: str = "manifest") -> Manifest:
        """Parse a manifest mapping, with a clear error when it is malformed."""
        if not isinstance(raw, dict) or "base" not in raw:
            raise ComponentError("a manifest needs at least a 'base'", file=file, field="base")
        overlays = tuple(raw.get("overlays", ()))
        steps = tuple(raw.get("overlay_steps", ()))
        if len(overlays) != len(steps):
            raise ComponentError("overlays and overlay_steps differ in length", file=file, field="overlay_steps")
        transforms = tuple(raw.get("transforms", ()))
        transform_steps = tuple(raw.get("transform_steps", ()))
        if len(transforms) != len(transform_steps):
            raise ComponentError("transforms and transform_steps differ in length", file=file, field="transform_steps")
        return cls(base=raw["base"], overlays=overlays, transforms=transforms, overlay_steps=steps, transform_steps=transform_steps)


class VersionStore:
    """Manifests by hash under ``root`` (``<hash>.json``), written atomically."""

    def __init__(self, root: str | Path, *, shared: str | Path | None = None) -> None:
        self.root = Path(root)
        # A DDP follower saves into its private ``root`` and reads through to the ``shared`` store.
        self.shared = Path(shared) if shared is not None else None

    def save(self, manifest: Manifest) -> str:
        """Store ``manifest``; returns its hash."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{manifest.hash}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
        os.replace(tmp, path)
        return manifest.hash

    def load(self, manifest_hash: str) -> Manifest:
        """The manifest with this hash; checks the content matches the name."""
        path = self.root / f"{manifest_hash}.json"
        if not path.exists() and self.shared is not None:
            path = self.shared / path.name
        if not path.exists():
            raise ComponentError("version manifest not found", file=str(path))
        try:
            manifest = Manifest.from_json(json.loads(path.read_text()), file=str(path))
        except json.JSONDecodeError as exc:
            raise ComponentError(f"not JSON ({exc.msg})", file=str(path)) from None
        if manifest.hash != manifest_hash:
            raise ComponentError("manifest content does not match its hash (modified)", file=str(path))
        return manifest
