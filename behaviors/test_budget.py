"""Budgets against the champion, measured in-process: model size and latency (batch 64, CPU).

Latency is measured on one CPU thread (a multi-threaded forward stalls whenever another process
holds a core, which made the ratio noisy on shared machines) as the minimum over interleaved
repeats (candidate, champion, champion again, candidate, ...), so load hits both alike. The
champion timed against itself gives the noise of this run: the ratio two equal models show here
and now (about 0 on an idle machine, more under load). The latency ratio is judged after that
noise is taken off, so a healthy step gets the same decision on an idle and on a loaded machine
(``tests/test_specs_bite.py`` gates one with every core busy). Bounds are ratios in
``params.yaml`` (``max_size_ratio``, ``max_latency_ratio``).
"""

import time

import pytest
import torch

from behaviors.context import ModelUnderTest, Splits
from pipeline.model.quantize import model_bytes
from pipeline.model.routing import RoutedNetwork

pytestmark = pytest.mark.blocking

REPEATS = 10


def _latency_ms(model: ModelUnderTest, x: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model.net(x)
        return (time.perf_counter() - start) * 1000


def _experts(net: torch.nn.Module) -> int:
    return len(net.experts) if isinstance(net, RoutedNetwork) else 1


def test_model_size_within_budget(candidate: ModelUnderTest, needs_champion, thresholds, behavior) -> None:
    """Serialized weights per expert are at most ``max_size_ratio`` x the champion's.

    A routed network (``layout: routed``) holds one expert per learned slice by design, so its size is
    compared per expert; the total and the expert counts are recorded beside it."""
    cand, champ = model_bytes(candidate.net), model_bytes(needs_champion.net)
    cand_experts, champ_experts = _experts(candidate.net), _experts(needs_champion.net)
    behavior.record("size_bytes", cand)
    behavior.record("size_bytes_champion", champ)
    if cand_experts > 1 or champ_experts > 1:
        behavior.record("experts", cand_experts)
        behavior.record("experts_champion", champ_experts)
    behavior.check("size_ratio", (cand / cand_experts) / (champ / champ_experts), at_most=thresholds["max_size_ratio"])


def test_latency_within_budget(candidate: ModelUnderTest, needs_champion, splits: Splits, thresholds, behavior) -> None:
    """Batch-64 latency (one thread) is at most ``max_latency_ratio`` x the champion's, this run's noise taken off."""
    x = splits.test.take(list(range(min(64, len(splits.test))))).x  # reads 64 images, not the whole test set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for model in (candidate, needs_champion):  # warm-up
            _latency_ms(model, x)
        cand, champ, again = [], [], []
        for _ in range(REPEATS):
            cand.append(_latency_ms(candidate, x))
            champ.append(_latency_ms(needs_champion, x))
            again.append(_latency_ms(needs_champion, x))
    finally:
        torch.set_num_threads(threads)
    ratio = min(cand) / min(champ)
    noise = max(min(champ), min(again)) / min(min(champ), min(again)) - 1.0  # what equal models show in this run
    behavior.record("latency_ms_b64", min(cand))
    behavior.record("latency_ms_b64_champion", min(champ))
    behavior.record("latency_ratio_measured", ratio)
    behavior.record("latency_noise", noise)
    behavior.check("latency_ratio", ratio / (1.0 + noise), at_most=thresholds["max_latency_ratio"])
