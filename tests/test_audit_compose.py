"""``ume audit``'s component checks: content addresses, and the champion composing (once per code and components).

The audit proves the served version composes by composing it, which needs torch; it keeps what it proved
(:mod:`pipeline.reports.composed`) and takes it from there while the components and the code are the same.
These tests show the check failing on a champion that does not compose, the record standing in for it only
while it holds, and the content address catching weights replaced together with their sidecar's hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from pipeline.core.errors import ComponentError
from pipeline.model import compose as compose_module
from pipeline.model.components import ComponentDraft, ComponentStore
from pipeline.model.manifest import Manifest
from pipeline.model.net import create_net
from pipeline.reports import audit as audit_module
from pipeline.reports.audit import AuditReport, _check_components
from pipeline.reports.composed import read_record, sidecar_digest, write_record

META = {"arch": "test_resnet", "num_classes": 10, "in_chans": 1, "image_size": 16}


def base_version(store: ComponentStore, *, fits: bool = True) -> Manifest:
    """A one-component version: a tiny network's weights, or (``fits=False``) weights of another number of classes."""
    torch.manual_seed(0)
    net = create_net(META["arch"], META["num_classes"] if fits else 7, META["in_chans"], META["image_size"])
    component = store.save(ComponentDraft("base", dict(net.state_dict()), lineage=[], meta=dict(META)), parent=None)
    return Manifest(base=component.id)


def check(store: ComponentStore, manifest: Manifest, cache: Path, *, compose: bool = False) -> AuditReport:
    """The audit's component check of one champion, version 1."""
    report = AuditReport()
    _check_components(report, [1], 1, store, lambda _n: manifest, composed_dir=None if compose else cache)
    if report.ok and report.composed is not None:  # as audit_workspace keeps it
        write_record(cache, report.composed)
    return report


def test_a_champion_that_does_not_compose_fails_the_audit(tmp_path: Path) -> None:
    """The control: weights that verify (hash, content address, safetensors) but do not fit the network fail, naming the file; no record."""
    store = ComponentStore(tmp_path / "components")
    manifest = base_version(store, fits=False)
    report = check(store, manifest, tmp_path / "cache")
    assert any("champion version 1 does not compose" in p and manifest.base in p for p in report.problems), report.problems
    assert read_record(tmp_path / "cache", manifest.hash) is None


def test_the_record_stands_for_composing_only_while_code_and_components_are_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Composed once, the champion is taken from its record (composing would fail here, so it was not composed); an edited
    sidecar (how the same weights compose) or other code composes again, and so does ``--compose``."""
    store, cache = ComponentStore(tmp_path / "components"), tmp_path / "cache"
    manifest = base_version(store)
    first = check(store, manifest, cache)
    assert first.ok and "champion version 1 composes (composed now)" in first.checked
    record = read_record(cache, manifest.hash)
    assert record is not None and record.components == {manifest.base: sidecar_digest(store.sidecar(manifest.base))}

    def broken(*_args: object) -> None:
        raise ComponentError("weights do not fit test_resnet: composing was attempted")

    monkeypatch.setattr(compose_module, "build_base", broken)
    again = check(store, manifest, cache)
    assert again.ok and any("this code composed these very components" in line for line in again.checked), again.checked
    forced = check(store, manifest, cache, compose=True)
    assert any("composing was attempted" in p for p in forced.problems), forced.problems
    sidecar = store.sidecar_path(manifest.base)
    original = sidecar.read_text()
    raw = json.loads(original)
    raw["meta"]["num_classes"] = 7  # how the weights compose, not the weights: their hash and the content address still hold
    sidecar.write_text(json.dumps(raw))
    edited = check(store, manifest, cache)
    assert any("composing was attempted" in p for p in edited.problems), edited.problems
    sidecar.write_text(original)
    monkeypatch.setattr(audit_module, "fingerprint", lambda: "other-code")
    upgraded = check(store, manifest, cache)
    assert any("composing was attempted" in p for p in upgraded.problems), upgraded.problems


def test_weights_replaced_with_their_sidecar_hash_fail_on_the_content_address(tmp_path: Path) -> None:
    """Other valid weights and a sidecar hash rewritten to match: the id was made from the old hash, so verify and load refuse."""
    store = ComponentStore(tmp_path / "components")
    component = store.save(ComponentDraft("delta", {"w": torch.ones(2, 2)}, lineage=[]), parent=None)
    blob = save({"w": torch.zeros(2, 2)}, metadata={"kind": "delta"})
    store.weights_path(component.id).write_bytes(blob)
    sidecar = store.sidecar_path(component.id)
    raw = json.loads(sidecar.read_text())
    raw["sha256"] = hashlib.sha256(blob).hexdigest()
    sidecar.write_text(json.dumps(raw))
    for read in (store.verify, store.load):
        with pytest.raises(ComponentError, match="were both replaced") as info:
            read(component.id)
        assert str(sidecar) in str(info.value)
