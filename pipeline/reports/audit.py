"""``ume audit``: the ledger's chain verifies, the MLflow registry agrees with it, and so does every anchor of it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.core import signing
from pipeline.core.canonical import file_sha256
from pipeline.core.errors import ComponentError, ConfigError, LedgerError
from pipeline.core.warm import fingerprint
from pipeline.model.components import ComponentStore
from pipeline.model.manifest import Manifest
from pipeline.records.anchors import ATTESTATION_SUFFIX, Anchor, certificate_anchors, check_anchors, is_attestation, reachable_anchors
from pipeline.records.deletion import DeletionLog, uncovered_requests
from pipeline.records.erasure import ERASED_TAG, ErasureLog
from pipeline.records.gate import ABANDONED, ABANDONED_ENTRY, PROMOTED, ledger_champion
from pipeline.records.ledger import Ledger
from pipeline.records.registry import Registry
from pipeline.records.served import signed_dir, signed_entries
from pipeline.records.ui_requests import ALIAS_ENTRY, DROP_ENTRY, REFUSED
from pipeline.records.workspace import Workspace
from pipeline.reports.composed import ComposedRecord, read_record, record_path, sidecar_digest, write_record


@dataclass
class AuditReport:
    """Problems found (empty when everything holds) and what was checked."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    composed: ComposedRecord | None = None  # the champion composed by this audit: kept (store/cache) only if the whole audit passes

    @property
    def ok(self) -> bool:
        """Whether the audit passed."""
        return not self.problems


def audit(
    ledger: Ledger,
    registry: Registry,
    *,
    store: ComponentStore | None = None,
    manifest_of: Callable[[int], Manifest] | None = None,
    composed_dir: Path | None = None,
    compose: bool = False,
) -> AuditReport:
    """Verify the chain, every version against its ledger entries, and the champion alias.

    With ``store``, every component is verified and the champion composed; with ``composed_dir``, a champion this
    code composed before is taken from its record (:mod:`pipeline.reports.composed`) unless ``compose``.
    """
    report = AuditReport()
    try:
        entries = ledger.verify()
    except LedgerError as exc:
        report.problems.append(f"ledger chain broken: {exc}")
        return report
    report.checked.append(f"ledger chain: {len(entries)} entries verify")

    candidates = {e.data["version"]: e for e in entries if e.type == "candidate"}
    decisions: dict[int, str] = {}
    promoted_ever: set[int] = set()
    for e in entries:
        if e.type == "decision":
            if e.data.get("mode", "gate") == "gate":
                decisions[e.data["version"]] = e.data["decision"]
            if e.data["decision"] == PROMOTED:
                promoted_ever.add(e.data["version"])

    abandoned = {v for e in entries if e.type == ABANDONED_ENTRY for v in e.data["versions"]}
    decided_any = {e.data["version"] for e in entries if e.type == "decision"}
    versions = {v.version: v for v in registry.versions()}
    for number, info in versions.items():
        if number in abandoned:
            if info.tags.get("ume.decision") != ABANDONED:
                report.problems.append(f"registry version {number} was abandoned in the ledger but is tagged {info.tags.get('ume.decision')!r}")
            continue
        entry = candidates.get(number)
        if entry is None:
            report.problems.append(f"registry version {number} has no candidate entry in the ledger (a stage was interrupted: rerun `dvc repro`)")
            continue
        if number not in decided_any:
            report.problems.append(f"ledger candidate version {number} has no decision (a stage was interrupted: rerun `dvc repro`)")
        if info.manifest_hash != entry.data["manifest_hash"]:
            report.problems.append(
                f"registry version {number} has manifest {info.manifest_hash} but the ledger recorded {entry.data['manifest_hash']}"
            )
        tag = info.tags.get("ume.decision")
        if number in decisions and tag != decisions[number]:
            report.problems.append(f"registry version {number} is tagged {tag!r} but the ledger decided {decisions[number]!r}")
    for number in candidates:
        if number not in versions:
            report.problems.append(f"ledger candidate version {number} is missing from the registry")
    report.checked.append(
        f"registry: {len(versions)} versions match their ledger entries" + (f" ({len(abandoned)} abandoned by interrupted stages)" if abandoned else "")
    )
    revoked_in_ledger = {int(v) for e in entries if e.type == "revocation" for v in e.data["by_request"]}
    for number in sorted(revoked_in_ledger):
        if number in versions and versions[number].tags.get("deletion_status") != "revoked":
            report.problems.append(f"registry version {number} was revoked in the ledger but is not tagged deletion_status=revoked")

    expected = ledger_champion(ledger)
    actual = registry.champion()
    if expected != actual:
        alias = f"points at version {actual}" if actual is not None else "is not set"
        moved = f"the ledger's last alias move is to version {expected}" if expected is not None else "the ledger records no promotion"
        report.problems.append(
            f"champion alias {alias} but {moved}: moved outside ume and not synced (run `ume sync`: it becomes a gated rollback or"
            " is refused and moved back), or a promotion was interrupted (rerun `dvc repro`)"
        )
    elif actual is not None and actual not in promoted_ever:
        report.problems.append(f"champion version {actual} never passed the gate")
    else:
        report.checked.append(f"champion alias: version {actual} matches the ledger")
    ui_requests = [e for e in entries if e.type in (ALIAS_ENTRY, DROP_ENTRY)]
    if ui_requests:
        refused = sum(1 for e in ui_requests if e.data["outcome"] == REFUSED)
        report.checked.append(f"MLflow UI requests: {len(ui_requests)} recorded ({len(ui_requests) - refused} rollback steps, {refused} refused)")
    unusable: set[int] = set()
    erasure = ErasureLog.read(ledger)
    for number in sorted(erasure.versions):
        if number in versions and ERASED_TAG not in versions[number].tags:
            report.problems.append(f"registry version {number}: its weights were erased in the ledger but it is not tagged {ERASED_TAG}")
    if store is not None and manifest_of is not None:
        numbers = sorted(v for v in versions if v in candidates and v not in erasure.versions)
        unusable = _check_components(report, numbers, actual, store, manifest_of, composed_dir=None if compose else composed_dir)
        _check_erased(report, erasure, store)
    if actual is not None and actual in versions and manifest_of is not None and actual not in unusable:
        log = DeletionLog.read(ledger)
        carried = uncovered_requests(manifest_of(actual), store, log, list(log.resolved)) if store is not None else {}
        if carried:
            report.problems.append(
                f"champion version {actual} is revoked: it carries deleted samples of resolved request(s) {', '.join(sorted(carried))}"
            )
        elif log.resolved:
            report.checked.append(f"champion carries no deleted sample of {len(log.resolved)} resolved request(s)")
    return report


