"""The operator's key (issue 27, items 2 and 3), without a project: fast, no network.

``ume keygen`` writes an EC P-256 pair; anchors are signed with whichever key is loaded (an Ed25519 key of
an older ``ume keygen`` still signs and verifies); a version directory signed with ``model_signing`` verifies
with the library's API and is rejected once a file is swapped; an in-toto attestation in a DSSE envelope
verifies, and is rejected once its predicate is edited or when another key signed it. The same checks on a
trained, signed project are in ``tests/test_anchors.py``.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pipeline.core import attestation as intoto
from pipeline.core import signing
from pipeline.core.errors import ConfigError


def _write_private(path: Path, key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_keygen_writes_an_ec_p256_pair_readable_by_its_owner_only(tmp_path: Path) -> None:
    private, public = signing.generate_keypair(tmp_path / "keys")
    key = signing.load_private_key(private)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()  # PKCS#8
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert signing.load_public_key(public).public_numbers() == key.public_key().public_numbers()
    with pytest.raises(ConfigError, match="not overwriting"):
        signing.generate_keypair(tmp_path / "keys")


def test_anchors_sign_with_p256_and_old_ed25519_keys_still_verify(tmp_path: Path) -> None:
    message = signing.anchor_message("m", 7, "ab" * 32)
    private, public = signing.generate_keypair(tmp_path)
    p256 = signing.load_private_key(private)
    signature = signing.sign(p256, message)
    assert signing.verify(signing.load_public_key(public), message, signature)
    assert not signing.verify(signing.load_public_key(public), signing.anchor_message("m", 7, "cd" * 32), signature)

    old = ed25519.Ed25519PrivateKey.generate()  # what `ume keygen` wrote before issue 27
    old_signature = signing.sign(signing.load_private_key(_write_private(tmp_path / "old.key", old)), message)
    (tmp_path / "old.pub").write_bytes(_public_pem(old))
    assert signing.verify(signing.load_public_key(tmp_path / "old.pub"), message, old_signature)

    both = tmp_path / "both.pub"  # the new key first, the retired one after it: anchors of either verify
    both.write_bytes(public.read_bytes() + _public_pem(old))
    keys = signing.load_public_keys(both)
    assert len(keys) == 2 and signing.verify(keys, message, signature) and signing.verify(keys, message, old_signature)
    assert not signing.verify(keys[:1], message, old_signature)


def _version_dir(root: Path) -> Path:
    """A crafted version directory: the files ume serves (manifest, weights, sidecar)."""
    root.mkdir(parents=True)
    (root / "manifest.json").write_text('{"base": "base-0123456789abcdef"}')
    (root / "base-0123456789abcdef.safetensors").write_bytes(bytes(range(256)) * 8)
    (root / "base-0123456789abcdef.json").write_text('{"id": "base-0123456789abcdef"}')
    return root


def test_a_signed_version_directory_verifies_with_model_signing_and_a_swapped_file_does_not(tmp_path: Path) -> None:
    from model_signing import hashing, verifying

    private, public = signing.generate_keypair(tmp_path / "keys")
    version = _version_dir(tmp_path / "v3")
    bundle = signing.sign_model(private, version)
    assert bundle == version / "model.sig"
    assert signing.verify_model(public, version) is None
    # the library's own API, as a serving team would call it (the bundle inside the directory is ignored by name)
    config = verifying.Config().use_elliptic_key_verifier(public_key=public)
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=["model.sig"])).verify(version, bundle)

    weights = version / "base-0123456789abcdef.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[100] ^= 1
    weights.write_bytes(bytes(blob))
    why = signing.verify_model(public, version)
    assert why is not None and "base-0123456789abcdef.safetensors" in why, why

    other_private, other_public = signing.generate_keypair(tmp_path / "other")
    clean = _version_dir(tmp_path / "v4")
    signing.sign_model(other_private, clean)
    assert "Key mismatch" in (signing.verify_model(public, clean) or ""), "a bundle of another key is refused"
    rotated = tmp_path / "rotated.pub"  # the current key first, a retired one after it: its bundles still verify
    rotated.write_bytes(public.read_bytes() + other_public.read_bytes())
    assert signing.verify_model(rotated, clean) is None


def test_signing_a_model_with_an_ed25519_key_names_the_field_and_keygen(tmp_path: Path) -> None:
    old = _write_private(tmp_path / "old.key", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError) as info:
        signing.sign_model(old, _version_dir(tmp_path / "v1"))
    message = str(info.value)
    assert "ledger.signing_key" in message and "Ed25519" in message and "ume keygen" in message and "P-256" in message
    assert not (tmp_path / "v1" / "model.sig").exists()


def _statement() -> dict:
    return intoto.statement(
        [("base-0123456789abcdef.safetensors", "ab" * 32)],
        "https://ume.dev/deletion-certificate/v1",
        {"request": {"id": "del-1", "samples": 3}, "ledger": {"head": {"seq": 9, "hash": "cd" * 32}}},
    )


def _edit_payload(envelope: dict, edit) -> dict:
    body = json.loads(base64.b64decode(envelope["payload"]))
    edit(body)
    return {**envelope, "payload": base64.b64encode(json.dumps(body).encode()).decode()}


@pytest.mark.parametrize("curve", ["p256", "ed25519"])
def test_an_attestation_envelope_verifies_and_edits_or_another_key_do_not(tmp_path: Path, curve: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if curve == "p256" else ed25519.Ed25519PrivateKey.generate()
    envelope = json.loads(json.dumps(intoto.sign_envelope(key, _statement())))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    body, keyid = intoto.open_envelope(envelope, [key.public_key()])
    assert body["_type"] == "https://in-toto.io/Statement/v1" and body["predicate"]["request"]["samples"] == 3
    assert keyid == intoto.key_id(key.public_key())

    edited = _edit_payload(envelope, lambda b: b["predicate"]["request"].update(samples=2))
    with pytest.raises(intoto.AttestationError, match="changed after it was signed"):
        intoto.open_envelope(edited, [key.public_key()])
    forged = intoto.sign_envelope(ec.generate_private_key(ec.SECP256R1()), json.loads(base64.b64decode(edited["payload"])))
    with pytest.raises(intoto.AttestationError, match="signed by another key"):
        intoto.open_envelope(forged, [key.public_key()])
    assert intoto.open_envelope(forged, None)[0]["predicate"]["request"]["samples"] == 2  # not verified: parsed only


def test_a_statement_the_in_toto_library_rejects_is_refused() -> None:
    with pytest.raises(intoto.AttestationError, match="At least one subject"):
        intoto.statement([], "https://ume.dev/deletion-certificate/v1", {"x": 1})
    with pytest.raises(ValueError):  # JSON has no NaN: a NaN in the predicate must not become an unparseable payload
        intoto.statement([("w", "ab" * 32)], "https://ume.dev/deletion-certificate/v1", {"x": float("nan")})
