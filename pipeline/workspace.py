"""A project's state on disk and in MLflow, opened from ``params.yaml``.

``store/`` holds ``data/`` (the prepared sample table), ``components/`` (safetensors + sidecars),
``versions/`` (manifests by hash), ``steps/`` (one record per finished step: DVC's outputs),
``reports/`` (behaviour reports) and ``ledger.jsonl``. MLflow holds runs, versions and the alias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.components import ComponentStore
from pipeline.config import Params, load_params
from pipeline.ledger import Ledger
from pipeline.manifest import Manifest, VersionStore
from pipeline.registry import Registry


@dataclass
class Workspace:
    """Paths and handles for one project."""

    params: Params

    @classmethod
    def open(cls, params_path: str | Path = "params.yaml") -> Workspace:
        """Validate ``params.yaml`` and open the workspace it describes."""
        return cls(load_params(params_path))

    @property
    def store_dir(self) -> Path:
        """Root of ume's local state."""
        return self.params.store

    @property
    def data_dir(self) -> Path:
        """The prepared sample table."""
        return self.store_dir / "data"

    @property
    def steps_dir(self) -> Path:
        """Step records (DVC outputs)."""
        return self.store_dir / "steps"

    @property
    def reports_dir(self) -> Path:
        """Behaviour reports per step."""
        return self.store_dir / "reports"

    @cached_property
    def components(self) -> ComponentStore:
        """Component files."""
        return ComponentStore(self.store_dir / "components")

    @cached_property
    def versions(self) -> VersionStore:
        """Manifests by hash."""
        return VersionStore(self.store_dir / "versions")

    @cached_property
    def ledger(self) -> Ledger:
        """The audit log."""
        return Ledger(self.store_dir / "ledger.jsonl")

    @cached_property
    def registry(self) -> Registry:
        """MLflow (opened lazily: importing mlflow costs a second)."""
        return Registry(self.params.registry)

    def step_record_path(self, key: str) -> Path:
        """Where step ``key``'s record goes."""
        return self.steps_dir / f"{key}.json"

    def step_record(self, key: str) -> dict[str, Any] | None:
        """The record of a finished step, or None."""
        path = self.step_record_path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def manifest_of(self, version: int) -> Manifest:
        """The manifest of a registered version (via its ``ume.manifest_hash`` tag)."""
        info = self.registry.version(version)
        if not info.manifest_hash:
            from pipeline.errors import RegistryError

            raise RegistryError(f"version {version} has no ume.manifest_hash tag (not made by ume?)", field="version")
        return self.versions.load(info.manifest_hash)
