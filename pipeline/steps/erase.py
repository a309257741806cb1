"""``ume erase``: erase an exact request's data from every store ume writes to (docs/deletion.md, "Erasure").

Run by the DVC stage ``seal`` after every step (so an exact deletion's erasure needs no hand-written step),
and by hand. Two mechanisms, chosen by what each store is (docs/deletion.md gives the measurements):

- **The samples' pixels: crypto-shredding.** Every row of ``store/data`` is encrypted under its own key
  (:mod:`pipeline.data.rowkeys`); erasure destroys the rows' keys. No tracked byte changes, so DVC reruns
  nothing, and every copy of the data file (DVC cache, DVC remote, backups) loses those rows at once.
- **The weights that learned them, and report images that show them: rewrite and collect.** The components
  whose lineage (or ``covers``) holds an erased sample are deleted from ``store/components`` (their sidecars,
  with the hashes, stay), from ``store/signed/v<N>/``, from each registered version's MLflow artifacts
  (the versions keep their metadata, tagged ``ume.erased``), and by content address from the DVC cache.
  Counterexample PNGs that show an erased sample are replaced by a placeholder. Derived stores drop what
  came from the samples: reference shadows trained on them, row-cache files holding their rows.

Crash safety: a write-ahead ``erasure_started`` entry holds the plan with every hash needed to finish it;
each action is idempotent (deleting what is gone is a no-op), and ``erasure`` is written last. A run that
finds a started, unfinished plan finishes it first.
"""

from __future__ import annotations

import configparser
import hashlib
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.canonical import file_digest
from pipeline.core.errors import UmeError
from pipeline.core.faults import crash_point
from pipeline.data.rowkeys import RowKeys, key_store_dir
from pipeline.data.table import SampleTable
from pipeline.model.lineage import PNG_SAMPLE_KEY, hash_sample_id
from pipeline.records.debt import TIME_FORMAT
from pipeline.records.deletion import DeletionLog
from pipeline.records.erasure import ERASED_ENTRY, ERASED_REASON_TAG, ERASED_TAG, STARTED_ENTRY, ErasureLog, due_requests
from pipeline.records.served import signed_dir
from pipeline.records.workspace import Workspace

COUNTEREXAMPLES = "counterexample-*.png"
ERASED_TEXT_KEY = "ume.erased"


@dataclass
class ErasurePlan:
    """What one erasure removes; every hash is taken before anything is deleted (the write-ahead entry)."""

    requests: list[str]
    erased_at: str
    rows: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)  # id, kind, sha256, md5, bytes
    versions: list[int] = field(default_factory=list)
    reports: list[dict[str, str]] = field(default_factory=list)  # path (under the store), md5
    mlflow_reports: list[dict[str, str]] = field(default_factory=list)  # run_id, path

    def to_json(self) -> dict[str, Any]:
        """The ledger entry's data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErasurePlan:
        """A plan from its ``erasure_started`` entry."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class ErasureOutcome:
    """What one erasure did (its ``erasure`` ledger entry)."""

    plan: ErasurePlan
    entry: dict[str, Any]


def _md5(path: Path) -> str:
    """A file's name in DVC's cache."""
    return file_digest(path, "md5")


def project_root(ws: Workspace) -> Path:
    """The directory of ``params.yaml`` (the DVC project, when there is one)."""
    return Path(ws.params.file).resolve().parent


def dvc_cache_dir(root: Path) -> Path | None:
    """The DVC cache of the project at ``root`` (``cache.dir`` of .dvc/config[.local], default .dvc/cache), or None without DVC."""
    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        return None
    config = configparser.ConfigParser()
    config.read([dvc_dir / "config", dvc_dir / "config.local"])
    configured = config.get("cache", "dir", fallback=None) if config.has_section("cache") else None
    return (dvc_dir / configured).resolve() if configured else dvc_dir / "cache"


def dvc_object_paths(cache: Path, md5: str) -> list[Path]:
    """Where DVC keeps a file of this MD5: ``files/md5/xx/…`` (DVC 3), ``xx/…`` (DVC 2)."""
    return [cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]]


def _png_text(path: Path) -> dict[str, str]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return dict(getattr(image, "text", {}) or {})
    except OSError:
        return {}


