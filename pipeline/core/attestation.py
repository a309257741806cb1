"""in-toto attestations: a Statement (in-toto Attestation Framework v1) in a DSSE envelope.

A Statement says something (the *predicate*, of a given *predicate type*) about artifacts named by
their digests (the *subjects*). ume writes one per deletion certificate (``ume certificate``): the
subjects are the weights of the version that serves without the request's samples, the predicate is
the certificate's facts. The Statement is built and validated with the ``in_toto_attestation``
library; the envelope (DSSE, payload type ``application/vnd.in-toto+json``) is signed and verified
with ``securesystemslib``, with the operator's key (:mod:`pipeline.core.signing`). Both libraries are
imported inside the functions, so importing this module costs nothing.

The payload is the Statement as canonical JSON (sorted keys, no spaces) of ume's own dict: integers
stay integers (the library's protobuf ``Struct`` would turn them into floats), and anyone can parse it
back into the library's ``Statement`` (:func:`parse_statement`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class AttestationError(ValueError):
    """An envelope or Statement that does not verify or is malformed: the message says which and why."""


def statement(subjects: list[tuple[str, str]], predicate_type: str, predicate: dict[str, Any]) -> dict[str, Any]:
    """A validated Statement about ``subjects`` (``(name, sha256)`` pairs) as a JSON-ready dict."""
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects],
        "predicateType": predicate_type,
        "predicate": predicate,
    }
    parse_statement(payload_of(body))  # the library's own validation, on exactly the bytes that get signed
    return body


def payload_of(body: dict[str, Any]) -> bytes:
    """The bytes a Statement is signed as: canonical JSON (NaN refused: JSON has none)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_statement(payload: bytes) -> dict[str, Any]:
    """Parse ``payload`` into the library's v1 ``Statement``, ``validate()`` it; the Statement as a dict."""
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    try:
        body = json.loads(payload)
        Statement.copy_from_pb(json_format.Parse(payload, statement_pb2.Statement())).validate()
    except (ValueError, json_format.ParseError) as exc:
        raise AttestationError(f"not a valid in-toto v1 Statement ({exc})") from None
    return body


def key_id(public_key: Any) -> str:
    """securesystemslib's default key id of a ``cryptography`` public key (the ``keyid`` of its DSSE signatures)."""
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(public_key).keyid


def sign_envelope(private_key: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The Statement ``body`` in a DSSE envelope signed with ``private_key`` (EC or Ed25519), as JSON-ready dict."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    envelope = Envelope(payload_of(body), PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(private_key))
    return envelope.to_dict()


def is_envelope(document: Any) -> bool:
    """Whether a parsed JSON document is a DSSE envelope (else it should be a bare, unsigned Statement)."""
    return isinstance(document, dict) and "payloadType" in document and "payload" in document


def open_envelope(document: dict[str, Any], public_keys: list[Any] | None) -> tuple[dict[str, Any], str]:
    """Verify a DSSE envelope with one of ``public_keys`` (None: do not verify) and validate its Statement.

    Returns the Statement and the id of the key that verified it ("" when not verified). Raises
    :class:`AttestationError`: the payload type is not in-toto's, no signature verifies (signed by another
    key, or the payload changed after signing: the message says which), or the Statement is invalid.
    """
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    try:
        envelope = Envelope.from_dict(json.loads(json.dumps(document)))  # from_dict rewrites the signatures it is given
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise AttestationError(f"not a DSSE envelope ({type(exc).__name__}: {exc})") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise AttestationError(f"payload type {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}")
    verified = ""
    if public_keys is not None:
        keys = [SSlibKey.from_crypto(k) for k in public_keys]
        try:
            verified = next(iter(envelope.verify(keys, 1)))
        except VerificationError:
            ours = {k.keyid for k in keys}
            signed_by = sorted(envelope.signatures)
            if not set(signed_by) & ours:
                raise AttestationError(
                    f"signed by another key (key id {', '.join(s[:12] for s in signed_by) or 'none'}), not by ledger.public_key"
                    f" (key id {', '.join(sorted(k[:12] for k in ours))})"
                ) from None
            raise AttestationError("the signature does not verify with ledger.public_key: the statement was changed after it was signed") from None
    return parse_statement(envelope.payload), verified


def statement_of(document: Any) -> dict[str, Any]:
    """The Statement of an envelope (not verified) or of a bare Statement, validated."""
    if is_envelope(document):
        try:
            payload = base64.b64decode(document["payload"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise AttestationError(f"its payload is not base64 ({exc})") from None
        return parse_statement(payload)
    return parse_statement(payload_of(document) if isinstance(document, dict) else b"null")
