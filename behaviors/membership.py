"""The per-sample membership test: offline LiRA against reference models, aggregated per request.

LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles", IEEE S&P) scores
each sample by how far the model's confidence in its label sits above what reference models that
never trained on it give. Its offline variant needs only those OUT models, which is what a deletion
can afford: a forgotten sample is OUT for every reference trained after the request. Hayes et al.
2024 ("Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy") show
that such per-example tests (U-LiRA) expose forgetting that population attacks miss.

For a sample with label y and logits z, the statistic is the logit-scaled confidence
``phi = log(p_y / (1 - p_y)) = z_y - logsumexp(z_other)``, close to Gaussian across reference
models. The score of a sample on a model is ``(phi_model - mean_OUT) / sigma``. With a handful of
references a per-sample variance is too noisy (Carlini et al. sec. VI: use the global variance), but
atypical samples vary far more between models than typical ones, and a global sigma turns that
spread into false alarms on exactly the data subjects a deletion is about. So sigma is the larger of
the global one (pooled over the calibration samples) and the sample's own spread over its OUT
references: conservative, measured in ``bench/forget_evidence``. The member threshold is the
``1 - fpr`` quantile of the scores of known non-members on the *same* model (samples it never saw),
so the test calibrates itself to the model under test; a second, held-out half of the
non-members reports the false-positive rate actually reached.

RMIA (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks", ICML) is the
second score, for small banks: the likelihood ratio ``p(x|model) / p(x)`` of the sample, where
``p(x)`` is what the references give it (offline: ``((1 + a) p_OUT(x) + 1 - a) / 2``, their
approximation of the IN side), compared with the same ratio of every population sample ``z``
(known non-members); the score is the share of ``z`` the sample beats by a factor ``gamma``. It
needs no variance, so one or two references are enough; ``behaviors.references.score`` chooses,
by the measurement in ``bench/forget_evidence`` (its reference sweep).

Per request: the share of forgotten samples flagged as members, a one-sided exact binomial test of
that share against the false-positive rate (scipy), and the lower end of its one-sided 95%
Clopper-Pearson interval, which is what the blocking check compares with its threshold: with very
few samples the bound stays low, so a small request cannot fail by chance.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats
from scipy.special import logsumexp


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``phi = log(p_y / (1 - p_y))`` per sample, computed stably from the logits."""
    logits, labels = logits.detach().cpu().double(), labels.cpu()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return (true - torch.logsumexp(others, 1)).numpy()


@dataclass(frozen=True)
class MembershipResult:
    """The test on one request's samples and one model."""

    samples: int  # forgotten samples with enough OUT references to be scored
    unscored: int  # forgotten samples without (e.g. in the clean base every reference shares)
    flagged: int
    member_share: float  # flagged / samples
    lower_bound: float  # one-sided 95% Clopper-Pearson lower bound of the member share
    p_value: float  # exact binomial test of the share against the false-positive rate
    false_positive_rate: float  # the rate the threshold was set for
    heldout_false_positive_rate: float  # measured on held-out non-members of the same model
    references: int  # fewest OUT references behind a scored sample

    def to_json(self) -> dict[str, float | int]:
        """For reports and benchmarks."""
        return asdict(self)


def _heldout(sample_ids: Sequence[str]) -> np.ndarray:
    """A fixed, content-based half of the non-members: True = held out (not used to calibrate)."""
    return np.array([hashlib.sha256(s.encode()).digest()[0] % 2 == 1 for s in sample_ids], dtype=bool)


def global_sigma(calibration_reference_phi: np.ndarray) -> float:
    """LiRA's global sigma: the references' spread, pooled over known non-members (NaN with < 2 references)."""
    if len(calibration_reference_phi) < 2:
        return float("nan")
    return math.sqrt(float(np.mean(calibration_reference_phi.var(axis=0, ddof=1))))


def member_scores(target_phi: np.ndarray, reference_phi: np.ndarray, out_mask: np.ndarray, sigma: float, min_references: int) -> np.ndarray:
    """``(phi - mean_OUT) / max(sigma, own OUT spread)`` per sample; NaN with fewer than ``min_references`` OUT."""
    counts = out_mask.sum(axis=0)
    mean_out = np.where(out_mask, reference_phi, 0.0).sum(axis=0) / np.maximum(counts, 1)
    var_out = np.where(out_mask, (reference_phi - mean_out) ** 2, 0.0).sum(axis=0) / np.maximum(counts - 1, 1)
    scores = (target_phi - mean_out) / np.sqrt(np.maximum(sigma**2, var_out))
    scores[counts < min_references] = np.nan
    return scores


def _log_p(phi: np.ndarray) -> np.ndarray:
    """``log p_y`` from ``phi = log(p_y / (1 - p_y))``, without underflow (a confident wrong model has p_y ~ 1e-300)."""
    return -np.logaddexp(0.0, -np.asarray(phi, dtype=np.float64))