def _placeholder(path: Path, erased_at: str) -> None:
    """A grey image in place of a counterexample that showed an erased sample (the report's link keeps working)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(ERASED_TEXT_KEY, erased_at)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.new("L", (64, 32), 200).save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)


def plan_erasure(ws: Workspace, requests: list[str], log: DeletionLog, erasure: ErasureLog, now: datetime) -> ErasurePlan:
    """What erasing ``requests`` removes. Refuses when the champion still serves a component trained on them."""
    hashed = log.hashed_ids(requests)
    plan = ErasurePlan(requests=list(requests), erased_at=now.strftime(TIME_FORMAT), rows=len(hashed))
    champion = ws.registry.champion()
    served = set(ws.manifest_of(champion).component_ids) if champion is not None else set()
    already = erasure.components
    for sidecar in sorted(ws.components.root.glob("*.json")):
        component = ws.components.sidecar(sidecar.stem)
        touched = (set(component.lineage) | set(component.meta.get("covers", []))) & hashed
        if not touched or component.id in already:
            continue
        if component.id in served:
            raise UmeError(
                f"the champion v{champion} still serves {component.id}, trained on {len(touched)} sample(s) of {', '.join(requests)}: "
                "only an exact request is erased",
                field="request",
            )
        weights = ws.components.weights_path(component.id)
        md5 = _md5(weights) if weights.exists() else None
        plan.components.append({"id": component.id, "kind": component.kind, "sha256": component.sha256, "md5": md5})
    erased_ids = {c["id"] for c in plan.components}
    for info in ws.registry.versions():
        if info.manifest_hash and set(ws.versions.load(info.manifest_hash).component_ids) & erased_ids:
            plan.versions.append(info.version)
    for png in sorted(ws.reports_dir.rglob(COUNTEREXAMPLES)):
        if _png_text(png).get(PNG_SAMPLE_KEY) in hashed:
            plan.reports.append({"path": png.relative_to(ws.store_dir).as_posix(), "md5": _md5(png)})
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in ws.registry.run_ids():
            for path in ws.registry.artifact_files(run_id, "behaviors"):
                if Path(path).match(COUNTEREXAMPLES):
                    local = ws.registry.download_artifact(run_id, path, Path(tmp) / run_id)
                    if _png_text(local).get(PNG_SAMPLE_KEY) in hashed:
                        plan.mlflow_reports.append({"run_id": run_id, "path": path})
    return plan


def _erase_weights(ws: Workspace, plan: ErasurePlan) -> int:
    for component in plan.components:
        ws.components.weights_path(component["id"]).unlink(missing_ok=True)  # the sidecar (hashes, lineage) stays
    crash_point("erase.components")
    for version in plan.versions:
        shutil.rmtree(signed_dir(ws.store_dir, version), ignore_errors=True)
    names = {f"{c['id']}.safetensors" for c in plan.components}
    reason = f"weights trained on samples of {', '.join(plan.requests)} erased at {plan.erased_at}; metadata and hashes kept"
    deleted = 0
    for version in plan.versions:
        info = ws.registry.version(version)
        for path in ws.registry.artifact_files(info.run_id, "version"):
            if Path(path).name in names:
                ws.registry.delete_artifact(info.run_id, path)
                deleted += 1
        ws.registry.set_version_tags(version, {ERASED_TAG: plan.erased_at, ERASED_REASON_TAG: reason})
    crash_point("erase.mlflow")
    return deleted


def _sweep_local_artifacts(root: Path, plan: ErasurePlan) -> int:
    """Delete any file under a local MLflow artifact root whose bytes are an erased component's (copies the API pass missed)."""
    wanted = {c["sha256"] for c in plan.components}
    removed = 0
    if not root.is_dir() or not wanted:
        return 0
    for path in root.rglob("*.safetensors"):
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() in wanted:
            path.unlink()
            removed += 1
    return removed


def _erase_reports(ws: Workspace, plan: ErasurePlan) -> None:
    for report in plan.reports:
        path = ws.store_dir / report["path"]
        if path.exists() and ERASED_TEXT_KEY not in _png_text(path):
            _placeholder(path, plan.erased_at)
    for item in plan.mlflow_reports:
        try:
            ws.registry.delete_artifact(item["run_id"], item["path"])
        except (OSError, FileNotFoundError):
            pass  # already gone (a resumed erasure)
    crash_point("erase.reports")


def _erase_derived(ws: Workspace, hashed: set[str]) -> dict[str, int]:
    """Reference shadows trained on the samples, and the samples' rows in every row-cache file."""
    from behaviors.cache import RowCache
    from behaviors.references import purge_trained_on

    cache = RowCache(ws.store_dir / "cache")
    shadows = purge_trained_on(ws.store_dir / "references", hashed, cache)
    cache_files = cache.drop_samples(lambda sample_id: hash_sample_id(sample_id) in hashed)
    crash_point("erase.derived")
    return {"reference_shadows": shadows, "cache_files": cache_files}


