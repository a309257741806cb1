"""The operator's key: signatures over ledger heads, and OpenSSF model signing of served versions.

A signed anchor says "entry ``seq`` of the ledger of model ``model`` had hash ``hash``", so that someone
who holds only the public key can check an anchor was written by the operator's key, the way
certificate transparency logs sign their tree heads (RFC 6962, §3.5). Keys are PEM files:
``ume keygen`` writes an EC P-256 pair (the private key readable by its owner only), the key type the
OpenSSF ``model_signing`` library signs models with (it takes EC P-256/384/521 keys, not Ed25519).

Anchors are signed with whichever key is loaded: ECDSA with SHA-256 (SHA-384/512 on P-384/521) for an EC
key, Ed25519 (RFC 8032) for a key made by an older ``ume keygen``. A public key file may hold several PEM
keys, the current one first: an anchor verifies when one of them verifies it, so anchors signed by a
retired Ed25519 key still verify after the project moves to a P-256 key. A model bundle is verified with
the EC key its key hint names (``model_signing verify key --public_key FILE`` reads the first key of a file).

Everything goes through ``cryptography`` and ``model_signing``: no hand-written crypto. ``model_signing``
(and Sigstore's libraries under it) is imported only inside the functions that sign or verify a model.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

SIGNING_KEY_ENV = "UME_SIGNING_KEY"  # a path; overrides ledger.signing_key (keep the key out of the repository)
MODEL_SIGNATURE = "model.sig"  # the Sigstore bundle inside a signed version directory (model_signing's default name)
KEYGEN_HINT = "run `ume keygen --out DIR` for an EC P-256 pair"
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----\s*", re.DOTALL)


def anchor_message(model: str, seq: int, entry_hash: str) -> bytes:
    """The bytes an anchor's signature covers."""
    return f"ume-ledger-anchor\n{model}\n{seq}\n{entry_hash}".encode()


def _read(path: Path, what: str, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path} ({exc.strerror})", field=field) from None


def _supported(key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return True
    return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1", "secp521r1")


def load_private_key(path: str | Path, *, field: str = "ledger.signing_key"):
    """An EC (P-256/384/521) or Ed25519 private key from a PEM file (unencrypted PKCS#8), or a :class:`ConfigError`."""
    from cryptography.hazmat.primitives import serialization

    data = _read(Path(path), "signing key", field)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})", field=field) from None
    if not _supported(key):
        raise ConfigError(f"{path} is neither an EC P-256/384/521 nor an Ed25519 key; {KEYGEN_HINT}", field=field)
    return key


def load_public_keys(path: str | Path, *, field: str = "ledger.public_key") -> list[Any]:
    """Every public key of a PEM file (the current key first, then retired ones), or a :class:`ConfigError`."""
    from cryptography.hazmat.primitives import serialization

    data = _read(Path(path), "public key", field)
    blocks = _PEM_PUBLIC.findall(data) or [data]
    keys = []
    for number, block in enumerate(blocks, start=1):
        which = f"{path}" if len(blocks) == 1 else f"{path} (key {number})"
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{which} is not a PEM public key ({exc})", field=field) from None
        if not _supported(key):
            raise ConfigError(f"{which} is neither an EC P-256/384/521 nor an Ed25519 public key", field=field)
        keys.append(key)
    return keys


def load_public_key(path: str | Path, *, field: str = "ledger.public_key"):
    """The first (current) public key of a PEM file, or a :class:`ConfigError` naming the field."""
    return load_public_keys(path, field=field)[0]


