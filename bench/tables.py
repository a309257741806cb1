"""Regenerate the measured tables of README.md and docs/*.md from bench/results/.

A measured table in a page sits between two marker comments::

    <!-- table: bench/results/compress.md#1 -->
    | method | setting | ... |
    <!-- end table -->

The path is relative to the project root. ``path`` alone takes the whole results file; ``path#N`` takes
its N-th table (1-based; a table is a run of lines that start with ``|``). The benchmarks write the
results files; this module never runs a benchmark.

``python -m bench.tables`` rewrites every block; ``python -m bench.tables --check`` changes nothing and
exits 1, naming each page whose blocks differ from bench/results/.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import provenance

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- table: (?P<spec>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.DOTALL)


class TableError(ValueError):
    """A marker names a results file or a table that does not exist."""


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold measured tables: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def tables(text: str) -> list[str]:
    """Every table of a markdown text (runs of lines starting with ``|``), each ending with a newline."""
    found: list[list[str]] = []
    previous_was_row = False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            found.append([])
        if is_row:
            found[-1].append(line)
        previous_was_row = is_row
    return ["\n".join(rows) + "\n" for rows in found]


def source(spec: str, root: Path = ROOT) -> str:
    """The text a marker ``path`` or ``path#N`` stands for, ending with one newline.

    A results file's block ends with the caption of its provenance record (command, commit, date,
    machine, and how the setup differs from the shipped defaults), and, when it was measured on other
    defaults than the ones that ship (or has no record), a note naming the rerun (:mod:`bench.provenance`).
    """
    name, _, index = spec.partition("#")
    path = root / name
    if not path.is_file():
        raise TableError(f"{spec}: no such results file")
    text = path.read_text(encoding="utf-8")
    if not index:
        body = text.rstrip() + "\n"
    else:
        found = tables(text)
        if not index.isdigit() or not 1 <= int(index) <= len(found):
            raise TableError(f"{spec}: {name} has {len(found)} table(s)")
        body = found[int(index) - 1]
    if path.parent.name != "results":
        return body
    caption = provenance.page_caption(path.name, path.parent)
    note = provenance.stale_note(path.name, path.parent)
    return body + (f"\n<sub>{caption}</sub>\n" if caption else "") + (f"\n> **Stale**: {note}\n" if note else "")


def refresh(text: str, root: Path = ROOT) -> str:
    """``text`` with every marked block replaced by what its marker names."""
    return BLOCK.sub(lambda m: m.group(1) + source(m.group("spec"), root) + m.group(4), text)


def blocks(root: Path = ROOT) -> dict[Path, list[str]]:
    """The marker specs of every page that has any."""
    found = {page: [m.group("spec") for m in BLOCK.finditer(page.read_text(encoding="utf-8"))] for page in pages(root)}
    return {page: specs for page, specs in found.items() if specs}


def stale(root: Path = ROOT) -> list[Path]:
    """The pages whose marked tables differ from bench/results/."""
    return [page for page in pages(root) if refresh(text := page.read_text(encoding="utf-8"), root) != text]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.tables [--check]``: 0 when in sync (or rewritten), 1 when stale, 2 on a bad marker."""
    parser = argparse.ArgumentParser(prog="python -m bench.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page's tables are stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project root (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        outdated = stale(args.root)
    except TableError as exc:
        print(f"bench.tables: error: {exc}", file=sys.stderr)
        return 2
    for page in outdated:
        if args.check:
            print(f"{page.relative_to(args.root)}: tables differ from bench/results/ (run python -m bench.tables)")
        else:
            page.write_text(refresh(page.read_text(encoding="utf-8"), args.root), encoding="utf-8")
            print(f"{page.relative_to(args.root)}: tables rewritten")
    return 1 if args.check and outdated else 0


if __name__ == "__main__":
    sys.exit(main())
