"""A newcomer's first run: ``git clone`` of this repository *with its history*, then the stream through the real
``dvc repro`` (``seal`` runs ``ume audit``), then ``ume audit`` green.

Issue 26: the repository once shipped ``dvc.lock`` files of other runs, whose ledgers no clone can pull; the audit
read them (in the working tree and in git history) as anchors of the clone's new ledger and failed the seal of
every fresh ``make demo``. The history still holds those locks, so this test keeps the case alive: the new
ledger must set them aside (docs/reliability.md, "Which anchors count").

The stream is the default one shortened to a base, one learn step and the seal, every stage writing anchors
(the owner deletion of the full stream is run by the demo benchmark and tests/test_e2e.py), with fewer epochs,
the shipped reference bank and the suite's wide-margin thresholds; the data, the request files and every other
setting are the repository's own. The clone is of ``HEAD``: in a working checkout, commit first (CI tests a clean clone).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.projects import REPO, TEST_THRESHOLDS, sh, unavailable

pytestmark = pytest.mark.e2e

SHORT_STREAM = {
    "s03-learn-u3": {"kind": "learn", "parent": "base", "slice": "u3", "epochs": 3},
}


def shorten(params: Path) -> None:
    """The shipped params with the short stream and a short base (what a user edits)."""
    raw = yaml.safe_load(params.read_text())
    raw["train"]["base"]["epochs"] = 8
    raw["train"]["progress_bar"] = False
    raw["behaviors"]["thresholds"].update(TEST_THRESHOLDS)  # wide margins: a short base must not sit near a threshold
    raw["stream"] = SHORT_STREAM
    params.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_fresh_clone_runs_the_stream_and_passes_its_audit(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        unavailable(f"{REPO} is not a git checkout: nothing to clone")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=300)
    history = sh(clone, "git", "log", "--format=%h", "--", "dvc.lock").stdout.split()
    assert history, "the clone should carry the dvc.lock history of earlier runs (the case this test exists for)"
    shorten(clone / "params.yaml")
    repro = sh(clone, "dvc", "repro", check=False, timeout=1500)
    assert repro.returncode == 0, f"dvc repro failed in a fresh clone:\n{repro.stdout[-3000:]}\n{repro.stderr[-3000:]}"
    audit = sh(clone, "ume", "audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "audit passed" in audit.stdout
    assert "set aside" in audit.stdout, audit.stdout  # the earlier runs' locks were seen, and not taken for this ledger's
    status = yaml.safe_load(sh(clone, "ume", "status", "--json").stdout)
    decisions = {s["id"]: s["decision"] for s in status["steps"]}
    assert set(decisions) == {"base", *SHORT_STREAM}, decisions