def _check_erased(report: AuditReport, erasure: ErasureLog, store: ComponentStore) -> None:
    """Erased weights stay erased: a component the ledger erased must not be back (restored from a backup)."""
    back = sorted(c for c in erasure.components if store.weights_path(c).exists())
    for component_id in back:
        report.problems.append(f"component {component_id}: the ledger erased its weights, but {store.weights_path(component_id)} exists again")
    if erasure.done:
        report.checked.append(
            f"erasure: {len(erasure.done)} request(s) erased; weights of {len(erasure.components)} component(s), {len(erasure.versions)} version(s) stay erased"
        )


def _check_components(
    report: AuditReport,
    numbers: list[int],
    champion: int | None,
    store: ComponentStore,
    manifest_of: Callable[[int], Manifest],
    *,
    composed_dir: Path | None = None,
) -> set[int]:
    """Every component of every registered version matches its sidecar and its id (hash, safetensors); the champion composes.

    A record in ``composed_dir`` that this code composed the champion's very components stands for composing it
    again (no torch imported); a champion composed here becomes ``report.composed``. Returns the versions that
    cannot be composed (each reported once).
    """
    broken: dict[str, str] = {}
    checked: set[str] = set()
    unusable: set[int] = set()
    for number in numbers:
        try:
            manifest = manifest_of(number)
        except ComponentError as exc:
            report.problems.append(f"registry version {number}: {exc}")
            unusable.add(number)
            continue
        for component_id in manifest.component_ids:
            if component_id in checked:
                continue
            checked.add(component_id)
            try:
                store.verify(component_id)
            except ComponentError as exc:
                broken[component_id] = str(exc)
                report.problems.append(f"component {component_id} of version {number}: {exc}")
        if any(c in broken for c in manifest.component_ids):
            unusable.add(number)
            continue
        if number != champion:
            continue
        digests = {c: sidecar_digest(store.sidecar(c)) for c in manifest.component_ids}
        code = fingerprint()
        earlier = read_record(composed_dir, manifest.hash) if composed_dir is not None else None
        if earlier is not None and earlier.holds_for(manifest.hash, digests, code):
            report.checked.append(
                f"champion version {number} composes: this code composed these very components at {earlier.composed_at}"
                f" ({record_path(composed_dir, manifest.hash)}; `ume audit --compose` composes it again)"
            )
            continue
        from pipeline.model.compose import apply_overlay, build_base, compose, is_routed

        component_id = manifest.base
        try:  # the served version must compose: tensors that verify can still not fit the network (other code, other packages)
            net = build_base(store, component_id)
            if any(is_routed(store.sidecar(c).meta) for c in manifest.overlays):  # experts and router: only the whole version composes
                component_id = manifest.overlays[-1]
                compose(manifest, store)
            else:
                for component_id in manifest.overlays:
                    net = apply_overlay(net, store, component_id)
            if manifest.transforms:  # export transforms apply to the folded network: compose the whole version
                component_id = manifest.transforms[-1]
                compose(manifest, store)
        except (ComponentError, RuntimeError, ValueError, KeyError) as exc:
            lines = [line.strip() for text in (str(exc), str(exc.__context__ or "")) for line in text.splitlines() if line.strip()]
            detail = next((line for line in lines if "mismatch" in line or "key" in line.lower()), "")
            first = " ".join(dict.fromkeys(line for line in (lines[:1] or [type(exc).__name__]) + [detail] if line))[:400]
            where = "" if str(store.root) in first else f"{store.weights_path(component_id)}: "
            report.problems.append(f"champion version {number} does not compose: {where}{first}")
            unusable.add(number)
            continue
        report.checked.append(f"champion version {number} composes (composed now)")
        report.composed = ComposedRecord(manifest.hash, digests, code, datetime.now(UTC).isoformat(timespec="seconds"))
    if checked:
        report.checked.append(f"components: {len(checked) - len(broken)} of {len(checked)} match their sidecars")
    return unusable


