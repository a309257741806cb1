"""Deletion requests and coverage (DESIGN.md invariant 2), unit level and property-based."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.digits import build_digits_table
from pipeline.model.components import ComponentDraft, ComponentStore
from pipeline.model.lineage import hash_sample_ids, version_lineage
from pipeline.model.manifest import Manifest
from pipeline.records.deletion import (
    DeletionLog,
    check_leaves_data,
    covered,
    deletion_debt,
    ingest,
    load_request,
    make_request,
    request_id_for,
    resolve,
    uncovered_requests,
    write_request,
)
from pipeline.records.ledger import Ledger


@pytest.fixture(scope="module")
def table():
    return build_digits_table(parse_params({}).data, seed=0)[0]


def test_request_ids_are_stable_and_selector_based() -> None:
    assert request_id_for({"owner": "w017"}) == request_id_for({"owner": "w017"})
    assert request_id_for({"owner": "w017"}) != request_id_for({"owner": "w018"})
    assert make_request({"owner": "w017"}, "a").id == make_request({"owner": "w017"}, "b").id


@pytest.mark.parametrize(
    ("selector", "field"),
    [({"owner": "nobody"}, "owner"), ({"label": "11"}, "label"), ({"group": "scanner_z"}, "group"), ({"samples": ["nope"]}, "samples")],
)
def test_unknown_selectors_are_errors_not_noops(table, selector, field: str) -> None:
    with pytest.raises(DataError) as info:
        resolve(make_request(selector, "r"), table, file="ids.txt")
    assert f"field '{field}'" in str(info.value) and "ids.txt" in str(info.value)


def test_selectors_resolve(table) -> None:
    owner = table.rows["owner"].iloc[0]
    assert set(resolve(make_request({"owner": owner}, "r"), table)) == set(table.rows.loc[table.rows.owner == owner, "sample_id"])
    assert len(resolve(make_request({"label": "7"}, "r"), table)) == int((table.rows.label == 7).sum())
    ids = list(table.rows["sample_id"].iloc[:3])
    assert resolve(make_request({"samples": ids}, "r"), table) == sorted(ids)


def test_a_request_that_empties_the_evaluation_data_is_refused_before_anything_is_written(table) -> None:
    """Every group deleted in turn (what the state machine found): the last one would leave nothing to gate on."""
    groups = sorted(table.rows["group"].unique())
    deleted: set[str] = set()
    for group in groups[:-1]:
        ids = resolve(make_request({"group": group}, "r"), table)
        check_leaves_data(table, deleted, ids)  # data remains: allowed
        deleted |= set(hash_sample_ids(ids))
    last = resolve(make_request({"group": groups[-1]}, "r"), table)
    with pytest.raises(DataError) as info:
        check_leaves_data(table, deleted, last, file="command line")
    message = str(info.value)
    assert "every remaining sample of test, canary, every training slice" in message and "Nothing was recorded" in message
    assert "field 'selector'" in message and "command line" in message
    test_ids = list(table.rows.loc[table.rows["slice"] == "test", "sample_id"])
    with pytest.raises(DataError, match="every remaining sample of test "):
        check_leaves_data(table, set(), test_ids)


def test_request_file_roundtrip_and_tampering(tmp_path: Path) -> None:
    request = make_request({"owner": "w017"}, "GDPR art. 17")
    path = write_request(request, tmp_path)
    assert load_request(request.id, tmp_path) == request
    path.write_text(path.read_text().replace("w017", "w018"))
    with pytest.raises(ConfigError, match="selector"):
        load_request(request.id, tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_request("del-000000000000", tmp_path)


def test_ingest_is_idempotent(tmp_path: Path, table) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    request = make_request({"label": "3"}, "r")
    ids = resolve(request, table)
    assert ingest(ledger, request, ids) is not None
    assert ingest(ledger, request, ids) is None
    log = DeletionLog.read(ledger)
    assert log.pending == [request.id] and log.hashed_ids() == set(hash_sample_ids(ids))
    assert all(len(h) == 24 for h in ledger.verify()[0].data["hashed_ids"])  # hashed, never raw ids


ids = st.sets(st.sampled_from([f"s{i}" for i in range(30)]), max_size=12)


@given(base=ids, overlay=ids, covers=ids, deleted=ids)
def test_uncovered_is_influence_of_deleted_minus_covered(tmp_path_factory, base, overlay, covers, deleted) -> None:
    store = ComponentStore(tmp_path_factory.mktemp("c"))
    t = {"w": torch.zeros(1)}
    b = store.save(ComponentDraft("base", t, hash_sample_ids(base), {}), parent=None)
    o = store.save(ComponentDraft("lora", {"w": torch.ones(1)}, hash_sample_ids(overlay), {}), parent=None)
    f = store.save(ComponentDraft("delta", {"w": torch.full((1,), 2.0)}, [], {"covers": hash_sample_ids(covers)}), parent=None)
    manifest = Manifest(base=b.id).with_overlay(o.id, "s1").with_overlay(f.id, "f1")
    ledger = Ledger(tmp_path_factory.mktemp("l") / "ledger.jsonl")
    if deleted:
        ledger.append("deletion_request", {"request_id": "r1", "scope": "samples", "count": len(deleted), "hashed_ids": hash_sample_ids(deleted)})
    log = DeletionLog.read(ledger)
    expected = (set(hash_sample_ids(base | overlay)) & set(hash_sample_ids(deleted))) - set(hash_sample_ids(covers))
    assert uncovered_requests(manifest, store, log).get("r1", 0) == len(expected)
    assert version_lineage(manifest, store) == set(hash_sample_ids(base | overlay))
    assert covered(manifest, store) == set(hash_sample_ids(covers))
    debt = set(hash_sample_ids(base | overlay)) & set(hash_sample_ids(covers)) & set(hash_sample_ids(deleted))
    assert deletion_debt(manifest, store, log).get("r1", 0) == len(debt)
    # dropping the forget overlay can only increase what is uncovered
    dropped = manifest.without_step("f1")
    assert uncovered_requests(dropped, store, log).get("r1", 0) >= len(expected)
