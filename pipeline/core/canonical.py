"""The one JSON serialisation that ume hashes (ledger entries, manifests, request ids), and a file's SHA-256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, UTF-8: the same bytes on every machine."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def file_digest(path: str | Path, algorithm: str) -> str:
    """A hashlib digest of a file, hex, read in chunks (``md5`` only names content, as DVC's cache does)."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, hex, read in chunks."""
    return file_digest(path, "sha256")
