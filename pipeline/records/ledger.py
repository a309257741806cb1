"""The ledger: an append-only, hash-chained JSONL log of every request, step, decision and alias move.

Each line is one entry ``{seq, time, type, step, data, prev, hash}`` where ``hash`` is the SHA-256
of the canonical JSON of the entry without ``hash`` and ``prev`` is the previous entry's hash
(``GENESIS`` for the first). Changing, dropping or reordering any line breaks the chain, which
:meth:`Ledger.verify` reports with the line number. Appends are atomic (write a temporary copy,
fsync, ``os.replace``) and serialised with an exclusive file lock, so a crash leaves either the
old or the new file and two writers never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.canonical import canonical_json
from pipeline.core.errors import LedgerError
from pipeline.core.faults import crash_point

GENESIS = "0" * 64
IDENTITY_FILE = "ledger.id"  # beside the ledger: its identity, the hash of its first entry (a `seal` output in dvc.yaml)


def identity_text(identity: str) -> str:
    """The content of the identity file for a ledger whose first entry has hash ``identity``."""
    return f"{identity}\n"


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry without its own ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One verified ledger line."""

    seq: int
    time: str
    type: str
    step: str | None
    data: dict[str, Any]
    prev: str
    hash: str


class Ledger:
    """Append-only hash-chained log at ``path`` (created on first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def identity_path(self) -> Path:
        """Where the ledger's identity (its first entry's hash) is written down, beside the ledger."""
        return self.path.with_name(IDENTITY_FILE)

    def identity(self) -> str | None:
        """The ledger's identity: the hash of its first entry (None while empty). Every later hash commits to it,
        so anchors written for another ledger (another run, a clone's origin) can be told apart from a rewrite."""
        lines = self._read_raw()
        if not lines:
            return None
        try:
            return str(json.loads(lines[0])["hash"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return None

    def _write_identity(self, identity: str, *, new: bool) -> None:
        """Write the identity file for a new ledger, or where it is missing (atomic; a crash before it is repaired
        by the next append)."""
        if not new and self.identity_path.exists():
            return
        tmp = self.identity_path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
        tmp.write_text(identity_text(identity), encoding="utf-8")
        os.replace(tmp, self.identity_path)

    def _read_raw(self) -> list[str]:
        """The file's non-empty lines, unverified (also what an anchor check compares against)."""
        if not self.path.exists():
            return []
        return [line for line in self.path.read_text(encoding="utf-8").split("\n") if line.strip()]

    def raw_lines(self) -> list[str]:
        """Every line as stored, without verifying the chain (the anchors are compared with these)."""
        return self._read_raw()

    def entries(self) -> list[Entry]:
        """Every entry, after verifying the whole chain (raises :class:`LedgerError` if broken)."""
        return self.verify()

    def verify(self) -> list[Entry]:
        """Check every line parses, is in sequence and chains to the previous hash."""
        prev = GENESIS
        out: list[Entry] = []
        for number, line in enumerate(self._read_raw(), start=1):
            where = f"line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LedgerError(f"{where} is not JSON ({exc.msg})", file=str(self.path)) from None
            if not isinstance(raw, dict) or set(raw) != {"seq", "time", "type", "step", "data", "prev", "hash"}:
                raise LedgerError(f"{where} does not have the ledger entry fields", file=str(self.path))
            if raw["seq"] != number:
                raise LedgerError(f"{where} has seq {raw['seq']}, expected {number}", file=str(self.path))
            if raw["prev"] != prev:
                raise LedgerError(f"{where} does not chain to the entry before it (prev hash differs)", file=str(self.path))
            if entry_hash(raw) != raw["hash"]:
                raise LedgerError(f"{where} was modified: its content does not match its hash", file=str(self.path))
            prev = raw["hash"]
            out.append(Entry(**raw))
        return out

    def head(self) -> str:
        """Hash of the last entry (``GENESIS`` when empty)."""
        entries = self.verify()
        return entries[-1].hash if entries else GENESIS

    def __len__(self) -> int:
        """Number of entries (lines; not verified)."""
        return len(self._read_raw())

    def copy_to(self, path: str | Path, entries: int | None = None) -> Ledger:
        """A private ledger at ``path`` holding the first ``entries`` entries of this one (all by default).

        A DDP follower works on such a copy: its appends chain on, in its own file, and it never
        sees what rank 0 appends to the shared ledger meanwhile.
        """
        copy = Ledger(path)
        lines = self._read_raw()[:entries] if entries is not None else self._read_raw()
        copy.path.parent.mkdir(parents=True, exist_ok=True)
        copy.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        copy.verify()
        return copy

    def append(self, type: str, data: dict[str, Any], *, step: str | None = None) -> Entry:
        """Append one entry atomically; returns it with its hash."""
        with self._locked():
            entries = self.verify()
            prev = entries[-1].hash if entries else GENESIS
            raw: dict[str, Any] = {
                "seq": len(entries) + 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "type": type,
                "step": step,
                "data": json.loads(canonical_json(data)),
                "prev": prev,
            }
            raw["hash"] = entry_hash(raw)
            lines = self._read_raw()
            lines.append(canonical_json(raw))
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # a full disk: the ledger stays as it was, and no temporary is left
                tmp.unlink(missing_ok=True)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise LedgerError(
                        f"no space left to append a {type!r} entry ({os.strerror(exc.errno)}); the ledger is unchanged: free space and rerun",
                        file=str(self.path),
                    ) from None
                raise
            crash_point("ledger.tmp_written")
            os.replace(tmp, self.path)
            first = json.loads(lines[0])["hash"]
            self._write_identity(str(first), new=raw["seq"] == 1)
            return Entry(**raw)

    def of_type(self, *types: str) -> list[Entry]:
        """Verified entries of the given types, in order."""
        return [e for e in self.verify() if e.type in types]
