"""What ``ume audit`` proved by composing the champion, kept so that the next audit need not load torch to prove it again.

The audit checks that the served version composes (its tensors fit the network, its overlays and transforms
apply): that needs torch and the model code, seconds of imports on a small machine. What it proves depends
on three things only: the component weights, their sidecars (architecture, LoRA settings, layout: how the
weights are put together) and the code that composes them. Components are content-addressed and every
audit checks each one's weights against its id (:meth:`pipeline.model.components.ComponentStore.verify`);
a sidecar is named by the SHA-256 of its canonical JSON (which holds the weights' SHA-256); the code and the
installed packages by :func:`pipeline.core.warm.fingerprint`. A record ``store/cache/<manifest hash>/composed.json``
holds the sidecar digests and that fingerprint: while all are the same, the champion composes as it did, and
the audit says it took the result from the record. Any change (an upgrade of ume or torch, a new
champion) composes again; ``ume audit --compose`` always does. A derived file like the rest of
``store/cache``: safe to delete, and an unreadable record is no record.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.canonical import canonical_json
from pipeline.model.components import Component

RECORD = "composed.json"


@dataclass(frozen=True)
class ComposedRecord:
    """One champion that composed: its manifest hash, each component's sidecar digest, the code's fingerprint and when."""

    manifest_hash: str
    components: dict[str, str]  # component id -> sidecar_digest
    code: str
    composed_at: str

    def holds_for(self, manifest_hash: str, components: dict[str, str], code: str) -> bool:
        """Whether this record proves that ``manifest_hash`` made of ``components`` composes under ``code``."""
        return self.manifest_hash == manifest_hash and self.components == components and self.code == code


def sidecar_digest(component: Component) -> str:
    """SHA-256 of a sidecar's canonical JSON: its weights' SHA-256 and everything that says how they compose."""
    return hashlib.sha256(canonical_json(component.to_json()).encode()).hexdigest()


def record_path(cache_dir: Path, manifest_hash: str) -> Path:
    """Where the record of ``manifest_hash`` lies."""
    return cache_dir / manifest_hash / RECORD


def read_record(cache_dir: Path, manifest_hash: str) -> ComposedRecord | None:
    """The record of ``manifest_hash``, or None (none written, or unreadable)."""
    try:
        raw = json.loads(record_path(cache_dir, manifest_hash).read_text(encoding="utf-8"))
        return ComposedRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None


def write_record(cache_dir: Path, record: ComposedRecord) -> bool:
    """Write ``record`` atomically; False where the store cannot be written (an auditor's read-only copy)."""
    path = record_path(cache_dir, record.manifest_hash)
    temporary = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(asdict(record), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        return False
    return True
