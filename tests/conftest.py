"""Shared fixtures: tiny projects (tests/projects.py), one trained base per session, and the perturbation knobs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.projects import base_template, clone_project, tiny_params_dict, write_params

# No wall-clock deadline for any property test: two workers share two cores, and a case that writes
# files (fsync) took 408 ms once against hypothesis' default 200 ms. Time is measured in bench/, never here.
settings.register_profile("ume", deadline=None)
settings.load_profile("ume")


def pytest_configure(config: pytest.Config) -> None:
    """Set the CPU threads of every process of the run: this one and the ``ume``/``dvc`` it starts.

    ``UME_TEST_THREADS=n`` sets them (a perturbation knob: another summation order in every kernel).
    Otherwise each pytest-xdist worker gets its share of the cores: two workers that each spin two
    OpenMP threads on two cores wait on each other, and a step took five times as long.
    """
    threads = os.environ.get("UME_TEST_THREADS")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not threads and workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
    if threads:
        os.environ["OMP_NUM_THREADS"] = threads
        os.environ["MKL_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))
    # The gates of this suite check ume's plumbing on crafted cases: 8 hypothesis examples per property instead of the
    # shipped 25-30 (behaviors/limits.py, property_examples), which were over half of every gate's time here. The specs'
    # power is the benchmarks' job; a test that needs the shipped count sets the variable itself.
    os.environ.setdefault("UME_PROPERTY_EXAMPLES", "8")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _start_session_warm_process(config)


def _start_session_warm_process(config: pytest.Config) -> None:
    """One warm process for the run's ``ume`` commands, private to it (docs/start-up.md), stopped at the end.

    Its socket lives in a directory of this run (``UME_WARM_DIR``, inherited by the pytest-xdist workers and every
    command they start), so a developer's own warm process is neither used nor stopped. ``UME_WARM=0`` runs every
    command cold.
    """
    from pipeline.core import warm

    if not warm.enabled():
        return
    os.environ[warm.DIR_ENV] = tempfile.mkdtemp(prefix="ume-warm-")
    warm.start()
    config.add_cleanup(_stop_session_warm_process)


def _stop_session_warm_process() -> None:
    """Stop the run's warm process and remove its directory."""
    from pipeline.core import warm

    warm.stop()
    shutil.rmtree(os.environ.pop(warm.DIR_ENV), ignore_errors=True)


# The slowest modules first: pytest-xdist hands out whole files (--dist loadfile) in collection order, so
# the long ones start at once on both workers instead of trailing at the end (longest-first scheduling).
SLOW_FIRST = (
    "test_e2e.py",
    "test_newcomer.py",
    "test_crash.py",
    "test_scaleout_mlflow.py",
    "test_stateful.py",
    "test_scaleout_ddp.py",
    "test_edit_merge.py",
    "test_own_images.py",
    "test_forget_evidence.py",
    "test_forget_steps.py",
    "test_two_phase.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the modules longest first (stable within a module)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory (cwd) with tiny params.yaml."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params_dict(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project with prepared data and a gated base: the session's template, copied once per worker, without DVC."""
    root = tmp_path_factory.mktemp("trained") / "proj"
    clone_project(base_template(tmp_path_factory), root, absolute=True, plain=True)
    old = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(old)


@pytest.fixture
def trained_copy(trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained project (tests may change it freely)."""
    dest = clone_project(trained_project, tmp_path / "proj", absolute=True)
    monkeypatch.chdir(dest)
    return dest