def _erase_dvc_cache(ws: Workspace, md5s: list[str]) -> int:
    cache = dvc_cache_dir(project_root(ws))
    removed = 0
    for md5 in md5s if cache is not None else []:
        for path in dvc_object_paths(cache, md5):
            if path.exists():
                path.chmod(0o600)
                path.unlink()
                removed += 1
    crash_point("erase.dvc_cache")
    return removed


def _shred_rows(ws: Workspace, hashed: set[str], when: str) -> int:
    table = SampleTable.load(ws.data_dir)
    keys = RowKeys.open(ws.data_dir)
    if not table.images.encrypted:  # type: ignore[union-attr]
        raise UmeError(
            "store/data was prepared before rows were encrypted: its pixels cannot be shredded. Run `dvc repro -f prepare` "
            "(every row is then encrypted under its own key) and erase again",
            file=str(ws.data_dir / "images.safetensors"),
        )
    ids = [s for s in table.rows["sample_id"] if hash_sample_id(s) in hashed]
    newly = keys.shred(ids, when)
    keys.save()
    crash_point("erase.keys")
    return len(newly)


def execute(ws: Workspace, plan: ErasurePlan, *, started: float | None = None) -> ErasureOutcome:
    """Carry out a plan (idempotent: a resumed plan redoes what is left) and record it, with the seconds it took."""
    started = time.perf_counter() if started is None else started
    log = DeletionLog.read(ws.ledger)
    hashed = log.hashed_ids(plan.requests)
    deleted = _erase_weights(ws, plan)
    swept = _sweep_local_artifacts(project_root(ws) / "mlruns", plan) if ws.registry.tracking_uri.startswith("sqlite") else 0
    _erase_reports(ws, plan)
    derived = _erase_derived(ws, hashed)
    md5s = sorted({c["md5"] for c in plan.components if c.get("md5")} | {r["md5"] for r in plan.reports})
    objects = _erase_dvc_cache(ws, md5s)
    shredded = _shred_rows(ws, hashed, plan.erased_at)
    entry = {
        "requests": plan.requests,
        "erased_at": plan.erased_at,
        "rows_shredded": shredded,
        "rows": plan.rows,
        "key_store": key_store_dir(ws.data_dir).name,
        "components": plan.components,
        "versions": plan.versions,
        "reports": [r["path"] for r in plan.reports],
        "mlflow_artifacts_deleted": deleted + len(plan.mlflow_reports) + swept,
        "dvc_objects": md5s,
        "dvc_cache_objects_removed": objects,
        **derived,
        "seconds": round(time.perf_counter() - started, 3),
    }
    ws.ledger.append(ERASED_ENTRY, entry)
    return ErasureOutcome(plan, entry)


def run_erasure(ws: Workspace, *, now: datetime | None = None) -> list[ErasureOutcome]:
    """Finish any erasure a crash interrupted, then erase every exact request not yet erased."""
    now = now or datetime.now(UTC)
    outcomes = []
    erasure = ErasureLog.read(ws.ledger)
    seen: set[str] = set()
    for entry in erasure.unfinished.values():
        if entry.hash in seen:
            continue
        seen.add(entry.hash)
        outcomes.append(execute(ws, ErasurePlan.from_json(entry.data)))
    log, erasure = DeletionLog.read(ws.ledger), ErasureLog.read(ws.ledger)
    due = [r for r in due_requests(log, erasure) if r not in erasure.started]
    if due:
        started = time.perf_counter()
        plan = plan_erasure(ws, due, log, erasure, now)
        ws.ledger.append(STARTED_ENTRY, plan.to_json())
        crash_point("erase.planned")
        outcomes.append(execute(ws, plan, started=started))
    return outcomes


def erase_on_remote(ws: Workspace, remote: str | None) -> tuple[str, int, int]:
    """Delete from a DVC remote every object an erasure removed from the local cache; (remote, removed, checked)."""
    from dvc.repo import Repo

    md5s = sorted({m for e in ws.ledger.of_type(ERASED_ENTRY) for m in e.data.get("dvc_objects", [])})
    repo = Repo(str(project_root(ws)))
    try:
        odb = repo.cloud.get_remote_odb(remote, "erase")
        removed = 0
        for md5 in md5s:
            path = odb.oid_to_path(md5)
            if odb.fs.exists(path):
                odb.fs.rm(path)
                removed += 1
        name = remote or str(repo.config["core"].get("remote", ""))
    finally:
        repo.close()
    return name, removed, len(md5s)