def _check_identity_file(ws: Workspace, report: AuditReport) -> None:
    """The identity file beside the ledger names the ledger's own first entry."""
    identity = ws.ledger.identity()
    path = ws.ledger.identity_path
    if identity is None or not path.exists():
        return
    written = path.read_text(encoding="utf-8").strip()
    if written != identity:
        report.problems.append(
            f"ledger identity: {path} names a ledger whose first entry is {written[:12]}, this ledger's is {identity[:12]}:"
            " the ledger was replaced from its first entry"
        )
    else:
        report.checked.append(f"ledger identity: {identity[:12]} (the hash of its first entry), as {path.name} records it")


def _check_signed_versions(ws: Workspace, report: AuditReport, require_signatures: bool) -> None:
    """Each promoted version's served files against their OpenSSF model signature (:mod:`pipeline.records.served`).

    The bundle the ledger recorded (``model_signed``) must be in ``store/signed/v<N>/`` unchanged; with
    ``ledger.public_key``, ``model_signing`` verifies every signed directory, and the champion's copy in
    MLflow (the registered ``version/`` artifacts, what a server downloads) too.
    """
    entries = ws.ledger.verify()
    promoted = sorted({e.data["version"] for e in entries if e.type == "decision" and e.data["decision"] == PROMOTED})
    erased = ErasureLog.read(ws.ledger).versions
    signed = {v: e for v, e in signed_entries(ws.ledger).items() if v not in erased}  # an erased version's signed copy is gone on purpose
    promoted = [v for v in promoted if v not in erased]
    for version in sorted(erased):
        if signed_dir(ws.store_dir, version).exists():
            report.problems.append(f"served model v{version}: its weights were erased in the ledger, but {signed_dir(ws.store_dir, version)} exists again")
    if not signed and not (require_signatures and ws.params.public_key_path is not None and promoted):
        return
    public = ws.params.public_key_path
    candidates = {e.data["version"]: e.data["manifest_hash"] for e in entries if e.type == "candidate"}
    verified = 0
    for version, entry in sorted(signed.items()):
        directory = signed_dir(ws.store_dir, version)
        bundle = directory / signing.MODEL_SIGNATURE
        where = f"served model v{version}"
        if not bundle.is_file():
            report.problems.append(f"{where}: {bundle} is missing, but the ledger recorded it signed (entry {entry.seq})")
            continue
        if file_sha256(bundle) != entry.data["bundle_sha256"]:
            report.problems.append(f"{where}: {bundle} is not the bundle the ledger recorded at entry {entry.seq} (replaced after signing)")
            continue
        if candidates.get(version) != entry.data["manifest_hash"]:
            report.problems.append(f"{where}: signed as manifest {entry.data['manifest_hash'][:16]}, but the ledger's candidate v{version} is another")
            continue
        if public is None:
            continue
        why = signing.verify_model(public, directory)
        if why:
            report.problems.append(f"{where}: {directory} does not verify with {public} (model_signing): {why}")
        else:
            verified += 1
    champion = ws.registry.champion()
    if public is not None and champion in signed:
        _check_mlflow_copy(ws, report, champion, public)
    unsigned = [v for v in promoted if v not in signed]
    if public is None:
        report.checked.append(f"served models: {len(signed)} signed version(s), bundles as the ledger recorded them; not verified (no ledger.public_key)")
    else:
        report.checked.append(
            f"served models: {verified} of {len(signed)} signed version(s) verify with {public} (model_signing); {len(unsigned)} promoted"
            " before signing was on"
        )
        if require_signatures and unsigned:
            report.problems.append(f"served models: promoted version(s) {', '.join(f'v{v}' for v in unsigned)} carry no model signature (--require-signatures)")


