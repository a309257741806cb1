"""Components: the clean base checkpoint or one overlay, each a safetensors file plus a JSON sidecar.

The sidecar records ``kind`` (``base``, ``lora``...), ``parent`` (the manifest hash of the version it
was trained on, ``None`` for the base), ``sha256`` (of the safetensors file), ``lineage`` (hashed ids
of the samples that influenced it) and ``meta`` (method settings, architecture). Components are
content-addressed: the id is ``<kind>-<first 16 hex of sha256>``, so the same weights always get the
same id and a file never changes under its name. Loading verifies the hash; weights are only ever
read with safetensors (never pickle).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from pipeline.core.errors import ComponentError
from pipeline.core.faults import crash_point

if TYPE_CHECKING:  # torch is imported where tensors are read or written: light commands (status) never load it
    import torch

COMPONENT_KINDS = ("base", "lora", "delta", "mask", "transform")


@dataclass(frozen=True)
class Component:
    """The sidecar of one component."""

    id: str
    kind: str
    parent: str | None
    sha256: str
    lineage: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The sidecar as a JSON-ready mapping."""
        return asdict(self)


@dataclass(frozen=True)
class ComponentDraft:
    """What an operator returns: tensors and sidecar fields, not yet stored."""

    kind: str
    tensors: dict[str, torch.Tensor]
    lineage: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename; a full disk removes the temporary and says so."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise ComponentError(
                f"no space left to store {len(data):,} bytes ({os.strerror(exc.errno)}); nothing of this component was stored:"
                f" free space under {path.parent} and rerun the stage",
                file=str(path),
            ) from None
        raise
    crash_point("component.tmp_written")
    os.replace(tmp, path)


def _not_safetensors(head: bytes, exc: Exception) -> str:
    """The error for a file safetensors cannot read; a pickle or torch.save zip is named as such.

    Only after safetensors refused it: a valid file's 8-byte header length may start with any byte
    (a first byte of 0x80 is a legal length, not a pickle).
    """
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return f"not a valid safetensors file: it looks like a pickle (or torch.save zip); ume never unpickles weights ({exc})"
    return f"not a valid safetensors file ({exc})"


class ComponentStore:
    """Content-addressed component files under ``root`` (``<id>.safetensors`` + ``<id>.json``)."""

    def __init__(self, root: str | Path, *, shared: str | Path | None = None) -> None:
        self.root = Path(root)
        # A DDP follower saves into its private ``root`` and reads through to the ``shared`` store.
        self.shared = Path(shared) if shared is not None else None

    def _dir_of(self, component_id: str) -> Path:
        """Where ``component_id`` lives: ``root``, else the shared store read through (followers)."""
        if self.shared is None or (self.root / f"{component_id}.json").exists():
            return self.root
        return self.shared

    def weights_path(self, component_id: str) -> Path:
        """Path of the safetensors file of ``component_id``."""
        return self._dir_of(component_id) / f"{component_id}.safetensors"

    def sidecar_path(self, component_id: str) -> Path:
        """Path of the JSON sidecar of ``component_id``."""
        return self._dir_of(component_id) / f"{component_id}.json"

    def save(self, draft: ComponentDraft, *, parent: str | None) -> Component:
        """Store a draft; idempotent (same tensors and sidecar give the same id and files)."""
        import torch
        from safetensors.torch import save

        if draft.kind not in COMPONENT_KINDS:
            raise ComponentError(f"unknown component kind {draft.kind!r}", field="kind")
        tensors = {k: v.detach().contiguous().cpu() for k, v in sorted(draft.tensors.items())}
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ComponentError(f"tensor {name!r} has NaN or infinite values; refusing to store it", field=name)
        blob = save(tensors, metadata={"kind": draft.kind})
        sha = hashlib.sha256(blob).hexdigest()
        component = Component(
            id=f"{draft.kind}-{sha[:16]}",
            kind=draft.kind,
            parent=parent,
            sha256=sha,
            lineage=sorted(set(draft.lineage)),
            meta=draft.meta,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        weights = self.root / f"{component.id}.safetensors"
        existed = weights.exists()
        _atomic_write(weights, blob)  # the sidecar last: it marks the component present
        try:
            _atomic_write(self.root / f"{component.id}.json", json.dumps(component.to_json(), indent=1, sort_keys=True).encode())
        except ComponentError:
            if not existed:  # no weights without their sidecar (another save of the same component keeps its file)
                weights.unlink(missing_ok=True)
            raise
        return component

    def sidecar(self, component_id: str) -> Component:
        """Read and check one sidecar."""
        path = self.sidecar_path(component_id)
        if not path.exists():
            raise ComponentError("component sidecar not found", file=str(path))
        try:
            raw = json.loads(path.read_text())
            component = Component(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ComponentError(f"malformed sidecar ({exc})", file=str(path)) from None
        if component.id != component_id:
            raise ComponentError(f"sidecar id {component.id!r} does not match its file name", file=str(path), field="id")
        return component

    def _checked_bytes(self, component: Component) -> bytes:
        path = self.weights_path(component.id)
        if not path.exists():
            raise ComponentError("component weights not found", file=str(path))
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != component.sha256:
            raise ComponentError("weights do not match the sha256 in their sidecar (corrupt or replaced)", file=str(path))
        return blob

    def load(self, component_id: str) -> tuple[dict[str, torch.Tensor], Component]:
        """Tensors and sidecar of ``component_id``, after checking the file's SHA-256 (safetensors only, never pickle)."""
        from safetensors.torch import load

        component = self.sidecar(component_id)
        blob = self._checked_bytes(component)
        try:
            tensors = load(blob)  # the bytes that were hashed, not a second read of the file
        except SafetensorError as exc:
            raise ComponentError(_not_safetensors(blob, exc), file=str(self.weights_path(component_id))) from None
        self._check_address(component)
        return tensors, component

    def verify(self, component_id: str) -> Component:
        """Check the sidecar, the file's SHA-256 and its safetensors header without loading tensors."""
        component = self.sidecar(component_id)
        self._checked_bytes(component)
        path = self.weights_path(component_id)
        try:
            with safe_open(str(path), framework="numpy") as handle:  # the header only: no torch for a check that reads no tensor
                handle.keys()
        except SafetensorError as exc:
            raise ComponentError(_not_safetensors(path.read_bytes()[:8], exc), file=str(path)) from None
        self._check_address(component)
        return component

    def _check_address(self, component: Component) -> None:
        """The sidecar's SHA-256 is the one the id was made from (``<kind>-<first 16 hex>``): weights and sidecar were not both replaced.

        With this, a component that verifies holds the very bytes it was stored with (a second preimage of 64 bits
        aside), so whatever was proven of it when it was made (it composed, its gate evaluated it) still holds.
        """
        if component.id != f"{component.kind}-{component.sha256[:16]}":
            raise ComponentError(
                f"the weights match the sha256 in their sidecar, but the id {component.id!r} was made from another"
                f" (content address {component.kind}-{component.sha256[:16]}): weights and sidecar were both replaced",
                file=str(self.sidecar_path(component.id)),
                field="sha256",
            )

    def exists(self, component_id: str) -> bool:
        """Whether both files of ``component_id`` are present."""
        return self.weights_path(component_id).exists() and self.sidecar_path(component_id).exists()
