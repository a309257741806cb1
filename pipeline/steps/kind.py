"""One kind of step = one :class:`StepKind`: only what differs from the common lifecycle.

The lifecycle (``pipeline.steps.lifecycle``) runs the same phases for every stage and calls one
hook per phase, as Lightning calls a ``Callback`` (each hook has a default that does nothing
special). The kinds register themselves by name, as timm's models do::

    @register_kind("learn", "edit")
    class UpdateKind(StepKind): ...

    step_kind("learn")  # -> UpdateKind()

The built-in kinds (``pipeline.steps.kinds``) are imported by ``pipeline/steps/__init__.py``, which
runs before any module of this package, so they are always registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.core.config import Params, StepConfig
from pipeline.core.errors import ConfigError
from pipeline.records import gate
from pipeline.steps.context import Candidate, StepContext, StepOutcome

if TYPE_CHECKING:
    from behaviors.suite import BehaviorResult
    from pipeline.data import UmeData
    from pipeline.records.ledger import Entry

_KINDS: dict[str, StepKind] = {}


class StepKind:
    """The hooks of one step kind; the lifecycle calls them in this order."""

    needs_champion: ClassVar[bool] = True  # the base is the one stage that starts from nothing

    def validate(self, params: Params, step: StepConfig) -> None:
        """Check the step's options against ``params`` alone, before any workspace is opened."""

    def resume_allowed(self, ctx: StepContext, decisions: Sequence[Entry]) -> bool:
        """Whether a step whose decision is in the ledger (its record lost in a crash) is finished, not redone."""
        return True

    def plan(self, ctx: StepContext) -> None:
        """Resolve what the step will do and refuse bad input, before anything is written."""

    def started(self, ctx: StepContext) -> dict[str, Any]:
        """The data of the step's ``step_started`` ledger entry."""
        step = ctx.step
        assert step is not None
        return {"kind": step.kind, "method": ctx.method_name, "params_hash": step.params_hash(), "champion": ctx.champion_version}

    def begin(self, ctx: StepContext) -> None:
        """Write-ahead records right after ``step_started`` (a forget step records its request)."""

    def run_params(self, ctx: StepContext) -> dict[str, Any]:
        """The params of the stage's MLflow run."""
        step = ctx.step
        assert step is not None
        return {"kind": step.kind, "method": ctx.method_name, "parent": step.parent, **step.options}

    def open_data(self, ctx: StepContext) -> UmeData:
        """The data module, with the ledger's deleted set applied."""
        from pipeline.data import open_data

        return open_data(ctx.ws.data_dir, ctx.ws.ledger, num_workers=ctx.params.train.num_workers, seed=ctx.params.seed)

    def operate(self, ctx: StepContext) -> Candidate:
        """Build the candidate: store its new components and compose its manifest."""
        raise NotImplementedError

    def decide(self, ctx: StepContext, candidate: Candidate, decision: gate.Decision, results: list[BehaviorResult]) -> tuple[gate.Decision, str]:
        """The decision the gate applies, and its mode (``gate``; a rollback's is ``rollback``)."""
        return decision, "gate"

    def after_gate(self, ctx: StepContext, outcome: StepOutcome) -> StepOutcome:
        """Act on the gate's decision (a blocked approximate forget falls back to the exact path)."""
        return outcome

    def promoted(self, ctx: StepContext, outcome: StepOutcome) -> None:
        """Bookkeeping once the candidate is champion (a forget step resolves its request)."""


def register_kind(*names: str) -> Callable[[type[StepKind]], type[StepKind]]:
    """Class decorator: make ``names`` (``StepConfig.kind`` values) run with this kind."""

    def wrap(cls: type[StepKind]) -> type[StepKind]:
        for name in names:
            _KINDS[name] = cls()
        return cls

    return wrap


def step_kind(name: str, *, file: str = "params.yaml", where: str = "kind") -> StepKind:
    """The registered kind called ``name``."""
    if name not in _KINDS:
        raise ConfigError(f"unknown step kind {name!r} (known: {', '.join(sorted(_KINDS))})", file=file, field=where)
    return _KINDS[name]
