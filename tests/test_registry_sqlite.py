"""The sqlite fast path of registry reads (pipeline.records.registry_sqlite) answers as MLflow does, or steps aside."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.errors import RegistryError
from pipeline.records import registry as registry_module
from pipeline.records.registry import Registry, VersionInfo
from pipeline.records.registry_sqlite import SchemaMismatch, SqliteRegistryReader, open_reader, sqlite_path
from pipeline.records.workspace import Workspace


def reads(registry: Registry) -> tuple[int | None, list, list]:
    """Everything the light commands read: the alias, every version, and each version one by one."""
    versions = registry.versions()
    return registry.champion(), versions, [registry.version(v.version) for v in versions]


def test_fast_reads_equal_mlflow_reads(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real project with a second alias, extra tags and a deleted version, both paths give the same answers."""
    ws = Workspace.open()
    registry = ws.registry
    first = registry.version(registry.champion())
    second = registry.register(first.run_id, "model", {"ume.step": "extra", "note": "x"})
    third = registry.register(first.run_id, "model", {"ume.step": "gone"})
    registry.client.set_registered_model_alias(registry.model_name, "challenger", str(second))
    registry.set_version_tags(second, {"ume.decision": "blocked"})
    registry.client.delete_model_version(registry.model_name, str(third))
    fast = reads(registry)
    reader = open_reader(registry.tracking_uri, registry.model_name)
    assert reader is not None  # the reader itself answers (a SchemaMismatch here would mean the registry fell back to MLflow)
    assert [VersionInfo(*row) for row in reader.versions()] == fast[1] and reader.alias("champion") == fast[0]
    monkeypatch.setattr(registry_module, "open_reader", lambda *_: None)
    slow = reads(registry)
    assert fast[0] == slow[0] and fast[2] == slow[2]  # the alias, and each version read by number: equal in every field
    # MLflow's search leaves ``aliases`` empty (only a read by number fills them); the fast path fills them in both
    assert [replace(v, aliases=()) for v in fast[1]] == slow[1] and fast[1] == fast[2]
    assert [v.version for v in fast[1]] == [first.version, second]  # the deleted version is gone from both
    assert fast[1][1].aliases == ("challenger",) and fast[1][1].tags["ume.decision"] == "blocked"
    with pytest.raises(RegistryError, match="has no version"):
        registry.version(third)


def test_fast_run_params_equal_mlflow_run_params(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs' ledger anchors (``ume audit``) read from the file equal MLflow's ``search_runs``: active runs only, the asked
    parameters only, the run name from its tag; a deleted run is gone from both, and so is everything of an unknown experiment."""
    from pipeline.records.anchors import RUN_ANCHOR_PARAM, RUN_SIGNATURE_PARAM

    ws = Workspace.open()
    registry = ws.registry
    keys = (RUN_ANCHOR_PARAM, RUN_SIGNATURE_PARAM)
    extra = registry.start_run("extra-run", {})
    registry.log_params(extra, {RUN_ANCHOR_PARAM: "1:abc", "other": "x"})
    registry.end_run(extra)
    gone = registry.start_run("gone-run", {})
    registry.log_params(gone, {RUN_ANCHOR_PARAM: "2:def"})
    registry.client.delete_run(gone)
    fast = registry.run_params(keys)
    reader = open_reader(registry.tracking_uri, registry.model_name)
    assert reader is not None and reader.run_params(registry.config.experiment, keys) == fast  # the reader answered, not MLflow
    monkeypatch.setattr(registry_module, "open_reader", lambda *_: None)
    slow = registry.run_params(keys)
    assert sorted(fast) == sorted(slow) and len(fast) >= 2
    assert (extra, "extra-run", {RUN_ANCHOR_PARAM: "1:abc"}) in fast and gone not in {run for run, _, _ in fast}
    assert sum(RUN_ANCHOR_PARAM in params for _, _, params in fast) >= 2  # the base stage's own anchor is among them
    assert reader.run_params("no-such-experiment", keys) == []


def test_fast_reads_of_an_unknown_model_or_version(trained_copy: Path) -> None:
    """No model of that name: no champion and no versions; an unknown version is the same error as MLflow's path."""
    ws = Workspace.open()
    reader = open_reader(ws.registry.tracking_uri, "no-such-model")
    assert reader is not None and reader.alias("champion") is None and reader.versions() == []
    with pytest.raises(RegistryError, match="has no version 999"):
        ws.registry.version(999)


def test_a_schema_it_does_not_know_steps_aside(tmp_path: Path) -> None:
    """A file without MLflow's tables, or a table without a needed column, is a SchemaMismatch (the registry then asks MLflow)."""
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE model_versions (name TEXT, version INTEGER)")
    reader = SqliteRegistryReader(db, "m")
    with pytest.raises(SchemaMismatch, match="lacks"):
        reader.versions()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("sqlite:////abs/dir/mlflow.db", Path("/abs/dir/mlflow.db")),
        ("sqlite:///mlflow.db?timeout=5", None),
        ("sqlite:///:memory:", None),
        ("postgresql://u@h/db", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_only_plain_sqlite_files_are_read_directly(uri: str, expected: Path | None) -> None:
    """Server URIs and sqlite URIs with options go through MLflow."""
    assert sqlite_path(uri) == expected


def test_mlflow_workspaces_turn_the_fast_path_off(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With MLflow workspaces on, MLflow decides what a read sees."""
    uri = Workspace.open().registry.tracking_uri
    assert open_reader(uri, "m") is not None
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-a")
    assert open_reader(uri, "m") is None


def test_status_is_the_same_through_either_path(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ume status`` on a registry a person changed in the UI (the alias moved, a drop tag): the same mapping
    whether the registry is read from the sqlite file or through MLflow."""
    from datetime import UTC, datetime

    from pipeline.records.ui_requests import DROP_TAG
    from pipeline.reports.status import collect_status

    ws = Workspace.open()
    registry = ws.registry
    first = registry.version(registry.champion())
    second = registry.register(first.run_id, "model", dict(first.tags) | {"ume.step": "extra"})
    registry.client.set_registered_model_alias(registry.model_name, "champion", str(second))  # a move in the UI
    registry.set_version_tags(first.version, {DROP_TAG: "yes"})
    now = datetime(2026, 12, 4, tzinfo=UTC)
    fast = collect_status(Workspace.open(), now)
    assert fast["ui_requests"]["unsynced"], "the UI's changes are seen"
    monkeypatch.setattr(registry_module, "open_reader", lambda *_: None)
    assert collect_status(Workspace.open(), now) == fast


def test_no_database_yet_is_an_empty_registry(tmp_path: Path) -> None:
    """Before MLflow's first write there is no file: no champion, no versions, and reading creates nothing."""
    reader = open_reader(f"sqlite:///{tmp_path / 'mlflow.db'}", "m")
    assert reader is not None and reader.alias("champion") is None and reader.versions() == [] and reader.version(1) is None
    assert not (tmp_path / "mlflow.db").exists()
