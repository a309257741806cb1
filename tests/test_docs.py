"""The README stays a front door, every relative link in the docs resolves, and the measured tables in
the docs are the ones the benchmarks wrote to bench/results/ (``python -m bench.tables --check``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import tables

ROOT = Path(__file__).resolve().parent.parent
PAGES = tables.pages(ROOT)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def links(page: Path) -> list[str]:
    """Targets of the markdown links and images of a page, outside fenced code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a page (lower case, punctuation dropped, spaces to dashes)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_front_door_of_at_most_350_lines() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 350


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_measured_tables_are_in_sync_with_bench_results() -> None:
    assert tables.blocks(ROOT), "no <!-- table: ... --> block in README.md or docs/"
    assert tables.main(["--check", "--root", str(ROOT)]) == 0
    assert tables.stale(ROOT) == []


def test_a_stale_table_is_reported_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("front door\n")
    (tmp_path / "bench" / "results" / "x.md").write_text("# X\n\n| a |\n|---|\n| 1 |\n\nnote\n\n| b |\n|---|\n| 2 |\n")
    page = tmp_path / "docs" / "bench.md"
    page.write_text("intro\n<!-- table: bench/results/x.md#2 -->\n| b |\n|---|\n| 1 |\n<!-- end table -->\nafter\n")
    assert tables.main(["--check", "--root", str(tmp_path)]) == 1
    assert tables.main(["--root", str(tmp_path)]) == 0
    assert page.read_text() == "intro\n<!-- table: bench/results/x.md#2 -->\n| b |\n|---|\n| 2 |\n<!-- end table -->\nafter\n"
    assert tables.main(["--check", "--root", str(tmp_path)]) == 0
    page.write_text("<!-- table: bench/results/x.md#3 -->\n<!-- end table -->\n")
    assert tables.main(["--check", "--root", str(tmp_path)]) == 2
