"""Crypto-shredding of the prepared images: every row encrypted under a key of its own.

``store/data/images.safetensors`` holds each image encrypted with AES-256-CTR under a random key that
belongs to that row alone (one message per key, so a fixed nonce is safe). The keys live in the
**row key store**, ``<data dir>-keys/rows.json`` (``store/data-keys/``), which is on purpose *not* a DVC
output, not in git and never logged to MLflow: erasing a sample destroys its key there, and every copy of
the data file (the workspace, each version in the DVC cache, a DVC remote, a backup) is unreadable for that
row at once, without rewriting any tracked byte. A rewrite would change ``store/data``, which every stage
depends on, so DVC would retrain the whole stream (docs/deletion.md, "Erasure").

Crypto-shredding as used for immutable logs and backups (e.g. the "forget key" pattern in event-sourced
systems); the key store must be backed up apart from the data, and a destroyed key must never be restored
from a backup (docs/deletion.md).

Keys are kept across ``ume prepare`` reruns (a sample keeps its key, so the same data gives the same bytes),
and an erased sample stays erased: its row is written as zeros under no key (a *tombstone*, recorded by
hashed id, never by the sample id, which is a content hash of the image).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.model.lineage import hash_sample_id

FORMAT = "ume-row-keys/1"
CIPHER = "aes-256-ctr/row"  # recorded in the images file's metadata
KEY_BYTES = 32


def key_store_dir(data_dir: str | Path) -> Path:
    """Where the row keys of a prepared directory live: beside it, ``<data dir>-keys``."""
    data_dir = Path(data_dir)
    return data_dir.with_name(f"{data_dir.name}-keys")


def _xor_stream(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(data)


class RowKeys:
    """The key of every row of one prepared images file (``None`` for an erased row), and the tombstones."""

    def __init__(self, path: Path, keys: dict[str, bytes], erased: dict[str, str]) -> None:
        self.path = path
        self.keys = keys  # sample id -> key
        self.erased = erased  # hashed sample id -> when it was erased (UTC ISO)

    @classmethod
    def open(cls, data_dir: str | Path) -> RowKeys:
        """The key store of ``data_dir`` (empty when there is none yet)."""
        path = key_store_dir(data_dir) / "rows.json"
        if not path.exists():
            return cls(path, {}, {})
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
            keys = {str(k): bytes.fromhex(v) for k, v in raw["keys"].items()}
            erased = {str(k): str(v) for k, v in raw.get("erased", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"the row key store cannot be read ({exc})", file=str(path)) from None
        return cls(path, keys, erased)

    def is_erased(self, sample_id: str) -> bool:
        """Whether the sample's key was destroyed."""
        return hash_sample_id(sample_id) in self.erased

    def key_for(self, sample_id: str) -> bytes | None:
        """A row's key: kept for a known sample, fresh for a new one, None for an erased one (written as zeros)."""
        if self.is_erased(sample_id):
            return None
        key = self.keys.get(sample_id)
        if key is None:
            key = self.keys[sample_id] = os.urandom(KEY_BYTES)
        return key

    def assign(self, sample_ids: Sequence[str]) -> list[bytes | None]:
        """The key of each row, in order (:meth:`key_for`)."""
        return [self.key_for(sample_id) for sample_id in sample_ids]

    def bind(self, sample_ids: Sequence[str], *, file: str) -> list[bytes | None]:
        """The key of each row of an existing images file; a live row without a key is an error naming the file."""
        rows: list[bytes | None] = []
        for sample_id in sample_ids:
            key = self.keys.get(sample_id)
            if key is None and not self.is_erased(sample_id):
                raise DataError(
                    f"no key for sample {sample_id} in the row key store {self.path}: the images are encrypted per row and "
                    "their keys are not in DVC or git (copy the project's store/data-keys/ too, or rerun `ume prepare`)",
                    file=file,
                )
            rows.append(key)
        return rows

    def save(self) -> None:
        """Write the store atomically (a crash leaves the old or the new one, never a mix)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        body = {"format": FORMAT, "keys": {k: v.hex() for k, v in sorted(self.keys.items())}, "erased": dict(sorted(self.erased.items()))}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def shred(self, sample_ids: Iterable[str], when: str) -> list[str]:
        """Destroy the keys of ``sample_ids`` (tombstones by hashed id); returns the hashed ids newly erased. Call :meth:`save`."""
        newly = []
        for sample_id in sample_ids:
            hashed = hash_sample_id(sample_id)
            self.keys.pop(sample_id, None)
            if hashed not in self.erased:
                self.erased[hashed] = when
                newly.append(hashed)
        return newly


def encrypt_rows(rows: np.ndarray, keys: Sequence[bytes | None]) -> np.ndarray:
    """uint8 rows (k x ...) encrypted each under its key; a row without a key (erased) is written as zeros."""
    out = np.zeros_like(rows)
    flat_in, flat_out = rows.reshape(len(rows), -1), out.reshape(len(rows), -1)
    for i, key in enumerate(keys):
        if key is not None:
            flat_out[i] = np.frombuffer(_xor_stream(key, flat_in[i].tobytes()), dtype=np.uint8)
    return out


def decrypt_rows(rows: np.ndarray, keys: Sequence[bytes | None], positions: Sequence[int], *, file: str) -> np.ndarray:
    """Decrypt rows read at ``positions``; reading an erased row is an error (no consumer may ask for one)."""
    flat = rows.reshape(len(rows), -1)
    for i, row in enumerate(positions):
        key = keys[int(row)]
        if key is None:
            raise DataError(f"row {int(row)} was erased (its key is destroyed): nothing may read it", file=file)
        flat[i] = np.frombuffer(_xor_stream(key, flat[i].tobytes()), dtype=np.uint8)
    return rows
