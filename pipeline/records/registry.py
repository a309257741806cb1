"""The MLflow side: one run per step, one registered model version per candidate, the ``champion`` alias.

Works with any tracking URI: ``sqlite:///mlflow.db`` by default, or an MLflow server backed by
PostgreSQL. Versions carry the tags ``ume.step``, ``ume.manifest_hash``, ``ume.decision`` and a
behaviour summary; runs carry behaviour metrics, the report artifacts and their dataset inputs
(:meth:`Registry.log_datasets`, :mod:`pipeline.records.datasets`). Only :mod:`pipeline.records.gate`
moves the alias (through :meth:`Registry.set_champion`); a person may move it in the MLflow UI, and
:mod:`pipeline.records.ui_requests` reads that move as a rollback request.

With a plain ``sqlite:///`` URI the three reads the light commands make (:meth:`Registry.champion`,
:meth:`Registry.version`, :meth:`Registry.versions`) go straight to the file
(:mod:`pipeline.records.registry_sqlite`), so ``ume status`` never imports MLflow; every write, and
every read of another URI, goes through :class:`mlflow.MlflowClient`, made on first use.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.core.config import RegistryConfig
from pipeline.core.errors import RegistryError
from pipeline.records.registry_sqlite import SchemaMismatch, SqliteRegistryReader, open_reader

T = TypeVar("T")

if TYPE_CHECKING:
    from pipeline.records.datasets import DataInput

CHAMPION = "champion"
logging.getLogger("alembic").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from our processes
# An unreachable tracking server must fail a step in seconds, not after MLflow's default of 7 retries
# with exponential backoff and a 120 s timeout (minutes). Set these variables to override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(name: str) -> str:
    """MLflow allows alphanumerics, ``_ - . : /`` and spaces; brackets become ``.``."""
    return _METRIC_NAME.sub(".", name).rstrip(".")


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version as ume sees it."""

    version: int
    run_id: str | None
    tags: dict[str, str]
    aliases: tuple[str, ...]
    source: str
    description: str = ""

    @property
    def manifest_hash(self) -> str | None:
        """The ``ume.manifest_hash`` tag."""
        return self.tags.get("ume.manifest_hash")


def _unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error is the transport failing (no answer from the server), not an answer."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.RequestException):
            return True
        seen = seen.__cause__ or seen.__context__
    message = str(getattr(exc, "message", exc))
    return message.startswith("API request to ") and " failed with " in message


