"""Deletion requests, and which versions still carry influence of deleted samples.

A request selects samples by ``owner``, ``samples`` (a list of ids), ``label`` (a class name, a
class deletion) or ``group``. Its id is a hash of the selector, so a repeated request is the same
request. ``requests/<id>.yaml`` is the request as received; the ledger entry ``deletion_request``
(hashed ids only) is what makes the data layer drop the samples for every consumer.

Coverage (DESIGN.md invariant 2): a version's *influence* is the union of its components'
lineage (:func:`pipeline.model.lineage.version_lineage`); a forget overlay ``covers`` the samples it unlearned. Influence of a deleted sample that
no forget overlay covers makes a version unservable (``revoked``). Influence that is covered only
by an approximate forget overlay is *deletion debt*: honoured, but not exact until a retrain.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.core.canonical import canonical_json
from pipeline.core.config import load_yaml, yaml_problem
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.names import DELETION_ENTRY, EVAL_SLICES
from pipeline.model.components import ComponentStore
from pipeline.model.lineage import hash_sample_id, hash_sample_ids, version_lineage
from pipeline.model.manifest import Manifest
from pipeline.records.ledger import Entry, Ledger

if TYPE_CHECKING:
    from pipeline.data.table import SampleTable

REQUEST_ENTRY = DELETION_ENTRY  # what the data layer's filter reads
REPEAT_ENTRY = "deletion_repeated"
RESOLVED_ENTRY = "deletion_resolved"
REVOKED_ENTRY = "revocation"
EXACT_METHODS = ("exact", "retrain")  # forget methods after which no served component carries the samples
SELECTOR_KINDS = ("owner", "samples", "label", "group")
REQUESTS_DIR = Path("requests")


@dataclass(frozen=True)
class DeletionRequest:
    """A deletion request as received."""

    id: str
    selector: dict[str, Any]
    reason: str
    received: str
    method: str | None = None

    @property
    def kind(self) -> str:
        """``owner``, ``samples``, ``label`` or ``group``."""
        return next(iter(self.selector))

    @property
    def scope(self) -> str:
        """``class`` for a label deletion, ``samples`` otherwise."""
        return "class" if self.kind == "label" else "samples"

    def describe(self) -> str:
        """``owner w017`` / ``label 7`` / ``12 samples``."""
        value = self.selector[self.kind]
        return f"{len(value)} listed samples" if self.kind == "samples" else f"{self.kind} {value}"

    def to_yaml(self) -> str:
        """The request file's content."""
        raw: dict[str, Any] = {"id": self.id, "selector": self.selector, "reason": self.reason, "received": self.received}
        if self.method:
            raw["method"] = self.method
        return yaml.safe_dump(raw, sort_keys=False)


def request_id_for(selector: dict[str, Any]) -> str:
    """A stable id from the selector: the same selection is the same request."""
    return "del-" + hashlib.sha256(canonical_json(selector).encode()).hexdigest()[:12]


def make_request(selector: dict[str, Any], reason: str, method: str | None = None) -> DeletionRequest:
    """A new request received now."""
    _check_selector(selector, "selector", "command line")
    if not reason or not reason.strip():
        raise ConfigError("a deletion request needs a reason (e.g. 'GDPR art. 17')", field="--reason")
    received = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return DeletionRequest(request_id_for(selector), selector, reason.strip(), received, method)


def _check_selector(selector: Any, where: str, file: str) -> None:
    if not isinstance(selector, dict) or len(selector) != 1 or next(iter(selector)) not in SELECTOR_KINDS:
        raise ConfigError(f"expected exactly one of {', '.join(SELECTOR_KINDS)}", file=file, field=where)
    kind, value = next(iter(selector.items()))
    if kind == "samples":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError("expected a non-empty list of sample ids", file=file, field=f"{where}.samples")
    elif not isinstance(value, str) or not value:
        raise ConfigError("expected a non-empty string", file=file, field=f"{where}.{kind}")


def request_path(request_id: str, root: Path = REQUESTS_DIR) -> Path:
    """``requests/<id>.yaml``."""
    return root / f"{request_id}.yaml"


