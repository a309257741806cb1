"""The bad-input corpus: every case gives one clear error (file, field, expectation), a non-zero exit, and changes nothing.

The cases live in one place, :data:`bench.reliability.CASES` (``python -m bench.reliability`` counts
them for ``bench/results/reliability.json``). Each runs in a private copy of a shared template
project. The MLflow-unreachable case runs once: its recovery (the same step completing once the
tracking server is back) trains ``s01`` and so yields the ``learned`` template of the adapter and
alias cases.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from bench.reliability import CASES, MARKER, BadInput, Outcome, PicklePayload, require_champion, run_case
from pipeline.core.errors import ComponentError
from pipeline.model.components import ComponentDraft, ComponentStore
from tests.projects import tiny_params_dict, write_params

BY_NAME = {case.name: case for case in CASES}
MLFLOW = "mlflow-unreachable"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def mlflow_outcome(trained_project: Path, workdir: Path) -> Outcome:
    """MLflow unreachable, then back: the step fails closed, then the same step completes."""
    require_champion(trained_project)
    return run_case(BY_NAME[MLFLOW], trained_project, workdir / "mlflow")


def _template(name: str, request: pytest.FixtureRequest, workdir: Path) -> Path:
    if name == "trained":
        trained = request.getfixturevalue("trained_project")
        require_champion(trained)
        return trained
    if name == "learned":
        outcome = request.getfixturevalue("mlflow_outcome")
        assert outcome.recovered, f"no learned template: {MLFLOW} did not recover: {outcome.problems}"
        return workdir / "mlflow" / MLFLOW
    empty = workdir / "empty"
    if not empty.exists():
        empty.mkdir()
        write_params(empty, tiny_params_dict(empty))
    return empty


def _explain(outcome: Outcome) -> str:
    return f"exit {outcome.exit_code}; stderr {outcome.stderr[:3]}; problems {outcome.problems}; changed {outcome.changed[:5]}"


def test_the_corpus_is_well_formed() -> None:
    assert len(BY_NAME) == len(CASES), "case names must be unique"
    assert {case.template for case in CASES} <= {"empty", "trained", "learned"}
    assert all(case.expect and case.exit_code in (1, 2) for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_cleanly(case: BadInput, request: pytest.FixtureRequest, workdir: Path, tmp_path: Path) -> None:
    if case.name == MLFLOW:
        outcome = request.getfixturevalue("mlflow_outcome")
    else:
        outcome = run_case(case, _template(case.template, request, workdir), tmp_path)
    assert outcome.clean, _explain(outcome)


def test_unreachable_mlflow_fails_fast_and_nothing_is_lost(mlflow_outcome: Outcome) -> None:
    assert mlflow_outcome.exit_code == 2 and not mlflow_outcome.changed, _explain(mlflow_outcome)
    assert mlflow_outcome.command_seconds < 60, "the HTTP retries must not hold a step for minutes"
    assert mlflow_outcome.recovered, "once the tracking server is back, the same step completes"


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_payload_at_a_weights_path_is_never_unpickled(tmp_path: Path, how: str) -> None:
    """Even with a sidecar hash that matches the payload, loading refuses it and never runs it."""
    store = ComponentStore(tmp_path / "components")
    component = store.save(ComponentDraft("delta", {"w": torch.ones(2, 2)}, lineage=[]), parent=None)
    marker = tmp_path / MARKER
    weights = store.weights_path(component.id)
    if how == "pickle":
        weights.write_bytes(pickle.dumps({"w": PicklePayload(str(marker))}))
    else:
        torch.save({"w": torch.ones(2, 2), "payload": PicklePayload(str(marker))}, weights)
    sidecar = store.sidecar_path(component.id)
    raw = json.loads(sidecar.read_text())
    raw["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(raw))
    for read in (store.load, store.verify):
        with pytest.raises(ComponentError, match="never unpickles") as info:
            read(component.id)
        assert str(weights) in str(info.value)
    assert not marker.exists()


def test_a_valid_safetensors_file_whose_header_length_starts_with_0x80_loads(tmp_path: Path) -> None:
    """The 8-byte header length may start with any byte: 0x80 is a legal length, not a pickle (found by a ViT base)."""
    store = ComponentStore(tmp_path / "components")
    name = "w"
    component = store.save(ComponentDraft("delta", {name: torch.ones(2)}, lineage=[]), parent=None)
    while store.weights_path(component.id).read_bytes()[:1] != b"\x80":
        name += "x"
        component = store.save(ComponentDraft("delta", {name: torch.ones(2)}, lineage=[]), parent=None)
    tensors, _ = store.load(component.id)
    assert torch.equal(tensors[name], torch.ones(2))
    store.verify(component.id)
