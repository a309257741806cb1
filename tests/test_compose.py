"""Components and composition: integrity checks, determinism, exact rollback (DESIGN.md invariant 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.errors import ComponentError
from pipeline.model.components import ComponentDraft, ComponentStore
from pipeline.model.compose import compose, weights_hash
from pipeline.model.lora import LoraSettings, attach_lora, lora_targets
from pipeline.steps import open_workspace, run_step
from tests.projects import assert_decided_by_its_checks


def test_component_roundtrip_and_corruption(tmp_path: Path) -> None:
    store = ComponentStore(tmp_path)
    draft = ComponentDraft(kind="lora", tensors={"w": torch.arange(6.0).reshape(2, 3)}, lineage=["b", "a", "a"])
    comp = store.save(draft, parent="p")
    assert comp.id.startswith("lora-") and comp.lineage == ["a", "b"]
    assert store.save(draft, parent="p").id == comp.id  # content-addressed
    tensors, again = store.load(comp.id)
    assert torch.equal(tensors["w"], draft.tensors["w"]) and again == comp
    raw = bytearray(store.weights_path(comp.id).read_bytes())
    raw[-1] ^= 0xFF
    store.weights_path(comp.id).write_bytes(bytes(raw))
    with pytest.raises(ComponentError, match="sha256") as info:
        store.load(comp.id)
    assert str(store.weights_path(comp.id)) in str(info.value)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ComponentError, match="NaN"):
        ComponentStore(tmp_path).save(ComponentDraft(kind="lora", tensors={"w": torch.tensor([float("nan")])}, lineage=[]), parent=None)


def test_folded_lora_matches_unmerged_adapter() -> None:
    from pipeline.model.lora import adapter_tensors, fold_lora
    from pipeline.model.net import create_net

    torch.manual_seed(0)
    net = create_net("test_resnet", 10, 1).eval()
    settings = LoraSettings(rank=4, alpha=8.0, targets=lora_targets(net))
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    peft_net = attach_lora(net, settings)
    for name, p in peft_net.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        unmerged = peft_net(x)
    tensors = adapter_tensors(peft_net)
    fresh = create_net("test_resnet", 10, 1)
    fresh.load_state_dict(base_state)
    folded = fold_lora(fresh, tensors, settings).eval()
    with torch.no_grad():
        assert torch.allclose(folded(x), unmerged, atol=1e-4)


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_fold_is_peft_merge_and_unload(arch: str) -> None:
    """ume folds without peft; every weight equals what peft's own merge makes (Linear, 1x1 and kxk Conv2d)."""
    import copy

    from pipeline.model.lora import adapter_tensors, fold_lora
    from pipeline.model.net import create_net

    torch.manual_seed(1)
    net = create_net(arch, 10, 1, 16).eval()
    settings = LoraSettings(rank=3, alpha=5.0, targets=lora_targets(net))
    peft_net = attach_lora(copy.deepcopy(net), settings)
    for name, p in peft_net.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.1)
    tensors = adapter_tensors(peft_net)
    assert any(t.dim() == 2 for t in tensors.values())  # a Linear layer
    if arch == "test_resnet":
        assert any(t.dim() == 4 and t.shape[-1] > 1 for t in tensors.values())  # a k x k convolution
    ours = fold_lora(copy.deepcopy(net), tensors, settings).state_dict()
    theirs = peft_net.merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys()
    changed = [k for k in ours if not torch.equal(ours[k], net.state_dict()[k])]
    assert changed, "the adapter changed nothing: the comparison would be empty"
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key


def test_fold_refuses_an_adapter_of_another_network() -> None:
    from pipeline.model.lora import fold_lora
    from pipeline.model.net import create_net

    net = create_net("test_resnet", 10, 1)
    bad = {"base_model.model.nowhere.lora_A.weight": torch.zeros(2, 3), "base_model.model.nowhere.lora_B.weight": torch.zeros(3, 2)}
    with pytest.raises(ComponentError, match="do not fit"):
        fold_lora(net, bad, LoraSettings(rank=2, alpha=2.0, targets=("nowhere",)))


def test_composition_is_deterministic_and_rollback_is_exact(trained_copy: Path) -> None:
    ws = open_workspace("params.yaml")
    base_version = ws.registry.champion()
    base_manifest = ws.manifest_of(base_version)
    base_logits = compose(base_manifest, ws.components)(ws_canary(ws))
    outcome = run_step(ws, "s01")
    assert_decided_by_its_checks(outcome.record)
    manifest = ws.versions.load(outcome.record["manifest_hash"])
    assert weights_hash(compose(manifest, ws.components)) == weights_hash(compose(manifest, ws.components))
    assert manifest.overlay_steps == ("s01",)
    dropped = manifest.without_step("s01")
    assert dropped == base_manifest
    assert torch.equal(compose(dropped, ws.components)(ws_canary(ws)), base_logits)

    if outcome.record["decision"] == "promoted":
        raw = yaml.safe_load(Path("params.yaml").read_text())
        raw["stream"]["r1"] = {"kind": "rollback", "parent": "s01", "drop": "s01"}
        Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        ws = open_workspace("params.yaml")
        record = run_step(ws, "r1").record
        assert record["manifest_hash"] == base_manifest.hash


def ws_canary(ws) -> torch.Tensor:
    from pipeline.data import open_data

    return open_data(ws.data_dir, ws.ledger).split("canary").x[:32]
