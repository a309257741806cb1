"""The reference bank: shadow LoRA overlays that calibrate the per-sample membership test.

A reference model for a deletion must be a model like the served one that never trained on the
forgotten samples. ume's stack makes them cheap: the data subjects' samples reach the model through
overlays on a clean base, so a reference is one LoRA overlay on that base (the ``learn`` recipe),
trained on a random half of the *reference pool*, the data subjects of the version's overlays
(whole data subjects are in or out, as a deletion is; samples without an owner count alone).
Every subject is IN about half of the shadows and OUT of the others, as in LiRA's shadow training
(Carlini et al. 2022); only the OUT side is used (offline LiRA, :mod:`behaviors.membership`).

Amortised: the bank is trained once per clean base (``store/references/<base id>/``) and reused by
every later step and request. It is a consumer of data like any other, so deleted samples never
stay in it: a shadow whose lineage holds a deleted sample is removed when the bank is opened, and
the bank is topped up (from the data layer, which no longer serves deleted samples) when fewer
than ``min_shadows`` remain. Every forgotten sample is therefore OUT for every shadow that scores it.
A shadow is also removed when the pool gained a data slice it never saw (a learn step after it taught the
model a new look): as a reference it would be unlike the served model on that slice's samples (on a stream
base -> u1 -> bank -> u3 -> exact deletion of a memorised ``u3`` owner, a stale bank did not flag the
un-forgotten control; a bank trained on the pool with ``u3`` did).

Complementary pairs. Shadows are trained two by two: the first of a pair on a random half of the
pool's data subjects, the second on the rest (the subjects its partner did not see). Every subject
of the pool is then IN exactly one shadow of each pair, so a deletion purges one shadow per pair
and the other stays OUT for it: with ``shadows: 4`` and ``min_shadows: 2`` the deletion's gate scores
with the two survivors and trains nothing, and ``ume references --ahead`` (the ``seal`` stage, after
the step) trains the purged halves back (``fill``), off the deletion's critical path.

Cost. Shadows train on at most ``behaviors.max_reference_pool`` samples of whole data subjects
(:func:`capped_pool`, a seeded choice): the bank's one-off training does not grow with the data. The
shadows to train are planned first and trained side by side in forked worker processes (:func:`_train_jobs`).
Queries stream the samples a batch at a time, and a model's statistic on a set is computed once
per gate (the calibration set serves every request); the specs cap the sets they query
(``behaviors.max_check_samples``, :mod:`behaviors.limits`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from behaviors.cache import RowCache
from behaviors.context import ModelUnderTest
from behaviors.limits import capped_subjects
from behaviors.membership import MembershipResult, logit_confidence, membership_test, score_samples
from pipeline.core.config import ReferenceConfig
from pipeline.core.seeding import seed_everything
from pipeline.data import SampleSet, UmeData
from pipeline.model.lineage import hash_sample_id, hash_sample_ids
from pipeline.model.lora import LoraSettings, adapter_tensors, attach_lora, fold_lora, lora_targets
from pipeline.model.net import predict_logits

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("ume.references")

QUERY_BATCH = 512  # samples per query batch (predict_logits' own batch: the same logits as one call)


def _set_key(samples: SampleSet) -> str:
    return f"{samples.name}:{len(samples)}:{hash(samples.sample_ids)}"


@dataclass
class Shadow:
    """One reference overlay, folded into the base, and the hashed ids it trained on."""

    name: str
    net: nn.Module = field(repr=False)
    lineage: frozenset[str] = field(repr=False)
    key: str = ""  # its identity in the row cache: the bank, the name and a hash of its sidecar (a reused name is another shadow)
    pair: int = -1  # its complementary pair (the other shadow of the pair trained on the subjects this one did not see)


class ReferenceBank:
    """The shadows of one clean base, with a cache of their statistics per sample set."""

    def __init__(
        self,
        root: Path,
        shadows: list[Shadow],
        *,
        config: ReferenceConfig,
        base_lineage: frozenset[str] = frozenset(),
        trained: int = 0,
        purged: int = 0,
        stale: int = 0,
        seconds: float = 0.0,
        cache: RowCache | None = None,
    ) -> None:
        self.root = root
        self.cache = cache  # the shadows' and the tested versions' statistics, kept across gates
        self.shadows = shadows
        self.base_lineage = base_lineage  # every shadow is built on the base: its samples are IN for all
        self.config = config
        self.trained = trained  # shadows trained while opening (0 when the bank was reused as it was)
        self.purged = purged  # shadows removed because they had trained on a deleted sample
        self.stale = stale  # shadows removed because the pool gained a slice they never saw (a later learn step's look)
        self.seconds = seconds  # time spent opening (training included)
        self._phi: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._queries: dict[tuple[int, str, str], tuple[object, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.shadows)

    def query(self, forward: Callable[[torch.Tensor], torch.Tensor], samples: SampleSet) -> np.ndarray:
        """A model's statistic on ``samples``, averaged over the query views (LiRA's augmented queries),
        read and queried ``QUERY_BATCH`` samples at a time."""
        out = []
        for start, x in zip(range(0, len(samples), QUERY_BATCH), samples.batches(QUERY_BATCH), strict=True):
            y = samples.y[start : start + len(x)]
            out.append(np.mean([logit_confidence(forward(view), y) for view in query_views(x, self.config.query_shift)], axis=0))
        return np.concatenate(out) if out else np.empty(0)

    def _query_once(self, forward: Callable[[torch.Tensor], torch.Tensor], samples: SampleSet) -> np.ndarray:
        """:meth:`query`, cached per model and set for a bound method (``candidate.forward``): every
        request's test reuses the candidate's and control's statistic on the calibration set."""
        owner = getattr(forward, "__self__", None)
        if owner is None:
            return self.query(forward, samples)
        if isinstance(owner, ModelUnderTest) and owner.cache is not None and owner.key:  # kept across gates (behaviors/cache.py)
            return owner.rows(self._kind, samples, lambda s: torch.from_numpy(self.query(forward, s))).numpy()
        key = (id(owner), getattr(forward, "__name__", ""), _set_key(samples))
        hit = self._queries.get(key)
        if hit is None or hit[0] is not owner:
            hit = (owner, self.query(forward, samples))
            self._queries[key] = hit
        return hit[1]

    def statistics(self, samples: SampleSet) -> tuple[np.ndarray, np.ndarray]:
        """``(phi, out)``: every shadow's statistic on ``samples`` (K x n) and which shadows are OUT."""
        key = _set_key(samples)
        if key not in self._phi:
            hashed = _hashed_in_order(samples)
            phi = np.stack([self._shadow_statistic(s, samples) for s in self.shadows])
            out = np.array([[h not in s.lineage and h not in self.base_lineage for h in hashed] for s in self.shadows], dtype=bool)
            self._phi[key] = (phi, out)
        return self._phi[key]

    @property
    def _kind(self) -> str:
        return f"lira-shift{self.config.query_shift}"

    def _shadow_statistic(self, shadow: Shadow, samples: SampleSet) -> np.ndarray:
        def compute(s: SampleSet) -> torch.Tensor:
            return torch.from_numpy(self.query(lambda x: predict_logits(shadow.net, x), s))

        if self.cache is None or not shadow.key:
            return compute(samples).numpy()
        return self.cache.rows(shadow.key, self._kind, samples, compute).numpy()

    def _calibration(self, non_members: SampleSet) -> tuple[SampleSet, np.ndarray]:
        calib_phi, calib_out = self.statistics(non_members)
        keep = calib_out.all(axis=0)  # a calibration sample must be OUT for every shadow
        return non_members.take(np.flatnonzero(keep).tolist()), calib_phi[:, keep]

    def scores(self, forward: Callable[[torch.Tensor], torch.Tensor], samples: SampleSet, non_members: SampleSet) -> np.ndarray:
        """Per-sample member scores of one model (NaN where too few shadows are OUT)."""
        phi, out = self.statistics(samples)
        calibration, calib_phi = self._calibration(non_members)
        c = self.config
        return score_samples(
            c.score,
            self._query_once(forward, samples),
            phi,
            out,
            self._query_once(forward, calibration),
            calib_phi,
            min_references=c.min_references,
            offline_a=c.offline_a,
            gamma=c.gamma,
        )

    def test(self, forward: Callable[[torch.Tensor], torch.Tensor], samples: SampleSet, non_members: SampleSet) -> MembershipResult:
        """The per-sample test of one model (``forward``: inputs -> logits) on ``samples``, calibrated on ``non_members``
        (offline LiRA or RMIA: ``config.score``)."""
        phi, out = self.statistics(samples)
        calibration, calib_phi = self._calibration(non_members)
        return membership_test(
            self._query_once(forward, samples),
            phi,
            out,
            self._query_once(forward, calibration),
            calib_phi,
            calibration.sample_ids,
            false_positive_rate=self.config.false_positive_rate,
            min_references=self.config.min_references,
            method=self.config.score,
            offline_a=self.config.offline_a,
            gamma=self.config.gamma,
        )


