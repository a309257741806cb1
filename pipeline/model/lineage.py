"""Lineage: which samples influenced a component or a version, recorded as hashed sample ids.

Sidecars never hold raw sample ids (a user's ids may be names); they hold
``sha256("ume-sample:" + id)[:24]``. A version's lineage is the union over its components.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pipeline.model.components import ComponentStore
from pipeline.model.manifest import Manifest

PNG_SAMPLE_KEY = "ume.sample_id"  # the PNG text chunk naming the (hashed) sample a report image shows, so erasure finds it


def hash_sample_id(sample_id: str) -> str:
    """The hashed form of a sample id, as stored in lineage and certificates."""
    return hashlib.sha256(f"ume-sample:{sample_id}".encode()).hexdigest()[:24]


def hash_sample_ids(sample_ids: Iterable[str]) -> list[str]:
    """Hashed, sorted, de-duplicated ids."""
    return sorted({hash_sample_id(s) for s in sample_ids})


def version_lineage(manifest: Manifest, store: ComponentStore) -> set[str]:
    """Union of the hashed lineage of every component of ``manifest``."""
    out: set[str] = set()
    for component_id in manifest.component_ids:
        out.update(store.sidecar(component_id).lineage)
    return out
