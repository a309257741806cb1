"""Benchmark of the forget checks as statistical tests: their power, false-positive rate and cost.

Run from the project root::

    .venv/bin/python -m bench.forget_evidence [--seeds 0 1 2] [--quick] [--out bench/results]

A forget check is evidence of forgetting only if it *fails* a model that still holds the data
(power) and *passes* a model that never saw it (a low false-positive rate). Per seed, the digits
table is built with 2 atypical ("vulnerable", label-shifted, memorised) data subjects per update
slice; a clean base is trained on ``base`` and the slices ``u1``, ``u2``, ``u3`` are learned as
LoRA overlays in order (replay of the champion's lineage), exactly as the stream does. That
champion is the *un-forgotten* model of every request. Its gold-standard counterpart is the
*exact retrain* without the request: the affected overlays (from the first one that trained on a
forgotten sample) retrained in order on the remaining data, with the same recipe and seed; for a
class request the base is affected, so base and overlays are retrained from scratch.

Requests per seed: every vulnerable owner, 6 typical owners, 3 sets of 20 random samples, the
3 worst-case sets of 20 samples (the most memorised on the champion by the per-sample test, as
RULI chooses them), and the whole class 7. Every check of ``behaviors/test_forget.py`` is run
on both models with the product's own functions and default thresholds:

- ``accuracy_gap`` (sample/owner requests), ``class_recall`` (class request);
- ``mia_loss`` and ``mia_confidence``, the population attacks (``behaviors.mia``);
- ``per_sample``: the per-sample membership test as it ships (``behaviors.references`` defaults: its score,
  offline RMIA or LiRA, and a bank of K shadow LoRA overlays on the clean base that never trained on the
  request), emulated from one bank of ``BANK_SHADOWS`` per seed: each sample is scored against its first K
  shadows without it. The reference sweep runs LiRA (Carlini et al. 2022) and RMIA (Zarifzadeh et al. 2024)
  with 1 to 6 references on the same models. It is the per-example evaluation that Hayes et al. 2024
  ("Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy", U-LiRA)
  show is needed, judged on the worst-case samples that Naderloui et al. 2025 ("Rectifying Privacy
  and Efficacy Measurements in Machine Unlearning: A New Inference Attack Perspective", RULI)
  argue an evaluation must include.

A check fails a model when its value is above the threshold (NaN: cannot tell, not failing).
Only the project's own code trains, composes and tests; this module wires it and measures.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassRecall

from behaviors.build import RECIPE_FIELDS
from behaviors.context import DEFAULT_THRESHOLDS
from behaviors.membership import MembershipResult, membership_test
from behaviors.mia import attack_accuracy, confidence_features, per_sample_loss
from behaviors.references import ReferenceBank, open_bank, reference_pool, usable_cpus
from bench import provenance
from bench.forget import _clean, _machine
from edits.base import train_base
from edits.learn.lora import LoraLearnConfig, learn_lora
from edits.registry import OperatorEnv
from pipeline.core.config import BaseTrainConfig, DataConfig, Params, ReferenceConfig, parse_params
from pipeline.data.digits import build_digits_table
from pipeline.data.module import SampleSet, UmeData
from pipeline.data.table import EVAL_SLICES, SampleTable
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.lora import LoraSettings, fold_lora
from pipeline.model.net import predict_logits
from pipeline.model.training import make_trainer

# How this benchmark's setup differs from what ships (bench.provenance: the record says so).
CONFIGURATION = (
    "2 atypical owners per update slice, no looks; learn overlays stacked and folded in order, replaying the champion's lineage "
    "(the shipped layout is routed, with licensed replay); 3 seeds"
)

UPDATE_SLICES = ("u1", "u2", "u3")
TRAIN_SLICES = ("base", *UPDATE_SLICES)
FORGET_CLASS = 7
VULNERABLE_PER_SLICE = 2
REQUEST_SIZE = 20  # samples per random / worst-case request
BANK_SHADOWS = 16  # every sample is OUT for about 8: a deletion's bank of K shadows (all OUT) is the first K of them
KINDS = ("owner_vulnerable", "owner_typical", "random", "worst_case", "class")
CHECKS = ("accuracy_gap", "class_recall", "mia_loss", "mia_confidence", "per_sample")
# Which threshold each check compares its value with (a check fails a model when value > threshold).
THRESHOLD_OF = {
    "accuracy_gap": "forget_accuracy_tolerance",
    "class_recall": "max_forgotten_class_recall",
    "mia_loss": "max_mia_accuracy",
    "mia_confidence": "max_mia_accuracy",
    "per_sample": "max_forget_member_share",
}
FULL_COUNTS = {"owner_vulnerable": 6, "owner_typical": 6, "random": 3, "worst_case": 3, "class": 1}
QUICK_COUNTS = {"owner_vulnerable": 2, "owner_typical": 1, "random": 1, "worst_case": 1, "class": 1}
# The reference sweep: the per-sample test with only K references OUT per sample (the first K of the bank that
# never trained on it, as a bank of K shadows trained after the request would be) and each score of the product.
SWEEP_REFERENCES = (1, 2, 4, 6)
SWEEP_SCORES = (("lira", 0.0), ("rmia", 0.3), ("rmia", 0.6), ("rmia", 1.0))  # (score, offline_a; LiRA has none)
GOAL_POWER = 0.90
GOAL_FPR = 0.05
GOAL_COST_RATIO = 1.0
THRESHOLDS = dict(DEFAULT_THRESHOLDS)


@dataclass
class Stack:
    """A base and its learned LoRA overlays; ``nets[k]`` is the base with the first ``k`` folded in."""

    nets: list[nn.Module]
    lineages: list[frozenset[str]]  # hashed ids: the base's, then each overlay's

    @property
    def net(self) -> nn.Module:
        """The top of the stack (all overlays folded)."""
        return self.nets[-1]

    def lineage(self, upto: int) -> frozenset[str]:
        """Everything the base and the first ``upto`` overlays trained on."""
        return frozenset().union(*self.lineages[: upto + 1])


@dataclass
class Request:
    """One deletion request of the bench: its raw sample ids (training samples only)."""

    kind: str
    index: int
    sample_ids: tuple[str, ...]
    label: int | None = None  # the class, for a class request
    note: str = ""

    @property
    def hashed(self) -> frozenset[str]:
        """The hashed ids, as the deleted set holds them."""
        return frozenset(hash_sample_ids(self.sample_ids))


@dataclass
class Setup:
    """What every request of one seed shares."""

    seed: int
    params: Params
    table: SampleTable
    data: UmeData
    champion: Stack
    champion_seconds: float
    bank: ReferenceBank
    bank_seconds: float
    vulnerable: tuple[str, ...]
    pool: SampleSet  # the new samples of u1..u3 (the bank's reference pool)
    test: SampleSet
    canary: SampleSet
    notes: dict[str, Any] = field(default_factory=dict)


def _quiet() -> None:
    """Silence Lightning's per-trainer banners and the few-workers hint."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")


