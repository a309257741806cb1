"""Anchors of the ledger outside it, and their Ed25519 signatures (issue 18, items 1 and 2).

In-process on the trained base: a signed learn step writes its anchors (version tags, run parameters),
the audit checks them; a history rewritten with recomputed hashes, a forged signature and a missing
certificate are each caught with a clear message. The full tamper matrix runs in ``tests/test_e2e.py``
(and ``python -m bench.tamper``).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from bench.tamper import read_entries, write_rechained
from pipeline.cli import main
from pipeline.core.signing import anchor_message, load_public_key, verify
from pipeline.records.workspace import Workspace
from pipeline.reports.audit import audit_workspace
from pipeline.steps import open_workspace, run_step

MODEL = "ume-digits"


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code)


@pytest.fixture
def signed(trained_copy: Path, capsys) -> Path:
    """The trained base with a key pair configured and one learn step run (signed anchors)."""
    assert cli("keygen", "--out", str(trained_copy / "keys")) == 0
    assert "public: set ledger.public_key" in capsys.readouterr().out
    raw = yaml.safe_load((trained_copy / "params.yaml").read_text())
    stream = raw.pop("stream")
    raw["ledger"] = {"signing_key": "keys/ume-ledger.key", "public_key": "keys/ume-ledger.pub"}
    raw["stream"] = {**(stream or {}), "s01-learn-u3": {"kind": "learn", "parent": "base", "slice": "u3", "epochs": 1}}
    (trained_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_step(open_workspace(), "s01-learn-u3").record["version"] == 2
    return trained_copy


def _audit(root: Path, **kwargs) -> tuple[list[str], list[str]]:
    report = audit_workspace(Workspace.open(root / "params.yaml"), **kwargs)
    return report.problems, report.checked


def test_keygen_writes_a_private_key_only_its_owner_reads(signed: Path) -> None:
    assert stat.S_IMODE((signed / "keys" / "ume-ledger.key").stat().st_mode) == 0o600
    assert cli("keygen", "--out", str(signed / "keys")) == 2  # never overwrites a key


def test_a_signed_step_anchors_the_ledger_in_the_registry_and_its_run(signed: Path) -> None:
    uri = f"sqlite:///{signed / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = client.get_model_version(MODEL, "2").tags
    entries = read_entries(signed)
    decision = next(e for e in entries if e["type"] == "decision" and e["step"] == "s01-learn-u3")
    assert tags["ume.ledger_entry"] == decision["hash"] and tags["ume.ledger_seq"] == str(decision["seq"])
    key = load_public_key(signed / "keys" / "ume-ledger.pub")
    assert verify(key, anchor_message(MODEL, decision["seq"], decision["hash"]), tags["ume.ledger_sig"])
    run = client.get_run(client.get_model_version(MODEL, "2").run_id)
    seq, _, head = run.data.params["ume.ledger_anchor"].partition(":")
    assert (int(seq), head) == (entries[-1]["seq"], entries[-1]["hash"]), "the run holds the head the stage left"
    problems, checked = _audit(signed)
    assert problems == []
    assert any(line.startswith("ledger anchors: all") for line in checked)
    assert any("signatures verify" in line for line in checked)


def test_history_rewritten_with_recomputed_hashes_is_caught_by_the_anchors(signed: Path) -> None:
    entries = read_entries(signed)
    dropped = next(i for i, e in enumerate(entries) if e["type"] == "step_started" and e["step"] == "s01-learn-u3")
    write_rechained(signed, entries[:dropped] + entries[dropped + 1 :])
    Workspace.open(signed / "params.yaml").ledger.verify()  # the chain itself verifies
    problems, _ = _audit(signed)
    (anchors,) = [p for p in problems if p.startswith("ledger anchors:")]
    assert f"history diverges after entry {dropped}" in anchors and "registry v2" in anchors, anchors


def test_a_forged_signature_and_a_missing_certificate_are_reported(signed: Path) -> None:
    uri = f"sqlite:///{signed / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_model_version_tag(MODEL, "2", "ume.ledger_sig", "AAAA" * 22)
    problems, _ = _audit(signed)
    assert any("signature(s) do not verify" in p and "registry v2" in p for p in problems), problems
    assert cli("audit", "--certificate", str(signed / "nope.md")) == 2


def test_a_bad_signing_key_stops_a_stage_before_it_trains(trained_copy: Path, capsys) -> None:
    (trained_copy / "bad.key").write_text("not a key")
    raw = yaml.safe_load((trained_copy / "params.yaml").read_text())
    stream = raw.pop("stream")
    raw["ledger"] = {"signing_key": "bad.key"}
    raw["stream"] = stream
    (trained_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cli("status") == 0
    assert cli("step", "nope") == 2
    assert "field 'ledger.signing_key'" in capsys.readouterr().err
