"""Structured pruning that removes channels (dependency-aware groups), and the int8 network's traced forward."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from edits import OperatorEnv, get_method
from pipeline.cli import append_stream_step
from pipeline.core.errors import ComponentError, ConfigError
from pipeline.model.channel_groups import channel_groups
from pipeline.model.compose import compose, transform_network, weights_hash
from pipeline.model.prune import apply_masks, global_masks
from pipeline.model.quantize import Int8Network, calibrate, model_bytes, quantize
from pipeline.model.routing import Detector, RoutedNetwork, Router
from pipeline.model.shrink import channel_masks, remove_channels
from pipeline.steps import open_workspace, run_step


def tiny_net(seed: int = 0) -> nn.Module:
    """test_resnet with non-trivial BatchNorm statistics (a fresh one would hide a BN bias left on a removed channel)."""
    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return net


def images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def env(step: str = "s07") -> OperatorEnv:
    return OperatorEnv(step=step, seed=0, make_trainer=None)  # type: ignore[arg-type]  # no fine-tune: never called


def prune(net: nn.Module, **options) -> tuple[dict[str, torch.Tensor], dict]:
    method = get_method("compress", "prune")
    change = method.fn(net, None, method.parse_config(options, where="stream.s07", file="params.yaml"), env())  # type: ignore[arg-type]
    return change.transform.tensors, change.transform.meta


def test_groups_couple_the_branches_of_every_residual_add() -> None:
    groups = channel_groups(tiny_net())
    by_producer = {p: g for g in groups for p in g.producers}
    # the stem's last conv and layer1's second conv are summed (identity shortcut): one group, with both BatchNorms
    assert by_producer["conv1.6"] is by_producer["layer1.0.conv2"]
    assert {"bn1", "layer1.0.bn2"} <= set(by_producer["conv1.6"].norms)
    # a downsampling block: the main branch and the shortcut conv are one group, read by the next stage
    stage2 = by_producer["layer2.0.conv2"]
    assert stage2 is by_producer["layer2.0.downsample.1"] and {"layer3.0.conv1", "layer3.0.downsample.1"} <= set(stage2.consumers)
    assert "fc" in by_producer["layer4.0.conv2"].consumers  # read through the global pool and flatten
    assert "fc" not in by_producer  # the logits are the network's output: never pruned
    assert all(len({len(g.producers), len(set(g.producers))}) == 1 for g in groups)


def test_ops_we_do_not_model_fix_the_channels_they_touch() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3), nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    assert channel_groups(Cat()) == []


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_removed_network_is_smaller_and_computes_the_masked_dense_network(sparsity: float) -> None:
    net = tiny_net()
    masks = channel_masks(net, sparsity)
    dense = apply_masks(copy.deepcopy(net), masks)
    small = remove_channels(apply_masks(copy.deepcopy(net), masks), masks)
    x = images()
    with torch.no_grad():
        assert torch.allclose(dense(x), small(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    assert model_bytes(small) < model_bytes(dense)
    for g in channel_groups(net):  # every group keeps at least one channel, and its members agree on how many
        kept = {getattr(dict(small.named_modules())[p], "out_channels", None) for p in g.producers}
        assert len(kept) == 1 and next(iter(kept)) >= 1


def test_channel_transform_composes_deterministically_and_quantizes_after() -> None:
    net = tiny_net()
    tensors, meta = prune(copy.deepcopy(net), sparsity=0.3, structured="channels")
    assert meta["remove_channels"] is True and meta["config"]["structured"] == "channels"
    a = transform_network(copy.deepcopy(net), tensors, meta, where="t.json")
    b = transform_network(copy.deepcopy(net), tensors, meta, where="t.json")
    assert weights_hash(a) == weights_hash(b) and model_bytes(a) < model_bytes(net)
    again, _ = prune(copy.deepcopy(net), sparsity=0.3, structured="channels")
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)
    x = images(64)
    int8 = quantize(a, calibrate(a, x), x[:1])  # a quantize step after the prune step calibrates the smaller network
    assert (int8(x).argmax(1) == a(x).argmax(1)).float().mean() > 0.8


def test_a_routed_network_loses_channels_expert_by_expert() -> None:
    g = torch.Generator().manual_seed(3)
    dark, bright = torch.rand(40, 1, 16, 16, generator=g) * 0.2, 0.8 + torch.rand(40, 1, 16, 16, generator=g) * 0.2
    y = torch.arange(40) % 2
    net = RoutedNetwork([tiny_net(0), tiny_net(1)], Router([Detector.fit(bright, y)], [Detector.fit(dark, y)])).eval()
    masks = channel_masks(net, 0.3)
    assert {k.split(".")[1] for k in masks} == {"0", "1"}
    dense = apply_masks(copy.deepcopy(net), masks)
    small = remove_channels(apply_masks(copy.deepcopy(net), masks), masks)
    x = torch.cat([dark[:4], bright[:4]])
    with torch.no_grad():
        assert torch.allclose(dense(x), small(x), atol=1e-5)
    assert model_bytes(small) < model_bytes(dense)


def test_transforms_without_remove_channels_still_run_dense() -> None:
    net = tiny_net()
    masks = global_masks(net, 0.2, structured=True)
    meta = {"transform": "prune", "config": {"sparsity": 0.2, "structured": True}}
    served = transform_network(copy.deepcopy(net), {f"mask/{k}": v for k, v in masks.items()}, meta, where="old.json")
    assert all(served.state_dict()[k].shape == v.shape for k, v in net.state_dict().items())


def test_bad_options_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"stream\.s07\.structured.*expected true, false or 'channels', got 'channel'"):
        prune(tiny_net(), sparsity=0.3, structured="channel")
    with pytest.raises(ConfigError, match=r"stream\.s07\.remove_channels\b.*unknown key"):
        prune(tiny_net(), sparsity=0.3, remove_channels=True)
    with pytest.raises(ConfigError, match=r"stream\.s07\.structured.*expected bool or str"):
        prune(tiny_net(), sparsity=0.3, structured=1)

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(ConfigError, match=r"params\.yaml.*stream\.s07\.structured.*cannot remove channels of Branchy"):
        prune(Branchy(), sparsity=0.3, structured="channels")


def test_masks_that_leave_a_removed_channel_live_are_refused_naming_the_file() -> None:
    net = tiny_net()
    tensors, meta = prune(copy.deepcopy(net), sparsity=0.3, structured="channels")
    norm = next(k for k in tensors if k.endswith("bn1.weight") and not bool(tensors[k].all()))
    broken = dict(tensors) | {norm: torch.ones_like(tensors[norm])}
    with pytest.raises(ComponentError, match=r"t\.json.*keeps a channel its group removes"):
        transform_network(copy.deepcopy(net), broken, meta, where="t.json")


def test_int8_forward_runs_a_trace_that_matches_the_graph() -> None:
    net = tiny_net()
    x = images(64)
    int8 = quantize(net, calibrate(net, x), x[:1])
    assert isinstance(int8, Int8Network) and int8._fast, "test_resnet's int8 graph should trace"
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)  # the graph's own kernels, called bare (an earlier test may have set the flag)
    try:
        with torch.no_grad():
            for batch in (x[:1], x[:7], x):
                assert torch.equal(int8(batch), int8.graph(batch))
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    assert all(not k.startswith("_fast") for k in int8.state_dict())  # the trace is a cache, not weights
    twin = copy.deepcopy(int8)
    assert weights_hash(twin) == weights_hash(int8) and torch.equal(twin(x), int8(x))


def test_a_channel_pruned_champion_is_served_smaller_and_stays_so_through_a_learn_step(trained_copy: Path) -> None:
    """Plumbing through the stream (wide test thresholds): prune with structured: channels, quantize after it,
    then a learn step re-derives both transforms on its float shadow."""
    params = trained_copy / "params.yaml"
    append_stream_step(params, "prune", {"kind": "compress", "parent": "s01", "method": "prune", "structured": "channels", "sparsity": 0.1})
    append_stream_step(params, "quant", {"kind": "compress", "parent": "prune", "method": "quantize", "calibration_samples": 64})
    append_stream_step(params, "s03x", {"kind": "learn", "parent": "quant", "slice": "u3", "epochs": 1})
    ws = open_workspace()
    for key in ("s01", "prune"):
        record = run_step(ws, key).record
        assert record["decision"] == "promoted", (key, record["failing"])
    pruned = ws.manifest_of(ws.registry.champion())
    served, shadow = compose(pruned, ws.components), compose(pruned.float_shadow(), ws.components)
    assert sum(p.numel() for p in served.parameters()) < sum(p.numel() for p in shadow.parameters())
    assert weights_hash(served) == weights_hash(compose(pruned, ws.components))
    assert run_step(ws, "quant").record["decision"] == "promoted"
    record = run_step(ws, "s03x").record
    learned = ws.versions.load(record["manifest_hash"])
    assert learned.transform_steps == ("prune", "quant") and record["notes"]["reapplied_transforms"] == ["prune", "quant"]
    assert model_bytes(compose(learned, ws.components)) < model_bytes(compose(learned.float_shadow(), ws.components)) / 4
