"""Routed composition: each learned slice stays a whole expert, and a router sends each input to one.

``layout: routed`` keeps what every update taught instead of averaging it away: the expert of slice
``i`` is the clean base with slice ``i``'s LoRA adapter folded in at weight 1, and the base itself is
expert 0. Each routed overlay carries its own detector pair, fitted only on that overlay's training
data: a *slice* detector on the slice's own samples and a *reference* detector on the replayed
samples it was trained against. An input goes to the expert whose slice detector scores it highest,
provided that score beats the reference (the base's) score; otherwise to the base. Because every
detector is part of the overlay whose lineage holds its training samples, an exact deletion that
retrains the overlay also refits its detector: the router is covered by the same accounting.

O3: Gao et al. 2024, "Out-of-distribution detection guided continual learning" (an adapter is used
only where its own OOD detector fires); mixtures of LoRA experts: Wu et al. 2024, "Mixture of LoRA
Experts"; the detector is a Gaussian per class over a pooled image with a Ledoit-Wolf shrunk
covariance (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples
and Adversarial Attacks"; Ledoit & Wolf 2004, "A well-conditioned estimator for large-dimensional
covariance matrices").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROUTER_PREFIX = "router/"
DETECTOR_FIELDS = ("means", "precision", "logdet")
POOL = 8  # the router sees each channel average-pooled to at most 8 x 8


def router_features(x: torch.Tensor, pool: int = POOL) -> torch.Tensor:
    """What a detector looks at: each channel average-pooled to ``pool`` x ``pool``, flattened, float64."""
    side = min(pool, x.shape[-1], x.shape[-2])
    return F.adaptive_avg_pool2d(x.detach().float(), side).flatten(1).double()


@dataclass(frozen=True)
class Detector:
    """How much an input looks like one sample set: the best log-density among Gaussians, one per class
    of the set, sharing one shrunk covariance (the tied covariance of Lee et al. 2018). Tensors only, so
    it is stored as safetensors; a few tens of kilobytes, whatever the network."""

    means: torch.Tensor  # [classes, d]
    precision: torch.Tensor  # [d, d]
    logdet: torch.Tensor  # [] (log-determinant of the covariance)

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor) -> Detector:
        """Fit on images ``x`` with labels ``y``: class means, and a Ledoit-Wolf covariance of the centred features."""
        from sklearn.covariance import LedoitWolf

        feats = router_features(x).numpy()
        labels = y.cpu().numpy()
        classes = np.unique(labels)
        if len(feats) < 2:
            raise ValueError(f"a detector needs at least 2 samples, got {len(feats)}")
        means = np.stack([feats[labels == c].mean(0) for c in classes])
        centred = feats - means[np.searchsorted(classes, labels)]
        cov = LedoitWolf(assume_centered=True).fit(centred).covariance_ + 1e-6 * np.eye(feats.shape[1])
        _, logdet = np.linalg.slogdet(cov)
        return cls(torch.from_numpy(means), torch.from_numpy(np.linalg.inv(cov)), torch.tensor(logdet, dtype=torch.float64))

    def score(self, feats: torch.Tensor) -> torch.Tensor:
        """Log-density of each row of ``feats`` (``router_features``), the best over classes."""
        d = feats.unsqueeze(1) - self.means.unsqueeze(0)  # [n, classes, dim]
        mahalanobis = torch.einsum("ncd,de,nce->nc", d, self.precision, d)
        dim = self.means.shape[1]
        return -0.5 * (mahalanobis.min(dim=1).values + self.logdet + dim * math.log(2 * math.pi))

    def tensors(self, role: str) -> dict[str, torch.Tensor]:
        """Stored under ``router/<role>/...`` in the overlay's safetensors file."""
        return {f"{ROUTER_PREFIX}{role}/{k}": getattr(self, k).contiguous() for k in DETECTOR_FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], role: str) -> Detector:
        """Read back what ``tensors`` stored (``KeyError`` when absent)."""
        return cls(*(tensors[f"{ROUTER_PREFIX}{role}/{k}"].double() for k in DETECTOR_FIELDS))


