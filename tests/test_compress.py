"""Compression as export transforms (pruning masks, int8 quantization) and the fairness/budget behaviours."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from behaviors.context import BehaviorContext, ModelUnderTest, Splits, merged_thresholds
from behaviors.suite import run_suite
from pipeline.cli import append_stream_step, main
from pipeline.core.errors import ConfigError
from pipeline.data import SampleSet
from pipeline.model.compose import compose, weights_hash
from pipeline.model.lineage import version_lineage
from pipeline.model.manifest import Manifest
from pipeline.model.prune import apply_masks, global_masks, prunable, sparsity_of
from pipeline.model.quantize import calibrate, model_bytes, quantize
from pipeline.records.deletion import DeletionLog
from pipeline.steps import open_workspace, run_step

REPO = Path(__file__).resolve().parents[1]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 0.95), st.booleans())
def test_global_masks_remove_the_asked_share(sparsity: float, structured: bool) -> None:
    net = tiny_net()
    masks = global_masks(net, sparsity, structured=structured)
    assert set(masks) == set(prunable(net))
    if structured:  # whole output channels, never a whole layer
        for name, mask in masks.items():
            per_channel = mask.flatten(1)
            assert torch.all(per_channel.min(1).values == per_channel.max(1).values), name
            assert per_channel.max() == 1, name
    else:
        assert abs(sparsity_of(masks) - sparsity) < 0.01
    pruned = apply_masks(tiny_net(), masks)
    for name, weight in prunable(pruned).items():
        assert torch.all(weight[masks[name] == 0] == 0)


def test_int8_is_deterministic_small_and_close() -> None:
    net = tiny_net()
    x = torch.rand(128, 1, 16, 16) * 2 - 1
    observers = calibrate(net, x)
    a, b = quantize(net, observers, x[:1]), quantize(net, observers, x[:1])
    assert weights_hash(a) == weights_hash(b) and torch.equal(a(x), b(x))
    assert model_bytes(a) <= 0.3 * model_bytes(net)
    torch.use_deterministic_algorithms(True)  # as a Lightning run leaves it
    try:
        assert (a(x).argmax(1) == net(x).argmax(1)).float().mean() > 0.8
    finally:
        torch.use_deterministic_algorithms(False)


def test_manifest_transforms_keep_old_hashes_and_drop_with_their_step() -> None:
    plain = Manifest(base="b", overlays=("o",), overlay_steps=("s1",))
    assert "transform_steps" not in plain.to_json()  # versions made before transforms keep their hash
    compressed = plain.with_transform("t", "q")
    assert compressed.float_shadow() == plain and compressed.describe() == "base + s1 + [q]"
    assert compressed.without_step("q") == plain
    assert Manifest.from_json(compressed.to_json()) == compressed


class _ByGroup(nn.Module):
    """Reads the label from pixel 0 and the group from pixel 1; wrong on the minority when asked."""

    def __init__(self, hurt_minority: bool) -> None:
        super().__init__()
        self.hurt = hurt_minority

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = x[:, 0, 0, 0].long()
        minority = x[:, 0, 0, 1] > 0
        answer = torch.where(minority & self.hurt, (label + 1) % 10, label)
        return nn.functional.one_hot(answer, 10).float()


def _fairness_context(hurt: bool) -> BehaviorContext:
    n = 100
    y = torch.arange(n) % 10
    groups = tuple("scanner_b" if i % 10 == 0 else "scanner_a" for i in range(n))
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = y.float()
    x[:, 0, 0, 1] = torch.tensor([g == "scanner_b" for g in groups], dtype=torch.float)
    samples = SampleSet("test", x, y, tuple(f"s{i}" for i in range(n)), groups, ("o",) * n)
    return BehaviorContext(
        candidate=ModelUnderTest("candidate", None, _ByGroup(hurt)),
        champion=ModelUnderTest("champion", None, _ByGroup(False)),
        splits=Splits(test=samples, canary=samples.take(list(range(50)), name="canary"), retain=samples),
        thresholds=merged_thresholds({}),
        data=None,  # type: ignore[arg-type]
    )


def test_fairness_blocks_a_change_that_only_the_minority_pays_for() -> None:
    spec = [str(REPO / "behaviors" / "test_fairness.py")]
    hurt = {r.short_name: r for r in run_suite(spec, _fairness_context(True))}
    assert hurt["test_group_accuracy_gap"].outcome == "failed" and hurt["test_group_accuracy_gap"].blocking
    assert hurt["test_group_gap_does_not_grow[accuracy]"].outcome == "failed"
    assert hurt["test_group_gap_does_not_grow[recall]"].outcome == "failed"
    fair = {r.short_name: r for r in run_suite(spec, _fairness_context(False))}
    assert all(r.outcome == "passed" for r in fair.values()), fair


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code)


def test_compressed_champion_stays_compressed_through_learn_and_forget(trained_copy: Path) -> None:
    params = trained_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["stream"]["s02"] = {"kind": "learn", "parent": "s01", "slice": "u3", "epochs": 3}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    append_stream_step(params, "prune", {"kind": "compress", "parent": "s01", "method": "prune", "sparsity": 0.2, "finetune_steps": 5, "lr": 0.001})
    append_stream_step(params, "quant", {"kind": "compress", "parent": "prune", "method": "quantize", "calibration_samples": 128})
    append_stream_step(params, "s02x", {"kind": "learn", "parent": "quant", "slice": "u3", "epochs": 2})
    append_stream_step(params, "late", {"kind": "compress", "parent": "s02x", "method": "prune"})
    ws = open_workspace()
    for key in ("s01", "prune", "quant"):
        record = run_step(ws, key).record
        assert record["decision"] == "promoted", (key, record["failing"])
    champion = ws.manifest_of(ws.registry.champion())
    assert champion.transform_steps == ("prune", "quant") and champion.describe().endswith("[prune] + [quant]")
    float_bytes = model_bytes(compose(champion.float_shadow(), ws.components))
    assert model_bytes(compose(champion, ws.components)) <= 0.3 * float_bytes
    record = run_step(ws, "s02x").record  # learns on the float shadow; both transforms are re-derived
    learned = ws.versions.load(record["manifest_hash"])
    assert learned.transform_steps == ("prune", "quant") and learned.transforms != champion.transforms
    assert record["notes"]["reapplied_transforms"] == ["prune", "quant"]
    assert "size_ratio" in record["metrics"] and "group_accuracy_gap" in record["metrics"]
    with pytest.raises(ConfigError, match="already quantized"):
        run_step(ws, "late")
    # A deletion re-derives the transforms without the deleted samples (calibration and fine-tune data).
    rows = pd.read_csv(trained_copy / "store" / "data" / "samples.csv")
    owner = str(rows.loc[rows["slice"] == "u1", "owner"].iloc[0])
    assert cli("forget", "--owner", owner, "--reason", "GDPR art. 17") == 0
    key = list(yaml.safe_load(params.read_text())["stream"])[-1]
    ws = open_workspace()
    record = run_step(ws, key).record
    after = ws.versions.load(record["manifest_hash"])
    assert after.transform_steps == ("prune", "quant")
    deleted = DeletionLog.read(ws.ledger).hashed_ids()
    assert not version_lineage(after, ws.components) & deleted
    # Dropping an overlay under the transforms re-derives them on the new float version.
    append_stream_step(params, "drop-s02x", {"kind": "rollback", "parent": key, "drop": "s02x"})
    record = run_step(open_workspace(), "drop-s02x").record
    dropped = ws.versions.load(record["manifest_hash"])
    assert "s02x" not in dropped.overlay_steps and dropped.transform_steps == ("prune", "quant")
    assert record["notes"]["reapplied_transforms"] == ["prune", "quant"] and dropped.transforms != after.transforms
    key = "drop-s02x"
    # Dropping the quantize step would serve the pruned float model again: 4x the bytes, so the size budget blocks it.
    append_stream_step(params, "unquant", {"kind": "rollback", "parent": key, "drop": "quant"})
    record = run_step(open_workspace(), "unquant").record
    assert ws.versions.load(record["manifest_hash"]).transform_steps == ("prune",)
    assert record["metrics"]["size_ratio"] > 3 and record["decision"] == "blocked"
    assert "test_model_size_within_budget" in record["failing"]


def test_a_transform_composes_under_the_engine_it_recorded() -> None:
    """New transforms are made for fbgemm; one recorded for x86 (made before) still converts under x86,
    and an engine nobody knows is refused naming the sidecar."""
    from pipeline.core.errors import ComponentError
    from pipeline.model.compose import transform_network
    from pipeline.model.quantize import BACKEND

    assert BACKEND == "fbgemm"
    net = tiny_net()
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    for engine in ("fbgemm", "x86"):
        observers = calibrate(net, x, backend=engine)
        meta = {"transform": "quantize", "input_shape": [1, 16, 16], "backend": engine}
        served = transform_network(copy.deepcopy(net), observers, meta, where="sidecar.json")
        assert torch.equal(served(x), quantize(net, observers, x[:1], engine)(x))
        assert (served(x).argmax(1) == net(x).argmax(1)).float().mean() > 0.8
    with pytest.raises(ComponentError, match="sidecar.json.*unknown quantized engine 'arm'"):
        transform_network(copy.deepcopy(net), observers, {**meta, "backend": "arm"}, where="sidecar.json")