def _trainer_factory(params: Params) -> Callable[..., L.Trainer]:
    """``(epochs, steps=-1) -> Trainer`` as the stream builds it, without a progress bar."""
    return lambda epochs, steps=-1: make_trainer(params.train, max_epochs=epochs, max_steps=steps)


def data_config() -> DataConfig:
    """The digits default with vulnerable owners, tilted field photos and no label corruption."""
    return replace(DataConfig(), corrupt_labels={}, field_fraction=0.25, vulnerable_owners=VULNERABLE_PER_SLICE)


def reference_config() -> ReferenceConfig:
    """This bench's bank: ``BANK_SHADOWS`` shadows with the recipe of the learn overlays (as ``behaviors.build`` trains them),
    scored with LiRA over every OUT shadow where a request set is chosen (the worst-case sets)."""
    learn = asdict(LoraLearnConfig(slice="u1"))
    recipe = {k: learn[k] for k in RECIPE_FIELDS}
    return replace(ReferenceConfig(), shadows=BANK_SHADOWS, min_shadows=BANK_SHADOWS, min_references=4, score="lira", **recipe)


def shipped_references() -> ReferenceConfig:
    """The per-sample test as it ships (``behaviors.references`` defaults): its score and how many shadows a deletion has."""
    return ReferenceConfig()


def train_base_net(params: Params, data: UmeData, seed: int) -> tuple[nn.Module, frozenset[str]]:
    """The clean base on slice ``base`` (``BaseTrainConfig`` defaults); returns it and its lineage."""
    samples = data.split("base")
    net, draft = train_base(
        data,
        samples,
        arch=params.model.arch,
        num_classes=params.model.num_classes,
        in_chans=params.data.channels,
        image_size=params.data.image_size,
        config=BaseTrainConfig(),
        make_trainer=_trainer_factory(params),
        seed=seed,
    )
    return net, frozenset(draft.lineage)


def learn_overlay(net: nn.Module, data: UmeData, slice_name: str, lineage: frozenset[str], params: Params, seed: int) -> tuple[nn.Module, frozenset[str]]:
    """One ``learn`` step (LoRA overlay, replay of ``lineage``) on ``net``; returns the folded net and the overlay's lineage."""
    L.seed_everything(seed, workers=True, verbose=False)  # the runner seeds before every operator
    trainable = copy.deepcopy(net)
    for p in trainable.parameters():
        p.requires_grad_(True)
    env = OperatorEnv(step=f"learn-{slice_name}", seed=seed, make_trainer=_trainer_factory(params), champion_lineage=lineage)
    # Stacked, replaying the champion's lineage: this benchmark's stream (the shipped default is routed: CONFIGURATION)
    (draft,) = learn_lora(trainable, data, LoraLearnConfig(slice=slice_name, layout="stacked", replay_from="lineage"), env)
    folded = fold_lora(copy.deepcopy(net), draft.tensors, LoraSettings.from_json(draft.meta["lora"])).eval()
    for p in folded.parameters():
        p.requires_grad_(True)
    return folded, frozenset(draft.lineage)


def learn_stack(stack: Stack, data: UmeData, slices: Sequence[str], params: Params, seed: int) -> Stack:
    """Learn ``slices`` in order on top of ``stack`` (a new stack; ``stack`` is untouched)."""
    nets, lineages = list(stack.nets), list(stack.lineages)
    for name in slices:
        net, lineage = learn_overlay(nets[-1], data, name, frozenset().union(*lineages), params, seed)
        nets.append(net)
        lineages.append(lineage)
    return Stack(nets, lineages)


