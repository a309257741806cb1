"""Int8 post-training static quantization of Conv2d and Linear layers (see :mod:`pipeline.model.quantize`).

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (CVPR). Activation ranges are calibrated on retained samples the version was
trained on, read through the data layer (never a deleted sample); those samples are the
transform's lineage, so a later deletion of one of them re-derives the transform without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from edits.registry import Change, OperatorEnv, register_method
from pipeline.core.errors import ConfigError
from pipeline.data import UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.quantize import BACKEND, calibrate


@dataclass(frozen=True)
class QuantizeConfig:
    """Calibration size (retained samples); int8 with the x86 backend is the only format on CPU."""

    calibration_samples: int = 512


@register_method("compress", "quantize", QuantizeConfig)
def compress_quantize(net: nn.Module, data: UmeData, config: QuantizeConfig, env: OperatorEnv) -> Change:
    """Calibrate int8 activation ranges on retained samples; the transform stores the observer state."""
    if config.calibration_samples < 1:
        raise ConfigError(f"expected >= 1, got {config.calibration_samples}", file="params.yaml", field=f"stream.{env.step}.calibration_samples")
    retained = data.select("calibration", hashed_ids=env.champion_lineage)
    calibration = data.subsample(retained, config.calibration_samples, seed=env.seed)
    if len(calibration) == 0:
        raise ConfigError("no retained sample to calibrate on", file="params.yaml", field=f"stream.{env.step}")
    observers = calibrate(net.eval(), calibration.x)
    draft = ComponentDraft(
        kind="transform",
        tensors=observers,
        lineage=hash_sample_ids(calibration.sample_ids),
        meta={
            "method": "compress/quantize",
            "transform": "quantize",
            "config": asdict(config),
            "backend": BACKEND,
            "input_shape": list(calibration.x.shape[1:]),
            "calibration_samples": len(calibration),
        },
    )
    return Change(transform=draft)
