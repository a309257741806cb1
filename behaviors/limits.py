"""Caps that keep the gate near the cost of one forward pass over its evaluation sets.

Most specs read the candidate's cached predictions: one forward pass per evaluation set, whatever
its size. A few do more work per sample than that, and are capped in ``params.yaml``
(:class:`~pipeline.core.config.BehaviorsConfig`):

- ``behaviors.max_property_samples`` (128): the hypothesis properties (``test_invariance``,
  ``test_properties``) perturb and forward the canary set once per drawn example (85 examples in
  all), so they look at most at this many canary samples. At 512 they were two thirds of a warm
  gate at 16x the default data (``ume bench scale``, profiled with cProfile): 85 passes over 512
  samples are 2.5 passes over all 17,280 evaluated samples;
- ``behaviors.max_check_samples`` (512): the per-sample membership test queries every reference
  model and the candidate and control under five shifted views of each forgotten and calibration
  sample; the population attacks fit a classifier per fold (an RBF SVC grows quadratically).

Each of them looks at a deterministic subsample of a set (all of it when the set is smaller). The
subsample is the ``count`` samples with the smallest seeded hash of their sample id (a bottom-k
sketch), so it is the same for the candidate and the champion, the same on every run, and deleting
samples outside it does not move it.

The caps travel to the specs with the thresholds (``thresholds["max_check_samples"]``,
``thresholds["max_property_samples"]``); :func:`check_samples` and :func:`property_samples` fall
back to the defaults for contexts built without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping

import numpy as np

from behaviors.context import BehaviorContext, Splits
from pipeline.core.config import BehaviorsConfig
from pipeline.core.errors import ConfigError
from pipeline.data import SampleSet

MAX_CHECK_SAMPLES = "max_check_samples"
MAX_PROPERTY_SAMPLES = "max_property_samples"
DEFAULT_MAX_CHECK_SAMPLES: int = BehaviorsConfig.max_check_samples
DEFAULT_MAX_PROPERTY_SAMPLES: int = BehaviorsConfig.max_property_samples


def limit_thresholds(config: BehaviorsConfig) -> dict[str, float]:
    """The caps of ``config`` as entries of the specs' ``thresholds`` mapping."""
    return {MAX_CHECK_SAMPLES: float(config.max_check_samples), MAX_PROPERTY_SAMPLES: float(config.max_property_samples)}


def check_samples(thresholds: Mapping[str, float]) -> int:
    """``max_check_samples`` from the thresholds mapping (the default when it is absent)."""
    return int(thresholds.get(MAX_CHECK_SAMPLES, DEFAULT_MAX_CHECK_SAMPLES))


def property_samples(thresholds: Mapping[str, float]) -> int:
    """``max_property_samples`` from the thresholds mapping (the default when it is absent)."""
    return int(thresholds.get(MAX_PROPERTY_SAMPLES, DEFAULT_MAX_PROPERTY_SAMPLES))


PROPERTY_EXAMPLES_ENV = "UME_PROPERTY_EXAMPLES"


def property_examples(shipped: int) -> int:
    """Hypothesis examples per property: ``shipped`` (what the gate runs), or ``UME_PROPERTY_EXAMPLES`` when set.

    The test suite sets 8 (``tests/conftest.py``): its gates check ume's plumbing on crafted cases, and the
    properties were over half of every gate's time there; the demo and the benchmarks run the shipped counts."""
    raw = os.environ.get(PROPERTY_EXAMPLES_ENV, "").strip()
    if not raw:
        return shipped
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"expected a whole number of examples >= 1, got {raw!r}", file="environment", field=PROPERTY_EXAMPLES_ENV)
    return int(raw)


def _rank(keys: tuple[str, ...], seed: int) -> np.ndarray:
    """A seeded, content-based order of ``keys`` (their salted hashes, smallest first)."""
    salt = f"{seed}:".encode()
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(salt + k.encode(), digest_size=8).digest(), "big") for k in keys), dtype=np.uint64, count=len(keys)
    )
    return np.argsort(hashes, kind="stable")


def capped(samples: SampleSet, count: int, *, seed: int = 0) -> SampleSet:
    """At most ``count`` samples of ``samples``: all of them (the same object) when it has no more,
    else the ``count`` with the smallest seeded hash of their sample id, in their original order."""
    if len(samples) <= count:
        return samples
    keep = np.sort(_rank(samples.sample_ids, seed)[:count]).tolist()
    return samples.take(keep, name=f"{samples.name}[{count} of {len(samples)}]")


def capped_subjects(samples: SampleSet, subjects: list[str], max_samples: int, *, seed: int = 0) -> SampleSet:
    """Whole data subjects of ``samples`` (``subjects[i]`` is sample i's), in seeded hash order, while
    their samples add up to at most ``max_samples`` (at least one subject); all when they fit."""
    if len(samples) <= max_samples:
        return samples
    unique = sorted(set(subjects))
    sizes: dict[str, int] = {}
    for s in subjects:
        sizes[s] = sizes.get(s, 0) + 1
    chosen: set[str] = set()
    total = 0
    for i in _rank(tuple(unique), seed).tolist():
        subject = unique[i]
        if chosen and total + sizes[subject] > max_samples:
            continue
        chosen.add(subject)
        total += sizes[subject]
    keep = [i for i, s in enumerate(subjects) if s in chosen]
    return samples.take(keep, name=f"{samples.name}[{len(keep)} of {len(samples)}]")


def capped_splits(context: BehaviorContext, thresholds: Mapping[str, float]) -> Splits:
    """``context.splits`` with the canary set capped at ``max_property_samples`` (:func:`capped`) and its images read once into a
    tensor: the input of the hypothesis properties, which perturb and forward it once per example.
    The set keeps its name and ids, so the models' cached predictions on it are shared."""
    splits = context.splits
    canary = capped(splits.canary, property_samples(thresholds), seed=getattr(context.data, "seed", 0))
    return dataclasses.replace(splits, canary=dataclasses.replace(canary, inputs=canary.x))
