"""Gate decisions (property-based) and the write-ahead promotion against a real MLflow registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.config import RegistryConfig
from pipeline.records.gate import ABANDONED, Decision, apply_decision, complete_pending_promotion, decide, ledger_champion, reconcile
from pipeline.records.ledger import Ledger
from pipeline.records.registry import Registry
from pipeline.reports.audit import audit


@dataclass
class R:
    name: str
    outcome: str
    blocking: bool
    value: float | None = None
    threshold: float | None = None


results = st.lists(
    st.builds(R, name=st.text(min_size=1, max_size=5), outcome=st.sampled_from(["passed", "failed", "skipped"]), blocking=st.booleans()),
    max_size=8,
)


@given(results)
def test_promote_iff_no_blocking_failure(rs: list[R]) -> None:
    decision = decide(rs)
    blocking_failed = any(r.blocking and r.outcome == "failed" for r in rs)
    assert decision.promote == (bool(rs) and not blocking_failed)
    assert len(decision.failing) == sum(r.blocking and r.outcome == "failed" for r in rs)
    assert decision.advisory_failures == [r.name for r in rs if not r.blocking and r.outcome == "failed"]


def test_empty_suite_blocks() -> None:
    assert not decide([]).promote


def _registry(tmp_path: Path) -> Registry:
    return Registry(RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="m"))


def _candidate(registry: Registry, ledger: Ledger, tmp_path: Path, name: str) -> int:
    run = registry.start_run(name, {})
    (tmp_path / "v").mkdir(exist_ok=True)
    (tmp_path / "v" / "manifest.json").write_text("{}")
    registry.log_artifacts(run, tmp_path / "v", "version")
    version = registry.register(run, "version", {"ume.manifest_hash": f"h{name}"})
    ledger.append("candidate", {"version": version, "manifest_hash": f"h{name}"}, step=name)
    return version


def test_gate_moves_alias_only_on_promotion_and_audit_agrees(tmp_path: Path) -> None:
    registry, ledger = _registry(tmp_path), Ledger(tmp_path / "ledger.jsonl")
    v1 = _candidate(registry, ledger, tmp_path, "a")
    apply_decision(Decision(True, "ok"), ledger=ledger, registry=registry, step="a", version=v1, manifest_hash="ha", champion_before=None)
    v2 = _candidate(registry, ledger, tmp_path, "b")
    apply_decision(Decision(False, "no"), ledger=ledger, registry=registry, step="b", version=v2, manifest_hash="hb", champion_before=v1)
    assert registry.champion() == v1 == ledger_champion(ledger)
    assert registry.version(v2).tags["ume.decision"] == "blocked"
    assert audit(ledger, registry).ok

    registry.set_champion(v2)  # someone moves the alias by hand in the MLflow UI
    report = audit(ledger, registry)
    assert not report.ok and "champion alias points at version 2" in report.problems[0]


def test_interrupted_promotion_is_completed(tmp_path: Path) -> None:
    registry, ledger = _registry(tmp_path), Ledger(tmp_path / "ledger.jsonl")
    v1 = _candidate(registry, ledger, tmp_path, "a")
    # the ledger decided, then the process died before the alias moved
    ledger.append("decision", {"version": v1, "manifest_hash": "ha", "decision": "promoted", "mode": "gate", "alias": {"from": None, "to": v1}})
    registry.set_version_tags(v1, {"ume.decision": "promoted"})
    assert not audit(ledger, registry).ok
    assert complete_pending_promotion(ledger, registry) == v1
    assert audit(ledger, registry).ok


def test_audit_reports_tampered_ledger(tmp_path: Path) -> None:
    registry, ledger = _registry(tmp_path), Ledger(tmp_path / "ledger.jsonl")
    v1 = _candidate(registry, ledger, tmp_path, "a")
    apply_decision(Decision(True, "ok"), ledger=ledger, registry=registry, step="a", version=v1, manifest_hash="ha", champion_before=None)
    ledger.path.write_text(ledger.path.read_text().replace('"promoted"', '"blocked"'))
    report = audit(ledger, registry)
    assert not report.ok and "ledger chain broken" in report.problems[0]


def test_reconcile_repairs_what_each_crash_leaves(tmp_path: Path) -> None:
    registry, ledger = _registry(tmp_path), Ledger(tmp_path / "ledger.jsonl")
    v1 = _candidate(registry, ledger, tmp_path, "a")
    apply_decision(Decision(True, "ok"), ledger=ledger, registry=registry, step="a", version=v1, manifest_hash="ha", champion_before=None)
    # killed after registering, before the ledger's candidate entry
    run = registry.start_run("b", {})
    registry.log_artifacts(run, tmp_path / "v", "version")
    orphan = registry.register(run, "version", {"ume.manifest_hash": "hb", "ume.decision": "pending"})
    # killed after the candidate entry, before the decision
    undecided = _candidate(registry, ledger, tmp_path, "c")
    # killed after the decision entry, before its tags and the alias move
    v4 = _candidate(registry, ledger, tmp_path, "d")
    ledger.append("decision", {"version": v4, "manifest_hash": "hd", "decision": "promoted", "mode": "gate", "alias": {"from": v1, "to": v4}})
    # killed after a revocation entry, before its tags
    ledger.append("revocation", {"versions": [v1], "by_request": {str(v1): ["del-x"]}})
    problems = audit(ledger, registry).problems
    assert any("no candidate entry" in p for p in problems) and any("has no decision" in p for p in problems), problems

    repaired = reconcile(ledger, registry)
    assert repaired and audit(ledger, registry).ok, (repaired, audit(ledger, registry).problems)
    assert registry.champion() == v4
    assert registry.version(orphan).tags["ume.decision"] == ABANDONED == registry.version(undecided).tags["ume.decision"]
    assert registry.version(v4).tags["ume.decision"] == "promoted"
    assert registry.version(v1).tags["deletion_status"] == "revoked"
    assert registry.running_runs() == []  # the runs the killed processes left RUNNING are marked KILLED
    entries = len(ledger.verify())
    assert reconcile(ledger, registry) == [] and len(ledger.verify()) == entries  # idempotent