def query_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """The image and its shifts by ``shift`` pixels left, right, up and down (background -1 fills in).

    LiRA queries each sample under the augmentations it was trained with and averages (Carlini et
    al. 2022, sec. VI-B): a memorised sample stays confident under them, a lucky guess does not.
    """
    if shift <= 0:
        return [x]
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), value=-1.0)
    offsets = ((shift, shift), (shift, 0), (shift, 2 * shift), (0, shift), (2 * shift, shift))
    return [padded[..., dy : dy + h, dx : dx + w] for dy, dx in offsets]


def reference_pool(data: UmeData, overlay_lineage: set[str], base_lineage: set[str]) -> SampleSet:
    """The data subjects' samples of the version's overlays (not in the base), deleted ones excluded."""
    return data.select("reference-pool", hashed_ids=overlay_lineage - base_lineage)


def capped_pool(pool: SampleSet, max_samples: int, seed: int) -> SampleSet:
    """At most ``max_samples`` samples of ``pool``, whole data subjects at a time (a seeded choice;
    the pool itself when it fits). Subjects left out are OUT for every shadow, so they are still scored."""
    return capped_subjects(pool, _subjects(pool), max_samples, seed=seed)


def _subjects(samples: SampleSet) -> list[str]:
    return [o if isinstance(o, str) and o and o != "nan" else f"sample:{s}" for o, s in zip(samples.owners, samples.sample_ids, strict=True)]