def split_router_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A routed overlay's tensors as (adapter tensors, router tensors)."""
    adapter = {k: v for k, v in tensors.items() if not k.startswith(ROUTER_PREFIX)}
    router = {k: v for k, v in tensors.items() if k.startswith(ROUTER_PREFIX)}
    return adapter, router


class Router(nn.Module):
    """Chooses an expert per input: 0 (the base) unless some slice detector beats the base's score.

    The detectors' tensors are buffers, so they move with the network and ``weights_hash`` covers them."""

    def __init__(self, slices: Sequence[Detector], references: Sequence[Detector]) -> None:
        super().__init__()
        if not slices or len(slices) != len(references):
            raise ValueError(f"a router needs one reference per slice detector ({len(slices)} and {len(references)})")
        self.count = len(slices)
        for role, detectors in (("slice", slices), ("reference", references)):
            for i, d in enumerate(detectors):
                for name in DETECTOR_FIELDS:
                    self.register_buffer(f"{role}{i}_{name}", getattr(d, name).double().contiguous())
        self._whitened()

    def _whitened(self) -> None:
        """Derived once from the buffers: every detector's Mahalanobis distance as a Euclidean one after a
        linear map (precision = L L^T, so d(x, mu) = |x L - mu L|^2): one matrix product for all of them."""
        maps, means, offsets = [], [], []
        for role in ("reference", "slice"):
            for i in range(self.count):
                d = self.detector(role, i)
                factor = torch.linalg.cholesky(d.precision)
                maps.append(factor)
                means.append(d.means @ factor)
                offsets.append(d.logdet + d.means.shape[1] * math.log(2 * math.pi))
        self._maps = torch.cat(maps, dim=1)  # [dim, detectors * dim]
        self._means = means
        self._offsets = torch.stack(offsets)

    def _apply(self, fn, recurse: bool = True):  # .to(device) and friends: keep the derived tensors beside the buffers
        out = super()._apply(fn, recurse)
        self._whitened()
        return out

    def detector(self, role: str, i: int) -> Detector:
        """The ``i``-th detector of ``role`` (``slice`` or ``reference``)."""
        return Detector(*(getattr(self, f"{role}{i}_{name}") for name in DETECTOR_FIELDS))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of each input under every detector: columns are the references, then the slices."""
        feats = router_features(x).to(self._maps.device)
        z = feats @ self._maps
        dim = feats.shape[1]
        best = [torch.cdist(z[:, k * dim : (k + 1) * dim], m).pow(2).min(dim=1).values for k, m in enumerate(self._means)]
        return -0.5 * (torch.stack(best, dim=1) + self._offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The expert index of each input (0 = the base, i = the i-th routed overlay)."""
        scores = self.scores(x)
        base = scores[:, : self.count].max(dim=1, keepdim=True).values
        return torch.cat([base, scores[:, self.count :]], dim=1).argmax(dim=1).to(x.device)


class RoutedNetwork(nn.Module):
    """Experts (the base, and the base with one slice's overlay each) behind a router; each input runs
    through its chosen expert only, so a batch costs about one forward pass plus the router."""

    def __init__(self, experts: Sequence[nn.Module], router: Router) -> None:
        super().__init__()
        if len(experts) != router.count + 1:
            raise ValueError(f"{len(experts)} experts for {router.count} slice detectors")
        self.experts = nn.ModuleList(experts)
        self.router = router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route, then run each expert on its inputs (differentiable through the experts)."""
        if len(x) == 0:
            return self.experts[0](x)
        with torch.no_grad():
            choice = self.router(x)
        parts: list[torch.Tensor] = []
        index: list[torch.Tensor] = []
        for i, expert in enumerate(self.experts):
            rows = torch.nonzero(choice == i).flatten()
            if len(rows):
                parts.append(expert(x[rows]))
                index.append(rows)
        out = torch.cat(parts)
        order = torch.cat(index).to(out.device)
        return out[torch.argsort(order)]
