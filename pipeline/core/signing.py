"""Ed25519 signatures over ledger heads (RFC 8032), through the ``cryptography`` package: no hand-written crypto.

A signed anchor says "entry ``seq`` of the ledger of model ``model`` had hash ``hash``", so that someone
who holds only the public key can check an anchor was written by the operator's key, the way
certificate transparency logs sign their tree heads (RFC 6962, §3.5). Keys are PEM files:
``ume keygen`` writes a pair, the private key readable by its owner only.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from pipeline.core.errors import ConfigError

SIGNING_KEY_ENV = "UME_SIGNING_KEY"  # a path; overrides ledger.signing_key (keep the key out of the repository)


def anchor_message(model: str, seq: int, entry_hash: str) -> bytes:
    """The bytes an anchor's signature covers."""
    return f"ume-ledger-anchor\n{model}\n{seq}\n{entry_hash}".encode()


def _read(path: Path, what: str, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path} ({exc.strerror})", field=field) from None


def load_private_key(path: str | Path, *, field: str = "ledger.signing_key"):
    """An Ed25519 private key from a PEM file (unencrypted PKCS#8), or a :class:`ConfigError` naming the field."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(Path(path), "signing key", field)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})", field=field) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key (ume signs with Ed25519 only)", field=field)
    return key


def load_public_key(path: str | Path, *, field: str = "ledger.public_key"):
    """An Ed25519 public key from a PEM file, or a :class:`ConfigError` naming the field."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(Path(path), "public key", field)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a PEM public key ({exc})", field=field) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key", field=field)
    return key


def sign(private_key, message: bytes) -> str:
    """A base64 Ed25519 signature of ``message``."""
    return base64.b64encode(private_key.sign(message)).decode()


def verify(public_key, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s signature of ``message``."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_keypair(directory: str | Path, name: str = "ume-ledger") -> tuple[Path, Path]:
    """Write ``<name>.key`` (private, mode 0600) and ``<name>.pub`` into ``directory``; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; not overwriting a key", field="--out")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public_path.write_bytes(public)
    return private_path, public_path
