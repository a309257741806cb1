"""Hypothesis strategies for image perturbations, for property-based behaviour specs.

Inputs are ume's model inputs (floats in [-1, 1], background -1). Each strategy draws a
:class:`Perturbation`; hypothesis shrinks a failing one towards the smallest change, and
:func:`save_counterexample` writes the original and perturbed images side by side as a PNG
(the report links every ``counterexample-*.png`` it finds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hypothesis import strategies as st


@dataclass(frozen=True)
class Perturbation:
    """One drawn perturbation: its kind, its size and where it applies."""

    kind: str
    amount: float = 0.0
    dx: int = 0
    dy: int = 0
    seed: int = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Perturb a batch (N x C x H x W); the result stays in [-1, 1]."""
        if self.kind == "brightness":
            out = x + 2.0 * self.amount
        elif self.kind == "contrast":
            out = (x + 1.0) * self.amount - 1.0
        elif self.kind == "shift":
            p = max(abs(self.dx), abs(self.dy), 1)
            padded = F.pad(x, (p, p, p, p), value=-1.0)
            h, w = x.shape[-2:]
            out = padded[..., p - self.dy : p - self.dy + h, p - self.dx : p - self.dx + w]
        elif self.kind == "noise":
            generator = torch.Generator().manual_seed(self.seed)
            out = x + self.amount * 2.0 * torch.randn(x.shape, generator=generator)
        elif self.kind == "occlusion":
            size = int(self.amount)
            out = x.clone()
            out[..., self.dy : self.dy + size, self.dx : self.dx + size] = -1.0
        else:
            raise ValueError(f"unknown perturbation {self.kind!r}")
        return out.clamp(-1.0, 1.0)

    def describe(self) -> str:
        """For failure messages and file names."""
        if self.kind == "shift":
            return f"shift({self.dx:+d},{self.dy:+d})"
        if self.kind == "occlusion":
            return f"occlusion({int(self.amount)}px@{self.dx},{self.dy})"
        return f"{self.kind}({self.amount:+.4f})"


def brightness(max_delta: float = 0.1) -> st.SearchStrategy[Perturbation]:
    """Add a constant of at most ``max_delta`` of the intensity range."""
    return st.floats(-max_delta, max_delta).map(lambda a: Perturbation("brightness", a))


def contrast(low: float = 0.8, high: float = 1.2) -> st.SearchStrategy[Perturbation]:
    """Scale intensities around the background by a factor in [low, high]."""
    return st.floats(low, high).map(lambda a: Perturbation("contrast", a))


def shift(max_pixels: int = 1) -> st.SearchStrategy[Perturbation]:
    """Translate by up to ``max_pixels`` in x and y."""
    px = st.integers(-max_pixels, max_pixels)
    return st.builds(lambda dx, dy: Perturbation("shift", dx=dx, dy=dy), px, px)


def noise(max_std: float = 0.05) -> st.SearchStrategy[Perturbation]:
    """Gaussian noise with a standard deviation of at most ``max_std`` of the range."""
    return st.builds(lambda a, s: Perturbation("noise", a, seed=s), st.floats(0.0, max_std), st.integers(0, 2**16))


def occlusion(max_size: int = 3, image_size: int = 16) -> st.SearchStrategy[Perturbation]:
    """A background-coloured square of up to ``max_size`` pixels anywhere in the image."""
    pos = st.integers(0, image_size - 1)
    return st.builds(lambda s, x, y: Perturbation("occlusion", float(s), dx=x, dy=y), st.integers(1, max_size), pos, pos)


def perturbations() -> st.SearchStrategy[Perturbation]:
    """Any of the small perturbations a model should be robust to."""
    return st.one_of(brightness(0.03), contrast(0.9, 1.1), shift(1), noise(0.03), occlusion(2))


def save_counterexample(directory: Path, name: str, original: torch.Tensor, perturbed: torch.Tensor, *, sample_id: str | None = None) -> Path:
    """Write ``counterexample-<name>.png``: original (left) and perturbed (right), upscaled; the hashed id of the
    sample it shows goes in its ``ume.sample_id`` text chunk, so an erasure finds and removes it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from pipeline.model.lineage import PNG_SAMPLE_KEY, hash_sample_id

    def to_image(x: torch.Tensor) -> Image.Image:
        arr = ((x[0] if x.dim() == 3 else x).clamp(-1, 1).add(1).mul(127.5)).round().to(torch.uint8).numpy()
        return Image.fromarray(arr).resize((arr.shape[1] * 8, arr.shape[0] * 8), Image.Resampling.NEAREST)

    left, right = to_image(original), to_image(perturbed)
    canvas = Image.new("L", (left.width * 2 + 8, left.height), 255)
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 8, 0))
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    path = directory / f"counterexample-{safe}.png"
    info = PngInfo()
    if sample_id is not None:
        info.add_text(PNG_SAMPLE_KEY, hash_sample_id(sample_id))
    canvas.save(path, pnginfo=info)
    return path
