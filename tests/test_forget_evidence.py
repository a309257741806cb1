"""Forget evidence: verdicts with controls, the per-sample membership statistic, and a vulnerable
data subject's deletion end to end (control fails, candidate judged, certificate = gate record)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from behaviors.evidence import forget_evidence, split_name
from behaviors.membership import logit_confidence, membership_test, rmia_scores, score_samples
from behaviors.plugin import Check, verdict
from behaviors.suite import BehaviorResult
from pipeline.cli import main
from pipeline.reports.certificate import certificate_markdown
from pipeline.reports.status import collect_status, render_status
from pipeline.steps import open_workspace, run_step

# ------------------------------------------------------------------------------------- verdicts


def test_verdict_needs_a_failing_control() -> None:
    assert verdict(True, False) == "passed"
    assert verdict(True, True) == "inconclusive"  # the un-forgotten model passes too: shows nothing
    assert verdict(True, None) == "inconclusive"  # no control
    assert verdict(None, False) == "inconclusive"  # not measurable (too few samples, no references)
    assert verdict(False, False) == "failed"
    assert verdict(False, True) == "failed"


@given(
    value=st.floats(0, 1) | st.just(math.nan),
    control=st.none() | st.floats(0, 1) | st.just(math.nan),
    threshold=st.floats(0.01, 0.99),
    higher=st.booleans(),
)
def test_a_controlled_check_passes_only_when_its_control_fails(value: float, control: float | None, threshold: float, higher: bool) -> None:
    check = Check("x[del-1]", value, threshold, higher, control, controlled=True)
    ok = (lambda v: v >= threshold) if higher else (lambda v: v <= threshold)
    if check.verdict == "passed":
        assert ok(value) and control is not None and not math.isnan(control) and not ok(control)
    if control is None or math.isnan(control) or ok(control):
        assert check.verdict != "passed"
    if not math.isnan(value) and not ok(value):
        assert check.verdict == "failed"
    uncontrolled = Check("y", value, threshold, higher)
    assert uncontrolled.verdict in ("passed", "failed") and (uncontrolled.verdict == "failed") == (math.isnan(value) or not ok(value))


def test_evidence_groups_checks_per_request_and_counts_conclusive_ones() -> None:
    def row(name: str, value: float, control: float | None, threshold: float = 0.15) -> dict:
        return Check(name, value, threshold, False, control, controlled=True).to_json()

    results = [
        BehaviorResult("f.py::a", "passed", True, checks=[row("member_bound[del-1]", 0.0, 0.7), row("member_bound[del-2]", 0.0, 0.0)]),
        BehaviorResult("f.py::b", "failed", True, checks=[row("gap[del-1]", 0.4, 0.5, 0.05)]),
        BehaviorResult("f.py::c", "passed", True, checks=[Check("test_accuracy", 0.9, 0.5, True).to_json()]),
    ]
    evidence = forget_evidence(results)
    assert set(evidence) == {"del-1", "del-2"}
    assert (evidence["del-1"]["passed"], evidence["del-1"]["failed"], evidence["del-1"]["conclusive"]) == (1, 1, 2)
    assert (evidence["del-2"]["inconclusive"], evidence["del-2"]["conclusive"]) == (1, 0)
    assert split_name("forget_accuracy_gap[del-1]") == ("forget_accuracy_gap", "del-1")


# ---------------------------------------------------------------------- the per-sample statistic


def _constructed(members: int, shift: float, seed: int = 0) -> tuple:
    """K references, per-sample difficulty, members' statistic raised by ``shift`` reference sigmas."""
    rng = np.random.default_rng(seed)
    k, n, m = 12, members, 400
    difficulty = rng.normal(2.0, 2.0, n)
    reference = difficulty + rng.normal(0, 1, (k, n))
    target = difficulty + rng.normal(0, 1, n) + shift
    calib_difficulty = rng.normal(2.0, 2.0, m)
    calib_reference = calib_difficulty + rng.normal(0, 1, (k, m))
    calib_target = calib_difficulty + rng.normal(0, 1, m)
    ids = [f"s{i}" for i in range(m)]
    return target, reference, np.ones((k, n), dtype=bool), calib_target, calib_reference, ids