def _check_mlflow_copy(ws: Workspace, report: AuditReport, version: int, public: Path) -> None:
    """The champion's registered files in MLflow (``version/``, with ``model.sig``) verify as well."""
    import mlflow.artifacts

    source = ws.registry.version(version).source
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=ws.registry.tracking_uri))
    except Exception as exc:  # noqa: BLE001 - any failure to fetch is a finding, not a crash of the audit
        report.problems.append(f"served model v{version}: cannot read its MLflow copy {source} ({type(exc).__name__}: {exc})")
        return
    if not (local / signing.MODEL_SIGNATURE).is_file():
        report.problems.append(f"served model v{version}: its MLflow copy {source} has no {signing.MODEL_SIGNATURE}")
        return
    why = signing.verify_model(public, local)
    if why:
        report.problems.append(f"served model v{version}: its MLflow copy {source} does not verify with {public} (model_signing): {why}")
    else:
        report.checked.append(f"served model v{version} (champion): its MLflow copy verifies too")


def _check_attestation(ws: Workspace, path: Path, report: AuditReport, require_signatures: bool) -> None:
    """An in-toto attestation (``<id>.intoto.json``): its DSSE signature, its Statement, its subjects against the components."""
    import json

    from pipeline.core import attestation as intoto
    from pipeline.reports.certificate import PREDICATE_TYPE

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        report.problems.append(f"certificate {path}: not JSON ({exc})")
        return
    public = ws.params.public_key_path
    try:
        if intoto.is_envelope(document):
            body, _ = intoto.open_envelope(document, signing.load_public_keys(public) if public is not None else None)
            how = f"its DSSE signature verifies with {public}" if public is not None else "signed (not verified: no ledger.public_key)"
        else:
            body = intoto.statement_of(document)
            how = "an unsigned in-toto Statement (written without ledger.signing_key)"
            if require_signatures and public is not None:
                report.problems.append(f"certificate {path}: an unsigned in-toto Statement (--require-signatures)")
    except intoto.AttestationError as exc:
        report.problems.append(f"certificate {path}: {exc}")
        return
    if body["predicateType"] != PREDICATE_TYPE:
        report.problems.append(f"certificate {path}: predicate type {body['predicateType']!r}, expected {PREDICATE_TYPE!r}")
        return
    for subject in body["subject"]:
        component_id = str(subject.get("name", "")).removesuffix(".safetensors")
        try:
            sha = ws.components.sidecar(component_id).sha256
        except ComponentError:
            report.problems.append(f"certificate {path}: its subject {subject.get('name')} is no component of this project")
            continue
        if subject.get("digest", {}).get("sha256") != sha:
            report.problems.append(f"certificate {path}: its subject {subject.get('name')} has another sha256 than the component's weights")
    report.checked.append(f"certificate {path.name}: an in-toto Statement of {len(body['subject'])} weights file(s); {how}")