def write_request(request: DeletionRequest, root: Path = REQUESTS_DIR) -> Path:
    """Write the request file (atomically); returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    path = request_path(request.id, root)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(request.to_yaml())
    tmp.replace(path)
    return path


def load_request(request_id: str, root: Path = REQUESTS_DIR) -> DeletionRequest:
    """Read and validate ``requests/<id>.yaml``."""
    path = request_path(request_id, root)
    file = str(path)
    if not path.exists():
        raise ConfigError("deletion request file not found", file=file)
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {yaml_problem(exc)}", file=file) from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping", file=file)
    unknown = set(raw) - {"id", "selector", "reason", "received", "method"}
    if unknown:
        raise ConfigError("unknown key (allowed: id, selector, reason, received, method)", file=file, field=sorted(unknown)[0])
    for name in ("id", "reason", "received"):
        if name not in raw:
            raise ConfigError("required field is missing", file=file, field=name)
        if not isinstance(raw[name], str) or not raw[name]:
            raise ConfigError(f"expected a non-empty string, got {type(raw[name]).__name__} {repr(raw[name])[:40]}", file=file, field=name)
    _check_selector(raw.get("selector"), "selector", file)
    if raw["id"] != request_id:
        raise ConfigError(f"id {raw['id']!r} does not match the file name", file=file, field="id")
    if request_id_for(raw["selector"]) != request_id:
        raise ConfigError("the selector does not match the request id (the file was edited)", file=file, field="selector")
    method = raw.get("method")
    if method is not None and not isinstance(method, str):
        raise ConfigError("expected a method name", file=file, field="method")
    return DeletionRequest(raw["id"], raw["selector"], raw["reason"], raw["received"], method)


def resolve(request: DeletionRequest, table: SampleTable, *, file: str = "request") -> list[str]:
    """The sample ids the request selects; an unknown owner/id/label/group is an error, never a no-op."""
    rows = table.rows
    kind, value = request.kind, request.selector[request.kind]
    if kind == "owner":
        mask = rows["owner"] == value
        if not mask.any():
            raise DataError(f"unknown owner {value!r} (the sample table has {rows['owner'].nunique()} owners)", file=file, field="owner")
    elif kind == "group":
        mask = rows["group"] == value
        if not mask.any():
            raise DataError(f"unknown group {value!r} (groups: {', '.join(sorted(rows['group'].unique()))})", file=file, field="group")
    elif kind == "label":
        if value not in table.classes:
            raise DataError(f"unknown label {value!r} (classes: {', '.join(table.classes)})", file=file, field="label")
        mask = rows["label"] == table.classes.index(value)
    else:
        known = set(rows["sample_id"])
        missing = [s for s in value if s not in known]
        if missing:
            raise DataError(f"{len(missing)} unknown sample id(s), e.g. {missing[0]!r}", file=file, field="samples")
        mask = rows["sample_id"].isin(value)
    return sorted(rows.loc[mask, "sample_id"])


def check_leaves_data(table: SampleTable, deleted_hashed: set[str], sample_ids: list[str], *, file: str = "request") -> None:
    """Refuse, before anything is written, a request that would leave no data to evaluate or train on.

    The gate evaluates every model on the evaluation slices (``test``, ``canary``) and a forget step
    retrains on what remains: a request that deletes every remaining sample of an evaluation slice,
    or every training sample, would leave a deletion that no model could ever be gated for. The
    operator must first add data no data subject owns (owner ``-`` in a manifest), then file the request again.
    """
    rows = table.rows
    before = rows[[hash_sample_id(s) not in deleted_hashed for s in rows["sample_id"]]]  # what the data layer serves now
    remaining = before[~before["sample_id"].isin(sample_ids)]
    left = set(remaining["slice"])
    emptied = [s for s in EVAL_SLICES if s in set(before["slice"]) and s not in left]
    if not left - set(EVAL_SLICES):
        emptied.append("every training slice")
    if emptied:
        raise DataError(
            f"this request deletes every remaining sample of {', '.join(emptied)} ({len(sample_ids)} samples selected, "
            f"{len(remaining)} would remain): no model could be evaluated or retrained after it. Nothing was recorded; "
            "add samples no data subject owns (owner `-` in a manifest) to those slices, then file the request again",
            file=file,
            field="selector",
        )


@dataclass
class DeletionLog:
    """The deletion state read from the ledger."""

    requests: dict[str, Entry] = field(default_factory=dict)
    resolved: dict[str, Entry] = field(default_factory=dict)  # the latest resolution of each request
    first_resolved: dict[str, Entry] = field(default_factory=dict)  # its first (phase 1 of a two-phase deletion)
    resolutions: dict[str, list[Entry]] = field(default_factory=dict)  # every resolution, in ledger order

    @classmethod
    def read(cls, ledger: Ledger) -> DeletionLog:
        """Received and resolved requests, in ledger order."""
        log = cls()
        for entry in ledger.verify():
            if entry.type == REQUEST_ENTRY:
                log.requests.setdefault(entry.data["request_id"], entry)
            elif entry.type == RESOLVED_ENTRY:
                log.resolved[entry.data["request_id"]] = entry
                log.first_resolved.setdefault(entry.data["request_id"], entry)
                log.resolutions.setdefault(entry.data["request_id"], []).append(entry)
        return log

    def hashed_ids(self, request_ids: Iterable[str] | None = None) -> set[str]:
        """Hashed sample ids of the given (default: all) requests."""
        ids = self.requests if request_ids is None else [r for r in request_ids if r in self.requests]
        out: set[str] = set()
        for rid in ids:
            out.update(self.requests[rid].data["hashed_ids"])
        return out

    @property
    def pending(self) -> list[str]:
        """Received but not yet resolved by a promoted step."""
        return [r for r in self.requests if r not in self.resolved]


def ingest(
    ledger: Ledger, request: DeletionRequest, sample_ids: list[str], served_lineage: set[str] | None = None, served_version: int | None = None
) -> Entry | None:
    """Record the request in the ledger once (from then on no consumer sees its samples).

    ``served_lineage`` (the champion's lineage when the request arrives) records which of the
    samples actually influenced the served model: the forget checks test exactly those.
    ``served_version`` is that champion: the un-forgotten control every forget check is run on.
    """
    if request.id in DeletionLog.read(ledger).requests:
        return None
    hashed = hash_sample_ids(sample_ids)
    return ledger.append(
        REQUEST_ENTRY,
        {
            "request_id": request.id,
            "selector_kind": request.kind,
            "selector_hash": hashlib.sha256(canonical_json(request.selector).encode()).hexdigest(),
            "scope": request.scope,
            "label": request.selector.get("label"),
            "reason": request.reason,
            "received": request.received,
            "count": len(sample_ids),
            "hashed_ids": hashed,
            "influenced_ids": sorted(set(hashed) & served_lineage) if served_lineage is not None else None,
            "served_version": served_version,
        },
    )


def covered(manifest: Manifest, store: ComponentStore) -> set[str]:
    """Hashed ids unlearned by forget overlays of the version."""
    out: set[str] = set()
    for cid in manifest.overlays:
        out.update(store.sidecar(cid).meta.get("covers", []))
    return out


def uncovered_requests(manifest: Manifest, store: ComponentStore, log: DeletionLog, request_ids: Iterable[str] | None = None) -> dict[str, int]:
    """Request id -> number of its samples whose influence the version still carries, uncovered."""
    carried = version_lineage(manifest, store) - covered(manifest, store)
    ids = log.requests if request_ids is None else request_ids
    out = {}
    for rid in ids:
        hit = carried & set(log.requests[rid].data["hashed_ids"])
        if hit:
            out[rid] = len(hit)
    return out


def deletion_debt(manifest: Manifest, store: ComponentStore, log: DeletionLog) -> dict[str, int]:
    """Request id -> samples removed only approximately (covered by a forget overlay, still in the lineage)."""
    approx = version_lineage(manifest, store) & covered(manifest, store)
    out = {}
    for rid, entry in log.requests.items():
        hit = approx & set(entry.data["hashed_ids"])
        if hit:
            out[rid] = len(hit)
    return out
