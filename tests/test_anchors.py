"""Anchors of the ledger outside it, and their Ed25519 signatures (issue 18, items 1 and 2).

In-process on the trained base: a signed learn step writes its anchors (version tags, run parameters),
the audit checks them; a history rewritten with recomputed hashes, a forged signature and a missing
certificate are each caught with a clear message. Issue 27: the promoted version is signed with OpenSSF
model signing (the library's CLI verifies it), and a certificate is a signed in-toto attestation. The
signed project is built once per module and copied for each test. The full tamper matrix runs in ``tests/test_e2e.py``
(and ``python -m bench.tamper``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import pytest
import yaml
from mlflow import MlflowClient

from bench.tamper import read_entries, write_rechained
from pipeline.cli import main
from pipeline.core.signing import anchor_message, generate_keypair, load_private_key, load_public_key, verify
from pipeline.records.workspace import Workspace
from pipeline.reports.audit import audit_workspace
from pipeline.steps import open_workspace, run_step
from tests.projects import clone_project

MODEL = "ume-digits"


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code)


@pytest.fixture(scope="module")
def signed_template(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained base with a key pair configured and one learn step run (signed anchors, a signed version 2): built once."""
    root = clone_project(trained_project, tmp_path_factory.mktemp("signed") / "proj", absolute=True)
    with contextlib.chdir(root):
        assert cli("keygen", "--out", str(root / "keys")) == 0
        raw = yaml.safe_load((root / "params.yaml").read_text())
        stream = raw.pop("stream")
        raw["ledger"] = {"signing_key": "keys/ume-ledger.key", "public_key": "keys/ume-ledger.pub"}
        raw["stream"] = {**(stream or {}), "s01-learn-u3": {"kind": "learn", "parent": "base", "slice": "u3", "epochs": 1}}
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        assert run_step(open_workspace(), "s01-learn-u3").record["version"] == 2
    return root


@pytest.fixture
def signed(signed_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the signed project (tests may change it freely)."""
    dest = clone_project(signed_template, tmp_path / "proj", absolute=True)
    monkeypatch.chdir(dest)
    return dest


def _audit(root: Path, **kwargs) -> tuple[list[str], list[str]]:
    report = audit_workspace(Workspace.open(root / "params.yaml"), **kwargs)
    return report.problems, report.checked


def test_keygen_writes_a_private_key_only_its_owner_reads(signed: Path, capsys) -> None:
    assert stat.S_IMODE((signed / "keys" / "ume-ledger.key").stat().st_mode) == 0o600
    assert cli("keygen", "--out", str(signed / "keys")) == 2  # never overwrites a key
    assert cli("keygen", "--out", str(signed / "more")) == 0
    out = capsys.readouterr().out
    assert "EC P-256" in out and "public: set ledger.public_key" in out


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
    assert any(line.startswith("served models: 1 of 1 signed") for line in checked), checked


def model_signing_verify(directory: Path, public: Path) -> subprocess.CompletedProcess:
    """The OpenSSF library's own command line, as a serving team runs it (not ume's code)."""
    command = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(directory / "model.sig"), "--public_key", str(public)]
    return subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)


def test_a_promoted_version_is_signed_with_openssf_model_signing(signed: Path) -> None:
    """Issue 27, item 2: the promoted version's served files and their bundle, in the store and in MLflow; the library's
    CLI accepts both and rejects a weights file with one byte changed; ``ume audit`` names the version and the file."""
    public = signed / "keys" / "ume-ledger.pub"
    served = signed / "store" / "signed" / "v2"
    uri = f"sqlite:///{signed / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    registered = Path(mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version(MODEL, "2").source, tracking_uri=uri))
    assert sorted(p.name for p in served.iterdir()) == sorted(p.name for p in registered.iterdir()), "the registered files and the bundle"
    (entry,) = [e for e in read_entries(signed) if e["type"] == "model_signed"]
    assert entry["data"]["version"] == 2 and entry["step"] == "s01-learn-u3"
    for directory in (served, registered):
        accepted = model_signing_verify(directory, public)
        assert accepted.returncode == 0 and "Verification succeeded" in accepted.stdout, accepted.stderr
    weights = next(p for p in served.glob("lora-*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    rejected = model_signing_verify(served, public)
    assert rejected.returncode == 1 and weights.name in rejected.stderr, rejected.stderr
    problems, _ = _audit(signed)
    (problem,) = problems
    assert problem.startswith("served model v2:") and weights.name in problem and "model_signing" in problem, problem
    assert cli("audit") == 1


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


def test_a_certificate_is_a_signed_in_toto_attestation(signed: Path, capsys) -> None:
    """Issue 27, item 3: ``ume certificate`` writes ``<id>.intoto.json``, an in-toto Statement about the served weights in
    a DSSE envelope signed with the operator's key; the libraries verify it; ``ume audit --certificate`` fails naming the
    file once its predicate is edited, or when another key signed it."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    from pipeline.core.attestation import sign_envelope, statement_of
    from tests.test_signing import _edit_payload

    rows = (signed / "store" / "data" / "samples.csv").read_text().splitlines()
    owner_at = rows[0].split(",").index("owner")
    owner = next(r.split(",")[owner_at] for r in rows[1:] if r.split(",")[owner_at])
    assert cli("forget", "--owner", owner, "--reason", "GDPR art. 17 (test)") == 0
    request_id = next(s["request"] for s in yaml.safe_load((signed / "params.yaml").read_text())["stream"].values() if s.get("request"))
    capsys.readouterr()
    assert cli("certificate", request_id) == 0
    assert "signed with ledger.signing_key" in capsys.readouterr().out
    path = signed / "certificates" / f"{request_id}.intoto.json"
    envelope = json.loads(path.read_text())
    public = load_public_key(signed / "keys" / "ume-ledger.pub")
    Envelope.from_dict(json.loads(path.read_text())).verify([SSlibKey.from_crypto(public)], 1)  # the library, not ume
    body = statement_of(envelope)  # parsed and validate()d by in_toto_attestation
    assert body["predicateType"] == "https://ume.dev/deletion-certificate/v1"
    assert body["predicate"]["request"]["id"] == request_id and body["predicate"]["served_version"]["version"] == 2
    served = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (signed / "store" / "signed" / "v2").glob("*.safetensors")}
    assert {s["name"]: s["digest"]["sha256"] for s in body["subject"]} == served, "the subjects are the served weights"
    assert cli("audit", "--certificate", str(path)) == 0

    edited = signed / "edited.intoto.json"
    edited.write_text(json.dumps(_edit_payload(envelope, lambda b: b["predicate"]["request"].update(reason="none given"))))
    capsys.readouterr()
    assert cli("audit", "--certificate", str(edited)) == 1
    err = capsys.readouterr().err
    assert f"certificate {edited}: the signature does not verify" in err, err
    other, _ = generate_keypair(signed / "other-key")
    forged = signed / "forged.intoto.json"
    forged.write_text(json.dumps(sign_envelope(load_private_key(other), statement_of(json.loads(edited.read_text())))))
    assert cli("audit", "--certificate", str(forged)) == 1
    assert f"certificate {forged}: signed by another key" in capsys.readouterr().err
