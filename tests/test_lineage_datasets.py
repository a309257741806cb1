"""Data lineage in MLflow (issue 27, item 1): every step's run lists the datasets that made its version.

The unit part checks the digest and the inputs a step's components give; the registry part logs into a
temporary sqlite MLflow (once per run, fail-closed, nothing from a DDP follower); the end-to-end part runs
a learn step and an owner's exact deletion on the trained test project and reads the runs' inputs back.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.core.config import RegistryConfig
from pipeline.core.errors import RegistryError
from pipeline.data import open_data
from pipeline.model.components import Component
from pipeline.model.lineage import hash_sample_id, hash_sample_ids, version_lineage
from pipeline.records.datasets import DataInput, component_inputs, rows_digest, step_inputs
from pipeline.records.deletion import DeletionLog
from pipeline.records.registry import FollowerRegistry, Registry
from pipeline.steps import open_workspace, run_step


def _component(lineage: list[str], **meta: object) -> Component:
    return Component(id="c", kind="lora", parent=None, sha256="0" * 64, lineage=lineage, meta=dict(meta))


def test_the_digest_is_a_short_stable_hash_of_the_set_of_rows() -> None:
    ids = hash_sample_ids(["a", "b", "c"])
    digest = rows_digest(ids)
    assert digest == hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
    assert rows_digest(reversed(ids)) == rows_digest([*ids, ids[0]]) == digest  # a set: order and repeats do not count
    assert rows_digest(ids[1:]) != digest  # one row fewer (a deletion): another digest


def test_a_learned_component_splits_into_its_slice_and_its_replay() -> None:
    slice_of = {hash_sample_id(s): sl for s, sl in [("n1", "u1"), ("n2", "u1"), ("r1", "base"), ("r2", "base"), ("t1", "test")]}
    learned = hash_sample_ids(["n1", "n2", "r1", "r2"])
    inputs = component_inputs(_component(learned, slice="u1"), slice_of)
    assert inputs == [
        DataInput("u1", "training", rows_digest(hash_sample_ids(["n1", "n2"])), 2),
        DataInput("u1.replay", "replay", rows_digest(hash_sample_ids(["r1", "r2"])), 2),
    ]
    (whole,) = component_inputs(_component(learned), slice_of)  # no slice in its sidecar: one training set, named for its slices
    assert whole == DataInput("base+u1", "training", rows_digest(learned), 4)
    assert component_inputs(_component([]), slice_of) == []  # a transform without calibration rows trained on nothing
    every = step_inputs([_component(learned, slice="u1")], slice_of, {"test": ["t1"], "canary": [], "retain": ["r1"]}, ("del-x", {learned[0]}))
    assert [(i.name, i.context) for i in every] == [
        ("u1", "training"), ("u1.replay", "replay"), ("test", "evaluation"), ("retain", "evaluation"), ("del-x", "forget"),
    ]  # an empty split (canary here) is left out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_registry_logs_inputs_once_and_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="m"))
    run_id = registry.start_run("s01", {})
    inputs = [DataInput("u1", "training", "0123456789abcdef", 3), DataInput("test", "evaluation", "fedcba9876543210", 5)]
    for _ in range(2):  # logged again (a rerun of the same call): MLflow keeps one input per dataset and run
        registry.log_datasets(run_id, inputs, source="store/data", tags={"ume.step": "s01"})
    got = registry.client.get_run(run_id).inputs.dataset_inputs
    assert len(got) == 2
    by_name = {d.dataset.name: d for d in got}
    assert by_name["u1"].dataset.digest == "0123456789abcdef" and json.loads(by_name["u1"].dataset.profile) == {"rows": 3}
    assert json.loads(by_name["test"].dataset.source) == {"uri": "store/data"} and by_name["test"].dataset.source_type == "local"
    assert {t.key: t.value for t in by_name["test"].tags} == {"mlflow.data.context": "evaluation", "ume.step": "s01"}
    follower = FollowerRegistry(registry.config)
    follower.log_datasets(run_id, [DataInput("u2", "training", "1" * 16, 1)], source="store/data")
    assert len(registry.client.get_run(run_id).inputs.dataset_inputs) == 2
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    gone = Registry(RegistryConfig(tracking_uri=f"http://127.0.0.1:{_free_port()}", experiment="t", model_name="m"))
    with pytest.raises(RegistryError, match="cannot reach the MLflow tracking server"):
        gone.log_datasets("0" * 32, inputs, source="store/data")


def _inputs(ws, run_id: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """name -> (context, digest, input tags) of a run's dataset inputs."""
    out = {}
    for item in ws.registry.client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        out[item.dataset.name] = (tags["mlflow.data.context"], item.dataset.digest, tags)
    return out


