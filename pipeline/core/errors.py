"""The one error type ume shows to users: it names the file, the field and what was expected."""

from __future__ import annotations


class UmeError(Exception):
    """A user-facing error. ``str()`` reads ``<file>: <field>: <message>``.

    The CLI turns it into one line on stderr and exit code 2; nothing else is printed.
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.message = message
        parts = [p for p in (file, f"field '{field}'" if field else None, message) if p]
        super().__init__(": ".join(parts))


class ConfigError(UmeError):
    """``params.yaml`` (or a request/spec file) is malformed."""


class DataError(UmeError):
    """The sample table, a manifest CSV or an image is malformed."""


class ComponentError(UmeError):
    """A component file is missing, corrupt or does not match its sidecar."""


class LedgerError(UmeError):
    """The ledger's hash chain does not verify or an entry is malformed."""


class RegistryError(UmeError):
    """The MLflow registry disagrees with what ume expects."""