def audit_workspace(ws: Workspace, *, certificates: Sequence[Path] = (), require_signatures: bool = False, compose: bool = False) -> AuditReport:
    """:func:`audit`, then the ledger against every anchor ume can reach (:mod:`pipeline.records.anchors`).

    ``certificates`` are files a data subject or an auditor holds (Markdown, HTML, or the in-toto
    attestation ``<id>.intoto.json``, whose signature and Statement are checked first); every
    ``certificates/*.md`` and ``certificates/*.intoto.json`` beside ``params.yaml`` is checked too.
    Every promoted version's OpenSSF model signature is checked (:func:`_check_signed_versions`).
    ``require_signatures`` fails on an unsigned anchor, promoted version or attestation (with
    ``ledger.public_key`` set). The champion is composed unless this code composed it before (``compose``: always).
    """
    report = audit(ws.ledger, ws.registry, store=ws.components, manifest_of=ws.manifest_of, composed_dir=ws.store_dir / "cache", compose=compose)
    if any(p.startswith("ledger chain broken") for p in report.problems):
        return report
    explicit = [Path(p) for p in certificates]
    for path in explicit:
        if not path.is_file():
            raise ConfigError(f"no such certificate file: {path}", field="--certificate")
    local_dir = Path(ws.params.file).parent / "certificates"
    found = sorted([*local_dir.glob("*.md"), *local_dir.glob(f"*{ATTESTATION_SUFFIX}")])
    local = [p for p in found if p.resolve() not in {e.resolve() for e in explicit}]
    _check_identity_file(ws, report)
    _check_signed_versions(ws, report, require_signatures)
    for path in [*explicit, *local]:
        if is_attestation(path):
            _check_attestation(ws, path, report, require_signatures)
    set_aside: list[str] = []
    anchors: list[Anchor] = reachable_anchors(ws, set_aside=set_aside)
    if set_aside:
        report.checked.append(
            f"ledger anchors: {len(set_aside)} dvc.lock record(s) of other ledgers set aside, e.g. {set_aside[0].split(': ')[0]} (docs/reliability.md)"
        )
    by_certificate: dict[Path, list[Anchor]] = {}
    for path in [*explicit, *local]:
        try:
            by_certificate[path] = certificate_anchors(path)
        except (ValueError, KeyError, TypeError) as exc:
            if path in explicit:
                raise ConfigError(f"{exc}", file=str(path), field="--certificate") from None
            report.checked.append(f"certificate {path.name}: no ledger anchors (written before certificates carried them); skipped")
    for found in by_certificate.values():
        anchors.extend(found)
    result = check_anchors(ws, anchors)
    for path, found in by_certificate.items():
        wrong = [(a, why) for a, why in result.disagreed if a in found]
        if wrong:
            report.problems.append(
                f"certificate {path}: {len(wrong)} of its {len(found)} ledger entries are no longer in the ledger as certified"
                f" ({'; '.join(f'{a.source}: {why}' for a, why in wrong[:3])})"
            )
        else:
            report.checked.append(f"certificate {path.name}: its {len(found) - 1} entries and its head are in the ledger, unchanged, in order")
    others = [(a, why) for a, why in result.disagreed if not any(a in f for f in by_certificate.values())]
    others.sort(key=lambda pair: pair[0].lines is None)  # cached copies first: they name the exact entry
    if result.disagreed:
        shown = "; ".join(f"{a.source}: {why}" for a, why in (others or result.disagreed)[:4])
        report.problems.append(
            f"ledger anchors: {result.divergence()} ({len(result.disagreed)} of {len(anchors)} anchors written outside the ledger"
            f" disagree with it: {shown}); the ledger was rewritten after they were written"
        )
    else:
        kinds = {"registry": 0, "MLflow run": 0, "dvc.lock": 0, "certificate": 0}
        for a in result.agreed:
            for kind in kinds:
                if a.source.startswith(kind):
                    kinds[kind] += 1
        counts = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        report.checked.append(f"ledger anchors: all {len(anchors)} agree ({counts})" if anchors else "ledger anchors: none written yet")
    if result.bad_signatures:
        report.problems.append(
            f"ledger anchors: {len(result.bad_signatures)} signature(s) do not verify with {ws.params.public_key_path}: "
            + "; ".join(a.source for a in result.bad_signatures[:4])
        )
    elif ws.params.public_key_path is not None:
        signed = sum(1 for a in anchors if a.signature)
        report.checked.append(f"ledger anchors: {signed} signatures verify with {ws.params.public_key_path}; {result.unsigned} anchors unsigned")
    if require_signatures and result.unsigned:
        report.problems.append(f"ledger anchors: {result.unsigned} anchor(s) carry no signature (--require-signatures)")
    if report.ok and report.composed is not None:  # a failing audit leaves nothing behind
        write_record(ws.store_dir / "cache", report.composed)
    return report
