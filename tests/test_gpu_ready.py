"""GPU-ready settings and the behaviour caps (issue 17, items 5 and 6), checked on the CPU.

``train.accelerator: auto`` and ``train.precision: bf16-mixed`` are accepted and train (auto picks
the CPU here; Lightning runs bf16 autocast on the CPU); precisions that would leave the weights in
another dtype, or that Lightning does not know, are refused naming the field. The caps of
``behaviors.max_check_samples`` bound what the hypothesis properties forward, and a capped check
can still fail. The GPU itself is exercised by ``bench/gpu_demo.sh`` wherever one is present.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from behaviors.context import BehaviorContext, ModelUnderTest, Splits, merged_thresholds
from behaviors.limits import capped, capped_subjects, check_samples, limit_thresholds, property_samples
from behaviors.mia import attack_accuracy
from behaviors.suite import run_suite
from pipeline.core.config import BehaviorsConfig, parse_params
from pipeline.core.errors import ConfigError
from pipeline.data import SampleSet
from tests.projects import REPO, tiny_params_dict


def _params(tmp_path: Path, **train):
    raw = tiny_params_dict(tmp_path)
    raw["train"].update(train)
    return parse_params(raw, file="params.yaml")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true", "bf16", "16", "32"])
@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cpu"])
def test_accelerator_and_precision_are_accepted(tmp_path: Path, accelerator: str, precision: str) -> None:
    params = _params(tmp_path, accelerator=accelerator, precision=precision)
    assert (params.train.accelerator, params.train.precision) == (accelerator, precision)


@pytest.mark.parametrize(
    ("train", "field", "words"),
    [
        ({"precision": "fp8"}, "train.precision", "unknown precision 'fp8'"),
        ({"precision": "bf16-true"}, "train.precision", "use a mixed precision"),
        ({"precision": "64-true"}, "train.precision", "float64"),
        ({"precision": 16}, "train.precision", "expected a string"),
        ({"accelerator": "tpu-pod"}, "train.accelerator", "unknown accelerator"),
    ],
)
def test_bad_accelerator_or_precision_names_the_field(tmp_path: Path, train: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _params(tmp_path, **train)
    assert f"field '{field}'" in str(info.value) and words in str(info.value)
    assert str(info.value).startswith("params.yaml")


@pytest.mark.parametrize("name", ["max_check_samples", "max_reference_pool", "max_property_samples"])
def test_behaviour_caps_are_validated(tmp_path: Path, name: str) -> None:
    raw = tiny_params_dict(tmp_path)
    assert getattr(parse_params(raw).behaviors, name) == getattr(BehaviorsConfig, name)
    raw["behaviors"][name] = 5
    with pytest.raises(ConfigError, match=rf"field 'behaviors\.{name}'.*>= 100"):
        parse_params(raw, file="params.yaml")
    raw["behaviors"][name] = "many"
    with pytest.raises(ConfigError, match=rf"behaviors\.{name}"):
        parse_params(raw, file="params.yaml")


def test_the_caps_are_above_the_default_data() -> None:
    """On the embedded default every evaluation set fits under the check and pool caps: nothing is subsampled there
    but the properties' canary inputs (``max_property_samples`` is a per-example budget, below the canary set)."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    behaviors = parse_params(raw).behaviors
    digits = 1797
    assert behaviors.max_check_samples > digits * raw["data"]["test_fraction"]  # the largest set a capped check looks at
    assert behaviors.max_reference_pool > digits  # the reference pool is part of the training data
    assert behaviors.max_property_samples < digits * raw["data"]["canary_fraction"] < behaviors.max_check_samples


def _samples(n: int, name: str = "canary", x: torch.Tensor | None = None) -> SampleSet:
    ids = tuple(f"s{i:05d}" for i in range(n))
    x = torch.zeros(n, 1, 8, 8) if x is None else x
    return SampleSet(name, x, torch.zeros(n, dtype=torch.long), ids, ("g",) * n, tuple(f"o{i // 10}" for i in range(n)))


def test_capped_is_deterministic_stable_and_a_no_op_when_small() -> None:
    small = _samples(50)
    assert capped(small, 50) is small
    big = _samples(1000)
    a, b = capped(big, 100, seed=3), capped(big, 100, seed=3)
    assert len(a) == 100 and a.sample_ids == b.sample_ids and list(a.sample_ids) == sorted(a.sample_ids)
    assert capped(big, 100, seed=4).sample_ids != a.sample_ids
    # content-based: deleting samples outside the subsample does not move it
    kept = set(a.sample_ids)
    fewer = big.take([i for i, s in enumerate(big.sample_ids) if s in kept or i % 2])
    assert capped(fewer, 100, seed=3).sample_ids == a.sample_ids


def test_capped_subjects_keeps_whole_subjects() -> None:
    pool = _samples(1000)  # owners of 10 samples each
    subjects = list(pool.owners)
    out = capped_subjects(pool, subjects, 205, seed=0)
    assert 100 <= len(out) <= 205
    counts = {o: out.owners.count(o) for o in set(out.owners)}
    assert set(counts.values()) == {10}
    assert capped_subjects(pool, subjects, 1000) is pool


def test_capped_attack_can_still_fail() -> None:
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(3.0, 1.0, (5000, 1)), rng.normal(0.0, 1.0, (5000, 1))
    accuracy = attack_accuracy(members, non_members, "svc", max_samples=200)
    assert accuracy > 0.85  # well separated: the capped attack still tells them apart
    same = attack_accuracy(members[:300], members[300:600], "loss", max_samples=10_000)
    assert same < 0.7


