"""Test projects: tiny params with wide-margin thresholds, and templates built once per test session.

Two rules keep the suite green on any machine of the same kind (float kernels differ between CPUs, so
the same stream gives different numbers there):

- **Wide margins.** :data:`TEST_THRESHOLDS` puts every quality bound far from what a healthy tiny
  model measures, so a normal step is promoted whatever the machine. A test that needs a *blocked*
  step uses :data:`BAD_DROP`: slice ``u2`` with every label wrong, learned without replay at a high
  learning rate, which takes test accuracy from ~0.93 to ~0.1 (the floor is 0.5, the drop limit 0.3).
  Quality itself is measured in ``bench/``, never asserted here.
- **Perturbations.** ``UME_TEST_SEED`` (default 0) changes the seed of every test project (data split
  and training), and ``UME_TEST_THREADS`` the number of CPU threads every process uses (conftest), to
  mimic another machine: the suite must pass under each (docs/testing.md).

Templates: the repository's pipeline with tiny params, ``dvc repro base`` run once per test session
(across pytest-xdist workers, under a file lock) and copied by every test that needs a trained base.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", "store", "mlruns", "mlartifacts", "mlflow.db", ".git", "tmp", "cache", "config.local", "dvc.lock", "__pycache__", ".hypothesis",
    "*.egg-info", "dvc_plots", "certificates", "bench", "docs", "requests",
)

# Every bound far from a healthy 8-epoch test_resnet (test accuracy ~0.93, group gap ~0.35) and far
# from BAD_DROP (test accuracy ~0.1). Wall-clock budgets are off: two test workers share two cores.
TEST_THRESHOLDS: dict[str, float] = {
    "min_test_accuracy": 0.5,
    "max_test_accuracy_drop": 0.3,
    "max_retained_accuracy_drop": 0.3,
    "max_class_recall_drop": 0.8,
    "min_canary_agreement": 0.5,
    "max_calibration_error_increase": 0.4,
    "min_brightness_agreement": 0.6,
    "forget_accuracy_tolerance": 0.3,
    "max_forgotten_class_recall": 0.5,
    "max_mia_accuracy": 0.95,
    "max_group_accuracy_gap": 0.8,
    "max_group_gap_increase": 0.4,
    "max_latency_ratio": 1000.0,
    "min_perturbation_agreement": 0.5,
    "min_edit_success": 0.3,
    "min_edit_holdout_success": 0.0,
    "min_edit_locality": 0.6,
    "min_slice_gain": -1.0,  # the learning guards are shown on crafted models (tests/test_learning_guards.py)
    "max_slice_forgetting": 1.0,
}
# A bad data drop no float difference can hide: every u2 label wrong (data.corrupt_labels), no replay.
# Stacked on the champion, so that its harm is not averaged with the other overlays (a crafted, wide margin).
BAD_DROP: dict[str, Any] = {"kind": "learn", "slice": "u2", "epochs": 6, "replay": 0.0, "lr": 0.02, "layout": "stacked"}
BAD_DROP_FAILS = "test_test_accuracy_no_drop"  # one of the behaviours it fails, by ~0.85 against a 0.3 limit


def project_seed() -> int:
    """The seed of every test project (``UME_TEST_SEED``, a perturbation knob)."""
    return int(os.environ.get("UME_TEST_SEED", "0"))


def tiny_params_dict(root: Path | None = None) -> dict[str, Any]:
    """The repo's params.yaml made small, with wide-margin thresholds.

    With ``root``, the store and the sqlite registry are absolute paths under it (for in-process tests,
    whose working directory changes); without, they stay relative, as a user's project has them.
    """
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["seed"] = project_seed()
    if root is not None:
        raw["paths"]["store"] = str(root / "store")
        raw["registry"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
        raw["behaviors"]["path"] = str(REPO / "behaviors")
    raw["data"]["corrupt_labels"] = {"u2": 1.0}
    raw["train"]["progress_bar"] = False
    raw["train"]["base"]["epochs"] = 8
    raw["behaviors"]["thresholds"].update(TEST_THRESHOLDS)
    raw["stream"] = {
        "s01": {"kind": "learn", "parent": "base", "slice": "u1", "epochs": 3},
        "s02": {**BAD_DROP, "parent": "s01"},
    }
    return raw


def write_params(root: Path, raw: dict[str, Any]) -> Path:
    """Write ``raw`` as ``root/params.yaml``."""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def in_ci() -> bool:
    """Whether ``CI`` says this run is CI (``true``, ``1`` or ``yes``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> None:
    """A test cannot run here: fail under ``CI=true`` (CI never passes with an engine untested), skip elsewhere (issue 29)."""
    if in_ci():
        pytest.fail(f"CI=true, and {reason}", pytrace=False)
    pytest.skip(reason)


def command_env() -> dict[str, str]:
    """This process's environment with this interpreter's ``bin`` first on PATH (``ume``, ``dvc``)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(cwd: Path, *args: str, check: bool = True, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` (:func:`command_env` plus ``env``); raise with its output when ``check`` and it fails."""
    proc = subprocess.run(list(args), cwd=cwd, env=command_env() | (env or {}), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode} in {cwd}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def repo_copy(dest: Path) -> Path:
    """This repository's pipeline (no store, no registry, no DVC lock) as a fresh git project with tiny params."""
    shutil.copytree(REPO, dest, ignore=COPY_IGNORE)
    sh(dest, "git", "init", "-q")
    write_params(dest, tiny_params_dict())
    return dest


def shared_root(factory: pytest.TempPathFactory) -> Path:
    """A directory every pytest-xdist worker of this session sees (the workers' common parent)."""
    base = factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "ume-shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def base_template(factory: pytest.TempPathFactory) -> Path:
    """The tiny project after ``dvc repro base`` (data prepared, base trained and gated): built once per session.

    The first worker to ask builds it under a file lock; the others wait and reuse it. Never changed
    after it is built: tests work on copies (:func:`clone_project`).
    """
    from filelock import FileLock

    root = shared_root(factory)
    template = root / "base-template"
    with FileLock(str(root / "base-template.lock")):
        if not (template / "store" / "steps" / "base.json").exists():
            shutil.rmtree(template, ignore_errors=True)
            repo_copy(template)
            sh(template, "dvc", "repro", "base")
    return template


DVC_FILES = ("dvc.yaml", "dvc.lock", ".dvc", ".dvcignore", ".git")


def clone_project(template: Path, dest: Path, *, absolute: bool = False, plain: bool = False, stream: dict[str, Any] | None = None) -> Path:
    """A private copy of a template project.

    ``plain`` drops the git and DVC files: steps then run in-process (``ume rollback`` included) and no
    ``seal`` stage replaces ``mlflow.db`` under the test's feet. ``absolute`` points the store and the
    sqlite registry at the copy by absolute paths (in-process tests: MLflow keeps one database engine
    per tracking URI per process, so a relative URI would keep reading the first project). ``stream``
    replaces the stream. Neither is a DVC parameter of a finished stage, so nothing that ran in the
    template reruns.
    """
    shutil.copytree(template, dest, symlinks=True, ignore=shutil.ignore_patterns(*DVC_FILES) if plain else None)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    if absolute:
        raw["paths"]["store"] = str(dest / "store")
        raw["registry"]["tracking_uri"] = f"sqlite:///{dest / 'mlflow.db'}"
        raw["behaviors"]["path"] = str(REPO / "behaviors")
    if stream is not None:
        raw["stream"] = stream
    write_params(dest, raw)
    return dest


def keep_prepared_data(project: Path) -> Path:
    """Empty a cloned project's registry and store except ``store/data``: its base must be trained again
    (by DDP ranks, or against another registry) while the prepared data is reused."""
    (project / "mlflow.db").unlink(missing_ok=True)
    shutil.rmtree(project / "mlruns", ignore_errors=True)
    for path in (project / "store").iterdir():
        if path.name not in ("data", "data-keys"):  # the prepared table and its row keys
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return project


def _forget_mlflow_stores() -> None:
    """Close MLflow's pooled database connections, so the next query opens ``mlflow.db`` as it is now.

    DVC's ``seal`` stage replaces ``mlflow.db`` with a copy from its cache: a connection opened before
    keeps reading (and fails to write) the unlinked old file. ``ume`` commands are one process per
    command and never see this; a test process that reads a project between ``dvc repro`` runs does.
    MLflow keeps its engines in a class-level map per URI; disposing one only empties its pool.
    """
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    for store in (RegistryStore, TrackingStore):
        for engine in list(store._engine_map.values()):
            engine.dispose()


@contextlib.contextmanager
def opened(root: Path):
    """The project's workspace, opened in-process as ``ume`` would open it in ``root``.

    A relative sqlite URI is made absolute first: MLflow keeps one engine per URI per process, and
    ``sqlite:///mlflow.db`` would otherwise keep reading the first project this process opened.
    """
    from pipeline.core.config import load_params
    from pipeline.records.workspace import Workspace

    _forget_mlflow_stores()
    with contextlib.chdir(root):
        params = load_params("params.yaml")
        uri = params.registry.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            absolute = f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
            params = dataclasses.replace(params, registry=dataclasses.replace(params.registry, tracking_uri=absolute))
        yield Workspace(params)


def project_status(root: Path) -> dict[str, Any]:
    """What ``ume status --json`` prints, computed in-process (no interpreter start), without the tracking URI
    and the clock reading ``as_of`` (two calls a second apart must compare equal)."""
    from pipeline.reports.status import collect_status

    with opened(root) as ws:
        status = json.loads(json.dumps(collect_status(ws)))
    status.pop("tracking_uri", None)
    status.pop("as_of", None)
    return status


def project_audit(root: Path) -> list[str]:
    """The problems ``ume audit`` would report, checked in-process (empty: the audit passes)."""
    from pipeline.reports.audit import audit

    with opened(root) as ws:
        return list(audit(ws.ledger, ws.registry, store=ws.components, manifest_of=ws.manifest_of).problems)


def assert_decided_by_its_checks(step: dict[str, Any]) -> None:
    """A step whose outcome a test does not fix (a short learn step may land on either side of a guard)
    was still judged: blocked exactly when a blocking behaviour failed (a decision the gate never made fails)."""
    assert step["decision"] == ("blocked" if step["failing"] else "promoted"), {k: step.get(k) for k in ("decision", "failing", "reason")}