def build_setup(seed: int, bank_dir: Path, log: Callable[[str], None]) -> Setup:
    """Table, champion (base + u1..u3) and the reference bank of one seed."""
    params = parse_params({"seed": seed, "train": {"progress_bar": False}})
    table, notes = build_digits_table(data_config(), seed)
    data = UmeData(table, frozenset(), seed=seed)
    started = time.perf_counter()
    base, base_lineage = train_base_net(params, data, seed)
    champion = learn_stack(Stack([base], [base_lineage]), data, UPDATE_SLICES, params, seed)
    champion_seconds = time.perf_counter() - started
    overlay_lineage = set().union(*champion.lineages[1:])
    pool = reference_pool(data, overlay_lineage, set(base_lineage))
    bank = open_bank(
        bank_dir,
        base,
        data=data,
        pool=pool,
        replay=data.select("reference-replay", hashed_ids=base_lineage),
        deleted=set(),
        config=reference_config(),
        make_trainer=lambda epochs: _trainer_factory(params)(epochs),
        seed=seed,
        base_lineage=frozenset(base_lineage),  # as behaviors.build opens it: base samples are IN for every shadow
        workers=usable_cpus(),  # as the shipped gate trains them on the CPU (behaviors.build.shadow_workers)
    )
    if bank is None:
        raise RuntimeError("no reference bank: the pool has fewer than two data subjects")
    test = data.split("test")
    log(
        f"seed {seed}: champion in {champion_seconds:.1f}s (test acc {accuracy(champion.net, test):.3f}); "
        f"bank of {len(bank)} shadows in {bank.seconds:.1f}s; pool {len(pool)} samples"
    )
    return Setup(
        seed=seed,
        params=params,
        table=table,
        data=data,
        champion=champion,
        champion_seconds=champion_seconds,
        bank=bank,
        bank_seconds=bank.seconds,
        vulnerable=tuple(str(o) for o in notes["vulnerable_owners"]),
        pool=pool,
        test=test,
        canary=data.split("canary"),
        notes={"key_maps": key_maps(table, notes["vulnerable_owners"])},
    )


def key_maps(table: SampleTable, owners: Sequence[str]) -> dict[str, int]:
    """The label offset of every vulnerable owner (their label minus the digit; rows keep sklearn's order)."""
    from sklearn.datasets import load_digits

    digits = load_digits().target
    rows = table.rows
    if len(rows) != len(digits):
        return {}
    offsets = (rows["label"].to_numpy() - digits) % 10
    return {str(o): int(offsets[(rows["owner"] == o).to_numpy()][0]) for o in owners if (rows["owner"] == o).any()}


def accuracy(net: nn.Module, samples: SampleSet) -> float:
    """Top-1 accuracy (NaN on an empty set)."""
    if len(samples) == 0:
        return math.nan
    return (predict_logits(net, samples.x).argmax(1) == samples.y).float().mean().item()


def member_scores(setup: Setup, net: nn.Module, samples: SampleSet) -> np.ndarray:
    """Offline-LiRA score of every sample on ``net``, as the product computes it (``ReferenceBank.scores``);
    ``-inf`` where fewer than ``min_references`` shadows are OUT."""
    scores = setup.bank.scores(lambda x: predict_logits(net, x), samples, setup.test)
    return np.where(np.isnan(scores), -np.inf, scores)


def make_requests(setup: Setup, counts: dict[str, int]) -> list[Request]:
    """The requests of one seed (deterministic in the seed)."""
    pool, rng = setup.pool, np.random.default_rng(10_000 + setup.seed)
    owners = [o for o in dict.fromkeys(pool.owners) if o]  # licensed samples have no owner
    ids_of = {o: tuple(s for s, w in zip(pool.sample_ids, pool.owners, strict=True) if w == o) for o in owners}
    requests: list[Request] = []
    maps = setup.notes["key_maps"]
    picked = np.linspace(0, len(setup.vulnerable) - 1, min(counts["owner_vulnerable"], len(setup.vulnerable))).round().astype(int).tolist()
    for k, i in enumerate(picked):  # spread over the slices when fewer than all are asked for
        owner = setup.vulnerable[i]
        shared = [o for o in setup.vulnerable if o != owner and owner in maps and maps.get(o) == maps[owner]]
        note = f"{owner}, label offset {maps.get(owner)}" + (f", same offset as {', '.join(shared)}" if shared else "")
        requests.append(Request("owner_vulnerable", k, ids_of[owner], note=note))
    typical = [o for o in owners if o not in set(setup.vulnerable)]
    for k, i in enumerate(rng.permutation(len(typical))[: counts["owner_typical"]].tolist()):
        requests.append(Request("owner_typical", k, ids_of[typical[i]], note=typical[i]))
    chosen = rng.permutation(len(pool))[: REQUEST_SIZE * counts["random"]].tolist()
    for k in range(counts["random"]):
        part = sorted(chosen[k * REQUEST_SIZE : (k + 1) * REQUEST_SIZE])
        requests.append(Request("random", k, tuple(pool.sample_ids[i] for i in part)))
    scores = member_scores(setup, setup.champion.net, pool)
    order = np.argsort(-scores, kind="stable").tolist()
    vulnerable = set(setup.vulnerable)
    for k in range(counts["worst_case"]):
        part = order[k * REQUEST_SIZE : (k + 1) * REQUEST_SIZE]
        share = sum(pool.owners[i] in vulnerable for i in part) / max(len(part), 1)
        requests.append(Request("worst_case", k, tuple(pool.sample_ids[i] for i in part), note=f"{share:.0%} from vulnerable owners"))
    if counts["class"]:
        train = setup.data.select("train", slices=TRAIN_SLICES)
        ids = tuple(s for s, y in zip(train.sample_ids, train.y.tolist(), strict=True) if y == FORGET_CLASS)
        in_base = len(setup.champion.lineages[0] & frozenset(hash_sample_ids(ids)))
        requests.append(Request("class", 0, ids, label=FORGET_CLASS, note=f"{in_base} in the clean base"))
    return requests


