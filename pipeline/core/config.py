"""``params.yaml``: the single place a user configures a run, parsed into typed dataclasses.

Every field is checked: unknown keys, wrong types, unknown parents and bad values raise one
:class:`~pipeline.core.errors.ConfigError` naming the file and the dotted field. Nothing is written
before the whole file has been validated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core.errors import ConfigError

T = TypeVar("T")

STEP_KINDS = ("learn", "edit", "forget", "compress", "merge", "retrain", "rollback")
STEP_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
BASE_STEP = "base"


@dataclass(frozen=True)
class PathsConfig:
    """Where ume keeps its state, relative to the project root."""

    store: str = "store"


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow tracking + model registry. Any tracking URI works; sqlite is the default."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "ume"
    model_name: str = "ume-classifier"


@dataclass(frozen=True)
class DataConfig:
    """The sample table: the embedded digits default, or an image folder plus a manifest CSV."""

    source: str = "digits"
    folder: str | None = None
    manifest: str | None = None
    image_size: int = 16
    channels: int = 1
    test_fraction: float = 0.2
    canary_fraction: float = 0.1
    base_fraction: float = 0.55
    licensed_base: bool = True  # digits: the base slice stands for licensed data, with no data subjects
    update_slices: int = 3
    owner_size_min: int = 15
    owner_size_max: int = 25
    minority_fraction: float = 0.1
    field_fraction: float = 0.0
    field_rotation: float = 30.0
    vulnerable_owners: int = 0
    corrupt_labels: dict[str, float] = field(default_factory=dict)
    looks: dict[str, str] = field(default_factory=dict)  # digits: update slice -> a look the base never sees (DATA_LOOKS)


DATA_LOOKS = ("inverted", "rotated", "mirrored")  # pipeline/data/digits.py: LOOKS renders each


@dataclass(frozen=True)
class ModelConfig:
    """Any timm architecture, always created with ``pretrained=False``.

    ``checkpoint`` is a backbone the team already has (a safetensors state dict of ``arch``,
    relative to the project): the clean base is then a fine-tune of it. Its sha256 is recorded in
    the ledger and the base's sidecar; ``checkpoint_sha256`` pins it (a changed file is refused).
    """

    arch: str = "test_resnet"
    num_classes: int = 10
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None


@dataclass(frozen=True)
class BaseTrainConfig:
    """Training of the clean base checkpoint."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.003
    weight_decay: float = 0.0001
    augment_shift: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """Lightning Trainer settings shared by every training loop (scale out here)."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1  # machines in a multi-node DDP run (each starts `ume` with its NODE_RANK; docs/scaling-out.md)
    global_batch: bool = True  # batch sizes are global: split among the DDP processes (same optimizer steps as one)
    precision: str = "32-true"
    num_workers: int = 0
    progress_bar: bool = True
    base: BaseTrainConfig = field(default_factory=BaseTrainConfig)


@dataclass(frozen=True)
class LedgerConfig:
    """``ledger``: the operator's key (``ume keygen``: EC P-256), off by default.

    ``signing_key`` is the path of the private key (PEM; the environment variable ``UME_SIGNING_KEY``
    overrides it, so the key can stay out of the repository); every anchor, every promoted version's
    served files (OpenSSF model signing) and every certificate's in-toto attestation is then signed.
    ``public_key`` is the path of the matching public key (the current key first, then any retired
    ones): ``ume audit`` verifies every signature with it. Both relative to ``params.yaml``.
    """

    signing_key: str | None = None
    public_key: str | None = None


@dataclass(frozen=True)
class DeletionConfig:
    """``deletion``: how long a request may be served only approximately (deletion debt).

    A request whose samples some served component still carries (an approximate method covered
    them) is *in debt*. Its deadline is ``received + max_debt_days``; the stream also pays when the
    served champion's debt exceeds ``max_debt_samples`` samples in all. When a limit is reached,
    ume appends the exact step (``pay-<request>``) to the stream; `ume status --check` fails
    once a deadline has passed.
    """

    max_debt_days: float = 30.0
    max_debt_samples: int = 100
    max_erasure_days: float = 30.0  # an exact request's data is erased by received + this (docs/deletion.md, "Erasure")


@dataclass(frozen=True)
class ReferenceConfig:
    """``behaviors.references``: the reference bank of the per-sample membership test.

    A gate trains reference overlays up to ``min_shadows`` when fewer remain; ``ume references``
    (ahead of a deletion) trains them up to ``shadows``, in complementary pairs (see
    :mod:`behaviors.references`). Each follows the recorded recipe of the version's first
    ``learn`` overlay, and ``epochs``, ``rank``... here only when it has none. A
    sample is scored when at least ``min_references`` shadows never trained on it; its member
    threshold is set for ``false_positive_rate`` on samples the model never saw. Every model is
    queried on each image and its shifts by ``query_shift`` pixels (0: the image alone). ``score``
    is the per-sample statistic: ``lira`` (offline LiRA) or ``rmia`` (offline RMIA, with its
    ``offline_a`` and ``gamma``); see :mod:`behaviors.membership`.
    """

    # Two shadows scored with offline RMIA (a = 1): chosen by the reference sweep of `ume bench forget-evidence`
    # (docs/forget-evidence.md), where they caught more memorised owners than LiRA with about eight references.
    # Kept as four, two complementary pairs (behaviors/references.py): a deletion purges one of each pair and
    # its gate scores with the two left, training nothing; `ume references --ahead` (seal) trains the halves back.
    shadows: int = 4
    min_shadows: int = 2
    epochs: int = 12
    rank: int = 8
    alpha: float = 16.0
    lr: float = 0.003
    batch_size: int = 32
    replay: float = 1.0
    augment_shift: int = 1
    query_shift: int = 1
    false_positive_rate: float = 0.05
    min_references: int = 2
    score: str = "rmia"
    offline_a: float = 1.0
    gamma: float = 1.0


@dataclass(frozen=True)
class BehaviorsConfig:
    """The behaviour suite: where the specs live, the thresholds they read, the reference bank.

    Three caps keep the gate near one forward pass over its evaluation sets (docs/behaviour-specs.md,
    "Cost"): the hypothesis properties perturb and forward a seeded subsample of at most
    ``max_property_samples`` canary samples per drawn example; a check that queries a set through
    many models or views (the membership tests) or fits a classifier on it (the population attacks)
    looks at a seeded subsample of at most ``max_check_samples``; the reference bank's shadows train
    on whole data subjects of at most ``max_reference_pool`` samples.
    """

    path: str = "behaviors"
    thresholds: dict[str, float] = field(default_factory=dict)
    references: ReferenceConfig = field(default_factory=ReferenceConfig)
    max_check_samples: int = 512
    max_reference_pool: int = 4096
    max_property_samples: int = 128


@dataclass(frozen=True)
class StepConfig:
    """One entry of the stream. ``options`` holds the method's own fields, checked by the method."""

    key: str
    kind: str
    parent: str
    method: str | None
    options: dict[str, Any]

    def params_hash(self) -> str:
        """A stable hash of this step's parameters (used to recognise a rerun of the same step)."""
        payload = {"kind": self.kind, "parent": self.parent, "method": self.method, **self.options}
        spec = self.options.get("spec")
        if isinstance(spec, str) and Path(spec).is_file():  # an edited spec file is a new step
            payload["spec_sha256"] = hashlib.sha256(Path(spec).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``."""

    file: str
    seed: int
    paths: PathsConfig
    registry: RegistryConfig
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    behaviors: BehaviorsConfig
    stream: dict[str, StepConfig]
    deletion: DeletionConfig = DeletionConfig()
    ledger: LedgerConfig = LedgerConfig()

    @property
    def store(self) -> Path:
        """The state directory (components, ledger, step records, prepared data)."""
        return Path(self.paths.store)

    @property
    def checkpoint_path(self) -> Path | None:
        """``model.checkpoint``, relative to the directory of ``params.yaml``.

        The rule: a relative path must stay inside the project (the directory of ``params.yaml``) once
        ``..`` and symlinks are resolved; a file elsewhere is named by an absolute path, on purpose.
        """
        if self.model.checkpoint is None:
            return None
        given = Path(self.model.checkpoint)
        if given.is_absolute():
            return given
        project = Path(self.file).parent
        path = project / given
        if not path.resolve().is_relative_to(project.resolve()):
            raise ConfigError(
                f"relative path leads outside the project: {given} -> {path.resolve()} (give a file elsewhere by its absolute path)",
                file=self.file,
                field="model.checkpoint",
            )
        return path

    @property
    def signing_key_path(self) -> Path | None:
        """The private key that signs anchors: ``UME_SIGNING_KEY``, else ``ledger.signing_key`` (relative to params.yaml)."""
        import os

        from pipeline.core.signing import SIGNING_KEY_ENV

        path = os.environ.get(SIGNING_KEY_ENV) or self.ledger.signing_key
        return None if not path else Path(self.file).parent / path

    @property
    def public_key_path(self) -> Path | None:
        """``ledger.public_key``, relative to the directory of ``params.yaml``."""
        return None if not self.ledger.public_key else Path(self.file).parent / self.ledger.public_key

    @property
    def requests_dir(self) -> Path:
        """``requests/`` beside ``params.yaml``: deletion requests as received."""
        return Path(self.file).parent / "requests"

    def step(self, key: str) -> StepConfig:
        """The stream step ``key``; a clear error when there is none."""
        if key not in self.stream:
            known = ", ".join(self.stream) or "(empty stream)"
            raise ConfigError(f"no such step; the stream has: {known}", file=self.file, field=f"stream.{key}")
        return self.stream[key]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _check_value(value: Any, tp: Any, where: str, file: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float only)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, where, file)
            except ConfigError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise ConfigError(f"expected {names}, got {type(value).__name__} {value!r}", file=file, field=where)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"expected null, got {value!r}", file=file, field=where)
        return None
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", file=file, field=where)
        return {_check_value(k, key_tp, f"{where}.{k}", file): _check_value(v, val_tp, f"{where}.{k}", file) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(args) != 2 or args[1] is not Ellipsis:
            raise ConfigError(f"expected a list, got {type(value).__name__}", file=file, field=where)
        return tuple(_check_value(v, args[0], f"{where}[{i}]", file) for i, v in enumerate(value))
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {type(value).__name__}", file=file, field=where)
        return [_check_value(v, item_tp, f"{where}[{i}]", file) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, where=where, file=file)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", file=file, field=where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {type(value).__name__} {value!r}", file=file, field=where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {type(value).__name__} {value!r}", file=file, field=where)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"expected a finite number, got {value!r}", file=file, field=where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {type(value).__name__} {value!r}", file=file, field=where)
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def parse_dataclass(cls: type[T], data: Any, *, where: str, file: str) -> T:
    """Build dataclass ``cls`` from a YAML mapping, rejecting unknown keys and wrong types.

    ``where`` is the dotted path of ``data`` inside the file, used in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", file=file, field=where or "(top level)")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key (allowed: {allowed})", file=file, field=f"{prefix}{key}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_value(data[name], hints[name], f"{prefix}{name}", file)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("required field is missing", file=file, field=f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a dataclass's own check (``__post_init__``) names its field only: say where it is
        if exc.file is not None:
            raise
        raise ConfigError(exc.message, file=file, field=f"{prefix}{exc.field}" if exc.field else where or None) from None


def _check_fraction(value: float, where: str, file: str, *, upper: float = 1.0) -> None:
    if not 0.0 <= value <= upper:
        raise ConfigError(f"expected a fraction in [0, {upper}], got {value}", file=file, field=where)


def _validate_data(data: DataConfig, file: str) -> None:
    if data.source not in ("digits", "folder"):
        raise ConfigError(f"expected 'digits' or 'folder', got {data.source!r}", file=file, field="data.source")
    if data.source == "folder":
        for name in ("folder", "manifest"):
            if not getattr(data, name):
                raise ConfigError("required when data.source is 'folder'", file=file, field=f"data.{name}")
    if data.image_size < 8 or data.image_size > 512:
        raise ConfigError(f"expected 8..512, got {data.image_size}", file=file, field="data.image_size")
    if data.channels not in (1, 3):
        raise ConfigError(f"expected 1 or 3, got {data.channels}", file=file, field="data.channels")
    _check_fraction(data.test_fraction, "data.test_fraction", file, upper=0.5)
    _check_fraction(data.canary_fraction, "data.canary_fraction", file, upper=0.5)
    _check_fraction(data.base_fraction, "data.base_fraction", file)
    _check_fraction(data.minority_fraction, "data.minority_fraction", file, upper=0.5)
    _check_fraction(data.field_fraction, "data.field_fraction", file, upper=0.5)
    if not -180.0 <= data.field_rotation <= 180.0:
        raise ConfigError(f"expected degrees in -180..180, got {data.field_rotation}", file=file, field="data.field_rotation")
    if data.vulnerable_owners < 0 or data.vulnerable_owners > 5:
        raise ConfigError(f"expected 0..5 per update slice, got {data.vulnerable_owners}", file=file, field="data.vulnerable_owners")
    if data.update_slices < 0 or data.update_slices > 50:
        raise ConfigError(f"expected 0..50, got {data.update_slices}", file=file, field="data.update_slices")
    if not 1 <= data.owner_size_min <= data.owner_size_max:
        raise ConfigError(
            f"expected 1 <= owner_size_min <= owner_size_max, got {data.owner_size_min}..{data.owner_size_max}",
            file=file,
            field="data.owner_size_min",
        )
    for slice_name, share in data.corrupt_labels.items():
        _check_fraction(share, f"data.corrupt_labels.{slice_name}", file)
    updates = {f"u{k + 1}" for k in range(data.update_slices)}
    for slice_name, look in data.looks.items():
        if slice_name not in updates:
            known = ", ".join(sorted(updates)) or "none configured"
            raise ConfigError(f"expected an update slice ({known}), got {slice_name!r}", file=file, field=f"data.looks.{slice_name}")
        if look not in DATA_LOOKS:
            raise ConfigError(f"expected one of {', '.join(DATA_LOOKS)}, got {look!r}", file=file, field=f"data.looks.{slice_name}")


MEMBERSHIP_SCORES = ("lira", "rmia")  # behaviors.membership.score_samples


def _validate_references(refs: ReferenceConfig, file: str) -> None:
    where = "behaviors.references"
    for name in ("shadows", "min_shadows", "epochs", "rank", "batch_size", "min_references"):
        if getattr(refs, name) < 1:
            raise ConfigError("expected a positive integer", file=file, field=f"{where}.{name}")
    if refs.min_shadows > refs.shadows:
        raise ConfigError(f"expected at most shadows ({refs.shadows}), got {refs.min_shadows}", file=file, field=f"{where}.min_shadows")
    if refs.min_references > refs.min_shadows:
        raise ConfigError(f"expected at most min_shadows ({refs.min_shadows}), got {refs.min_references}", file=file, field=f"{where}.min_references")
    if not 0 < refs.false_positive_rate < 0.5:
        raise ConfigError(f"expected a rate in (0, 0.5), got {refs.false_positive_rate}", file=file, field=f"{where}.false_positive_rate")
    if refs.lr <= 0 or refs.alpha <= 0 or refs.replay < 0:
        raise ConfigError("expected positive lr and alpha and a non-negative replay", file=file, field=where)
    if refs.score not in MEMBERSHIP_SCORES:
        raise ConfigError(f"expected one of {', '.join(MEMBERSHIP_SCORES)}, got {refs.score!r}", file=file, field=f"{where}.score")
    if not 0 <= refs.offline_a <= 1:
        raise ConfigError(f"expected a number in [0, 1], got {refs.offline_a}", file=file, field=f"{where}.offline_a")
    if refs.gamma <= 0:
        raise ConfigError(f"expected a positive number, got {refs.gamma}", file=file, field=f"{where}.gamma")


def _validate_train(train: TrainConfig, file: str) -> None:
    base = train.base
    for name in ("epochs", "batch_size"):
        if getattr(base, name) < 1:
            raise ConfigError("expected a positive integer", file=file, field=f"train.base.{name}")
    if base.lr <= 0:
        raise ConfigError(f"expected a positive learning rate, got {base.lr}", file=file, field="train.base.lr")
    if isinstance(train.num_nodes, bool) or not isinstance(train.num_nodes, int) or train.num_nodes < 1:
        raise ConfigError(f"expected a positive integer, got {train.num_nodes!r}", file=file, field="train.num_nodes")
    if train.accelerator not in ("cpu", "gpu", "cuda", "mps", "auto"):
        raise ConfigError(f"unknown accelerator {train.accelerator!r}", file=file, field="train.accelerator")
    if train.precision in OTHER_WEIGHT_PRECISIONS:
        raise ConfigError(
            f"{train.precision!r} leaves the weights themselves in {OTHER_WEIGHT_PRECISIONS[train.precision]} after training, and every"
            " component is float32 (composition is exact): use a mixed precision (bf16-mixed, or 16-mixed on GPUs) or 32-true",
            file=file,
            field="train.precision",
        )
    if train.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {train.precision!r} (expected one of: {', '.join(PRECISIONS)})", file=file, field="train.precision")


# Lightning's precision settings that ume trains with (aliases included), and the ones it refuses.
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16")
OTHER_WEIGHT_PRECISIONS = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64", "64": "float64"}
MIN_CHECK_SAMPLES = 100


def _validate_behaviors(behaviors: BehaviorsConfig, file: str) -> None:
    for name in ("max_check_samples", "max_reference_pool", "max_property_samples"):
        if getattr(behaviors, name) < MIN_CHECK_SAMPLES:
            raise ConfigError(
                f"expected an integer >= {MIN_CHECK_SAMPLES}, got {getattr(behaviors, name)} (fewer samples leave the statistical checks unable to fail)",
                file=file,
                field=f"behaviors.{name}",
            )


def _parse_stream(raw: Any, file: str) -> dict[str, StepConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of step id -> step, got {type(raw).__name__}", file=file, field="stream")
    steps: dict[str, StepConfig] = {}
    for key, entry in raw.items():
        where = f"stream.{key}"
        if not isinstance(key, str) or not STEP_KEY_PATTERN.match(key) or key == BASE_STEP:
            raise ConfigError("step ids are 1-64 letters, digits, '_' or '-' and not 'base'", file=file, field=where)
        if not isinstance(entry, dict):
            raise ConfigError(f"expected a mapping, got {type(entry).__name__}", file=file, field=where)
        entry = dict(entry)
        kind = entry.pop("kind", None)
        if kind not in STEP_KINDS:
            raise ConfigError(f"expected one of {', '.join(STEP_KINDS)}, got {kind!r}", file=file, field=f"{where}.kind")
        parent = entry.pop("parent", None)
        if not isinstance(parent, str):
            raise ConfigError("every step names its parent step (or 'base')", file=file, field=f"{where}.parent")
        if parent != BASE_STEP and parent not in steps:
            known = ", ".join([BASE_STEP, *steps])
            raise ConfigError(
                f"unknown parent {parent!r}: it must be 'base' or a step listed before this one ({known})",
                file=file,
                field=f"{where}.parent",
            )
        method = entry.pop("method", None)
        if method is not None and not isinstance(method, str):
            raise ConfigError(f"expected a string, got {method!r}", file=file, field=f"{where}.method")
        steps[key] = StepConfig(key=key, kind=kind, parent=parent, method=method, options=entry)
    return steps


def parse_params(raw: Any, file: str = "params.yaml") -> Params:
    """Validate a loaded ``params.yaml`` mapping and return typed :class:`Params`."""
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level", file=file)
    sections = {
        "seed": int,
        "paths": PathsConfig,
        "registry": RegistryConfig,
        "data": DataConfig,
        "model": ModelConfig,
        "train": TrainConfig,
        "behaviors": BehaviorsConfig,
        "deletion": DeletionConfig,
        "ledger": LedgerConfig,
        "stream": None,
    }
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown key (allowed: {', '.join(sections)})", file=file, field=str(key))
    seed = _check_value(raw.get("seed", 0), int, "seed", file)
    parsed: dict[str, Any] = {}
    for name, cls in sections.items():
        if cls in (None, int):
            continue
        parsed[name] = parse_dataclass(cls, raw.get(name), where=name, file=file)
    _validate_data(parsed["data"], file)
    _validate_train(parsed["train"], file)
    _validate_references(parsed["behaviors"].references, file)
    _validate_behaviors(parsed["behaviors"], file)
    if not parsed["deletion"].max_debt_days >= 0:
        raise ConfigError(f"expected a number of days >= 0, got {parsed['deletion'].max_debt_days}", file=file, field="deletion.max_debt_days")
    if not parsed["deletion"].max_erasure_days >= 0:
        raise ConfigError(f"expected a number of days >= 0, got {parsed['deletion'].max_erasure_days}", file=file, field="deletion.max_erasure_days")
    if parsed["deletion"].max_debt_samples < 0:
        raise ConfigError(f"expected a sample count >= 0, got {parsed['deletion'].max_debt_samples}", file=file, field="deletion.max_debt_samples")
    if parsed["model"].num_classes < 2:
        raise ConfigError("expected at least 2 classes", file=file, field="model.num_classes")
    return Params(file=file, seed=seed, stream=_parse_stream(raw.get("stream"), file), **parsed)


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with ``<<`` may be overridden
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) or key is None:
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no Python objects), refusing duplicate keys."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line and column, 1-based)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context} at line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
        return f"{where}: {exc.problem}{context}"
    return " ".join(str(exc).split())


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; every problem is a :class:`ConfigError` naming the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("file not found (run ume from the project root, or pass --params)", file=str(path)) from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {yaml_problem(exc)}", file=str(path)) from None
    return parse_params(raw, file=str(path))
