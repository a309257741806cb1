"""Issue 28: erasure, not only exclusion. An exact deletion's pixels and the weights that learned them leave every
store ume writes to (the workspace, the DVC cache, a DVC remote, the MLflow artifact store), while the proof stays.

The unit tests show the row encryption that makes the pixels erasable (crypto-shredding) and its property; the
end-to-end story runs the real `dvc repro`, `dvc push` and `ume erase --remote`, then searches every file by content.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import DataError
from pipeline.data.images import MemoryImages, write_store
from pipeline.data.rowkeys import RowKeys, key_store_dir
from pipeline.data.table import SampleTable, assign_content_ids
from pipeline.model.lineage import hash_sample_id
from tests.projects import base_template, clone_project, opened, project_audit, project_status, sh

RNG = np.random.default_rng(0)
IMAGES = torch.from_numpy(RNG.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8))


def _table(images: torch.Tensor = IMAGES) -> SampleTable:
    import pandas as pd

    labels = np.arange(len(images)) % 10
    ids = assign_content_ids(images.numpy(), labels)
    rows = pd.DataFrame({"sample_id": ids, "label": labels, "group": "a", "owner": [f"o{i % 7}" for i in range(len(images))], "slice": "base"})
    return SampleTable(rows=rows, images=images, classes=[str(c) for c in range(10)])


def _found(haystack: bytes, rows: torch.Tensor) -> int:
    return sum(1 for row in rows if row.numpy().tobytes() in haystack)


def test_prepared_images_are_encrypted_per_row_and_a_shredded_row_reads_nowhere(tmp_path: Path) -> None:
    table = _table()
    table.save(tmp_path / "data")
    raw = (tmp_path / "data" / "images.safetensors").read_bytes()
    assert _found(raw, IMAGES) == 0  # no image's bytes are in the file...
    plain = write_store(MemoryImages(IMAGES), tmp_path / "plain.safetensors").path.read_bytes()
    assert _found(plain, IMAGES) == len(IMAGES)  # ...which the same search finds in an unencrypted one (its control)
    loaded = SampleTable.load(tmp_path / "data")
    assert torch.equal(loaded.images.read(range(len(IMAGES))), IMAGES)
    keys = RowKeys.open(tmp_path / "data")
    erased_ids = list(table.rows["sample_id"][:3])
    assert sorted(keys.shred(erased_ids, "2026-12-04T00:00:00Z")) == sorted(hash_sample_id(s) for s in erased_ids)
    keys.save()
    store_text = (key_store_dir(tmp_path / "data") / "rows.json").read_text()
    assert not any(s in store_text for s in erased_ids)  # tombstones name hashed ids, never the content-hash ids
    after = SampleTable.load(tmp_path / "data")
    with pytest.raises(DataError, match="erased"):
        after.images.read([1])
    assert torch.equal(after.images.read(range(3, len(IMAGES))), IMAGES[3:])
    before_bytes = raw
    table.save(tmp_path / "data")  # `ume prepare` again from the source: an erased row stays erased, the others keep their keys
    again = (tmp_path / "data" / "images.safetensors").read_bytes()
    assert len(again) == len(before_bytes)
    reread = SampleTable.load(tmp_path / "data")
    assert torch.equal(reread.images.read(range(3, len(IMAGES))), IMAGES[3:])
    with pytest.raises(DataError, match="erased"):
        reread.images.read([0])
    row_bytes = IMAGES[0].numel()
    start = len(again) - len(IMAGES) * row_bytes
    assert again[start + 3 * row_bytes :] == before_bytes[start + 3 * row_bytes :]  # the other rows: the same bytes
    assert again[start : start + 3 * row_bytes] == bytes(3 * row_bytes)  # the erased rows: zeros under no key


def test_encrypted_images_need_their_key_store(tmp_path: Path) -> None:
    _table().save(tmp_path / "data")
    (key_store_dir(tmp_path / "data") / "rows.json").unlink()
    with pytest.raises(DataError, match=r"store/data-keys|data-keys/ too"):
        SampleTable.load(tmp_path / "data")


@settings(max_examples=25, deadline=None)
@given(erased=st.sets(st.integers(0, len(IMAGES) - 1), max_size=len(IMAGES)))
def test_shredding_any_rows_leaves_every_other_row_readable(tmp_path_factory: pytest.TempPathFactory, erased: set[int]) -> None:
    """Property: for any set of shredded rows, each one raises on read and every other row reads back unchanged."""
    root = tmp_path_factory.mktemp("prop") / "data"
    table = _table()
    table.save(root)
    keys = RowKeys.open(root)
    keys.shred([table.rows["sample_id"][i] for i in sorted(erased)], "2026-12-04T00:00:00Z")
    keys.save()
    loaded = SampleTable.load(root)
    kept = [i for i in range(len(IMAGES)) if i not in erased]
    assert torch.equal(loaded.images.read(kept), IMAGES[kept])
    for i in sorted(erased)[:3]:
        with pytest.raises(DataError):
            loaded.images.read([i])


# ----------------------------------------------------------------------------------------------- end to end


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _where(patterns: dict[str, bytes], *roots: Path) -> dict[str, list[str]]:
    """Which files hold each pattern (by content, whatever their names)."""
    found: dict[str, list[str]] = {}
    for path in _files(*roots):
        blob = path.read_bytes()
        for name, pattern in patterns.items():
            if pattern in blob:
                found.setdefault(name, []).append(str(path))
    return found


def _payload(path: Path) -> bytes:
    """A safetensors file's tensor bytes (after its header): what a copy of the weights holds, whatever its name."""
    blob = path.read_bytes()
    header = int.from_bytes(blob[:8], "little")
    return blob[8 + header :]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A promoted learn step pushed to a local DVC remote; an owner's exact deletion; the erasure and its remote pass."""
    work = tmp_path_factory.mktemp("erasure")
    stream = {"s01-learn-u1": {"kind": "learn", "parent": "base", "slice": "u1", "epochs": 3}}
    repo = clone_project(base_template(tmp_path_factory), work / "repo", stream=stream)
    sh(repo, "dvc", "repro")
    remote = work / "remote"
    sh(repo, "dvc", "remote", "add", "-d", "storage", str(remote))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=ume", "-c", "user.email=ume@example.invalid", "commit", "-q", "-m", "stream")
    sh(repo, "dvc", "push")

    import pandas as pd

    rows = pd.read_csv(repo / "store" / "data" / "samples.csv").fillna({"owner": ""})
    owner = str(rows.loc[rows["slice"] == "u1", "owner"].iloc[0])
    ids = list(rows.loc[rows["owner"] == owner, "sample_id"])
    positions = [int(i) for i in np.flatnonzero(rows["owner"] == owner)]
    pixels = SampleTable.load(repo / "store" / "data").images.read(positions)
    keys = RowKeys.open(repo / "store" / "data")
    hashed = {hash_sample_id(s) for s in ids}
    trained = []
    for sidecar in sorted((repo / "store" / "components").glob("*.json")):
        if set(json.loads(sidecar.read_text())["lineage"]) & hashed:
            trained.append(sidecar.stem)
    assert trained, "the learn step trained on the owner"
    weights = {f"weights:{c}": _payload(repo / "store" / "components" / f"{c}.safetensors") for c in trained}
    row_keys = {f"key:{s}": keys.keys[s].hex().encode() for s in ids} | {f"rawkey:{s}": keys.keys[s] for s in ids}
    # A cloned project's runs keep the template's artifact root (an absolute path in mlflow.db), which other tests' clones
    # share: search this project's runs (every run its registry lists), not the other projects' identical weights.
    with opened(repo) as ws:
        artifacts = [Path(ws.registry.artifact_uri(r).removeprefix("file://")) for r in ws.registry.run_ids()]
    before = _where(weights | row_keys, repo, remote, *artifacts)

    filed = sh(repo, "ume", "forget", "--owner", owner, "--reason", "GDPR art. 17").stdout
    request_id = re.search(r"deletion request (del-[0-9a-f]+)", filed).group(1)
    step = re.search(r"stream step (\S+?);", filed).group(1)
    sh(repo, "dvc", "repro", "--single-item", f"step@{step}")  # the step alone: exact, not yet erased (seal erases)
    late = (datetime.now(UTC) + timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    overdue = sh(repo, "ume", "status", "--check", "--as-of", late, check=False)
    waiting = project_status(repo)["requests"][request_id]["erasure"]
    sh(repo, "dvc", "repro")
    remote_pass = sh(repo, "ume", "erase", "--remote").stdout
    sh(repo, "ume", "certificate", request_id)
    return {
        "repo": repo, "remote": remote, "request": request_id, "owner": owner, "ids": ids, "positions": positions, "pixels": pixels,
        "patterns": weights | row_keys, "before": before, "overdue": overdue, "waiting": waiting, "remote_pass": remote_pass,
    }  # fmt: skip



@pytest.mark.e2e
def test_no_copy_of_the_erased_weights_or_row_keys_is_left_anywhere(story: dict[str, Any]) -> None:
    """Search by content: every file of the project (store, DVC cache, mlruns, git) and of the DVC remote."""
    before, patterns = story["before"], story["patterns"]
    weights = [k for k in patterns if k.startswith("weights:")]
    for key in weights:  # the control: before the erasure the same search finds the weights in every store
        where = " ".join(before.get(key, []))
        assert "store/components" in where and "mlruns" in where and ".dvc/cache" in where and str(story["remote"]) in where, where
    assert all(k in before for k in patterns if k.startswith("key:")), "the row keys were in the key store before"
    with opened(story["repo"]) as ws:  # the runs of this project, the forget step's included
        artifacts = [Path(ws.registry.artifact_uri(r).removeprefix("file://")) for r in ws.registry.run_ids()]
    after = _where(patterns, story["repo"], story["remote"], *artifacts)
    assert after == {}, after
    assert "erased object(s) deleted" in story["remote_pass"], story["remote_pass"]


@pytest.mark.e2e
def test_erased_rows_read_from_no_copy_of_the_data(story: dict[str, Any]) -> None:
    """The workspace's data file and the DVC remote's copy of it: the owner's rows raise, every other row reads."""
    repo = story["repo"]
    table = SampleTable.load(repo / "store" / "data")
    with pytest.raises(DataError, match="erased"):
        table.images.read(story["positions"][:1])
    others = [i for i in range(len(table)) if i not in set(story["positions"])][:50]
    assert len(table.images.read(others)) == len(others)
    data_md5 = next(o["md5"] for o in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare"]["outs"] if o["path"] == "store/data")
    listing = json.loads((story["remote"] / "files" / "md5" / data_md5[:2] / data_md5[2:]).read_text())  # the .dir object
    images_md5 = next(e["md5"] for e in listing if e["relpath"] == "images.safetensors")
    from pipeline.data.images import ImageFile

    copy = ImageFile(story["remote"] / "files" / "md5" / images_md5[:2] / images_md5[2:])
    copy.bind_keys(RowKeys.open(repo / "store" / "data").bind(list(table.rows["sample_id"]), file="remote copy"))
    with pytest.raises(DataError, match="erased"):
        copy.read(story["positions"][-1:])
    assert torch.equal(copy.read(others), table.images.read(others))


@pytest.mark.e2e
def test_status_audit_certificate_and_rollback_after_erasure(story: dict[str, Any]) -> None:
    repo, request_id = story["repo"], story["request"]
    assert story["waiting"]["state"] == "due"  # exact, not yet erased (the step ran without seal)...
    assert story["overdue"].returncode == 1 and "erasure overdue" in story["overdue"].stderr, story["overdue"].stderr  # ...and late: --check fails
    status = project_status(repo)
    erasure = status["requests"][request_id]["erasure"]
    assert erasure["state"] == "erased" and erasure["erased_at"] and not erasure["overdue"]
    assert status["overdue_erasures"] == []
    assert project_audit(repo) == []
    assert sh(repo, "ume", "status", "--check", check=False).returncode == 0
    text = (repo / "certificates" / f"{request_id}.md").read_text()
    assert "**Erased at" in text and "row keys destroyed" in text
    statement = json.loads((repo / "certificates" / f"{request_id}.intoto.json").read_text())
    assert statement["predicate"]["erasure"]["state"] == "erased"
    refused = sh(repo, "ume", "rollback", "--to", "2", check=False)
    assert refused.returncode == 2 and "erased" in refused.stderr
    assert "Running stage" not in sh(repo, "dvc", "repro").stdout  # the erasure left DVC's state clean: nothing reruns


def test_a_counterexample_names_its_sample_and_erasure_replaces_it(tmp_path: Path) -> None:
    """Report images: the PNG carries the hashed id of the sample it shows; the placeholder carries when it was erased."""
    from behaviors.perturbations import save_counterexample
    from pipeline.model.lineage import PNG_SAMPLE_KEY
    from pipeline.steps.erase import ERASED_TEXT_KEY, _placeholder, _png_text

    image = torch.zeros(1, 8, 8)
    path = save_counterexample(tmp_path, "test_x", image, image + 0.1, sample_id="abc123")
    assert _png_text(path)[PNG_SAMPLE_KEY] == hash_sample_id("abc123")  # the hashed id, never the raw one
    assert "abc123" not in path.read_bytes().decode("latin-1")
    before = path.read_bytes()
    _placeholder(path, "2026-12-04T00:00:00Z")
    text = _png_text(path)
    assert text.get(ERASED_TEXT_KEY) == "2026-12-04T00:00:00Z" and PNG_SAMPLE_KEY not in text and path.read_bytes() != before


def test_erasure_purges_every_shadow_trained_on_an_erased_sample(tmp_path: Path) -> None:
    from behaviors.references import purge_trained_on

    bank = tmp_path / "references" / "base-x" / "recipe"
    bank.mkdir(parents=True)
    for name, lineage in (("shadow-000001", ["h1", "h2"]), ("shadow-000002", ["h3"])):
        (bank / f"{name}.json").write_text(json.dumps({"lineage": lineage}))
        (bank / f"{name}.safetensors").write_bytes(b"weights")
    assert purge_trained_on(tmp_path / "references", {"h2"}, None) == 1
    assert sorted(p.name for p in bank.iterdir()) == ["shadow-000002.json", "shadow-000002.safetensors"]
    assert purge_trained_on(tmp_path / "references", {"h9"}, None) == 0  # nothing trained on it: nothing goes
