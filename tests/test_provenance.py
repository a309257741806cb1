"""Every published figure says what it was measured on, and the suite fails when that is no longer what ships.

bench.provenance fingerprints the shipped defaults per part; every results file records the parts its
benchmark depends on. bench.headline writes the README's headline table from the results files, and
bench.tables pastes it (and every other table) with a stale note where a file is out of date.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from bench import ci, headline, provenance, tables

ROOT = Path(__file__).resolve().parents[1]


def test_every_results_file_describes_the_shipped_defaults_or_is_listed_as_pending() -> None:
    bad, fresh = provenance.unexpected()
    assert not bad, "results measured on other defaults (rerun them, or list them in RERUN_PENDING with the reason):\n" + "\n".join(map(str, bad))
    assert not fresh, f"fresh now, remove from bench.provenance.RERUN_PENDING: {fresh}"


def test_every_results_file_has_a_benchmark_that_writes_it() -> None:
    written = {file for bench in provenance.BENCHES.values() for file in bench.files}
    assert {p.name for p in provenance.RESULTS.glob("*.json")} <= written


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the shipped params.yaml and of every results file, to change one of them."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(provenance.RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.png"))
    return tmp_path


def _record(results: Path, name: str, bench: str, params: Path) -> None:
    data = {"rows": [], "provenance": {"benchmark": bench, "commit": "abc1234", "defaults": provenance.fingerprint(provenance.BENCHES[bench].parts, params)}}
    (results / name).write_text(json.dumps(data))


def test_a_changed_threshold_makes_exactly_the_benchmarks_that_depend_on_the_gate_stale(project: Path) -> None:
    params, results = project / "params.yaml", project / "results"
    for file in list(results.glob("*.json")):
        file.unlink()
    _record(results, "forget_exact.json", "forget-exact", params)  # depends on behaviors
    _record(results, "compress.json", "compress", params)  # does not
    assert provenance.problems(results, params) == []
    raw = yaml.safe_load(params.read_text())
    raw["behaviors"]["thresholds"]["min_test_accuracy"] = 0.5
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    found = provenance.problems(results, params)
    assert [(p.file, p.bench) for p in found] == [("forget_exact.json", "forget-exact")]
    assert "behaviors changed since commit abc1234" in found[0].why and "`ume bench forget-exact`" in found[0].why


def test_a_changed_method_default_is_a_changed_part(monkeypatch: pytest.MonkeyPatch) -> None:
    from edits.learn.lora import LoraLearnConfig

    before = provenance.fingerprint(("methods", "data"))
    monkeypatch.setattr(LoraLearnConfig.__dataclass_fields__["layout"], "default", "stacked")
    provenance._fingerprint.cache_clear()  # the params file did not change: the cache would not see it
    after = provenance.fingerprint(("methods", "data"))
    monkeypatch.undo()
    provenance._fingerprint.cache_clear()
    assert after["methods"] != before["methods"] and after["data"] == before["data"]


def test_a_results_file_without_a_record_is_a_problem_that_names_the_rerun(project: Path) -> None:
    results = project / "results"
    (results / "overlays.json").write_text(json.dumps({"rows": []}))
    found = [p for p in provenance.problems(results, project / "params.yaml") if p.file == "overlays.json"]
    assert found and found[0].bench == "overlays" and "`ume bench overlays`" in found[0].why


def test_a_record_says_where_and_on_what_it_was_measured() -> None:
    rec = provenance.record("compress", ["--repeats", "3"], configuration="a tiny champion")
    assert rec["command"] == "ume bench compress --repeats 3" and rec["configuration"] == "a tiny champion"
    assert set(rec["machine"]) >= {"cores", "torch", "python"} and re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?|unknown", rec["commit"])
    assert set(rec["defaults"]) == set(provenance.BENCHES["compress"].parts)
    assert "**not the shipped defaults**: a tiny champion" in provenance.caption(rec)


def test_the_headline_table_marks_a_stale_row_and_the_docs_get_a_stale_note(project: Path) -> None:
    results = project / "results"
    data = json.loads((results / "overlays.json").read_text())
    data.pop("provenance", None)
    (results / "overlays.json").write_text(json.dumps(data))
    row = next(line for line in headline.markdown(results).splitlines() if "LoRA overlays" in line)
    assert "**stale**" in row and "`ume bench overlays`" in row
    assert "Stale" in tables.source("results/overlays.md#1", project) and "ume bench overlays" in provenance.stale_note("overlays.md", results)


def test_the_readme_and_docs_show_what_the_results_files_hold() -> None:
    assert headline.markdown() == headline.OUT.read_text(encoding="utf-8"), "run python -m bench.headline"
    assert tables.stale() == [], "run python -m bench.tables"


# Numbers in a page's prose that are not our measurements: settings (thresholds, defaults, sizes, goals an issue
# stated), or results others published, quoted with their citation. Each phrase is short and exact, so that it
# cannot hide a measured figure; a measured figure belongs in a generated block (bench.tables).
NOT_MEASURED: dict[str, tuple[str, ...]] = {
    "README.md": ("16×16 px", "10% as if", "removes 10% of the channels", "1× to 16×", "16× the images"),
    "docs/architecture.md": ("at 1×/4×/16×", "retries and 120 s"),
    "docs/behaviour-specs.md": ("±3% brightness", "(≤ 1.05×)", "(≤ 2.0×:", "is 0 % or 100 % away", "right, at 11 % confidence"),
    "docs/benchmarks.md": (
        "`random`: 10% of the training samples",
        "≤ 0.1× retrain time",
        "≤ 0.3× retrain time",
        "Within 2 points of retrain",
        "1×16×16 inputs",
        "folded ≤ 1.05× base",
        "5 unmerged overlays ≤ 1.5× base",
        "size ≤ 0.3× fp32",
        "latency ≤ 1.0× fp32 at batch 1",
        "and ≤ 0.6× at",
        "`structured 10%, channels removed`",
        "at 1×, 4× and 16×",
        "`test_resnet` at 16×16",
    ),
    "docs/cli.md": ("at 1×, 4× and 16×",),
    "docs/deletion.md": ("only the 50% most salient", "at a 5% false-positive rate", "its 95% interval"),
    "docs/forget-evidence.md": ("against the 5% rate", "one-sided 95% Clopper-Pearson"),
    "docs/reliability.md": ("timeout to 30 s", "started again 5 s later"),
    "docs/start-up.md": ("training stage ≤ 2 s", "`ume status`/`audit` ≤ 1 s"),
    "docs/stream.md": (
        "16×16 px",
        "10% of the images",
        "15% of the contributors",
        "lose more than 5 points",
        "at least 97% needed",
        "removes 10% of the channels",
    ),
    "docs/compression.md": ("removes 10% of the channels",),
}
MEASURED_LOOKING = re.compile(r"[^\n]{0,40}\d+(?:\.\d+)?\s?(?:×|%|ms\b|s\b|min\b|seconds\b|points\b)")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def typed_by_hand(page: Path) -> list[str]:
    """The measured-looking numbers of a page outside its generated blocks, code fences and allowed phrases."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<!-- table: [^ ]+ -->\n.*?<!-- end table -->", "", text, flags=re.DOTALL)
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for phrase in NOT_MEASURED.get(_name(page), ()):
        text = text.replace(phrase, "")
    return MEASURED_LOOKING.findall(text)


@pytest.mark.parametrize("page", tables.pages(ROOT), ids=_name)
def test_no_measured_number_is_typed_by_hand(page: Path) -> None:
    typed = typed_by_hand(page)
    assert not typed, f"{_name(page)}: measured-looking numbers outside generated blocks (generate them from bench/results): {typed}"


def test_every_allowed_phrase_is_still_on_its_page() -> None:
    gone = [(name, phrase) for name, phrases in NOT_MEASURED.items() for phrase in phrases if phrase not in (ROOT / name).read_text(encoding="utf-8")]
    assert not gone, f"remove from NOT_MEASURED: {gone}"


def test_the_ci_record_reads_pytests_own_summary() -> None:
    log = "....\n===== 380 passed, 6 skipped, 1 xfailed in 768.31s (0:12:48) =====\n"
    assert ci.pytest_summary(log) == {"passed": 380, "skipped": 6, "failed": 0, "errors": 0, "xfailed": 1, "xpassed": 0, "suite_seconds": 768.31}
    assert ci.pytest_summary("== 2 failed, 1 error in 3.00s ==")["errors"] == 1
    with pytest.raises(ValueError):
        ci.pytest_summary("no summary")