def unreachable_error(exc: BaseException, tracking_uri: str) -> RegistryError | None:
    """The one-line error for an MLflow call that got no answer from the tracking server; None for any other error."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or not _unreachable(exc):
        return None
    text = str(getattr(exc, "message", exc))
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    reason = errno.group(0).strip() if errno else ("timed out" if "timeout" in text.lower() else " ".join(text.split())[:200])
    return RegistryError(
        f"cannot reach the MLflow tracking server at {tracking_uri} ({reason}); stopped before any"
        " further change, nothing more is promoted: rerun once the server is back",
        field="registry.tracking_uri",
    )


class _FailClosedClient:
    """An :class:`mlflow.MlflowClient` whose transport failures become one-line :class:`RegistryError` s.

    Any MLflow call that cannot reach the tracking server stops the command there: nothing after it
    runs, so no alias moves (the gate fails closed); rerunning once the server is back completes the step.
    """

    def __init__(self, client: Any, tracking_uri: str) -> None:
        self._client = client
        self._tracking_uri = tracking_uri

    def __getattr__(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except MlflowException as exc:
                error = unreachable_error(exc, self._tracking_uri)
                if error is None:
                    raise
                raise error from None

        return call


class Registry:
    """A thin, typed wrapper over :class:`mlflow.MlflowClient` for one registered model."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self.model_name = config.model_name
        self._experiment_id: str | None = None

    @cached_property
    def client(self) -> Any:
        """The fail-closed MLflow client, made on first use: a command that only reads a sqlite registry never imports MLflow."""
        from mlflow import MlflowClient

        return _FailClosedClient(MlflowClient(tracking_uri=self.config.tracking_uri, registry_uri=self.config.tracking_uri), self.config.tracking_uri)

    def _fast(self, read: Callable[[SqliteRegistryReader], T]) -> T | None:
        """``read`` answered from the sqlite file directly (:mod:`pipeline.records.registry_sqlite`); None: ask MLflow."""
        reader = open_reader(self.config.tracking_uri, self.model_name)
        if reader is None:
            return None
        try:
            return read(reader)
        except SchemaMismatch as exc:
            logging.getLogger("ume.registry").debug("reading MLflow's registry through MLflow: %s", exc)
            return None

    @property
    def tracking_uri(self) -> str:
        """Where runs go."""
        return self.config.tracking_uri

    def experiment_id(self) -> str:
        """The experiment's id, created on first use."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.config.experiment)
            self._experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.config.experiment)
        return self._experiment_id

    def start_run(self, name: str, tags: dict[str, str]) -> str:
        """Create a run for a step; returns its id."""
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run finished (or FAILED)."""
        self.client.set_terminated(run_id, status=status)

    def running_runs(self) -> list[str]:
        """Ids of this experiment's runs still marked RUNNING (left by a killed process when no stage runs)."""
        exp = self.client.get_experiment_by_name(self.config.experiment)
        if exp is None:
            return []
        runs = self.client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
        return [run.info.run_id for run in runs]

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log flat parameters (values stringified, truncated to MLflow's limit)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log numeric metrics in one batch."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on a run."""
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def log_datasets(self, run_id: str, inputs: Sequence[DataInput], *, source: str, tags: dict[str, str] | None = None) -> None:
        """Log the run's data inputs (:mod:`pipeline.records.datasets`) as MLflow datasets, in one call.

        Each is a :class:`mlflow.data.meta_dataset.MetaDataset` (no data: name, digest, source) whose
        source is the local path ``source`` (the prepared data, DVC's ``store/data``), with its row count
        as the profile; the input carries its context (``mlflow.data.context``) and ``tags``. MLflow keeps
        one dataset per name and digest in an experiment and one input per dataset and run, so logging
        the same inputs again changes nothing.
        """
        import json

        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if not inputs:
            return
        where = LocalArtifactDatasetSource(source)
        items = []
        for item in inputs:
            meta = MetaDataset(where, name=item.name, digest=item.digest).to_dict()
            entity = Dataset(**meta, profile=json.dumps({"rows": item.rows}))
            input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, item.context), *(InputTag(k, v) for k, v in sorted((tags or {}).items()))]
            items.append(DatasetInput(entity, input_tags))
        self.client.log_inputs(run_id, datasets=items)

    def log_artifacts(self, run_id: str, directory: str | Path, artifact_path: str) -> None:
        """Upload a directory of artifacts under ``artifact_path``."""
        self.client.log_artifacts(run_id, str(directory), artifact_path)

    def artifact_uri(self, run_id: str) -> str:
        """The run's artifact root URI."""
        return self.client.get_run(run_id).info.artifact_uri

    def run_params(self, keys: tuple[str, ...]) -> list[tuple[str, str, dict[str, str]]]:
        """Each active run of the experiment, newest first: (run id, run name, its parameters among ``keys``).

        Read from the sqlite file when the tracking URI is one (``ume audit`` then never imports MLflow), else from MLflow.
        """
        fast = self._fast(lambda reader: (reader.run_params(self.config.experiment, keys),))
        if fast is not None:
            return fast[0]
        exp = self.client.get_experiment_by_name(self.config.experiment)
        if exp is None:
            return []
        out: list[tuple[str, str, dict[str, str]]] = []
        token = None
        while True:
            page = self.client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
            for run in page:
                params = {k: v for k, v in run.data.params.items() if k in keys}
                out.append((run.info.run_id, run.data.tags.get("mlflow.runName", run.info.run_id), params))
            token = page.token
            if not token:
                return out

    def run_ids(self) -> list[str]:
        """Every run of the experiment (erasure visits their artifacts)."""
        runs = self.client.search_runs([self.experiment_id()], max_results=50000)
        return [run.info.run_id for run in runs]

    def artifact_files(self, run_id: str, path: str) -> list[str]:
        """The file paths under ``path`` of a run's artifacts (empty when there is none)."""
        return [f.path for f in self.client.list_artifacts(run_id, path) if not f.is_dir]

    def download_artifact(self, run_id: str, path: str, directory: str | Path) -> Path:
        """One artifact file, downloaded into ``directory``."""
        return Path(self.client.download_artifacts(run_id, path, str(directory)))

    def delete_artifact(self, run_id: str, path: str) -> None:
        """Delete one artifact file of a run, in the artifact store itself (local files, or the tracking server's
        proxied store): MLflow's artifact repository API, which local and ``mlflow-artifacts:`` stores implement."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(self.artifact_uri(run_id), tracking_uri=self.tracking_uri).delete_artifacts(path)

    def register(self, run_id: str, artifact_path: str, tags: dict[str, str]) -> int:
        """Register a model version whose files are the run's ``artifact_path``; returns its number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(
                self.model_name, description="Managed by ume: base + overlays, promoted through the behaviour gate."
            )
        source = f"{self.artifact_uri(run_id)}/{artifact_path}"
        mv = self.client.create_model_version(self.model_name, source=source, run_id=run_id, tags=tags)
        return int(mv.version)

    def set_version_tags(self, version: int, tags: dict[str, str]) -> None:
        """Set tags on a model version."""
        for k, v in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), k, v)

    def delete_version_tag(self, version: int, key: str) -> None:
        """Remove one tag from a model version (nothing when it is not set)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version_tag(self.model_name, str(version), key)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def set_version_description(self, version: int, text: str) -> None:
        """A model version's description (Markdown in the MLflow UI)."""
        self.client.update_model_version(self.model_name, str(version), description=text)

    def model_page(self) -> tuple[str, dict[str, str]]:
        """The registered model's description and tags (empty when the model does not exist yet)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return "", {}
        return model.description or "", dict(model.tags or {})

    def set_model_description(self, text: str) -> None:
        """The registered model's description (Markdown in the MLflow UI)."""
        self.client.update_registered_model(self.model_name, description=text)

    def set_model_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the registered model."""
        for k, v in tags.items():
            self.client.set_registered_model_tag(self.model_name, k, v)

    def champion(self) -> int | None:
        """The version the ``champion`` alias points at, or None."""
        fast = self._fast(lambda reader: (reader.alias(CHAMPION),))
        if fast is not None:
            return fast[0]
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(self.model_name, CHAMPION).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no model, or no alias yet
                return None
            raise RegistryError(f"cannot read the {CHAMPION!r} alias of {self.model_name!r}: {exc.message}", field="registry") from None

    def set_champion(self, version: int) -> None:
        """Move the ``champion`` alias (only the gate calls this)."""
        self.client.set_registered_model_alias(self.model_name, CHAMPION, str(version))

    def version(self, version: int) -> VersionInfo:
        """One version; :class:`RegistryError` if it does not exist."""
        fast = self._fast(lambda reader: (reader.version(version),))
        if fast is not None:
            if fast[0] is None:
                raise RegistryError(f"model {self.model_name!r} has no version {version}", field="version")
            return VersionInfo(*fast[0])
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.model_name, str(version))
        except MlflowException:
            raise RegistryError(f"model {self.model_name!r} has no version {version}", field="version") from None
        return _info(mv)

    def versions(self) -> list[VersionInfo]:
        """Every version of the model, oldest first."""
        fast = self._fast(lambda reader: reader.versions())
        if fast is not None:
            return [VersionInfo(*row) for row in fast]
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.model_name}'", max_results=10000)
        except MlflowException as exc:  # an unknown model is an empty list, not an error: this is something else
            raise RegistryError(f"cannot list the versions of {self.model_name!r}: {exc.message}", field="registry") from None
        out = [_info(mv) for mv in found]
        return sorted(out, key=lambda v: v.version)


def _info(mv: Any) -> VersionInfo:
    """An MLflow ``ModelVersion`` as a :class:`VersionInfo`."""
    return VersionInfo(int(mv.version), mv.run_id, dict(mv.tags), tuple(mv.aliases or ()), mv.source, mv.description or "")


FOLLOWER_VERSION = 0  # what a follower's register() answers: no real version is ever 0


class FollowerRegistry(Registry):
    """The registry as a DDP follower sees it: reads go to MLflow, every write does nothing.

    Rank 0 creates the runs, registers the versions and moves the alias; a follower takes the same
    code path, so its writes return harmless values (a placeholder run id, version 0).
    """

    def start_run(self, name: str, tags: dict[str, str]) -> str:
        """No run: a placeholder id."""
        return f"follower-{name}"

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Nothing to end."""

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Rank 0 logs them."""

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Rank 0 logs them."""

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Rank 0 sets them."""

    def log_datasets(self, run_id: str, inputs: Sequence[DataInput], *, source: str, tags: dict[str, str] | None = None) -> None:
        """Rank 0 logs them."""

    def log_artifacts(self, run_id: str, directory: str | Path, artifact_path: str) -> None:
        """Rank 0 uploads them."""

    def delete_artifact(self, run_id: str, path: str) -> None:
        """Rank 0 erases it."""

    def register(self, run_id: str, artifact_path: str, tags: dict[str, str]) -> int:
        """Rank 0 registers the version; a follower gets the placeholder 0."""
        return FOLLOWER_VERSION

    def set_version_tags(self, version: int, tags: dict[str, str]) -> None:
        """Rank 0 tags it."""

    def set_champion(self, version: int) -> None:
        """Only rank 0's gate moves the alias."""

    def delete_version_tag(self, version: int, key: str) -> None:
        """Rank 0 removes it."""

    def set_version_description(self, version: int, text: str) -> None:
        """Rank 0 writes it."""

    def set_model_description(self, text: str) -> None:
        """Rank 0 writes it."""

    def set_model_tags(self, tags: dict[str, str]) -> None:
        """Rank 0 sets them."""