def exact_retrain(setup: Setup, request: Request) -> tuple[nn.Module, float, str]:
    """The model retrained without the request, the seconds it took, and what was retrained."""
    data = UmeData(setup.table, request.hashed, seed=setup.seed)
    stack, seed, params = setup.champion, setup.seed, setup.params
    started = time.perf_counter()
    if stack.lineages[0] & request.hashed:  # the base trained on it (a class request): everything from scratch
        base, base_lineage = train_base_net(params, data, seed)
        net = learn_stack(Stack([base], [base_lineage]), data, UPDATE_SLICES, params, seed).net
        return net, time.perf_counter() - started, "base + " + " + ".join(UPDATE_SLICES)
    affected = [k for k in range(1, len(stack.lineages)) if stack.lineages[k] & request.hashed]
    if not affected:
        return stack.net, 0.0, "nothing"
    first = affected[0]
    prefix = Stack(stack.nets[:first], stack.lineages[:first])
    net = learn_stack(prefix, data, UPDATE_SLICES[first - 1 :], params, seed).net
    return net, time.perf_counter() - started, " + ".join(UPDATE_SLICES[first - 1 :])


@dataclass
class Case:
    """What the checks of one request read: forgotten training samples and unseen ones of the same classes."""

    forgotten: SampleSet
    unseen: SampleSet
    non_members: SampleSet
    label: int | None


def make_case(setup: Setup, request: Request) -> Case:
    """As ``behaviors.build.forget_cases`` builds it (unseen: test samples of the same classes; for a
    class, its own test and canary samples); non-members of the per-sample test: the test split
    (without the class for a class request)."""
    forgotten = setup.data.select(f"forgotten:{request.kind}:{request.index}", sample_ids=request.sample_ids)
    if request.label is not None:
        evals = setup.test.concat(setup.canary, name="eval")
        unseen = evals.take([i for i, y in enumerate(evals.y.tolist()) if y == request.label])
        assert all(s in EVAL_SLICES for s in unseen.slices)
        non_members = setup.test.without_labels([request.label])
    else:
        classes = set(forgotten.y.tolist())
        unseen = setup.test.take([i for i, y in enumerate(setup.test.y.tolist()) if y in classes])
        non_members = setup.test
    return Case(forgotten, unseen, non_members, request.label)


def evaluate_check(check: str, net: nn.Module, case: Case, bank: ReferenceBank) -> tuple[float, dict[str, Any]]:
    """The value of ``check`` on ``net``, computed with the product's functions (``behaviors/test_forget.py``)."""
    f = case.forgotten
    if check == "accuracy_gap":
        return accuracy(net, f) - accuracy(net, case.unseen), {}
    if check == "class_recall":
        metric = MulticlassRecall(num_classes=10, average=None)
        return float(metric(predict_logits(net, f.x).argmax(1), f.y)[case.label].item()), {}
    if check in ("mia_loss", "mia_confidence"):  # behaviors.mia.mia_scores, one attack at a time (same seed: its default 0)
        fl, ul = predict_logits(net, f.x), predict_logits(net, case.unseen.x)
        if check == "mia_loss":
            return attack_accuracy(per_sample_loss(fl, f.y), per_sample_loss(ul, case.unseen.y), "loss", 0), {}
        return attack_accuracy(confidence_features(fl, f.y), confidence_features(ul, case.unseen.y), "svc", 0), {}
    if check == "per_sample":
        shipped = shipped_references()
        # an owner's deletion is scored against the bank's survivors: one shadow of each complementary pair (min_shadows),
        # or the min_shadows trained by the first deletion's gate; every one OUT
        result = restricted_test(net, case, bank, shipped.score, shipped.offline_a, shipped.min_shadows, shipped.min_references)
        keep = ("samples", "unscored", "flagged", "member_share", "p_value", "heldout_false_positive_rate", "references")
        return result.lower_bound, {k: getattr(result, k) for k in keep}
    raise ValueError(f"unknown check {check!r}")


def first_out(out: np.ndarray, k: int) -> np.ndarray:
    """``out`` with only the first ``k`` OUT references of each sample kept (a bank of ``k`` shadows, all OUT)."""
    return out & (np.cumsum(out, axis=0) <= k)