def _logged_text(ws, run_id: str) -> str:
    """Everything a run's inputs put into MLflow, as one string."""
    parts = []
    for item in ws.registry.client.get_run(run_id).inputs.dataset_inputs:
        d = item.dataset
        parts += [d.name, d.digest, d.source, d.source_type, d.profile or "", d.schema or ""] + [f"{t.key}={t.value}" for t in item.tags]
    return "\n".join(parts)


def _slice_parts(ws, component_id: str, slice_name: str) -> tuple[set[str], set[str]]:
    """A learned component's lineage split into its slice's rows and the replayed rest."""
    rows = pd.read_csv(ws.data_dir / "samples.csv", dtype={"sample_id": str})
    own = {hash_sample_id(s) for s in rows.loc[rows["slice"] == slice_name, "sample_id"]}
    lineage = set(ws.components.sidecar(component_id).lineage)
    return lineage & own, lineage - own


def test_a_learn_step_and_a_deletion_show_in_the_runs_inputs(trained_copy: Path) -> None:
    params = trained_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    # This test reads inputs, not quality or evidence: one epoch (the retrain and the shadows follow the recipe) and a small bank.
    raw["stream"]["s01"]["epochs"] = 1
    raw["behaviors"]["references"] = {"shadows": 2, "min_shadows": 2, "min_references": 2}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    ws = open_workspace()
    base_lineage = version_lineage(ws.manifest_of(ws.registry.champion()), ws.components)
    first = run_step(ws, "s01").record
    learned = ws.versions.load(first["manifest_hash"])
    (overlay,) = learned.overlays
    new, replayed = _slice_parts(ws, overlay, "u1")
    data = open_data(ws.data_dir, ws.ledger)
    logged = _inputs(ws, first["run_id"])
    assert {name: context for name, (context, _, _) in logged.items()} == {
        "u1": "training", "u1.replay": "replay", "test": "evaluation", "canary": "evaluation", "retain": "evaluation",
    }
    assert logged["u1"][1] == rows_digest(new) and logged["u1.replay"][1] == rows_digest(replayed)
    assert logged["test"][1] == rows_digest(hash_sample_ids(data.split("test").sample_ids))
    assert logged["retain"][1] == rows_digest(base_lineage)  # the champion (the base) was trained on these
    assert logged["u1"][2]["ume.step"] == "s01" and logged["u1"][2]["ume.manifest_hash"] == learned.hash
    assert logged["u1"][2]["ume.prepared_data"] == json.loads((ws.data_dir / "dataset.json").read_text())["content_hash"]

    # A resumed stage (its record lost after the decision) finishes from the ledger and logs nothing again.
    ws.step_record_path("s01").unlink()
    assert run_step(open_workspace(), "s01").record.get("resumed")
    assert _inputs(ws, first["run_id"]) == logged

    rows = pd.read_csv(ws.data_dir / "samples.csv", dtype={"sample_id": str, "owner": str})
    owner = str(rows.loc[rows["slice"] == "u1", "owner"].iloc[0])
    with pytest.raises(SystemExit) as info:
        main(["forget", "--owner", owner, "--reason", "GDPR art. 17"])
    assert info.value.code == 0
    key = list(yaml.safe_load(params.read_text())["stream"])[-1]
    ws = open_workspace()
    second = run_step(ws, key).record
    deleted = DeletionLog.read(ws.ledger).hashed_ids()
    request = yaml.safe_load(params.read_text())["stream"][key]["request"]
    assert deleted and deleted & new  # the owner contributed to u1
    retrained = [c for c in ws.versions.load(second["manifest_hash"]).overlays if c != overlay]
    assert len(retrained) == 1
    new_after, replayed_after = _slice_parts(ws, retrained[0], "u1")
    after = _inputs(ws, second["run_id"])
    assert after[request][:2] == ("forget", rows_digest(deleted))
    assert after["u1"][:2] == ("training", rows_digest(new_after)) and after["u1"][1] != logged["u1"][1]
    assert not new_after & deleted and new_after == new - deleted
    assert after["retain"][0] == "evaluation" and after["retain"][1] != logged["retain"][1]
    assert after["retain"][1] == rows_digest(version_lineage(learned, ws.components) - deleted)
    text = _logged_text(ws, second["run_id"]) + _logged_text(ws, first["run_id"])
    assert not any(h in text for h in deleted)  # digests and counts only: no deleted id, hashed or raw
    assert not any(s in text for s in rows.loc[rows["owner"] == owner, "sample_id"]) and owner not in text
