"""The method registry: ``@register_method("learn", "lora", LoraLearnConfig)``; a tiny public API.

Built-in methods are named in :data:`BUILTIN_METHODS` and their module is imported the first time a
step asks for one: a step that quantizes never imports LoRA training, and ``ume audit`` imports no
method at all. A method registered from elsewhere (a plugin module the user imports) works the same.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from pipeline.core.config import parse_dataclass
from pipeline.core.errors import ConfigError
from pipeline.data import UmeData
from pipeline.model.components import ComponentDraft, ComponentStore
from pipeline.model.manifest import Manifest
from pipeline.records.deletion import DeletionRequest

if TYPE_CHECKING:
    import lightning as L

Operator = Callable[[nn.Module, UmeData, Any, "OperatorEnv"], "list[ComponentDraft] | Change"]


@dataclass
class OperatorEnv:
    """What an operator may use besides the model, the data and its config (all read-only)."""

    step: str
    seed: int
    make_trainer: Callable[..., L.Trainer]  # (max_epochs, max_steps=-1) -> a Trainer logging to the step's run
    champion_lineage: frozenset[str] = field(default_factory=frozenset)
    champion_manifest: Manifest | None = None
    components: ComponentStore | None = None
    request: DeletionRequest | None = None
    forget_ids: frozenset[str] = field(default_factory=frozenset)


@dataclass
class Change:
    """What an operator returns: new overlays on top of (a prefix of) the champion, or a new base.

    ``keep_overlays=None`` keeps every overlay of the champion; ``keep_overlays=k`` keeps the first
    ``k`` (an exact deletion retrains the rest); ``drop_overlays`` removes overlays by position (a
    merge replaces them by its draft); ``transform`` adds an export transform (a compress step);
    ``new_base`` replaces the base (a full retrain).
    A draft's ``meta["overlay_step"]`` labels its overlay (default: the current step).
    """

    drafts: list[ComponentDraft] = field(default_factory=list)
    keep_overlays: int | None = None
    drop_overlays: tuple[int, ...] = ()
    transform: ComponentDraft | None = None
    new_base: ComponentDraft | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def as_change(result: list[ComponentDraft] | Change) -> Change:
    """An operator's result as a :class:`Change` (an operator may return its drafts alone)."""
    return result if isinstance(result, Change) else Change(drafts=list(result))


@dataclass(frozen=True)
class Method:
    """A registered method: its step kind, name, config class and the function that does the work."""

    kind: str
    name: str
    config_cls: type
    fn: Operator

    @property
    def doc(self) -> str:
        """First line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""

    def parse_config(self, options: dict[str, Any], *, where: str, file: str) -> Any:
        """Validate a step's options against this method's config dataclass."""
        return parse_dataclass(self.config_cls, options, where=where, file=file)


_METHODS: dict[tuple[str, str], Method] = {}
# (kind, name) -> the module that registers it; imported on first use.
BUILTIN_METHODS: dict[tuple[str, str], str] = {
    ("learn", "lora"): "edits.learn.lora",
    ("edit", "lora"): "edits.edit.lora",
    ("forget", "exact"): "edits.forget.exact",
    ("forget", "retrain"): "edits.forget.retrain",
    ("retrain", "full"): "edits.forget.retrain",
    ("forget", "finetune"): "edits.forget.finetune",
    ("forget", "neggrad"): "edits.forget.neggrad",
    ("forget", "scrub"): "edits.forget.scrub",
    ("forget", "ssd"): "edits.forget.ssd",
    ("forget", "salun"): "edits.forget.salun",
    ("merge", "cat"): "edits.merge.weighted",
    ("merge", "linear"): "edits.merge.weighted",
    ("merge", "ties"): "edits.merge.weighted",
    ("merge", "dare_ties"): "edits.merge.weighted",
    ("merge", "fold"): "edits.merge.fold",
    ("compress", "prune"): "edits.compress.prune",
    ("compress", "quantize"): "edits.compress.quantize",
}
DEFAULT_METHOD: dict[str, str] = {"learn": "lora", "edit": "lora", "forget": "exact", "retrain": "full", "merge": "cat", "compress": "quantize"}


def register_method(kind: str, name: str, config_cls: type) -> Callable[[Operator], Operator]:
    """Decorator registering ``fn`` as method ``name`` of step kind ``kind``."""

    def wrap(fn: Operator) -> Operator:
        if (kind, name) in _METHODS:
            raise ValueError(f"method {kind}/{name} registered twice")
        _METHODS[(kind, name)] = Method(kind, name, config_cls, fn)
        return fn

    return wrap


def get_method(kind: str, name: str | None, *, file: str = "params.yaml", where: str = "method") -> Method:
    """The method, or a clear error listing the ones that exist."""
    name = name or DEFAULT_METHOD.get(kind)
    if name is not None and (kind, name) not in _METHODS and (kind, name) in BUILTIN_METHODS:
        importlib.import_module(BUILTIN_METHODS[(kind, name)])
    if name is None or (kind, name) not in _METHODS:
        known = ", ".join(n for k, n in sorted(set(_METHODS) | set(BUILTIN_METHODS)) if k == kind) or "none yet"
        raise ConfigError(f"unknown {kind} method {name!r} (available: {known})", file=file, field=where)
    return _METHODS[(kind, name)]


def list_methods(kind: str | None = None) -> list[Method]:
    """Registered methods, optionally of one kind (imports every built-in one of that kind)."""
    for (k, _), module in BUILTIN_METHODS.items():
        if kind in (None, k):
            importlib.import_module(module)
    return [m for (k, _), m in sorted(_METHODS.items()) if kind in (None, k)]