def test_members_are_flagged_and_non_members_are_not() -> None:
    members = membership_test(*_constructed(40, shift=4.0))
    non_members = membership_test(*_constructed(40, shift=0.0, seed=1))
    assert members.member_share > 0.8 and members.lower_bound > 0.6 and members.p_value < 1e-6
    assert non_members.member_share < 0.2 and non_members.lower_bound < 0.1
    assert 0.0 <= members.heldout_false_positive_rate <= 0.15  # calibrated on the other half of the non-members


def test_the_statistic_is_per_sample_not_per_population() -> None:
    """Members hidden among hard samples: a population threshold on the raw statistic cannot find them."""
    target, reference, out, ct, cr, ids = _constructed(60, shift=0.0)
    target[:30] += 4.0  # only half are members, and they are not the most confident ones
    result = membership_test(target[:30], reference[:, :30], out[:, :30], ct, cr, ids)
    assert result.member_share > 0.8


def test_samples_without_out_references_are_not_scored() -> None:
    target, reference, out, ct, cr, ids = _constructed(10, shift=4.0)
    out[:, :6] = False  # every reference trained on the first six (e.g. they are in the clean base)
    result = membership_test(target, reference, out, ct, cr, ids, min_references=4)
    assert (result.samples, result.unscored) == (4, 6)
    out[:] = False
    assert math.isnan(membership_test(target, reference, out, ct, cr, ids).lower_bound)


def _unsaturated(members: int, shift: float, seed: int = 0) -> tuple:
    """As :func:`_constructed`, with probabilities away from 0 and 1 (difficulty around logit 0): RMIA's ratio of
    probabilities sees a shift there; on saturated samples it does not, which is what the reference sweep measures."""
    rng = np.random.default_rng(seed)
    k, n, m = 12, members, 400
    difficulty, calib_difficulty = rng.normal(0.0, 1.0, n), rng.normal(0.0, 1.0, m)
    reference, calib_reference = difficulty + rng.normal(0, 1, (k, n)), calib_difficulty + rng.normal(0, 1, (k, m))
    target, calib_target = difficulty + rng.normal(0, 1, n) + shift, calib_difficulty + rng.normal(0, 1, m)
    return target, reference, np.ones((k, n), dtype=bool), calib_target, calib_reference, [f"s{i}" for i in range(m)]


@pytest.mark.parametrize("references", [2, 12])
def test_rmia_flags_members(references: int) -> None:
    """Offline RMIA (Zarifzadeh et al. 2024) separates members from non-members with two references or twelve."""
    target, reference, out, ct, cr, ids = _unsaturated(40, shift=3.0)
    members = membership_test(target, reference[:references], out[:references], ct, cr[:references], ids, min_references=references, method="rmia")
    t0, r0, o0, ct0, cr0, ids0 = _unsaturated(40, shift=0.0, seed=1)
    non_members = membership_test(t0, r0[:references], o0[:references], ct0, cr0[:references], ids0, min_references=references, method="rmia")
    assert members.member_share > 0.4 and members.lower_bound > 0.3 and members.p_value < 1e-6
    assert non_members.member_share < 0.2 and non_members.lower_bound < 0.1


def test_one_reference_scores_with_rmia_only() -> None:
    """LiRA needs a spread (two references at least); RMIA scores against one."""
    target, reference, out, ct, cr, ids = _unsaturated(40, shift=3.0)
    assert math.isnan(membership_test(target, reference[:1], out[:1], ct, cr[:1], ids, min_references=1).lower_bound)
    rmia = membership_test(target, reference[:1], out[:1], ct, cr[:1], ids, min_references=1, method="rmia")
    assert rmia.samples == 40 and rmia.member_share > 0.3


