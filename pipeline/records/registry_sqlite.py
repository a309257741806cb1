"""Read the model registry straight from MLflow's sqlite file, without importing MLflow.

``ume status`` and ``ume audit`` only read the registry: the ``champion`` alias, each version's tags, and
(``ume audit``'s ledger anchors) the parameters of the experiment's runs.
Importing MLflow and its SQLAlchemy store costs seconds on a small machine, more than everything else
these commands do. With the default ``sqlite:///…`` tracking URI this reader answers the same three
questions (:meth:`champion`, :meth:`version`, :meth:`versions`) and :meth:`run_params` from the file MLflow
wrote, opened read-only, with the filters MLflow's own SQLAlchemy stores apply (versions marked
``Deleted_Internal`` do not exist; ``search_runs`` lists active runs only; only the default workspace). Anything it does not recognise (a
server URI, query options, MLflow workspaces switched on, a schema without the expected tables or
columns) makes it step aside: :func:`open_reader` returns None, or a read raises :class:`SchemaMismatch`,
and :class:`pipeline.records.registry.Registry` asks MLflow. Writes always go through MLflow.
tests/test_registry_sqlite.py checks that both paths give the same answers on a real project.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

DELETED_STAGE = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages.STAGE_DELETED_INTERNAL
DEFAULT_WORKSPACE = "default"  # mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME
NEEDED = {
    "registered_models": {"name"},
    "model_versions": {"name", "version", "current_stage", "source", "run_id", "description"},
    "model_version_tags": {"key", "value", "name", "version"},
    "registered_model_aliases": {"alias", "version", "name"},
}

RUN_TABLES = {  # what run_params reads (MLflow's tracking store, beside the registry in the same file)
    "experiments": {"experiment_id", "name"},
    "runs": {"run_uuid", "experiment_id", "lifecycle_stage", "start_time"},
    "params": {"key", "value", "run_uuid"},
    "tags": {"key", "value", "run_uuid"},
}
ACTIVE = "active"  # mlflow.entities.LifecycleStage.ACTIVE: what search_runs' default ViewType.ACTIVE_ONLY keeps
RUN_NAME_TAG = "mlflow.runName"


class SchemaMismatch(Exception):
    """The file is not laid out as this reader expects: ask MLflow instead."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a plain ``sqlite:///`` URI (relative to the working directory, as SQLAlchemy reads it); None otherwise."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or "?" in tracking_uri:
        return None
    rest = tracking_uri[len(prefix) :]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def _workspaces_on() -> bool:
    """Whether MLflow may scope reads to a workspace other than the default one."""
    enabled = os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true", "yes")
    chosen = os.environ.get("MLFLOW_WORKSPACE", "").strip()
    return enabled or chosen not in ("", DEFAULT_WORKSPACE)


Row = tuple[int, str | None, dict[str, str], tuple[str, ...], str, str]  # version, run id, tags, aliases, source, description


