"""Edit steps (spec files, LoRA with a locality term, edit behaviours) and merge steps (peft merges, fold)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edits import OperatorEnv, get_method
from edits.edit.spec import load_spec, parse_confusion
from edits.merge.common import chosen_overlays, merged_bookkeeping
from pipeline.cli import append_stream_step, main
from pipeline.core.errors import ConfigError
from pipeline.model.components import Component
from pipeline.model.compose import compose, weights_hash
from pipeline.model.lineage import version_lineage
from pipeline.model.manifest import Manifest
from pipeline.model.routing import RoutedNetwork
from pipeline.records.deletion import DeletionLog, deletion_debt, uncovered_requests
from pipeline.steps import check_rollback_drop, open_workspace, run_step

SPEC = {
    "description": "tilted field photos: fix the top confusion",
    "cases": {"slice": "field", "confusion": "top", "holdout_fraction": 0.4},
    "train": {"epochs": 10},
}


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code)


def write_spec(root: Path, **changes) -> Path:
    spec = {**SPEC, **changes}
    path = root / "specs" / "fix.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------------------- spec files


def test_spec_errors_name_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    path = write_spec(tmp_path, cases={"slice": "field", "confusion": "4-9"})
    with pytest.raises(ConfigError, match="cases.confusion") as info:
        load_spec(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="train.rank"):
        load_spec(write_spec(tmp_path, train={"rank": "eight"}))
    with pytest.raises(ConfigError, match="unknown key"):
        load_spec(write_spec(tmp_path, colour="blue"))
    with pytest.raises(ConfigError, match="cases"):
        load_spec(write_spec(tmp_path, cases={"confusion": "top"}))
    with pytest.raises(ConfigError, match="locality"):
        load_spec(write_spec(tmp_path, locality="train"))
    with pytest.raises(ConfigError, match="train.scope") as info:
        load_spec(write_spec(tmp_path, train={"scope": "experts"}))
    assert "routed, network" in str(info.value)
    assert parse_confusion("4->9") == (4, 9) and parse_confusion("top") is None
    assert load_spec(write_spec(tmp_path)).cases.slice == "field"


def test_a_bad_spec_fails_validation_before_anything_is_written(project: Path) -> None:
    spec = write_spec(project, cases={"slice": "field", "confusion": "nine"})
    append_stream_step(project / "params.yaml", "e03", {"kind": "edit", "parent": "s02", "spec": str(spec)})
    assert cli("prepare") == 2
    assert not (project / "store").exists()


# ------------------------------------------------------------------------------ merge bookkeeping

hashed = st.text(alphabet="0123456789abcdef", min_size=2, max_size=2)


@st.composite
def sidecars(draw) -> list[Component]:
    out = []
    for i in range(draw(st.integers(1, 5))):
        meta = {"method": draw(st.sampled_from(["learn/lora", "edit/lora", "forget/ssd"]))}
        covers = draw(st.lists(hashed, max_size=4))
        if covers:
            meta["covers"] = covers
        if draw(st.booleans()):
            meta["edits"] = [{"name": f"e{i}", "cases": [], "holdout": [], "scope_labels": [1]}]
        out.append(Component(id=f"c{i}", kind="lora", parent=None, sha256="0", lineage=draw(st.lists(hashed, max_size=6)), meta=meta))
    return out


@settings(max_examples=60, deadline=None)
@given(sidecars())
def test_a_merge_keeps_every_lineage_pin_and_edit(parts: list[Component]) -> None:
    """DESIGN invariant: a merge can never launder a deleted sample (lineage and covers are unions)."""
    lineage, meta = merged_bookkeeping(parts, [f"s{i}" for i in range(len(parts))])
    assert set(lineage) == set().union(*(p.lineage for p in parts))
    assert set(meta.get("covers", [])) == set().union(*(p.meta.get("covers", []) for p in parts))
    assert len(meta["edits"]) == sum(len(p.meta.get("edits", [])) for p in parts)
    assert [m["id"] for m in meta["merged_from"]] == [p.id for p in parts]


def test_chosen_overlays_and_positions() -> None:
    manifest = Manifest(base="b", overlays=("x", "y", "z"), overlay_steps=("s1", "f2", "e3"))
    assert chosen_overlays(manifest, (), where="stream.m") == [0, 1, 2]
    assert chosen_overlays(manifest, ("e3", "s1"), where="stream.m") == [0, 2]
    with pytest.raises(ConfigError, match="no overlay from step 'nope'"):
        chosen_overlays(manifest, ("nope",), where="stream.m")
    assert manifest.without_positions((0, 2)) == Manifest(base="b", overlays=("y",), overlay_steps=("f2",))


# ------------------------------------------------------------------------------------ end to end


def test_edit_fixes_its_cases_and_drops_back_exactly(trained_copy: Path) -> None:
    params = trained_copy / "params.yaml"
    spec = write_spec(trained_copy)
    append_stream_step(params, "e03", {"kind": "edit", "parent": "s02", "spec": str(spec)})
    ws = open_workspace()
    assert run_step(ws, "s01").record["decision"] == "promoted"
    before = ws.manifest_of(ws.registry.champion())
    record = run_step(ws, "e03").record
    metrics = record["metrics"]
    assert metrics["edit_success"] > metrics["edit_success_before[e03]"], metrics
    assert metrics["edit_holdout_success"] > metrics["edit_holdout_success_before[e03]"], metrics
    assert "edit_locality" in metrics
    manifest = ws.versions.load(record["manifest_hash"])
    (sidecar,) = [ws.components.sidecar(c) for c, s in zip(manifest.overlays, manifest.overlay_steps, strict=True) if s == "e03"]
    edit = sidecar.meta["edits"][0]
    assert sidecar.meta["method"] == "edit/lora" and len(edit["scope_labels"]) == 2 and edit["cases"] and edit["holdout"]
    assert not set(edit["cases"]) & set(edit["holdout"]) and set(edit["cases"]) <= set(sidecar.lineage)
    assert record["decision"] == "promoted", (record["failing"], metrics)
    # On the routed champion the adapter sits on the experts the router sends the cases to, and nowhere else:
    # every other expert is bit-identical to the champion's.
    old, new = compose(before, ws.components), compose(manifest, ws.components)
    assert isinstance(new, RoutedNetwork)
    experts = sidecar.meta["experts"]
    assert record["notes"]["experts"] == experts and experts, record["notes"]
    tensors, _ = ws.components.load(manifest.overlays[manifest.overlay_steps.index("e03")])
    assert {int(name.split("experts.")[1].split(".")[0]) for name in tensors} == set(experts)
    for index, (a, b) in enumerate(zip(old.experts, new.experts, strict=True)):
        assert (weights_hash(a) == weights_hash(b)) == (index not in experts), index
    # Dropping the edit (the last overlay) gives the earlier weights bit for bit, through the gate.
    append_stream_step(params, "undo", {"kind": "rollback", "parent": "e03", "drop": "e03"})
    ws = open_workspace()
    undo = run_step(ws, "undo").record
    assert undo["decision"] == "promoted", undo["failing"]
    assert weights_hash(compose(ws.versions.load(undo["manifest_hash"]), ws.components)) == weights_hash(compose(before, ws.components))


def test_merges_keep_predictions_pins_and_lineage(trained_copy: Path) -> None:
    params = trained_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["stream"]["s01"]["layout"] = "parallel"  # routed experts (the default) refuse every merge
    raw["stream"]["s02"] = {"kind": "learn", "parent": "s01", "slice": "u3", "epochs": 3, "layout": "parallel"}  # two good slices: two LoRA overlays
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    ws = open_workspace()
    for key in ("s01", "s02"):
        assert run_step(ws, key).record["decision"] == "promoted"
    rows = pd.read_csv(trained_copy / "store" / "data" / "samples.csv")
    owner = str(rows.loc[rows["slice"] == "u1", "owner"].iloc[0])
    assert cli("forget", "--owner", owner, "--reason", "GDPR art. 17", "--method", "finetune", "--defer-exact") == 0
    forget_key = list(yaml.safe_load(params.read_text())["stream"])[-1]
    raw = yaml.safe_load(params.read_text())
    raw["stream"][forget_key]["fallback"] = "none"  # this test needs the approximate, pinned overlay
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    for key, entry in (
        ("m-cat", {"kind": "merge", "parent": forget_key, "method": "cat"}),
        ("m-fold", {"kind": "merge", "parent": "m-cat", "method": "fold"}),
    ):
        append_stream_step(params, key, entry)
    ws = open_workspace()
    run_step(ws, forget_key)
    champion = ws.manifest_of(ws.registry.champion())
    assert forget_key in champion.overlay_steps, (champion.describe(), [json.loads(p.read_text())["failing"] for p in Path("store/steps").glob("*.json")])
    log = DeletionLog.read(ws.ledger)
    debt = deletion_debt(champion, ws.components, log)
    assert debt, "the approximate forget leaves debt that every merge must keep pinned"
    for name in ("ties", "dare_ties", "linear"):  # approximate merges: one adapter of the same rank, the gate decides
        method = get_method("merge", name)
        env = OperatorEnv(step="m", seed=0, make_trainer=None, champion_manifest=champion, components=ws.components)
        change = method.fn(None, None, method.parse_config({"density": 0.5}, where="m", file="t"), env)
        (draft,) = change.drafts
        assert change.drop_overlays == (0, 1) and draft.meta["lora"]["rank"] == 8 and draft.meta["method"] == f"merge/{name}"
        assert set(draft.lineage) == set(ws.components.sidecar(champion.overlays[0]).lineage) | set(ws.components.sidecar(champion.overlays[1]).lineage)
    with pytest.raises(ConfigError, match="not LoRA"):
        get_method("merge", "ties").fn(None, None, method.parse_config({"overlays": ["s01", forget_key]}, where="m", file="t"), env)
    with pytest.raises(ConfigError, match="pinned"):
        check_rollback_drop(ws, forget_key, field="--drop")
    for key in ("m-cat", "m-fold"):
        before = ws.manifest_of(ws.registry.champion())
        record = run_step(ws, key).record
        merged = ws.versions.load(record["manifest_hash"])
        assert len(merged.overlays) < len(before.overlays), key
        assert version_lineage(merged, ws.components) == version_lineage(before, ws.components), key
        assert not uncovered_requests(merged, ws.components, log), key
        assert deletion_debt(merged, ws.components, log) == debt, key
        assert record["decision"] == "promoted", (key, record["failing"])
    folded = ws.manifest_of(ws.registry.champion())
    assert len(folded.overlays) == 1 and ws.components.sidecar(folded.overlays[0]).kind == "delta"
    assert folded.overlay_steps == ("m-fold",)
