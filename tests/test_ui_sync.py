"""A person's change in the MLflow UI becomes a gated, ledgered rollback, or is refused in the UI (issue 16).

In-process on sqlite: the alias is moved and tags are set through a plain :class:`mlflow.MlflowClient`,
the same REST calls the MLflow UI makes (the browser itself drives them in
``tests/test_scaleout_mlflow.py``). The crash test kills a real ``ume sync`` between its ledger entry
and the stream append.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.core.faults import CRASH_AT_ENV
from pipeline.records.ui_requests import ALIAS_ENTRY, DROP_ENTRY, DROP_REFUSED_TAG, DROP_TAG, ROLLBACK_QUEUED_TAG, ROLLBACK_REFUSED_TAG
from pipeline.steps import open_workspace, run_step
from tests.projects import project_audit, project_status, sh

MODEL = "ume-digits"
LEARN = "s01-learn-u3"


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code)


def client(root: Path) -> MlflowClient:
    """A teammate's MLflow client (what the UI's buttons call)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def stream(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())["stream"]


def entries(root: Path, type_: str) -> list:
    return [e for e in open_workspace(root / "params.yaml").ledger.verify() if e.type == type_]


@pytest.fixture
def learned(trained_copy: Path) -> Path:
    """The trained base (v1) and one promoted learn step on it (v2, the champion)."""
    raw = yaml.safe_load((trained_copy / "params.yaml").read_text())
    raw["stream"] = {LEARN: {"kind": "learn", "parent": "base", "slice": "u3", "epochs": 2}}
    (trained_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_step(open_workspace(), LEARN).record["decision"] == "promoted"
    return trained_copy


def test_an_alias_moved_in_the_ui_becomes_a_gated_rollback(learned: Path, capsys) -> None:
    mlflow = client(learned)
    assert int(mlflow.get_model_version_by_alias(MODEL, "champion").version) == 2
    mlflow.set_registered_model_alias(MODEL, "champion", "1")  # the UI's alias editor

    # Before any sync: the move is reported, never silently undone; the audit still catches it.
    status = project_status(learned)
    assert status["champion"]["version"] == 2, "the ledger's champion until the move is gated"
    assert any("run `ume sync`" in line for line in status["ui_requests"]["unsynced"])
    assert cli("status", "--check") == 1 and "not synced from the MLflow UI" in capsys.readouterr().err
    assert any("not synced (run `ume sync`" in p for p in project_audit(learned))

    assert cli("sync") == 0
    out = capsys.readouterr().out
    key = next(k for k in stream(learned) if k.startswith("rollback-"))
    assert f"appended the rollback step {key}" in out
    assert stream(learned)[key]["to"] == 1 and "MLflow UI" in stream(learned)[key]["reason"]
    (moved,) = entries(learned, ALIAS_ENTRY)
    assert moved.data | {"seen_at": None} == moved.data | {
        "from": 2, "to": 1, "outcome": "rollback", "step": key, "seen_by": "ume sync", "seen_at": None
    }
    (decision,) = [e for e in entries(learned, "decision") if e.step == key]
    assert decision.data["mode"] == "rollback" and decision.data["alias"] == {"from": 2, "to": 1}
    assert decision.seq > moved.seq
    assert int(mlflow.get_model_version_by_alias(MODEL, "champion").version) == 1
    assert mlflow.get_model_version(MODEL, "1").tags[ROLLBACK_QUEUED_TAG] == key
    assert project_audit(learned) == []
    status = project_status(learned)
    assert status["champion"]["version"] == 1 and status["ui_requests"]["unsynced"] == []
    assert [s["decision"] for s in status["steps"] if s["id"] == key] == ["promoted"]

    # What the UI shows: the stream as a table on the model page, the story on each version's page.
    model = mlflow.get_registered_model(MODEL)
    assert "| step | kind | decision | version | champion after |" in model.description
    assert f"| {key} | rollback | promoted | v1 | v1 |" in model.description
    assert "Champion: **v1**" in model.description and "alias moved to v1" in model.description
    assert "Made by step `base`" in mlflow.get_model_version(MODEL, "1").description
    assert f"Served again by rollback: {key}" in mlflow.get_model_version(MODEL, "1").description
    assert f"base + {LEARN}" in mlflow.get_model_version(MODEL, "2").description

    assert cli("sync") == 0 and "in sync" in capsys.readouterr().out  # nothing more to do
    assert len(entries(learned, ALIAS_ENTRY)) == 1


def test_refused_requests_are_moved_back_and_tagged_where_the_person_looks(learned: Path, capsys) -> None:
    mlflow = client(learned)
    # A drop the champion cannot honour (it has no such overlay): refused, the tag removed, the reason tagged.
    mlflow.set_model_version_tag(MODEL, "2", DROP_TAG, "no-such-step")
    assert cli("sync") == 1
    err = capsys.readouterr().err
    assert "refused" in err and "unknown step 'no-such-step'" in err
    tags = mlflow.get_model_version(MODEL, "2").tags
    assert DROP_TAG not in tags and "unknown step 'no-such-step'" in tags[DROP_REFUSED_TAG]
    assert entries(learned, DROP_ENTRY)[0].data["outcome"] == "refused"

    # An alias moved to a version that never passed the gate: moved back, refused on that version and the model.
    other = mlflow.create_model_version(MODEL, source=mlflow.get_model_version(MODEL, "2").source)  # made outside ume
    mlflow.set_registered_model_alias(MODEL, "champion", other.version)
    assert cli("sync") == 1
    assert "never promoted through the gate" in capsys.readouterr().err
    assert int(mlflow.get_model_version_by_alias(MODEL, "champion").version) == 2
    reason = mlflow.get_model_version(MODEL, other.version).tags[ROLLBACK_REFUSED_TAG]
    assert "never promoted through the gate" in reason and "moved back to v2" in reason
    assert mlflow.get_registered_model(MODEL).tags[ROLLBACK_REFUSED_TAG].startswith(f"v{other.version}: ")
    assert [e.data["outcome"] for e in entries(learned, ALIAS_ENTRY)] == ["refused"]
    assert not any(k.startswith("rollback-") for k in stream(learned))

    # Dropping the learn step from the UI: the same semantics as `ume rollback --drop` (a new, gated version).
    mlflow.set_model_version_tag(MODEL, "2", DROP_TAG, LEARN)
    assert cli("sync") == 0
    key = [k for k in stream(learned) if k.startswith("rollback-")][-1]
    assert stream(learned)[key]["drop"] == LEARN
    record = open_workspace().step_record(key)
    assert record["composition"] == "base" and record["decision"] == "promoted"
    assert DROP_TAG not in mlflow.get_model_version(MODEL, "2").tags


def test_a_sync_killed_after_its_ledger_entry_is_finished_by_the_next_stage(learned: Path) -> None:
    mlflow = client(learned)
    mlflow.set_registered_model_alias(MODEL, "champion", "1")
    killed = sh(learned, "ume", "sync", check=False, env={CRASH_AT_ENV: "sync.recorded"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    (moved,) = entries(learned, ALIAS_ENTRY)
    assert moved.data["outcome"] == "rollback" and moved.data["step"] not in stream(learned)

    # The next stage (another learn step appended by the user) finishes the recorded request first.
    raw = yaml.safe_load((learned / "params.yaml").read_text())
    raw["stream"]["s02-learn-u1"] = {"kind": "learn", "parent": LEARN, "slice": "u1", "epochs": 1}
    (learned / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_step(open_workspace(), "s02-learn-u1").record["champion_before"] == 2, "the ledger's champion until the rollback is gated"
    assert moved.data["step"] in stream(learned) and list(stream(learned))[-1] == moved.data["step"]
    assert len(entries(learned, ALIAS_ENTRY)) == 1, "an interrupted sync is finished, not recorded twice"
    record = run_step(open_workspace(), moved.data["step"]).record
    assert record["decision"] == "promoted" and record["champion_after"] == 1
    assert project_audit(learned) == []