@settings(max_examples=50, deadline=None)
@given(a=st.floats(0, 1), bump=st.floats(0.1, 5.0), index=st.integers(0, 9))
def test_rmia_score_rises_with_the_models_confidence(a: float, bump: float, index: int) -> None:
    """The score is a share of the population beaten: in [0, 1], and never lower for a more confident model."""
    target, reference, out, ct, cr, _ = _constructed(10, shift=0.0)
    before = rmia_scores(target, reference, out, ct, cr, offline_a=a, gamma=1.0, min_references=1)
    raised = target.copy()
    raised[index] += bump
    after = rmia_scores(raised, reference, out, ct, cr, offline_a=a, gamma=1.0, min_references=1)
    assert ((0 <= before) & (before <= 1)).all() and after[index] >= before[index]
    assert np.array_equal(np.delete(after, index), np.delete(before, index))


def test_an_unknown_score_is_refused() -> None:
    with pytest.raises(ValueError, match="rmia"):
        score_samples("mystery", *_constructed(3, shift=0.0)[:5], min_references=1)


def test_a_tiny_request_cannot_fail_by_one_flag() -> None:
    target, reference, out, ct, cr, ids = _constructed(3, shift=0.0)
    target[0] += 10  # one of three flagged: share 0.33, but the bound stays under the default limit
    result = membership_test(target, reference, out, ct, cr, ids)
    assert result.flagged >= 1 and result.lower_bound < 0.15


def test_logit_confidence_is_the_log_odds_of_the_label() -> None:
    import torch

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    phi = logit_confidence(logits, torch.tensor([0, 2]))
    p = logits.softmax(1)
    expected = [math.log(p[0, 0] / (1 - p[0, 0])), math.log(p[1, 2] / (1 - p[1, 2]))]
    assert np.allclose(phi, expected, atol=1e-6)


# ----------------------------------------------- a vulnerable data subject's deletion, end to end


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code)


@pytest.fixture
def one_thread():
    """One CPU thread for the test's training, whatever the run's thread count (``UME_TEST_THREADS``, cores per worker)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_vulnerable_owner_deletion_is_judged_against_its_control(trained_copy: Path, one_thread: None) -> None:
    """The default data's memorised (mislabelled) data subject: the un-forgotten model fails the
    per-sample test by a wide margin, so the approximate candidate is really judged; the certificate's
    rows are the gate's record."""
    # Whether 40 epochs memorise the owner's few samples depends on the summation order: measured, the control's
    # bound was 0.19 on one thread (each worker's share of this 2-core machine under `-n 2`) and 0.006-0.05 on two
    # (a single-process run, or `-n 2` on a 4-core machine). One thread fixes the order the margin was measured on.
    params = trained_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    # An expert that memorises its atypical subject: on the looks data with the tests' 8-epoch base, 12 and
    # 20 epochs left the owner's own labels unlearned (1 of 8 read their way; control bound 0.11 < 0.15).
    raw["stream"]["s01"]["epochs"] = 40  # measured: control bound 0.19; a higher lr (0.03) gave NaN scores
    # The bound moves in steps of one of the owner's few samples (12 and 20 epochs gave 0.11): a limit of 0.05
    # keeps the control failing with a margin of whole samples, whatever a CPU's float rounding does.
    raw["behaviors"]["thresholds"]["max_forget_member_share"] = 0.05
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    ws = open_workspace()
    assert run_step(ws, "s01").record["decision"] == "promoted"
    dataset = json.loads((trained_copy / "store" / "data" / "dataset.json").read_text())
    rows = pd.read_csv(trained_copy / "store" / "data" / "samples.csv")
    owner = next(o for o in dataset["vulnerable_owners"] if (rows.loc[rows["owner"] == o, "slice"] == "u1").all())
    assert cli("forget", "--owner", owner, "--method", "ssd", "--defer-exact", "--reason", "GDPR art. 17") == 0
    ws = open_workspace()
    key = list(ws.params.stream)[-1]
    record = run_step(ws, key).record
    request = ws.params.stream[key].options["request"]
    per_sample = next(c for c in record["evidence"][request]["checks"] if c["check"] == "forget_member_share_bound")
    assert per_sample["threshold"] == 0.05 and per_sample["control"] > per_sample["threshold"], per_sample  # measured: 0.19
    assert per_sample["verdict"] in ("passed", "failed")  # so the candidate is judged, either way
    decision = [e for e in ws.ledger.of_type("decision") if e.step == key][-1]
    assert decision.data["evidence"] == record["evidence"]
    certificate = certificate_markdown(ws, request)
    for check in decision.data["evidence"][request]["checks"]:
        cells = f"| {check['check']} | {check['value']:.4f} | "
        assert cells in certificate and check["verdict"] in certificate.split(cells)[1].splitlines()[0], check
    resolved = [e for e in ws.ledger.of_type("deletion_resolved") if e.data["request_id"] == request]
    if record["decision"] == "promoted":
        assert resolved and resolved[-1].data["evidence"]["conclusive"] >= 1
        assert resolved[-1].data["control_version"] == record["champion_before"]
        status = collect_status(ws)
        assert status["requests"][request]["evidence"]["conclusive"] >= 1
        assert "checks conclusive" in render_status(status)


