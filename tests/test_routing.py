"""Routed composition (``layout: routed``): detectors, router, experts, and what transforms do to them.

Crafted inputs with wide margins: the slices are images of clearly different brightness, so routing
decisions are far from any tie on every CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model.compose import weights_hash
from pipeline.model.quantize import Int8Network, calibrate, model_bytes, quantize
from pipeline.model.routing import Detector, RoutedNetwork, Router, split_router_tensors


def _images(level: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (level + 0.05 * torch.randn(n, 1, 16, 16, generator=g)).clamp(0, 1)
    return x, torch.arange(n) % 2


class Constant(nn.Module):
    """An 'expert' whose logits say which expert it is (class ``k``), and which counts its inputs."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.seen = 0
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return nn.functional.one_hot(torch.full((len(x),), self.k), 10).float() * self.scale


def _router() -> Router:
    dark, dark_y = _images(0.1, 60, 0)
    mid, mid_y = _images(0.5, 60, 1)
    bright, bright_y = _images(0.9, 60, 2)
    # slice 1 = mid grey, slice 2 = bright; each overlay's reference is the base's look (dark)
    return Router([Detector.fit(mid, mid_y), Detector.fit(bright, bright_y)], [Detector.fit(dark, dark_y), Detector.fit(dark, dark_y)])


def test_router_sends_each_look_to_its_own_expert() -> None:
    router = _router()
    for level, expert in ((0.1, 0), (0.5, 1), (0.9, 2)):
        x, _ = _images(level, 40, 10 + expert)
        assert router(x).tolist() == [expert] * 40


def test_the_routers_whitened_scores_are_the_detectors_log_densities() -> None:
    router = _router()
    x = torch.cat([_images(level, 8, 40 + i)[0] for i, level in enumerate((0.1, 0.5, 0.9))])
    from pipeline.model.routing import router_features

    feats = router_features(x)
    expected = [router.detector("reference", i).score(feats) for i in range(2)] + [router.detector("slice", i).score(feats) for i in range(2)]
    assert torch.allclose(router.scores(x), torch.stack(expected, dim=1), rtol=1e-9, atol=1e-6)


def test_routed_network_runs_each_input_through_its_expert_only_and_keeps_the_order() -> None:
    experts = [Constant(k) for k in range(3)]
    net = RoutedNetwork(experts, _router())
    xs = [_images(level, 5, 20 + i)[0] for i, level in enumerate((0.9, 0.1, 0.5))]
    mixed = torch.stack([xs[i % 3][i // 3] for i in range(15)])  # bright, dark, mid, bright, ...
    out = net(mixed)
    assert out.argmax(1).tolist() == [2, 0, 1] * 5
    assert [e.seen for e in experts] == [5, 5, 5]  # no expert computed another's inputs
    assert net(mixed[:0]).shape == (0, 10)


def test_detectors_round_trip_through_tensors_and_are_part_of_the_weights_hash() -> None:
    x, y = _images(0.5, 50, 3)
    detector = Detector.fit(x, y)
    stored = detector.tensors("slice") | {"lora_A": torch.ones(2)}
    adapter, router = split_router_tensors(stored)
    assert set(adapter) == {"lora_A"} and all(k.startswith("router/slice/") for k in router)
    again = Detector.from_tensors(router, "slice")
    feats = torch.rand(4, 64).double()
    assert torch.equal(again.score(feats), detector.score(feats))
    a = RoutedNetwork([Constant(k) for k in range(3)], _router())
    b = RoutedNetwork([Constant(k) for k in range(3)], _router())
    assert weights_hash(a) == weights_hash(b)
    b.router.slice0_means += 1e-3  # another detector is another model
    assert weights_hash(a) != weights_hash(b)


def test_int8_quantization_quantizes_every_expert_and_keeps_the_router() -> None:
    from pipeline.model.net import create_net

    torch.manual_seed(0)
    experts = [create_net("test_resnet", 10, 1).eval() for _ in range(3)]
    net = RoutedNetwork(experts, _router()).eval()
    images = torch.cat([_images(level, 16, 30 + i)[0] for i, level in enumerate((0.1, 0.5, 0.9))])
    observers = calibrate(net, images)
    assert {k.split(".")[1] for k in observers} == {"0", "1", "2"}
    int8 = quantize(net, observers, images[:1])
    assert isinstance(int8, RoutedNetwork) and int8.router is net.router
    assert model_bytes(int8) < model_bytes(net) / 2
    assert all(isinstance(e, Int8Network) for e in int8.experts)
    with torch.no_grad():
        assert int8(images).shape == (len(images), 10) and torch.equal(int8.router(images), net.router(images))


class _Store:
    """Just enough of a component store for :func:`shifted_overlays`: sidecar meta and tensor names."""

    def __init__(self, parts: dict[str, tuple[dict, list[str]]]) -> None:
        self.parts = parts

    def sidecar(self, component_id: str):
        return type("Sidecar", (), {"meta": self.parts[component_id][0]})()

    def load(self, component_id: str):
        return {name: torch.zeros(1) for name in self.parts[component_id][1]}, None


def test_dropping_an_expert_is_refused_when_an_overlay_names_it_or_a_later_one() -> None:
    """An overlay made on routed experts names them by index (``experts.<i>.``); dropping an expert renumbers the
    later ones, so such an overlay would fold into another expert of the same shape without any error."""
    from pipeline.model.manifest import Manifest
    from pipeline.steps.kinds.rollback import shifted_overlays

    routed = {"layout": "routed"}
    store = _Store({
        "a": (routed, ["base_model.model.conv.lora_A.weight"]),
        "b": (routed, ["base_model.model.conv.lora_A.weight"]),
        "c": (routed, ["base_model.model.conv.lora_A.weight"]),
        "edit": ({}, ["base_model.model.experts.2.conv.lora_A.weight"]),  # made on the expert of "b"
        "delta": ({}, ["experts.1.conv.weight"]),  # made on the expert of "a"
    })
    manifest = Manifest(base="base", overlays=("a", "b", "c", "edit", "delta"), overlay_steps=("s1", "s2", "s3", "e4", "f5"))
    assert shifted_overlays(manifest, store, "s1") == ["e4", "f5"]
    assert shifted_overlays(manifest, store, "s2") == ["e4"]
    assert shifted_overlays(manifest, store, "s3") == []  # the last expert: nothing after it names it
    assert shifted_overlays(manifest, store, "e4") == []  # not an expert
