"""A backbone the team already has: ``model.checkpoint`` (safetensors), checked, loaded, recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from pipeline.core.errors import ConfigError
from pipeline.model.net import check_checkpoint, create_net, file_sha256, load_backbone


def _checkpoint(path: Path, arch: str = "test_resnet", num_classes: int = 5, in_chans: int = 1) -> Path:
    torch.manual_seed(1)
    net = create_net(arch, num_classes, in_chans)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_backbone_loads_and_only_a_head_of_another_shape_stays_fresh(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "backbone.safetensors", num_classes=5)
    from safetensors.torch import load_file

    pretrained = load_file(str(path))
    torch.manual_seed(2)
    net = create_net("test_resnet", 10, 1)
    fresh = load_backbone(net, path)
    assert fresh and all(k.startswith(("fc.", "head", "classifier")) for k in fresh)
    for name, value in net.state_dict().items():
        if name not in fresh:
            assert torch.equal(value, pretrained[name].to(value.dtype)), name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _checkpoint(p, in_chans=3), "has shape"),
        (lambda p: (p.write_bytes(b"\x80\x04 pickle, never loaded"), p)[1], "not a readable safetensors file"),
        (lambda p: (save_file({"bogus.weight": torch.zeros(2)}, str(p)), p)[1], "does not have"),
    ],
)
def test_a_checkpoint_of_something_else_is_refused_naming_the_field(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match=message) as info:
        load_backbone(create_net("test_resnet", 10, 1), path)
    assert "model.checkpoint" in str(info.value)


def test_a_pinned_hash_must_match(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "b.safetensors")
    assert check_checkpoint(path, None) == file_sha256(path)
    with pytest.raises(ConfigError, match="model.checkpoint_sha256"):
        check_checkpoint(path, "0" * 64)
    with pytest.raises(ConfigError, match="not found"):
        check_checkpoint(tmp_path / "missing.safetensors", None)


def test_the_base_fine_tunes_the_checkpoint_and_records_its_hash(project: Path) -> None:
    from pipeline.steps import open_workspace, run_base, run_prepare

    _checkpoint(project / "backbone.safetensors", num_classes=7)
    params_path = project / "params.yaml"
    raw = yaml.safe_load(params_path.read_text())
    raw["model"]["checkpoint"] = "backbone.safetensors"
    raw["train"]["base"]["epochs"] = 1
    raw["stream"] = {}
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["model"]["checkpoint_sha256"] = "0" * 64
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="checkpoint_sha256"):
        open_workspace(params_path)  # refused before anything is written
    assert not (project / "store").exists()
    raw["model"]["checkpoint_sha256"] = file_sha256(project / "backbone.safetensors")
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    ws = open_workspace(params_path)
    run_prepare(ws)
    record = run_base(ws).record
    started = [e for e in ws.ledger.of_type("step_started") if e.step == "base"][-1]
    assert started.data["pretrained"]["sha256"] == raw["model"]["checkpoint_sha256"]
    meta = ws.components.sidecar(ws.versions.load(record["manifest_hash"]).base).meta
    assert meta["pretrained"]["sha256"] == raw["model"]["checkpoint_sha256"] and meta["pretrained"]["fresh_head"]


def test_quantize_refuses_an_architecture_fx_cannot_trace_naming_the_step() -> None:
    """timm's ViT has data-dependent control flow: a clear refusal before any write, not a crash mid-step."""
    from pipeline.model.quantize import check_quantizable

    with pytest.raises(ConfigError, match="cannot trace") as info:
        check_quantizable(create_net("test_vit", 10, 1).eval(), (1, 16, 16), file="params.yaml", field="stream.s09.method")
    assert "stream.s09.method" in str(info.value)
    check_quantizable(create_net("test_resnet", 10, 1).eval(), (1, 16, 16), file="params.yaml", field="stream.s09.method")