def _ecdsa(key: Any):
    """ECDSA with the hash that fits the curve (as ``model_signing`` and Sigstore pick it)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    size = key.curve.key_size
    return ec.ECDSA(hashes.SHA256() if size == 256 else hashes.SHA384() if size == 384 else hashes.SHA512())


def _is_ec(key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec

    return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)


def sign(private_key, message: bytes) -> str:
    """A base64 signature of ``message``: ECDSA (DER) for an EC key, Ed25519 otherwise."""
    raw = private_key.sign(message, _ecdsa(private_key)) if _is_ec(private_key) else private_key.sign(message)
    return base64.b64encode(raw).decode()


def verify(public_key, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is the signature of ``message`` by ``public_key`` (or by one of a list of keys)."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(public_key, list | tuple):
        return any(verify(key, message, signature) for key in public_key)
    try:
        raw = base64.b64decode(signature, validate=True)
        if _is_ec(public_key):
            public_key.verify(raw, message, _ecdsa(public_key))
        else:
            public_key.verify(raw, message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def generate_keypair(directory: str | Path, name: str = "ume-ledger") -> tuple[Path, Path]:
    """Write an EC P-256 pair, ``<name>.key`` (PKCS#8, mode 0600) and ``<name>.pub``, into ``directory``; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; not overwriting a key", field="--out")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public_path.write_bytes(public)
    return private_path, public_path


# ----------------------------------------------------------------------------- OpenSSF model signing


def check_model_signing_key(path: str | Path, *, field: str = "ledger.signing_key") -> None:
    """Refuse a key ``model_signing`` cannot sign with (an Ed25519 key from an older ``ume keygen``)."""
    if not _is_ec(load_private_key(path, field=field)):
        raise ConfigError(
            f"{path} is an Ed25519 key, and ume signs every promoted version with OpenSSF model signing, which takes EC keys only"
            f" (P-256/384/521): {KEYGEN_HINT} and point ledger.signing_key at it; to keep auditing anchors the old key signed, put the"
            " new public key first and the old one after it in the file ledger.public_key names",
            field=field,
        )


def sign_model(private_key_path: str | Path, model_dir: Path, *, field: str = "ledger.signing_key") -> Path:
    """Sign every file of ``model_dir`` with ``model_signing``'s elliptic-key signer; the bundle is ``model_dir/model.sig``.

    The bundle is a Sigstore bundle (a DSSE envelope over an in-toto statement listing each file's SHA-256),
    offline: no transparency log, no certificate. It records ``model.sig`` among its ignored paths, so
    ``model_signing verify key --signature DIR/model.sig --public_key PUB DIR`` checks the directory as it is.
    """
    check_model_signing_key(private_key_path, field=field)
    from model_signing import hashing, signing

    bundle = model_dir / MODEL_SIGNATURE
    config = signing.Config().use_elliptic_key_signer(private_key=Path(private_key_path))
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[MODEL_SIGNATURE])).sign(model_dir, bundle)
    return bundle


def _pem(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_sha256(public_key: Any) -> str:
    """The SHA-256 of a public key's PEM: ``model_signing``'s key hint in a bundle."""
    import hashlib

    return hashlib.sha256(_pem(public_key)).hexdigest()


def verify_model(public_key_path: str | Path, model_dir: Path) -> str | None:
    """None when ``model_dir/model.sig`` verifies ``model_dir``, else why not (``model_signing``'s words).

    The bundle is checked with the key of ``public_key_path`` whose SHA-256 it names (its key hint), so the
    bundles of a retired EC key still verify; with no such key, with the first one (the library says it does
    not match).
    """
    import json
    import tempfile

    from model_signing import hashing, verifying

    keys = [k for k in load_public_keys(public_key_path) if _is_ec(k)]
    if not keys:
        return f"{public_key_path} holds no EC key; model signatures verify with an EC key only ({KEYGEN_HINT})"
    try:
        hint = json.loads((model_dir / MODEL_SIGNATURE).read_text())["verificationMaterial"]["publicKey"]["hint"]
    except (OSError, ValueError, KeyError, TypeError):
        hint = None
    key = next((k for k in keys if public_key_sha256(k) == hint), keys[0])
    with tempfile.TemporaryDirectory() as tmp:
        pem = Path(tmp) / "key.pub"
        pem.write_bytes(_pem(key))
        try:
            config = verifying.Config().use_elliptic_key_verifier(public_key=pem)
            config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[MODEL_SIGNATURE]))
            config.verify(model_dir, model_dir / MODEL_SIGNATURE)
        except Exception as exc:  # noqa: BLE001 - the library raises ValueError, InvalidSignature, OSError, protobuf errors...
            return str(exc) or type(exc).__name__
    return None
