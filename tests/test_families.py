"""Tiny configurations of each timm family: LoRA targets, fold = adapter, quantization traced or refused.

The whole stream per family (every step kind through the real runner) is `ume bench families`;
these are its building blocks, cheap enough for every CI run.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.core.errors import ConfigError
from pipeline.model.lora import LoraSettings, adapter_tensors, attach_lora, fold_lora, lora_targets
from pipeline.model.net import create_net
from pipeline.model.quantize import check_quantizable

FAMILIES = {"test_resnet": True, "test_vit": False, "test_efficientnet": True, "test_convnext": True}  # arch -> FX-quantizable


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_lora_overlay_folds_to_the_same_function_in_every_family(arch: str) -> None:
    torch.manual_seed(0)
    net = create_net(arch, 10, 3, 32).eval()
    targets = lora_targets(net)
    assert targets, f"{arch}: no layer LoRA can adapt"
    settings = LoraSettings(rank=4, alpha=8.0, targets=targets)
    peft_net = attach_lora(copy.deepcopy(net), settings, seed=0)
    with torch.no_grad():
        for name, param in peft_net.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)  # a trained-looking adapter (B starts at zero)
    x = torch.randn(4, 3, 32, 32)
    peft_net.eval()
    with torch.no_grad():
        expected = peft_net(x)
        folded = fold_lora(copy.deepcopy(net), adapter_tensors(peft_net), settings).eval()(x)
    assert torch.allclose(folded, expected, atol=1e-4), (arch, (folded - expected).abs().max())
    assert not torch.allclose(folded, net(x), atol=1e-6)  # the adapter changed something


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_quantize_traces_or_refuses_clearly(arch: str) -> None:
    net = create_net(arch, 10, 3, 32).eval()
    if FAMILIES[arch]:
        check_quantizable(net, (3, 32, 32), file="params.yaml", field="stream.q.method")
    else:
        with pytest.raises(ConfigError, match="cannot trace"):
            check_quantizable(net, (3, 32, 32), file="params.yaml", field="stream.q.method")