# ------------------------------------------------------- the reference bank is a data consumer


def _bank_dir(root: Path, lineages: list[list[str]]):
    """A bank directory with one (untrained) shadow adapter per lineage, on a fresh test_resnet."""
    from safetensors.torch import save_file

    from pipeline.model.lora import LoraSettings, adapter_tensors, attach_lora, lora_targets
    from pipeline.model.net import create_net

    base = create_net("test_resnet", 10, 1).eval()
    import copy

    net = copy.deepcopy(base)
    settings = LoraSettings(rank=2, alpha=4.0, targets=lora_targets(net))
    tensors = adapter_tensors(attach_lora(net, settings))
    root.mkdir(parents=True, exist_ok=True)
    for k, lineage in enumerate(lineages):
        save_file(tensors, str(root / f"shadow-{k:06d}.safetensors"))
        (root / f"shadow-{k:06d}.json").write_text(json.dumps({"lora": settings.to_json(), "lineage": lineage, "seed": k}))
    return base


@settings(deadline=None, max_examples=20)
@given(deleted=st.sets(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=6))
def test_no_shadow_that_saw_a_deleted_sample_survives_opening(deleted: set[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Invariant 2 for the bank: once a sample is deleted, no reference model trained on it is kept or used."""
    from behaviors.references import open_bank
    from pipeline.core.config import ReferenceConfig

    lineages = [["a", "b"], ["c"], ["d", "e"], ["f"], []]
    root = tmp_path_factory.mktemp("bank")
    base = _bank_dir(root, lineages)
    config = ReferenceConfig(shadows=5, min_shadows=1, min_references=1)
    survivors = [lin for lin in lineages if not set(lin) & deleted]
    # min_shadows=1 and the empty-lineage shadow always survives: nothing is trained, so no data is needed
    bank = open_bank(root, base, data=None, pool=None, replay=None, deleted=deleted, config=config, make_trainer=None, seed=0)  # type: ignore[arg-type]
    assert bank is not None and len(bank) == len(survivors) and bank.purged == len(lineages) - len(survivors)
    assert all(not (shadow.lineage & deleted) for shadow in bank.shadows)
    on_disk = [json.loads(p.read_text())["lineage"] for p in root.glob("shadow-*.json")]
    assert sorted(map(sorted, on_disk)) == sorted(map(sorted, survivors))
    assert len(list(root.glob("shadow-*.safetensors"))) == len(survivors)


class _NoTraining:
    """Stands in for the data module and the trainer: the bank's bookkeeping without training (the adapters stay at their init)."""

    batch_size = 0

    def use_for_training(self, samples: object) -> None:
        return None

    def fit(self, module: object, datamodule: object = None) -> None:
        return None


def _owner_pool(owners: int, per_owner: int = 3, slices: tuple[str, ...] = ()):
    """``owners`` data subjects of ``per_owner`` samples; with ``slices``, the owners are dealt to them in turn."""
    import torch

    from pipeline.data import SampleSet

    n = owners * per_owner
    return SampleSet(
        name="reference-pool",
        inputs=torch.zeros(n, 1, 8, 8),
        y=torch.zeros(n, dtype=torch.long),
        sample_ids=tuple(f"s{i}" for i in range(n)),
        groups=("-",) * n,
        owners=tuple(f"o{i // per_owner}" for i in range(n)),
        slices=tuple(slices[(i // per_owner) % len(slices)] for i in range(n)) if slices else (),
    )


@settings(deadline=None, max_examples=12)
@given(owners=st.integers(3, 9), request=st.integers(0, 8), seed=st.integers(0, 50))
def test_a_deletion_leaves_one_shadow_of_each_pair_out_and_trains_nothing(
    owners: int, request: int, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Complementary pairs: every subject of the pool is IN exactly one shadow of each pair, so a
    deletion's gate purges one per pair, keeps the others (all OUT for the deleted subject) and trains
    nothing; filling the bank again trains it back to four, no subject IN both shadows of a pair."""
    from behaviors.references import open_bank
    from pipeline.core.config import ReferenceConfig
    from pipeline.model.lineage import hash_sample_ids
    from pipeline.model.net import create_net

    root = tmp_path_factory.mktemp("bank")
    base = create_net("test_resnet", 10, 1).eval()
    pool, stub = _owner_pool(owners), _NoTraining()
    config = ReferenceConfig(shadows=4, min_shadows=2, min_references=2, epochs=1, replay=0.0)
    kw = {"data": stub, "pool": pool, "replay": pool.take([]), "config": config, "make_trainer": lambda epochs: stub, "seed": seed}

    def pairs(bank) -> dict[int, list[frozenset[str]]]:
        out: dict[int, list[frozenset[str]]] = {}
        for shadow in bank.shadows:
            out.setdefault(shadow.pair, []).append(shadow.lineage)
        return out

    everyone = frozenset(hash_sample_ids(pool.sample_ids))
    full = open_bank(root, base, deleted=set(), fill=True, **kw)
    assert full is not None and len(full) == 4 and full.trained == 4
    for a, b in pairs(full).values():
        assert a and b and not a & b and a | b == everyone  # each subject IN exactly one of the pair
    owner = f"o{request % owners}"
    deleted = set(hash_sample_ids([s for s, o in zip(pool.sample_ids, pool.owners, strict=True) if o == owner]))
    gate = open_bank(root, base, deleted=deleted, **kw)
    assert gate is not None and (gate.purged, gate.trained, len(gate)) == (2, 0, 2)
    assert all(not shadow.lineage & deleted for shadow in gate.shadows)  # every survivor is OUT for the request
    remaining = pool.take([i for i, o in enumerate(pool.owners) if o != owner])
    refilled = open_bank(root, base, deleted=deleted, fill=True, **{**kw, "pool": remaining})
    assert refilled is not None and (refilled.trained, len(refilled)) == (2, 4)
    for group in pairs(refilled).values():
        assert len(group) == 1 or not group[0] & group[1]  # a survivor that saw every subject left stays alone


@settings(deadline=None, max_examples=10)
@given(seen=st.lists(st.booleans(), min_size=2, max_size=8))
def test_the_out_mask_follows_the_samples_order(seen: list[bool], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A shadow's OUT mask is per sample, in the set's order (not the sorted order of hashed ids)."""
    from behaviors.references import open_bank
    from pipeline.core.config import ReferenceConfig
    from pipeline.model.lineage import hash_sample_id

    pool = _owner_pool(len(seen), per_owner=1)
    lineage = sorted(hash_sample_id(s) for s, k in zip(pool.sample_ids, seen, strict=True) if k)
    root = tmp_path_factory.mktemp("bank")
    base = _bank_dir(root, [lineage])
    config = ReferenceConfig(shadows=1, min_shadows=1, min_references=1)
    bank = open_bank(root, base, data=None, pool=None, replay=None, deleted=set(), config=config, make_trainer=None, seed=0)  # type: ignore[arg-type]
    assert bank is not None
    _, out = bank.statistics(pool)
    assert out[0].tolist() == [not k for k in seen]


def test_references_command_trains_the_bank_ahead_and_reuses_it(trained_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ume references`` trains the champion's bank off the deletion's critical path; a second call trains nothing."""
    params = trained_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["behaviors"]["references"] = {"shadows": 2, "min_shadows": 2, "min_references": 2}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_step(open_workspace(), "s01").record["decision"] == "promoted"
    assert cli("references") == 0
    first = capsys.readouterr().out
    assert "2 shadow(s), 2 trained now, 0 purged" in first, first
    bank = Path(first.rsplit(": ", 1)[1].strip())
    assert len(list(bank.glob("shadow-*.safetensors"))) == 2
    assert cli("references") == 0
    assert "2 shadow(s), 0 trained now" in capsys.readouterr().out


def test_references_command_without_a_champion_names_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.projects import tiny_params_dict

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(tmp_path), sort_keys=False))
    assert cli("references") == 2
    assert cli("references", "--ahead") == 0  # as seal runs it: a blocked base leaves nothing to keep, which is no error


def test_shadows_trained_in_worker_processes_are_the_ones_planned(tmp_path: Path) -> None:
    """``workers`` > 1 trains the planned shadows in forked processes: the same names, pairs and lineages as one
    at a time, every one on disk whole; a worker that fails fails the call and leaves no file of its shadow."""
    from behaviors.references import open_bank
    from pipeline.core.config import ReferenceConfig
    from pipeline.model.net import create_net

    base = create_net("test_resnet", 10, 1).eval()
    pool, stub = _owner_pool(6), _NoTraining()
    config = ReferenceConfig(shadows=4, min_shadows=2, min_references=2, epochs=1, replay=0.0)
    kw = {"data": stub, "pool": pool, "replay": pool.take([]), "deleted": set(), "config": config, "make_trainer": lambda epochs: stub, "seed": 3}
    one = open_bank(tmp_path / "one", base, fill=True, workers=1, **kw)
    two = open_bank(tmp_path / "two", base, fill=True, workers=2, **kw)
    assert one is not None and two is not None and two.trained == 4
    assert [(s.name, s.pair, s.lineage) for s in two.shadows] == [(s.name, s.pair, s.lineage) for s in one.shadows]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    class Failing(_NoTraining):
        def fit(self, module: object, datamodule: object = None) -> None:
            raise RuntimeError("out of memory")

    failing = Failing()
    with pytest.raises(RuntimeError, match=r"training reference shadows failed in worker processes: shadow-003000 \(exit 1\), shadow-003001"):
        open_bank(tmp_path / "bad", base, fill=True, workers=2, **{**kw, "data": failing, "make_trainer": lambda epochs: failing})
    assert not list((tmp_path / "bad").glob("shadow-*"))


_KILLED_PARENT = """
import os, sys, time
from pathlib import Path
import torch
from behaviors.references import open_bank
from pipeline.core.config import ReferenceConfig
from pipeline.data import SampleSet
from pipeline.model.net import create_net

root, marks = Path(sys.argv[1]), Path(sys.argv[2])

class Slow:
    batch_size = 0
    def use_for_training(self, samples):
        return None
    def fit(self, module, datamodule=None):
        (marks / str(os.getpid())).write_text("training")
        time.sleep(6)

n = 12
pool = SampleSet(name="reference-pool", inputs=torch.zeros(n, 1, 8, 8), y=torch.zeros(n, dtype=torch.long),
                 sample_ids=tuple(f"s{i}" for i in range(n)), groups=("-",) * n, owners=tuple(f"o{i // 3}" for i in range(n)))
slow = Slow()
open_bank(root, create_net("test_resnet", 10, 1).eval(), data=slow, pool=pool, replay=pool.take([]), deleted=set(),
          config=ReferenceConfig(shadows=2, min_shadows=2, min_references=2, epochs=1, replay=0.0),
          make_trainer=lambda epochs: slow, seed=0, fill=True, workers=2)
"""


def test_no_worker_outlives_a_killed_stage(tmp_path: Path) -> None:
    """A stage killed while its workers train shadows takes them with it: none writes its shadow afterwards
    (it could land after an erasure had purged the shadows that trained on the erased samples)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, marks = tmp_path / "bank", tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "stage.py"
    script.write_text(_KILLED_PARENT)
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(marks)], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    workers = [int(p.name) for p in marks.iterdir()]
    assert len(workers) == 2, "both workers started training"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(7)  # past the end of the workers' training, had they lived
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(root.glob("shadow-*")), "a worker wrote its shadow after its stage was killed"


def test_shadows_that_never_saw_a_slice_of_the_pool_are_stale(tmp_path: Path) -> None:
    """A learn step that brings a new slice makes every shadow planned before it stale (it never saw that look):
    they are removed and trained again on the whole pool; a deletion (the pool shrinks) makes none stale."""
    import json

    from behaviors.references import open_bank
    from pipeline.core.config import ReferenceConfig
    from pipeline.model.lineage import hash_sample_ids
    from pipeline.model.net import create_net

    base = create_net("test_resnet", 10, 1).eval()
    stub = _NoTraining()
    config = ReferenceConfig(shadows=4, min_shadows=2, min_references=2, epochs=1, replay=0.0)
    before, grown = _owner_pool(6, slices=("u1",)), _owner_pool(12, slices=("u1", "u3"))
    after = grown.take([i for i, o in enumerate(grown.owners) if o != "o0"])  # the data layer no longer serves o0
    kw = {"data": stub, "replay": before.take([]), "config": config, "make_trainer": lambda epochs: stub, "seed": 1}
    full = open_bank(tmp_path, base, pool=before, deleted=set(), fill=True, **kw)
    assert full is not None and (full.trained, full.stale) == (4, 0)
    assert all(json.loads(p.read_text())["slices"] == ["u1"] for p in tmp_path.glob("shadow-*.json"))
    # an owner of u1 deleted: the pool shrinks, no shadow is stale (the deletion purges the two that saw the owner)
    deleted = set(hash_sample_ids([s for s, o in zip(before.sample_ids, before.owners, strict=True) if o == "o0"]))
    gate = open_bank(tmp_path, base, pool=before.take(list(range(3, len(before)))), deleted=deleted, **kw)
    assert gate is not None and (gate.purged, gate.stale, gate.trained) == (2, 0, 0)
    # u3 learned since: every shadow left is stale; the gate trains a pair on the new pool, which covers it
    fresh = open_bank(tmp_path, base, pool=after, deleted=deleted, **kw)
    assert fresh is not None and (fresh.stale, fresh.trained, len(fresh)) == (2, 2, 2)
    first, second = (s.lineage for s in fresh.shadows)
    everyone = frozenset(hash_sample_ids(after.sample_ids))
    assert not first & second and first | second == everyone
    assert all(json.loads(p.read_text())["slices"] == ["u1", "u3"] for p in tmp_path.glob("shadow-*.json"))
    # a shadow of an older bank (no slices recorded) is stale once the pool says which slices it has
    legacy = next(tmp_path.glob("shadow-*.json"))
    meta = json.loads(legacy.read_text())
    del meta["slices"]
    legacy.write_text(json.dumps(meta))
    again = open_bank(tmp_path, base, pool=after, deleted=deleted, **kw)
    assert again is not None and (again.stale, again.trained) == (1, 1)