_QUERIES: dict[tuple[int, str, int], tuple[nn.Module, np.ndarray]] = {}


def _query(bank: ReferenceBank, net: nn.Module, samples: SampleSet) -> np.ndarray:
    """``bank.query`` of ``net`` on ``samples``, kept with the model itself (so its id cannot be reused meanwhile)."""
    key = (id(net), f"{samples.name}:{hash(samples.sample_ids)}", len(samples))
    hit = _QUERIES.get(key)
    if hit is None or hit[0] is not net:
        if len(_QUERIES) > 64:
            _QUERIES.clear()
        hit = _QUERIES[key] = (net, bank.query(lambda x: predict_logits(net, x), samples))
    return hit[1]


def restricted_test(net: nn.Module, case: Case, bank: ReferenceBank, score: str, offline_a: float, k: int, min_references: int) -> MembershipResult:
    """The per-sample test of ``net`` as a deletion's bank of ``k`` shadows (all OUT) would run it: each sample scored
    against its first ``k`` OUT shadows of this bench's bank, calibrated on the first ``k`` shadows."""
    f = case.forgotten
    phi, out = bank.statistics(f)
    calibration, calib_phi = bank._calibration(case.non_members)
    return membership_test(
        _query(bank, net, f),
        phi,
        first_out(out, k),
        _query(bank, net, calibration),
        calib_phi[:k],
        calibration.sample_ids,
        false_positive_rate=bank.config.false_positive_rate,
        min_references=min_references,
        method=score,
        offline_a=offline_a,
        gamma=bank.config.gamma,
    )


def sweep_request(net: nn.Module, case: Case, bank: ReferenceBank) -> list[dict[str, Any]]:
    """The per-sample test of ``net`` for every (score, offline_a, K) of the sweep (K OUT references required)."""
    rows = []
    for score, offline_a in SWEEP_SCORES:
        for k in SWEEP_REFERENCES:
            if score == "lira" and k < 2:
                continue  # no spread from one reference
            result = restricted_test(net, case, bank, score, offline_a, k, k)
            rows.append(
                {"score": score, "offline_a": offline_a, "references": k, "value": result.lower_bound, "samples": result.samples, "unscored": result.unscored}
            )
    return rows