def _half(samples: SampleSet, seed: int) -> SampleSet:
    """A random half of the data subjects of ``samples`` (all their samples together)."""
    subjects = _subjects(samples)
    unique = sorted(set(subjects))
    chosen = set(np.random.default_rng(seed).permutation(len(unique))[: len(unique) // 2].tolist())
    keep = {unique[i] for i in chosen}
    return samples.take([i for i, s in enumerate(subjects) if s in keep], name=f"shadow-{seed}")


def _hashed_in_order(samples: SampleSet) -> list[str]:
    """One hashed id per sample, in the set's order (``hash_sample_ids`` sorts and de-duplicates: a lineage, not a row order)."""
    return [hash_sample_id(s) for s in samples.sample_ids]


def _complement(samples: SampleSet, lineage: frozenset[str], seed: int) -> SampleSet:
    """The samples of ``samples`` whose hashed id is not in ``lineage`` (a partner's): the other half of a pair."""
    return samples.take([i for i, h in enumerate(_hashed_in_order(samples)) if h not in lineage], name=f"shadow-{seed}")


class _Member(Protocol):
    """What :func:`_next_half` reads of a shadow, trained or planned: its pair and its lineage."""

    pair: int
    lineage: frozenset[str]


def _next_half(shadows: Sequence[_Member], pool: SampleSet, seed: int) -> tuple[int | None, SampleSet]:
    """What the next shadow trains on, and the pair it completes (None: it starts a new pair).

    The first shadow (by pair) whose pair lost its other member is completed with the subjects of the pool
    it did not see; one that saw the whole pool as it is now cannot be, and stays alone. Without one to
    complete, a new pair starts on a random half of the pool's subjects.
    """
    members: dict[int, list[_Member]] = {}
    for shadow in shadows:
        members.setdefault(shadow.pair, []).append(shadow)
    for pair in sorted(p for p, group in members.items() if len(group) == 1):
        rest = _complement(pool, members[pair][0].lineage, seed)
        if len(rest):
            return pair, rest
    return None, _half(pool, seed)


@dataclass(frozen=True)
class _Job:
    """One shadow to train, planned before any is trained: its seed (and name), its pair, what it trains on."""

    seed: int
    pair: int
    train: SampleSet = field(repr=False)
    lineage: frozenset[str] = field(repr=False)
    pool_slices: tuple[str, ...] = ()  # the slices of the pool it was planned on (its sidecar's ``slices``)

    @property
    def name(self) -> str:
        return f"shadow-{self.seed:06d}"


def _training_set(data: UmeData, half: SampleSet, replay: SampleSet, config: ReferenceConfig, seed: int) -> SampleSet:
    """``half`` (its subjects, from :func:`_next_half`) and as many replayed base samples (``config.replay`` of it)."""
    count = int(round(config.replay * len(half)))
    if count and len(replay):
        return half.concat(data.subsample(replay, count, seed=seed), name=f"shadow-{seed}+replay")
    return half


def _plan(shadows: list[Shadow], pool: SampleSet, replay: SampleSet, data: UmeData, config: ReferenceConfig, target: int, next_seed: int) -> list[_Job]:
    """The shadows to train to reach ``target``, in order: each pair's second half is the complement of its first's,
    known before the first is trained (a pair's halves split the pool; replayed base samples are never in it)."""
    members: list[_Member] = list(shadows)
    jobs: list[_Job] = []
    while len(members) < target:
        pair, half = _next_half(members, pool, next_seed)
        pair = max([m.pair + 1 for m in members] + [0]) if pair is None else pair
        train = _training_set(data, half, replay, config, next_seed)
        job = _Job(next_seed, pair, train, frozenset(hash_sample_ids(train.sample_ids)), pool_slices=_slices(pool))
        jobs.append(job)
        members.append(job)
        next_seed += 1
    return jobs


def _slices(pool: SampleSet | None) -> tuple[str, ...]:
    """The data slices of ``pool`` (sorted; none for a set that does not say)."""
    return tuple(sorted({str(s) for s in getattr(pool, "slices", ()) or ()}))


def _is_stale(meta: dict, pool_slices: tuple[str, ...]) -> bool:
    """A shadow planned on a pool without one of ``pool_slices``: it never saw that slice's samples (a later learn
    step's look), so it is unlike the served model there; a shadow of an older bank, which did not record its pool's
    slices, is stale too once the pool says which it has."""
    if not pool_slices:
        return False
    return "slices" not in meta or not set(pool_slices) <= set(meta["slices"])


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _train_shadow(
    base: nn.Module,
    data: UmeData,
    train: SampleSet,
    config: ReferenceConfig,
    seed: int,
    make_trainer: Callable[[int], L.Trainer],
) -> tuple[dict[str, torch.Tensor], LoraSettings]:
    """One shadow: a LoRA overlay on ``base`` trained on ``train`` with the learn recipe (``config``)."""
    from pipeline.model.training import Classifier

    net = copy.deepcopy(base)
    for p in net.parameters():
        p.requires_grad_(True)
    settings = LoraSettings(rank=config.rank, alpha=config.alpha, targets=lora_targets(net))
    peft_net = attach_lora(net, settings, seed=seed)
    module = Classifier(peft_net, lr=config.lr, epochs=config.epochs, augment_shift=config.augment_shift, freeze_norm_stats=True)
    data.batch_size = config.batch_size
    seed_everything(seed)
    make_trainer(config.epochs).fit(module, datamodule=data.use_for_training(train))
    return adapter_tensors(peft_net), settings


def _die_with(parent: int) -> None:
    """In a worker: be killed when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``), and leave at once if it has already.

    A worker that outlived a killed stage would write its shadow later, perhaps after an erasure had purged
    every shadow trained on the erased samples."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os._exit(1)


def _train_and_write(
    root: Path, base: nn.Module, data: UmeData, job: _Job, config: ReferenceConfig, make_trainer: Callable[[int], L.Trainer], *, parent: int | None = None
) -> None:
    """Train ``job`` and write its weights and sidecar (each atomically: a shadow is on disk whole or not at all).

    ``parent``: in a worker, the process that forked it: nothing is written once that process is gone."""
    started = time.time()
    tensors, settings = _train_shadow(base, data, job.train, config, job.seed, make_trainer)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    _write_atomic(root / f"{job.name}.safetensors", lambda p: save_file(tensors, str(p)))
    meta = {"lora": settings.to_json(), "lineage": sorted(job.lineage), "seed": job.seed, "pair": job.pair, "slices": list(job.pool_slices),
            "seconds": round(time.time() - started, 3)}  # fmt: skip
    _write_atomic(root / f"{job.name}.json", lambda p: p.write_text(json.dumps(meta)))
    log.info("reference bank: %s trained in %.1f s (pair %d)", job.name, time.time() - started, job.pair)


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _train_jobs(
    root: Path, base: nn.Module, data: UmeData, jobs: list[_Job], config: ReferenceConfig, make_trainer: Callable[[int], L.Trainer], workers: int
) -> None:
    """Train ``jobs``: in this process one after the other, or, with ``workers`` > 1 and more than one job, in
    forked worker processes, ``workers`` at a time, each on one torch thread. The shadows of a bank are
    independent, and a small network trains faster on one thread than on two (measured on the demo's bank: two
    shadows in 3.9 s on two one-thread workers, 6.7 s one after the other on two threads); one thread also keeps
    a shadow's weights independent of how many cores the machine has. A worker that fails leaves no file of its
    shadow and fails the whole call."""
    if workers <= 1 or len(jobs) <= 1 or not hasattr(os, "fork"):
        for job in jobs:
            _train_and_write(root, base, data, job, config, make_trainer)
        return
    data.batch_size = config.batch_size  # as the in-process path leaves it
    parent = os.getpid()
    failed: list[str] = []
    for start in range(0, len(jobs), workers):
        running: dict[int, _Job] = {}
        try:
            for job in jobs[start : start + workers]:
                pid = os.fork()
                if pid == 0:  # the worker: train, write, leave without running the parent's exit handlers
                    code = 1
                    try:
                        _die_with(parent)
                        torch.set_num_threads(1)
                        _train_and_write(root, base, data, job, config, make_trainer, parent=parent)
                        code = 0
                    except BaseException:
                        traceback.print_exc()
                    finally:
                        os._exit(code)
                running[pid] = job
            for pid in list(running):
                _, status = os.waitpid(pid, 0)
                job = running.pop(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    failed.append(f"{job.name} (exit {os.waitstatus_to_exitcode(status)})")
        finally:  # interrupted (a signal, an error): no worker outlives the call
            for pid in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
    if failed:
        raise RuntimeError(f"{root}: training reference shadows failed in worker processes: {', '.join(failed)} (their output is above)")


def _load_shadow(root: Path, base: nn.Module, sidecar: Path) -> Shadow:
    meta = json.loads(sidecar.read_text())
    weights = sidecar.with_suffix(".safetensors")
    net = fold_lora(copy.deepcopy(base), load_file(str(weights)), LoraSettings.from_json(meta["lora"])).eval()
    pair = int(meta.get("pair", -1 - int(meta.get("seed", 0))))  # a shadow of an older bank is a pair of its own
    return Shadow(sidecar.stem, net, frozenset(meta["lineage"]), _shadow_key(root, sidecar), pair=pair)


def open_bank(
    root: Path,
    base: nn.Module,
    *,
    data: UmeData,
    pool: SampleSet,
    replay: SampleSet,
    deleted: set[str],
    config: ReferenceConfig,
    make_trainer: Callable[[int], L.Trainer],
    seed: int,
    base_lineage: frozenset[str] = frozenset(),
    cache: RowCache | None = None,
    fill: bool = False,
    workers: int = 1,
) -> ReferenceBank | None:
    """Open the bank of ``base`` in ``root``: purge shadows that saw a deleted sample or that are stale (the pool
    gained a slice they never saw: :func:`_is_stale`), top it up.

    A gate tops the bank up to ``min_shadows`` only when fewer remain (completing broken pairs first);
    ``fill`` (``ume references``, ahead of a deletion) trains it back to ``shadows``. The shadows to train are
    planned first and trained ``workers`` at a time (:func:`_train_jobs`).
    Returns None when fewer than ``min_shadows`` remain and the pool has fewer than two data subjects
    (nothing to split into halves). ``base_lineage`` (what the base trained on) is IN for every shadow:
    those samples are never scored.
    """
    started = time.time()
    root.mkdir(parents=True, exist_ok=True)
    shadows: list[Shadow] = []
    purged = stale = 0
    pool_slices = _slices(pool)
    for sidecar in sorted(root.glob("shadow-*.json")):
        meta = json.loads(sidecar.read_text())
        if frozenset(meta["lineage"]) & deleted or not sidecar.with_suffix(".safetensors").exists():
            purge_shadow(sidecar, cache)
            purged += 1
            continue
        if _is_stale(meta, pool_slices):
            purge_shadow(sidecar, cache)
            stale += 1
            continue
        shadows.append(_load_shadow(root, base, sidecar))
    trained = 0
    target = config.shadows if fill else config.min_shadows
    if len(shadows) < target:
        if len(set(_subjects(pool))) < 2:
            if len(shadows) < config.min_shadows:
                return None
            target = len(shadows)
        used = {int(s.name.split("-")[1]) for s in shadows} | {int(p.stem.split("-")[1]) for p in root.glob("shadow-*.json")}
        next_seed = max(used, default=seed * 1000 - 1) + 1
        jobs = _plan(shadows, pool, replay, data, config, target, next_seed)
        _train_jobs(root, base, data, jobs, config, make_trainer, workers)
        shadows += [_load_shadow(root, base, root / f"{job.name}.json") for job in jobs]
        trained = len(jobs)
    return ReferenceBank(
        root, shadows, config=config, base_lineage=base_lineage, trained=trained, purged=purged, stale=stale, seconds=time.time() - started, cache=cache
    )


def purge_shadow(sidecar: Path, cache: RowCache | None) -> None:
    """Delete one shadow: its weights, its sidecar and its cached rows."""
    if cache is not None:
        cache.drop(_shadow_key(sidecar.parent, sidecar))
    sidecar.with_suffix(".safetensors").unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)


def purge_trained_on(references: Path, hashed: set[str], cache: RowCache | None) -> int:
    """Delete every shadow of every bank under ``references`` that trained on one of ``hashed`` (erasure); how many."""
    purged = 0
    for sidecar in sorted(references.rglob("shadow-*.json")) if references.is_dir() else []:
        if set(json.loads(sidecar.read_text()).get("lineage", [])) & hashed:
            purge_shadow(sidecar, cache)
            purged += 1
    return purged


def _shadow_key(root: Path, sidecar: Path) -> str:
    """A shadow's row-cache key: its bank (base and recipe), its name, and the hash of its sidecar (seed, lineage, settings)."""
    digest = hashlib.sha256(sidecar.read_bytes()).hexdigest()[:16]
    return f"references/{root.parent.name}/{root.name}/{sidecar.stem}-{digest}"
