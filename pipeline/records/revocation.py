"""Revocation: tag every registered version that still serves deleted samples no overlay covers."""

from __future__ import annotations

from pipeline.core.faults import crash_point
from pipeline.records.deletion import REVOKED_ENTRY, DeletionLog, uncovered_requests
from pipeline.records.workspace import Workspace


def revoke_unservable_versions(ws: Workspace) -> list[int]:
    """Tag every registered version that still carries uncovered influence of a resolved request."""
    log = DeletionLog.read(ws.ledger)
    if not log.resolved:
        return []
    revoked: dict[int, list[str]] = {}
    for info in ws.registry.versions():
        if not info.manifest_hash:
            continue
        carried = sorted(uncovered_requests(ws.versions.load(info.manifest_hash), ws.components, log, list(log.resolved)))
        if carried and ",".join(carried) != info.tags.get("ume.revoked_by"):
            revoked[info.version] = carried
    if revoked:  # write-ahead, like the gate: the ledger first, then the registry tags
        ws.ledger.append(REVOKED_ENTRY, {"versions": sorted(revoked), "by_request": {str(v): r for v, r in revoked.items()}})
        crash_point("revoke.ledger")
    for version, requests in revoked.items():
        ws.registry.set_version_tags(version, {"deletion_status": "revoked", "ume.revoked_by": ",".join(requests)})
    return sorted(revoked)