class _Counting(torch.nn.Module):
    """Logits [mean(x), 0]: its prediction flips under a small brightness shift; records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        m = x.flatten(1).mean(1) * self.scale
        return torch.stack([m, torch.zeros_like(m)], 1)


def _property_context(x: torch.Tensor, cap: int) -> tuple[BehaviorContext, _Counting]:
    net = _Counting()
    canary = _samples(len(x), x=x)
    thresholds = merged_thresholds({**limit_thresholds(BehaviorsConfig(max_property_samples=cap)), "min_brightness_agreement": 0.95})
    context = BehaviorContext(
        candidate=ModelUnderTest("candidate", None, net),
        champion=None,
        splits=Splits(test=canary, canary=canary, retain=canary),
        thresholds=thresholds,
        data=None,  # type: ignore[arg-type]
        num_classes=2,
    )
    return context, net


def test_properties_forward_at_most_the_cap_and_can_still_fail() -> None:
    specs = [REPO / "behaviors" / "test_properties.py"]
    stable = torch.full((3000, 1, 8, 8), 0.5)  # far from the decision boundary: invariant
    context, net = _property_context(stable, cap=128)
    assert property_samples(context.thresholds) == 128 and check_samples(context.thresholds) == 512  # the property cap decides
    results = {r.short_name: r for r in run_suite(specs, context)}
    assert {r.outcome for r in results.values()} == {"passed"}, results
    assert net.batches and max(net.batches) <= 128  # never the whole canary set of 3000
    # Near the boundary a 3% brightness shift flips half of the predictions: the capped check fails.
    fragile = torch.linspace(-0.05, 0.05, 3000)[:, None, None, None].expand(3000, 1, 8, 8).contiguous()
    context, net = _property_context(fragile, cap=128)
    results = {r.short_name: r for r in run_suite(specs, context)}
    assert results["test_brightness_stability"].outcome == "failed"
    assert max(net.batches) <= 128


def test_predict_logits_returns_float32_on_the_cpu() -> None:
    from pipeline.model.net import predict_logits

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).to(torch.float64)
    out = predict_logits(net, torch.zeros(5, 1, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (5, 3)


def test_predict_logits_puts_a_module_left_training_in_eval_mode() -> None:
    """It skips ``eval()`` when nothing trains (a routed net has thousands of modules), not when one submodule does."""
    from pipeline.model.net import predict_logits

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3), torch.nn.Dropout(0.9)).eval()
    net[2].train()  # only the dropout layer trains
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(predict_logits(net, x), predict_logits(net, x))
    assert not any(m.training for m in net.modules())


def test_bf16_mixed_auto_trains_on_the_cpu(tmp_path: Path) -> None:
    """A tiny Classifier and a SCRUB-like StepsModule (forget batches, a frozen teacher) train with
    ``accelerator: auto`` and ``precision: bf16-mixed`` through the real ``make_trainer``; the
    weights stay float32 on the CPU and the logits are finite."""
    from edits.training import StepsModule
    from pipeline.model.net import create_net, predict_logits
    from pipeline.model.training import Classifier, make_trainer

    train = dataclasses.replace(_params(tmp_path, accelerator="auto", precision="bf16-mixed").train, progress_bar=False)
    g = torch.Generator().manual_seed(0)
    # 32 px: at 16 px test_resnet's last stage sees a 1x1 map, where the CPU's bf16 backward is wrong (below)
    x, y = torch.rand(64, 1, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (64,), generator=g)
    net = create_net("test_resnet", 10, 1)
    trainer = make_trainer(train, max_epochs=1)
    assert trainer.accelerator.__class__.__name__ == ("CUDAAccelerator" if torch.cuda.is_available() else "CPUAccelerator")
    assert trainer.precision == "bf16-mixed"
    trainer.fit(Classifier(net, lr=1e-3, augment_shift=1), train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=32))
    teacher = create_net("test_resnet", 10, 1).eval()

    def loss(model, retain_batch, forget_batch, _i):
        with torch.no_grad():
            target = teacher(forget_batch[0])
        return F.cross_entropy(model(retain_batch[0]), retain_batch[1]) + F.mse_loss(model(forget_batch[0]), target)

    forget = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    module = StepsModule(net, loss, lr=1e-3, forget_loader=forget, frozen=[teacher])
    make_trainer(train, max_epochs=1, max_steps=2).fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=32))
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert torch.isfinite(predict_logits(net, x)).all()


def test_non_finite_weights_after_mixed_precision_name_the_precision(tmp_path: Path) -> None:
    """Weights a mixed-precision run left non-finite stop the run with an error naming ``train.precision``
    (PyTorch's CPU bf16 backward of a stride-2 convolution on a 1x1 map gives garbage; docs/scaling-out.md)."""
    from pipeline.model.training import Classifier, make_trainer

    class Poisoned(Classifier):
        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            with torch.no_grad():
                self.net[1].weight[0, 0] = float("nan")

    train = dataclasses.replace(_params(tmp_path, precision="bf16-mixed").train, progress_bar=False)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    loader = DataLoader(TensorDataset(torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(ConfigError, match=r"field 'train\.precision'.*non-finite values in 'net\.1\.weight'.*32-true"):
        make_trainer(train, max_epochs=1).fit(Poisoned(net, lr=1e-3), train_dataloaders=loader)
