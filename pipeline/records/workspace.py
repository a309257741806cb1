"""A project's state on disk and in MLflow, opened from ``params.yaml``.

``store/`` holds ``data/`` (the prepared sample table), ``components/`` (safetensors + sidecars),
``versions/`` (manifests by hash), ``steps/`` (one record per finished step: DVC's outputs),
``reports/`` (behaviour reports) and ``ledger.jsonl``. MLflow holds runs, versions and the alias.

In a multi-process (DDP) run only the primary rank writes. A follower's workspace (``primary=False``)
reads the shared store but writes components, manifests, step records, reports, history and its own
copy of the ledger into a private scratch directory, and its registry writes do nothing
(:mod:`pipeline.core.ranks`), so every rank can run the same code path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.core import ranks
from pipeline.core.config import Params, load_params
from pipeline.model.components import ComponentStore
from pipeline.model.manifest import Manifest, VersionStore
from pipeline.records.ledger import Ledger
from pipeline.records.registry import FollowerRegistry, Registry


@dataclass
class Workspace:
    """Paths and handles for one project."""

    params: Params
    primary: bool = field(default_factory=ranks.is_primary)
    scratch: Path | None = None  # a follower's private output directory (default: one per process)

    @classmethod
    def open(cls, params_path: str | Path = "params.yaml") -> Workspace:
        """Validate ``params.yaml`` and open the workspace it describes (as this process's rank sees it)."""
        return cls(load_params(params_path))

    def reload_params(self) -> None:
        """Read ``params.yaml`` again after ume appended a step to its stream (paths and registry stay)."""
        self.params = load_params(self.params.file)

    @cached_property
    def output_dir(self) -> Path:
        """Where this process writes: the store, or a follower's scratch directory."""
        if self.primary:
            return self.store_dir
        return Path(self.scratch) if self.scratch is not None else ranks.scratch_dir()

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
        return self.output_dir / "steps"

    @property
    def reports_dir(self) -> Path:
        """Behaviour reports per step."""
        return self.output_dir / "reports"

    @cached_property
    def components(self) -> ComponentStore:
        """Component files."""
        shared = None if self.primary else self.store_dir / "components"
        return ComponentStore(self.output_dir / "components", shared=shared)

    @cached_property
    def versions(self) -> VersionStore:
        """Manifests by hash."""
        shared = None if self.primary else self.store_dir / "versions"
        return VersionStore(self.output_dir / "versions", shared=shared)

    @cached_property
    def ledger(self) -> Ledger:
        """The audit log; a follower's is a private copy of it as rank 0 first saw it."""
        shared = Ledger(self.store_dir / "ledger.jsonl")
        if self.primary:
            ranks.publish_ledger_start(shared.path, len(shared))
            return shared
        return shared.copy_to(self.output_dir / "ledger.jsonl", ranks.ledger_start(shared.path))

    @cached_property
    def registry(self) -> Registry:
        """MLflow (opened lazily: importing mlflow costs a second); a follower's writes do nothing."""
        return Registry(self.params.registry) if self.primary else FollowerRegistry(self.params.registry)

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
            from pipeline.core.errors import RegistryError

            raise RegistryError(f"version {version} has no ume.manifest_hash tag (not made by ume?)", field="version")
        return self.versions.load(info.manifest_hash)
