"""A promoted version's served files, signed with OpenSSF model signing (``store/signed/v<N>/``).

What a server loads for version N is its manifest and the files of the components it composes
(the base, each overlay, each export transform): exactly the registered model version's MLflow
artifacts (``runs:/<run>/version``): ``manifest.json`` and ``<component id>.safetensors`` plus its
``<component id>.json`` sidecar. When ``ledger.signing_key`` (or ``UME_SIGNING_KEY``) is set, every
promotion copies those files into ``store/signed/v<N>/`` (an output of the DVC stage ``seal``) and signs
the directory with ``model_signing`` (:func:`pipeline.core.signing.sign_model`): the bundle is
``store/signed/v<N>/model.sig``, and the same bundle is logged as ``version/model.sig`` of the version's
run, so the model version's artifact directory carries it too. Either copy verifies with the library's
own command::

    model_signing verify key --signature v3/model.sig --public_key ume-ledger.pub v3

The ledger records each signing (``model_signed``: the version, its manifest hash, the bundle's SHA-256,
the files), so a bundle deleted or swapped for another version's is caught by ``ume audit`` even
without the public key, and the anchors written after it vouch for the entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core import signing
from pipeline.core.canonical import file_sha256
from pipeline.model.manifest import Manifest
from pipeline.records.ledger import Entry, Ledger
from pipeline.records.workspace import Workspace

SIGNED_ENTRY = "model_signed"
SIGNED_DIR = "signed"  # under the store


def signed_dir(store: Path, version: int) -> Path:
    """``store/signed/v<N>``: the served files of version N and their bundle."""
    return store / SIGNED_DIR / f"v{version}"


def write_served_files(ws: Workspace, manifest: Manifest, directory: Path) -> list[str]:
    """Write ``manifest.json`` and copy every component's weights and sidecar into ``directory``; the file names.

    The layout of the registered model version (``runs:/<run>/version``), byte for byte: the manifest as
    indented, sorted JSON, the component files as stored.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
    names = ["manifest.json"]
    for component_id in manifest.component_ids:
        for src in (ws.components.weights_path(component_id), ws.components.sidecar_path(component_id)):
            shutil.copy2(src, directory / src.name)
            names.append(src.name)
    return sorted(set(names))


def signed_entries(ledger: Ledger) -> dict[int, Entry]:
    """The last ``model_signed`` entry of each version."""
    return {int(e.data["version"]): e for e in ledger.of_type(SIGNED_ENTRY)}


def sign_promoted(ws: Workspace, version: int, *, step: str | None) -> Path | None:
    """Sign the served files of ``version`` (just promoted) when a signing key is set; the signed directory, or None.

    Once per version: a version promoted again (a rollback to it, a resumed stage) keeps the bundle the
    ledger recorded. The bundle goes to MLflow before the directory is renamed into place and the
    ledger records it last, so a crash in between signs again on the rerun.
    """
    key = ws.params.signing_key_path
    if key is None or not ws.primary:
        return None
    final = signed_dir(ws.store_dir, version)
    bundle = final / signing.MODEL_SIGNATURE
    entry = signed_entries(ws.ledger).get(version)
    if entry is not None and bundle.exists() and file_sha256(bundle) == entry.data["bundle_sha256"]:
        return final
    manifest = ws.manifest_of(version)
    for component_id in manifest.component_ids:
        ws.components.verify(component_id)  # sign only weights that match their sidecars
    staging = final.parent / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    names = write_served_files(ws, manifest, staging)
    signing.sign_model(key, staging)
    with tempfile.TemporaryDirectory() as tmp:  # the bundle beside the registered files: version/model.sig
        shutil.copy2(staging / signing.MODEL_SIGNATURE, Path(tmp) / signing.MODEL_SIGNATURE)
        ws.registry.log_artifacts(ws.registry.version(version).run_id, tmp, "version")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    data: dict[str, Any] = {
        "version": version,
        "manifest_hash": manifest.hash,
        "bundle": f"{SIGNED_DIR}/{final.name}/{signing.MODEL_SIGNATURE}",
        "bundle_sha256": file_sha256(bundle),
        "files": names,
        "public_key_sha256": signing.public_key_sha256(signing.load_private_key(key).public_key()),
    }
    ws.ledger.append(SIGNED_ENTRY, data, step=step)
    return final
