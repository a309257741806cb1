"""The behaviour suite runner: fail-closed errors, blocking vs advisory, thresholds from params."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from behaviors.context import BehaviorContext, ModelUnderTest, Splits, merged_thresholds
from behaviors.suite import run_suite
from pipeline.data import SampleSet
from pipeline.records.gate import decide

SPECS = '''
import pytest

@pytest.mark.blocking
def test_blocking_passes(candidate, behavior, thresholds):
    behavior.check("acc", 0.99, at_least=thresholds["min_test_accuracy"])

@pytest.mark.blocking
def test_blocking_fails(behavior):
    behavior.check("drop", 0.5, at_most=0.02)

@pytest.mark.blocking
def test_blocking_errors(candidate):
    raise RuntimeError("spec bug")

@pytest.mark.blocking
def test_blocking_missing_fixture(no_such_fixture):
    pass

def test_advisory_fails(behavior):
    behavior.check("nice_to_have", 0.1, at_least=0.9)

@pytest.mark.blocking
def test_needs_champion_skips(needs_champion):
    pass
'''


def _context(thresholds: dict[str, float] | None = None) -> BehaviorContext:
    x = torch.zeros(4, 1, 8, 8)
    samples = SampleSet("test", x, torch.zeros(4, dtype=torch.long), ("a", "b", "c", "d"), ("g",) * 4, ("o",) * 4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return BehaviorContext(
        candidate=ModelUnderTest("candidate", None, net),
        champion=None,
        splits=Splits(test=samples, canary=samples, retain=samples),
        thresholds=merged_thresholds(thresholds or {}),
        data=None,  # type: ignore[arg-type]
    )


def _by_name(results):
    return {r.short_name: r for r in results}


def test_outcomes_are_fail_closed(tmp_path: Path) -> None:
    (tmp_path / "test_specs.py").write_text(SPECS)
    results = _by_name(run_suite([tmp_path], _context()))
    assert results["test_blocking_passes"].outcome == "passed"
    assert results["test_blocking_passes"].value == pytest.approx(0.99)
    assert results["test_blocking_fails"].outcome == "failed" and results["test_blocking_fails"].threshold == 0.02
    assert results["test_blocking_errors"].outcome == "failed" and "spec bug" in results["test_blocking_errors"].message
    assert results["test_blocking_missing_fixture"].outcome == "failed"
    assert results["test_advisory_fails"].outcome == "failed" and not results["test_advisory_fails"].blocking
    assert results["test_needs_champion_skips"].outcome == "skipped"
    decision = decide(list(results.values()))
    assert not decision.promote
    failing = {f["name"].split("::")[-1] for f in decision.failing}
    assert failing == {"test_blocking_fails", "test_blocking_errors", "test_blocking_missing_fixture"}
    assert any("test_advisory_fails" in n for n in decision.advisory_failures)


def test_advisory_failure_alone_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "test_only_advisory.py").write_text("def test_soft(behavior):\n    behavior.check('x', 0.0, at_least=1.0)\n")
    assert decide(run_suite([tmp_path], _context())).promote


def test_thresholds_come_from_params(tmp_path: Path) -> None:
    (tmp_path / "test_t.py").write_text(
        "import pytest\n@pytest.mark.blocking\ndef test_floor(behavior, thresholds):\n"
        "    behavior.check('acc', 0.95, at_least=thresholds['min_test_accuracy'])\n"
    )
    assert decide(run_suite([tmp_path], _context({"min_test_accuracy": 0.9}))).promote
    assert not decide(run_suite([tmp_path], _context({"min_test_accuracy": 0.97}))).promote


def test_a_spec_file_that_does_not_import_blocks(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text("import definitely_not_a_module\n")
    results = run_suite([tmp_path], _context())
    assert not decide(results).promote
    assert "collection error" in results[0].message


def test_no_specs_blocks(tmp_path: Path) -> None:
    assert not decide(run_suite([tmp_path], _context())).promote


def test_failing_property_saves_the_shrunk_counterexample(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "test_prop.py").write_text(
        "from hypothesis import HealthCheck, given, settings\n"
        "from behaviors.perturbations import brightness\n"
        "@settings(max_examples=20, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])\n"
        "@given(p=brightness(0.5))\n"
        "def test_never_brighter(candidate, splits, behavior, p):\n"
        "    x = splits.canary.x[:1]\n"
        "    if p.amount > 0.1:\n"
        "        behavior.counterexample(x[0], p.apply(x)[0])\n"
        "    assert p.amount <= 0.1, p.describe()\n"
    )
    context = _context()
    context.report_dir = tmp_path / "report"
    (result,) = run_suite([specs], context)
    assert result.outcome == "failed" and "Perturbation('brightness'" in result.message  # the shrunk example
    assert list((tmp_path / "report").glob("counterexample-test_never_brighter*.png"))


def test_report_has_html_and_confusion_matrix(tmp_path: Path) -> None:
    from behaviors.report import write_report
    from behaviors.suite import BehaviorResult

    results = [BehaviorResult("a.py::test_x", "failed", True, 0.5, 0.9, True, "boom", [])]
    preds, labels = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])
    write_report(tmp_path, {"id": "s1", "kind": "learn"}, {"label": "blocked", "reason": "r"}, results, confusion=(preds, labels, ["a", "b"]))
    html = (tmp_path / "report.html").read_text()
    assert "<img" in html and "confusion_matrix.png" in html and "<table>" in html
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


def test_the_gate_runs_without_random_test_order_wherever_the_specs_live(tmp_path: Path) -> None:
    """pytest-randomly (installed with the dev extra) would shuffle the specs and reseed the global generators from a
    new seed each session; specs outside a project whose pytest config turns it off (here: no config at all) must not
    get it either, so two gates on the same candidate decide the same."""
    (tmp_path / "test_order.py").write_text(
        "def test_no_random_order(request, behavior):\n"
        "    behavior.check('randomly', float(request.config.pluginmanager.has_plugin('randomly')), at_most=0.0)\n"
    )
    results = _by_name(run_suite([tmp_path], _context()))
    assert results["test_no_random_order"].outcome == "passed", results["test_no_random_order"].message


def test_property_examples_are_the_shipped_count_unless_the_environment_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from behaviors.limits import PROPERTY_EXAMPLES_ENV, property_examples
    from pipeline.core.errors import ConfigError

    monkeypatch.delenv(PROPERTY_EXAMPLES_ENV, raising=False)
    assert property_examples(25) == 25
    monkeypatch.setenv(PROPERTY_EXAMPLES_ENV, "8")
    assert property_examples(25) == 8
    for bad in ("0", "-3", "many"):
        monkeypatch.setenv(PROPERTY_EXAMPLES_ENV, bad)
        with pytest.raises(ConfigError, match=PROPERTY_EXAMPLES_ENV):
            property_examples(25)