def summarize_sweep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (score, offline_a, K): power on vulnerable owners and worst-case sets, FPR over all sample and owner requests."""
    out = []
    threshold = THRESHOLDS[THRESHOLD_OF["per_sample"]]
    for score, offline_a in SWEEP_SCORES:
        for k in SWEEP_REFERENCES:
            group = [r for r in rows if r["score"] == score and r["offline_a"] == offline_a and r["references"] == k]
            if not group:
                continue
            entry: dict[str, Any] = {"score": score, "offline_a": offline_a, "references": k}
            for kind in ("owner_vulnerable", "worst_case", "owner_typical", "random"):
                g = [r for r in group if r["request_kind"] == kind]
                entry[f"power_{kind}"] = _mean([float(fails(r["unforgotten"]["value"], "per_sample", THRESHOLDS)) for r in g])
            sample_requests = [r for r in group if r["request_kind"] != "class"]
            entry["false_positive_rate"] = _mean([float(fails(r["retrain"]["value"], "per_sample", THRESHOLDS)) for r in sample_requests])
            scored = sum(r["unforgotten"]["samples"] for r in sample_requests)
            total = scored + sum(r["unforgotten"]["unscored"] for r in sample_requests)
            entry["scored_share"] = scored / total if total else math.nan
            entry["threshold"] = threshold
            out.append(entry)
    return out


def checks_for(kind: str) -> tuple[str, ...]:
    """The checks that apply to a request kind (accuracy gap for samples/owners, class recall for a class)."""
    first = "class_recall" if kind == "class" else "accuracy_gap"
    return (first, "mia_loss", "mia_confidence", "per_sample")


def fails(value: float, check: str, thresholds: dict[str, float]) -> bool:
    """A check fails a model when its value is above the threshold; NaN cannot tell, so it does not fail."""
    return not math.isnan(value) and value > thresholds[THRESHOLD_OF[check]]


def bench_request(setup: Setup, request: Request, log: Callable[[str], None], sweep: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows of one request: every applicable check on the champion and on the exact retrain (and, into
    ``sweep``, the reference sweep of the per-sample test on both)."""
    retrained, step_seconds, what = exact_retrain(setup, request)
    case = make_case(setup, request)
    if sweep is not None and request.kind != "class":
        for u, r in zip(sweep_request(setup.champion.net, case, setup.bank), sweep_request(retrained, case, setup.bank), strict=True):
            key = {k: u[k] for k in ("score", "offline_a", "references")}
            sweep.append({**key, "request_kind": request.kind, "request": request.index, "seed": setup.seed, "unforgotten": u, "retrain": r})
    rows = []
    for check in checks_for(request.kind):
        started = time.perf_counter()
        value_u, details_u = evaluate_check(check, setup.champion.net, case, setup.bank)
        value_r, details_r = evaluate_check(check, retrained, case, setup.bank)
        seconds = time.perf_counter() - started
        if check == "per_sample":  # the first deletion's gate trains min_shadows shadows (a later one, the bank kept full by seal, none)
            seconds += setup.bank_seconds / BANK_SHADOWS * shipped_references().min_shadows
        row = {
            "request_kind": request.kind,
            "request": request.index,
            "check": check,
            "seed": setup.seed,
            "fails_unforgotten": fails(value_u, check, THRESHOLDS),
            "fails_retrain": fails(value_r, check, THRESHOLDS),
            "check_seconds": seconds,
            "step_seconds": step_seconds,
            "value_unforgotten": value_u,
            "value_retrain": value_r,
            "samples": len(case.forgotten),
            "retrained": what,
            "note": request.note,
        }
        if details_u:
            row["details_unforgotten"], row["details_retrain"] = details_u, details_r
        rows.append(row)
    log(
        f"  {request.kind:16s} #{request.index} ({len(case.forgotten):3d} samples{', ' + request.note if request.note else ''}): retrain {what} "
        f"{step_seconds:.1f}s | "
        + ", ".join(
            f"{r['check']} {_fmt(r['value_unforgotten'], '.3f')}{'!' if r['fails_unforgotten'] else ''}"
            f"/{_fmt(r['value_retrain'], '.3f')}{'!' if r['fails_retrain'] else ''}"
            for r in rows
        )
    )
    return rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per check and request kind: power, false-positive rate, mean values and seconds."""
    out = []
    for check in CHECKS:
        for kind in KINDS:
            group = [r for r in rows if r["check"] == check and r["request_kind"] == kind]
            if not group:
                continue
            out.append(
                {
                    "check": check,
                    "request_kind": kind,
                    "requests": len(group),
                    "power": _mean([float(r["fails_unforgotten"]) for r in group]),
                    "false_positive_rate": _mean([float(r["fails_retrain"]) for r in group]),
                    "undecided_unforgotten": sum(math.isnan(r["value_unforgotten"]) for r in group),
                    "undecided_retrain": sum(math.isnan(r["value_retrain"]) for r in group),
                    "value_unforgotten": _mean([r["value_unforgotten"] for r in group]),
                    "value_retrain": _mean([r["value_retrain"] for r in group]),
                    "check_seconds": _mean([r["check_seconds"] for r in group]),
                    "step_seconds": _mean([r["step_seconds"] for r in group]),
                    "samples": _mean([r["samples"] for r in group]),
                }
            )
    return out


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-sample test's goals, measured."""
    ps = [r for r in rows if r["check"] == "per_sample"]
    out = []
    for kind in ("owner_vulnerable", "worst_case"):
        group = [r for r in ps if r["request_kind"] == kind]
        power = _mean([float(r["fails_unforgotten"]) for r in group])
        out.append({"goal": f"per-sample power on {kind} >= {GOAL_POWER:.0%}", "value": power, "met": bool(group) and power >= GOAL_POWER})
    fpr = _mean([float(r["fails_retrain"]) for r in ps])
    out.append({"goal": f"per-sample false-positive rate over all requests <= {GOAL_FPR:.0%}", "value": fpr, "met": bool(ps) and fpr <= GOAL_FPR})
    check, step = _mean([r["check_seconds"] for r in ps]), _mean([r["step_seconds"] for r in ps])
    ratio = check / step if step else math.nan
    out.append(
        {"goal": f"per-sample check time <= {GOAL_COST_RATIO:g}x the step (exact retrain) time", "value": ratio, "met": bool(ps) and ratio <= GOAL_COST_RATIO}
    )
    return out


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def markdown(summary: list[dict[str, Any]], goal_rows: list[dict[str, Any]], meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as Markdown: the table per check and request kind, the goals, the per-sample test per seed."""
    th = meta["thresholds"]
    shipped = meta.get("shipped_references") or asdict(shipped_references())
    lines = [
        "# Forget checks as evidence: power and false-positive rate",
        "",
        f"{meta['machine']}; {meta['date']}; seeds {meta['seeds']}; {meta['wall_seconds']:.0f} s wall"
        + ("" if meta["complete"] else " so far (INCOMPLETE: partial results)")
        + ("; QUICK smoke run (1 seed, fewer requests)." if meta["quick"] else "."),
        "",
        "Per seed: digits table with 2 vulnerable (small label-shifted uploads, memorised) owners per update slice; clean base on `base`,",
        "then `u1`, `u2`, `u3` learned as LoRA overlays: the *un-forgotten* model (champion). For each request the *exact retrain*",
        "retrains the affected overlays (from the first that trained on a forgotten sample) without it, same recipe and seed;",
        "for the class request, base and overlays from scratch without class 7.",
        "",
        "- **power**: share of requests whose un-forgotten model fails the check (higher is better);",
        "- **FPR**: share whose exact retrain fails it (a false alarm on a model that never saw the data; lower is better);",
        "- a check fails a model when its value is above the default threshold: accuracy gap > "
        f"{th['forget_accuracy_tolerance']}, class recall > {th['max_forgotten_class_recall']}, MIA accuracy > {th['max_mia_accuracy']}, "
        f"per-sample member-share lower bound > {th['max_forget_member_share']}; NaN (cannot tell) counts as not failing (column n/a);",
        "- **check s**: seconds to evaluate the check on both models (the candidate and its control, as the forget step does);",
        f"  for `per_sample` it includes training the {shipped['min_shadows']} shadow(s) a first deletion's gate trains, at this run's cost per shadow "
        f"(this run's {BANK_SHADOWS}-shadow bank: {', '.join(f'{s:.0f} s' for s in meta['bank_seconds'].values())} per seed);",
        f"- **per_sample** as it ships: score `{shipped['score']}`"
        + (f" (offline_a {shipped['offline_a']:g})" if shipped["score"] == "rmia" else "")
        + f", {shipped['min_shadows']} shadow(s) that never trained on the request (of the {shipped['shadows']} the bank keeps in complementary pairs),"
        + f" a sample scored with at least {shipped['min_references']};",
        "- **step s**: seconds of the exact retrain (the step the check certifies).",
        "",
        "| check | request kind | requests | power | FPR | n/a (unforg./retrain) | value unforgotten | value retrain | check s | step s | samples |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(
            f"| {e['check']} | {e['request_kind']} | {e['requests']} | {_fmt(e['power'] * 100, '.0f')}% | {_fmt(e['false_positive_rate'] * 100, '.0f')}% | "
            f"{e['undecided_unforgotten']}/{e['undecided_retrain']} | {_fmt(e['value_unforgotten'], '.3f')} | {_fmt(e['value_retrain'], '.3f')} | "
            f"{_fmt(e['check_seconds'], '.2f')} | {_fmt(e['step_seconds'], '.1f')} | {_fmt(e['samples'], '.0f')} |"
        )
    lines += ["", "## Goals of the per-sample test", "", "| goal | measured | met |", "|---|---|---|"]
    for g in goal_rows:
        value = _fmt(g["value"], ".2f") + "x" if "time" in g["goal"] else _fmt(g["value"] * 100 if g["value"] is not None else None, ".0f") + "%"
        lines.append(f"| {g['goal']} | {value} | {'yes' if g['met'] else '**NO**'} |")
    missed = [g["goal"] for g in goal_rows if not g["met"]]
    lines += ["", ("Missed: " + "; ".join(missed) + ".") if missed else "All goals met."]
    lines += ["", "## Per-sample test per seed", "", "Requests whose un-forgotten model fails (caught) and whose exact retrain fails (false alarm).", ""]
    lines += ["| seed | champion test acc | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 2) + "|"]
    for seed in meta["seeds"]:
        cells = []
        for kind in KINDS:
            group = [r for r in rows if r["check"] == "per_sample" and r["seed"] == seed and r["request_kind"] == kind]
            caught, alarms = sum(r["fails_unforgotten"] for r in group), sum(r["fails_retrain"] for r in group)
            cells.append(f"caught {caught}/{len(group)}, false alarm {alarms}/{len(group)}" if group else "-")
        accuracy_ = meta["champion_test_accuracy"].get(str(seed))
        lines.append(f"| {seed} | {_fmt(accuracy_ * 100 if accuracy_ is not None else None, '.1f')}% | " + " | ".join(cells) + " |")
    ranks = sorted({r["request"] for r in rows if r["request_kind"] == "worst_case"})
    if ranks:
        by_rank = []
        for rank in ranks:
            group = [r for r in rows if r["check"] == "per_sample" and r["request_kind"] == "worst_case" and r["request"] == rank]
            by_rank.append(
                f"samples ranked {rank * REQUEST_SIZE + 1}-{(rank + 1) * REQUEST_SIZE}: caught {sum(r['fails_unforgotten'] for r in group)}/{len(group)}"
            )
        lines += ["", "Worst-case sets by rank on the champion's per-sample scores: " + "; ".join(by_rank) + "."]
    class_rows = [r for r in rows if r["check"] == "per_sample" and r["request_kind"] == "class" and "details_unforgotten" in r]
    scored = [r["details_unforgotten"]["samples"] for r in class_rows]
    class_samples = [r["samples"] for r in class_rows]
    lines += [
        "",
        "The product runs the per-sample test on sample and owner requests only; here it also runs on the class request, for comparison",
        "(non-members: the test split without class 7). The class-7 samples of the clean base are IN for every shadow and are not scored:",
        f"{_fmt(_mean(scored), '.0f')} of {_fmt(_mean(class_samples), '.0f')} class-7 training samples were scored on average (those of u1..u3).",
    ]
    sweep = meta.get("sweep") or []
    if sweep:
        bank = _mean(list(meta["bank_seconds"].values()))
        shadows = meta["reference_config"]["shadows"]
        lines += [
            "",
            "## Reference sweep: how many references the per-sample test needs",
            "",
            "The same requests, models and thresholds; each sample scored against only its first K references that never trained on it",
            "(what a bank of K shadows trained after the request gives: every shadow OUT), calibrated on the first K shadows.",
            f"LiRA: offline, sigma as above; RMIA: offline (Zarifzadeh et al. 2024) with its `offline_a`, gamma {meta['reference_config']['gamma']}.",
            f"Bank cost: K shadows at the measured {bank / shadows:.1f} s each (this run's bank: {shadows} shadows, {bank:.0f} s per seed).",
            "",
            "| score | offline_a | K | power owner_vulnerable | power worst_case | power owner_typical | power random | FPR (sample/owner) | scored | bank s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in sweep:
            pct = [_fmt(e[f"power_{k}"] * 100, ".0f") + "%" for k in ("owner_vulnerable", "worst_case", "owner_typical", "random")]
            a = "-" if e["score"] == "lira" else f"{e['offline_a']:g}"
            lines.append(
                f"| {e['score']} | {a} | {e['references']} | " + " | ".join(pct) + f" | {_fmt(e['false_positive_rate'] * 100, '.0f')}% | "
                f"{_fmt(e['scored_share'] * 100, '.0f')}% | {bank / shadows * e['references']:.0f} |"
            )
    if meta.get("observations"):
        lines += ["", "## Observations", ""] + [f"- {o}" for o in meta["observations"]]
    return "\n".join(lines) + "\n"


def observations(summary: list[dict[str, Any]]) -> list[str]:
    """Plain statements derived from the numbers (no judgement beyond the thresholds)."""
    out = []
    for e in summary:
        if e["check"] == "per_sample":
            continue
        if e["false_positive_rate"] > GOAL_FPR:
            out.append(f"`{e['check']}` fails the exact retrain of {e['false_positive_rate']:.0%} of `{e['request_kind']}` requests (false positives).")
        if e["power"] < 0.5 and e["request_kind"] != "class":
            out.append(f"`{e['check']}` catches only {e['power']:.0%} of un-forgotten `{e['request_kind']}` requests.")
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Power and false-positive rate per request kind, one panel per check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = [c for c in CHECKS if any(e["check"] == c for e in summary)]
    fig, axes = plt.subplots(1, len(checks), figsize=(3.6 * len(checks), 3.8), squeeze=False, sharey=True)
    for ax, check in zip(axes[0], checks, strict=True):
        group = [e for e in summary if e["check"] == check]
        x = np.arange(len(group))
        ax.bar(x - 0.2, [e["power"] * 100 for e in group], 0.4, label="power (fails un-forgotten)", color="tab:blue")
        ax.bar(x + 0.2, [e["false_positive_rate"] * 100 for e in group], 0.4, label="FPR (fails exact retrain)", color="tab:red")
        ax.set_xticks(x, [e["request_kind"].replace("_", "\n") for e in group], fontsize=8)
        ax.set_title(check)
        ax.axhline(GOAL_POWER * 100, color="tab:blue", ls=":", lw=0.8)
        ax.axhline(GOAL_FPR * 100, color="tab:red", ls=":", lw=0.8)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("% of requests")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_forget_evidence(out_dir: Path, seeds: Sequence[int] = (0, 1, 2), quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; write ``forget_evidence.{json,md,png}`` under ``out_dir`` (after every seed, too)."""
    _quiet()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = tuple(seeds)[:1] if quick else tuple(seeds)
    counts = QUICK_COUNTS if quick else FULL_COUNTS

    def log(message: str) -> None:
        print(message, flush=True)

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"bank_seconds": {}, "champion_seconds": {}, "champion_test_accuracy": {}, "vulnerable_owners": {}}

    def write(complete: bool) -> dict[str, Any]:
        summary = summarize(rows)
        goal_rows = goals(rows)
        meta.update(
            seeds=list(seeds),
            machine=_machine(),
            date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            thresholds={THRESHOLD_OF[c]: THRESHOLDS[THRESHOLD_OF[c]] for c in CHECKS},
            reference_config=asdict(reference_config()),
            shipped_references=asdict(shipped_references()),
            requests_per_seed=sum(counts.values()),
            request_counts=dict(counts),
            quick=quick,
            complete=complete,
            wall_seconds=time.perf_counter() - start,
            observations=observations(summary),
            sweep=summarize_sweep(sweep_rows),
        )
        prov = provenance.record("forget-evidence", configuration=CONFIGURATION)
        result = {"rows": rows, "sweep_rows": sweep_rows, "summary": summary, "goals": goal_rows, "meta": meta, "provenance": prov}
        (out_dir / "forget_evidence.json").write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
        (out_dir / "forget_evidence.md").write_text(markdown(summary, goal_rows, meta, rows))
        if summary:
            plot(summary, out_dir / "forget_evidence.png")
        return result

    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="ume-bank-") as tmp:
            setup = build_setup(seed, Path(tmp) / "references", log)
            meta["bank_seconds"][str(seed)] = setup.bank_seconds
            meta["champion_seconds"][str(seed)] = setup.champion_seconds
            meta["champion_test_accuracy"][str(seed)] = accuracy(setup.champion.net, setup.test)
            meta["vulnerable_owners"][str(seed)] = setup.notes["key_maps"] or list(setup.vulnerable)
            requests = make_requests(setup, counts)
            for request in requests:
                rows.extend(bench_request(setup, request, log, sweep_rows))
        write(complete=False)
    result = write(complete=True)
    log(f"done in {meta['wall_seconds']:.0f}s; wrote {out_dir}/forget_evidence.json, .md, .png")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.forget_evidence [--seeds 0 1 2] [--quick] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.forget_evidence", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, one or two requests of each kind")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory (default bench/results)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_forget_evidence(args.out, seeds=args.seeds, quick=args.quick)
    print((args.out / "forget_evidence.md").read_text() if result["rows"] else "no rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