def _log_prior(log_p: np.ndarray, mask: np.ndarray, offline_a: float) -> np.ndarray:
    """``log(((1 + a) mean_mask p + 1 - a) / 2)`` per sample (column), the mean taken in log space."""
    with np.errstate(divide="ignore"):  # a column without a reference: -inf, left unscored by the caller
        log_mean = logsumexp(log_p, axis=0, b=mask.astype(np.float64)) - np.log(np.maximum(mask.sum(axis=0), 1))
    scaled = np.log1p(offline_a) + log_mean
    if offline_a < 1:
        scaled = np.logaddexp(scaled, np.log1p(-offline_a))
    return scaled - np.log(2.0)


def rmia_scores(
    target_phi: np.ndarray,
    reference_phi: np.ndarray,
    out_mask: np.ndarray,
    population_target_phi: np.ndarray,
    population_reference_phi: np.ndarray,
    *,
    offline_a: float,
    gamma: float,
    min_references: int,
) -> np.ndarray:
    """Offline RMIA per sample: the share of population samples ``z`` with ``LR(x) / LR(z) > gamma``.

    ``LR(x) = p(x|model) / p(x)`` with ``p(x) = ((1 + a) mean_OUT p + 1 - a) / 2`` over the sample's OUT
    references (Zarifzadeh et al. 2024, sec. 3 and the offline approximation of their appendix), in log
    space; ``population_*`` are known non-members, OUT for every reference. NaN with fewer than
    ``min_references`` OUT references.
    """
    counts = out_mask.sum(axis=0)
    log_ratio_x = _log_p(target_phi) - _log_prior(_log_p(reference_phi), out_mask, offline_a)
    population_mask = np.ones(np.shape(population_reference_phi), dtype=bool)
    log_ratio_z = np.sort(_log_p(population_target_phi) - _log_prior(_log_p(population_reference_phi), population_mask, offline_a))
    scores = np.searchsorted(log_ratio_z, log_ratio_x - math.log(gamma), side="left") / max(len(log_ratio_z), 1)
    scores = scores.astype(np.float64)
    scores[counts < min_references] = np.nan
    return scores


def score_samples(
    method: str,
    target_phi: np.ndarray,
    reference_phi: np.ndarray,
    out_mask: np.ndarray,
    calibration_target_phi: np.ndarray,
    calibration_reference_phi: np.ndarray,
    *,
    min_references: int,
    offline_a: float = 0.3,
    gamma: float = 1.0,
) -> np.ndarray:
    """Member scores of ``method`` (``lira`` or ``rmia``) per sample, higher = more likely a member."""
    if method == "lira":
        return member_scores(target_phi, reference_phi, out_mask, global_sigma(calibration_reference_phi), min_references)
    if method == "rmia":
        return rmia_scores(
            target_phi,
            reference_phi,
            out_mask,
            calibration_target_phi,
            calibration_reference_phi,
            offline_a=offline_a,
            gamma=gamma,
            min_references=min_references,
        )
    raise ValueError(f"unknown membership score {method!r} (expected lira or rmia)")


def membership_test(
    target_phi: np.ndarray,
    reference_phi: np.ndarray,
    out_mask: np.ndarray,
    calibration_target_phi: np.ndarray,
    calibration_reference_phi: np.ndarray,
    calibration_ids: Sequence[str],
    *,
    false_positive_rate: float = 0.05,
    min_references: int = 4,
    method: str = "lira",
    offline_a: float = 0.3,
    gamma: float = 1.0,
) -> MembershipResult:
    """Offline LiRA (or RMIA: ``method``) on one request.

    ``target_phi`` (n,) is the model's statistic on the forgotten samples; ``reference_phi`` (K, n)
    the references' and ``out_mask`` (K, n) which references did not train on each sample.
    ``calibration_*`` are the same for known non-members (OUT for every reference).
    """
    options = {"offline_a": offline_a, "gamma": gamma}
    calib_out = np.ones(calibration_reference_phi.shape, dtype=bool)
    calib_scores = score_samples(
        method, calibration_target_phi, calibration_reference_phi, calib_out, calibration_target_phi, calibration_reference_phi, min_references=1, **options
    )
    usable = method == "rmia" or not math.isnan(global_sigma(calibration_reference_phi))
    held = _heldout(calibration_ids)
    threshold = float(np.quantile(calib_scores[~held], 1 - false_positive_rate)) if (~held).any() and usable else float("nan")
    heldout_rate = float((calib_scores[held] > threshold).mean()) if held.any() else float("nan")
    scores = score_samples(
        method, target_phi, reference_phi, out_mask, calibration_target_phi, calibration_reference_phi, min_references=min_references, **options
    )
    scored = ~np.isnan(scores)
    n = int(scored.sum())
    if n == 0 or math.isnan(threshold):
        nan = float("nan")
        return MembershipResult(0, len(target_phi), 0, nan, nan, nan, false_positive_rate, heldout_rate, 0)
    flagged = int((scores[scored] > threshold).sum())
    test = stats.binomtest(flagged, n, false_positive_rate, alternative="greater")
    return MembershipResult(
        samples=n,
        unscored=int(len(target_phi) - n),
        flagged=flagged,
        member_share=flagged / n,
        lower_bound=float(test.proportion_ci(confidence_level=0.95, method="exact").low),
        p_value=float(test.pvalue),
        false_positive_rate=false_positive_rate,
        heldout_false_positive_rate=heldout_rate,
        references=int(out_mask.sum(axis=0)[scored].min()),
    )
