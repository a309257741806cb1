"""What one stage knows while it runs: :class:`StepContext`, the :class:`Candidate` it builds, its outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.config import BASE_STEP, Params, StepConfig
from pipeline.core.errors import UmeError
from pipeline.model.manifest import Manifest
from pipeline.records import gate
from pipeline.records.workspace import Workspace

if TYPE_CHECKING:
    import lightning as L

    from behaviors.suite import BehaviorResult
    from pipeline.data import UmeData


@dataclass
class Candidate:
    """The manifest a step proposes, what it noted, and the registered version it reuses (a rollback)."""

    manifest: Manifest
    notes: dict[str, Any] = field(default_factory=dict)
    existing_version: int | None = None


@dataclass
class StepOutcome:
    """What a stage produced: its record (the DVC output) and the behaviour results."""

    record: dict[str, Any]
    results: list[BehaviorResult]


@dataclass
class StepContext:
    """One stage's state, filled phase by phase by the lifecycle (``pipeline.steps.lifecycle``)."""

    ws: Workspace
    key: str
    kind: str
    step: StepConfig | None
    started: float = field(default_factory=time.time)
    champion_version: int | None = None
    champion_manifest: Manifest | None = None
    method_name: str | None = None
    run_id: str = ""
    data: UmeData | None = None
    plan: Any = None  # what the kind resolved before any write (a forget step: its request and method)

    @property
    def params(self) -> Params:
        """The validated ``params.yaml``."""
        return self.ws.params

    @property
    def where(self) -> str:
        """The dotted field of this step in ``params.yaml``, for error messages."""
        return f"stream.{self.key}"

    def make_trainer(self) -> Callable[..., L.Trainer]:
        """A Trainer factory that logs to this stage's MLflow run (a DDP follower logs nothing)."""
        ws, run_id = self.ws, self.run_id

        def make(max_epochs: int, max_steps: int = -1) -> L.Trainer:
            from lightning.pytorch.loggers import MLFlowLogger

            from pipeline.model.training import make_trainer

            if not ws.primary:  # a DDP follower's run id is a placeholder
                return make_trainer(ws.params.train, max_epochs=max_epochs, max_steps=max_steps)
            logger = MLFlowLogger(
                experiment_name=ws.params.registry.experiment,
                tracking_uri=ws.params.registry.tracking_uri,
                run_id=run_id,
                log_model=False,
            )
            return make_trainer(ws.params.train, max_epochs=max_epochs, logger=logger, max_steps=max_steps)

        return make


def current_champion(ws: Workspace) -> tuple[int, Manifest]:
    """The champion's version and manifest, or an error saying why there is none and what to run.

    The ledger's champion (the target of its last alias move), so that an alias a person moves while a
    stage runs, or that a DDP follower reads before rank 0 synced it, never changes what a stage builds
    on; without one (no decision yet), the alias.
    """
    version = gate.ledger_champion(ws.ledger)
    if version is None:
        version = ws.registry.champion()
    if version is None:
        raise UmeError(no_champion_reason(ws), field="champion")
    return version, ws.manifest_of(version)


def no_champion_reason(ws: Workspace) -> str:
    """Why there is no champion, and the command that gets past it."""
    record = ws.step_record(BASE_STEP)
    if record is None:
        return "no champion yet: the base stage has not run (run `dvc repro`)"
    if record["decision"] == gate.BLOCKED:
        report = ws.reports_dir / BASE_STEP / "report.md"
        return (
            f"no champion: the base (v{record['version']}) was blocked by {', '.join(record['failing']) or 'the gate'} "
            f"(report: {report}). Fix the data, model or behaviors.thresholds in {ws.params.file}, then rerun the base: "
            "`dvc repro --force --single-item base` and `dvc repro` (thresholds are not a dependency of the base stage, "
            "so that changing one does not retrain a whole stream)"
        )
    return f"no champion: the registry has no `champion` alias although the base was {record['decision']} (run `ume audit`)"