class SqliteRegistryReader:
    """Read-only answers about one registered model, from MLflow's sqlite file."""

    def __init__(self, path: Path, model_name: str) -> None:
        self.path = path
        self.model_name = model_name

    @contextmanager
    def _session(self) -> Iterator[Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """One read-only connection, its schema checked once (a writer in another process is waited for, up to 30 s).

        Yields ``query(sql, args)``: ``sql`` ends its WHERE clause with ``{workspace}``, which on a schema with
        MLflow's ``workspace`` columns becomes a filter on the default workspace (table alias ``v``), else nothing.
        """
        with self._checked(NEEDED) as (conn, columns):
            with_workspace = ["workspace" in cols for cols in columns.values()]
            if any(with_workspace) and not all(with_workspace):
                raise SchemaMismatch(f"{self.path}: only some tables have a workspace column")
            clause, extra = (" AND v.workspace = ?", (DEFAULT_WORKSPACE,)) if all(with_workspace) else ("", ())

            def query(sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                return conn.execute(sql.format(workspace=clause), (*args, *extra)).fetchall()

            yield query

    @contextmanager
    def _checked(self, tables: dict[str, set[str]]) -> Iterator[tuple[sqlite3.Connection, dict[str, set[str]]]]:
        """A read-only connection and the columns of ``tables``, each holding the columns it must; any sqlite error is a SchemaMismatch."""
        try:
            with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)) as conn:
                columns = {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
                for table, needed in tables.items():
                    if not needed <= columns[table]:
                        raise SchemaMismatch(f"{self.path}: table {table} lacks {sorted(needed - columns[table])}")
                yield conn, columns
        except sqlite3.Error as exc:
            raise SchemaMismatch(f"{self.path}: {exc}") from None

    def _versions(self, only: int | None = None) -> list[Row]:
        """Every live version, or only version ``only``: three queries on one connection."""
        if not self.path.exists():  # nothing registered yet (MLflow creates the file on its first write)
            return []
        one, args = ("", (self.model_name,)) if only is None else (" AND v.version = ?", (self.model_name, only))
        with self._session() as query:
            rows = query(f"SELECT v.version, v.run_id, v.source, v.description FROM model_versions v WHERE v.name = ?{one}"
                         " AND v.current_stage != ?{workspace}", (*args, DELETED_STAGE))  # fmt: skip
            tags: dict[int, dict[str, str]] = {int(r[0]): {} for r in rows}
            aliases: dict[int, list[str]] = {int(r[0]): [] for r in rows}
            if rows:
                for key, value, version in query(f"SELECT v.key, v.value, v.version FROM model_version_tags v WHERE v.name = ?{one}{{workspace}}", args):
                    if int(version) in tags:
                        tags[int(version)][key] = value
                for alias, version in query(f"SELECT v.alias, v.version FROM registered_model_aliases v WHERE v.name = ?{one}{{workspace}}", args):
                    if int(version) in aliases:
                        aliases[int(version)].append(alias)
        return sorted(
            (int(v), run_id, tags[int(v)], tuple(sorted(aliases[int(v)])), source or "", description or "") for v, run_id, source, description in rows
        )

    def alias(self, alias: str) -> int | None:
        """The version ``alias`` points at, or None (no model, or no such alias)."""
        if not self.path.exists():
            return None
        with self._session() as query:
            rows = query(
                "SELECT v.version FROM registered_model_aliases v JOIN model_versions m ON m.name = v.name AND m.version = v.version"
                " WHERE v.name = ? AND v.alias = ? AND m.current_stage != ?{workspace}",
                (self.model_name, alias, DELETED_STAGE),
            )
        return int(rows[0][0]) if rows else None

    def run_params(self, experiment: str, keys: tuple[str, ...]) -> list[tuple[str, str, dict[str, str]]]:
        """Each active run of ``experiment``, newest first, as (run id, run name, its parameters among ``keys``).

        No file or no such experiment: an empty list (as MLflow's ``get_experiment_by_name`` then ``search_runs`` give).
        """
        if not self.path.exists():
            return []
        with self._checked(RUN_TABLES) as (conn, columns):
            clause, extra = (" AND e.workspace = ?", (DEFAULT_WORKSPACE,)) if "workspace" in columns["experiments"] else ("", ())
            found = conn.execute(f"SELECT e.experiment_id FROM experiments e WHERE e.name = ?{clause}", (experiment, *extra)).fetchall()
            if not found:
                return []
            runs = conn.execute(
                "SELECT run_uuid FROM runs WHERE experiment_id = ? AND lifecycle_stage = ? ORDER BY start_time DESC, run_uuid",
                (found[0][0], ACTIVE),
            ).fetchall()
            marks = ",".join("?" * len(keys))
            params: dict[str, dict[str, str]] = {r[0]: {} for r in runs}
            names: dict[str, str] = {}
            query = f"SELECT p.run_uuid, p.key, p.value FROM params p JOIN runs r ON r.run_uuid = p.run_uuid WHERE r.experiment_id = ? AND p.key IN ({marks})"
            for run, key, value in conn.execute(query, (found[0][0], *keys)):
                if run in params:
                    params[run][key] = value
            query = "SELECT t.run_uuid, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid WHERE r.experiment_id = ? AND t.key = ?"
            for run, value in conn.execute(query, (found[0][0], RUN_NAME_TAG)):
                names[run] = value
        return [(run, names.get(run, run), params[run]) for (run,) in runs]

    def version(self, version: int) -> Row | None:
        """One live version's fields, or None."""
        found = self._versions(only=version)
        return found[0] if found else None

    def versions(self) -> list[Row]:
        """Every live version's fields, oldest first."""
        return self._versions()


def open_reader(tracking_uri: str, model_name: str) -> SqliteRegistryReader | None:
    """A reader for ``tracking_uri`` when it is a plain sqlite file (or none yet) and MLflow workspaces are off; else None."""
    path = sqlite_path(tracking_uri)
    if path is None or _workspaces_on() or (path.exists() and not path.is_file()):
        return None
    return SqliteRegistryReader(path, model_name)
