"""Membership-inference attacks on forgotten versus unseen samples (scikit-learn).

A successful deletion leaves the forgotten samples indistinguishable from samples the model never
saw: attack accuracy near chance (0.5). Two attacks, both cross-validated on a balanced set:

- **loss attack**: logistic regression on the per-sample cross-entropy loss, the attack of the
  NeurIPS 2023 Machine Unlearning Challenge starting kit (Triantafillou et al. 2023).
- **confidence attack**: an RBF-kernel SVC on confidence features (max probability, entropy,
  probability of the true class), as in Jia et al. 2023 ("Model Sparsity Can Simplify Machine
  Unlearning") and Fan et al. 2024 (SalUn).

Cost: the attack features come from the models' cached logits; the classifiers are fitted on at most
``max_samples`` members and as many non-members (``behaviors.max_check_samples``; a seeded draw, as
the balancing already is), since an RBF SVC grows quadratically with its training set.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

MIN_SAMPLES = 8


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Cross-entropy of every sample."""
    return F.cross_entropy(logits, labels.to(logits.device), reduction="none").cpu().numpy()


def confidence_features(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """[max probability, entropy, probability of the true class] per sample."""
    probs = logits.softmax(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    true = probs.gather(1, labels.to(logits.device)[:, None]).squeeze(1)
    return torch.stack([probs.max(1).values, entropy, true], 1).cpu().numpy()


def _balanced(members: np.ndarray, non_members: np.ndarray, seed: int, max_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(members), len(non_members), max_samples or len(members))
    rng = np.random.default_rng(seed)
    m = members[rng.permutation(len(members))[:n]]
    u = non_members[rng.permutation(len(non_members))[:n]]
    return np.concatenate([m, u]), np.concatenate([np.ones(n), np.zeros(n)])


def attack_accuracy(members: np.ndarray, non_members: np.ndarray, attack: str, seed: int = 0, max_samples: int | None = None) -> float:
    """Cross-validated accuracy (5 folds x 3 repeats) of telling members from non-members (at most
    ``max_samples`` of each side)."""
    if min(len(members), len(non_members)) < MIN_SAMPLES:
        return float("nan")
    x, y = _balanced(members.reshape(len(members), -1), non_members.reshape(len(non_members), -1), seed, max_samples)
    folds = min(5, int(y.sum()))
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=3, random_state=seed)
    if attack == "loss":
        model = make_pipeline(StandardScaler(), LogisticRegression())
    else:
        model = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0, gamma="scale"))
    return float(cross_val_score(model, x, y, cv=cv, scoring="accuracy").mean())


def mia_scores(
    member_logits: torch.Tensor,
    member_labels: torch.Tensor,
    unseen_logits: torch.Tensor,
    unseen_labels: torch.Tensor,
    seed: int = 0,
    max_samples: int | None = None,
) -> dict[str, float]:
    """Both attacks' accuracies (NaN when a side has fewer than ``MIN_SAMPLES`` samples)."""
    return {
        "loss": attack_accuracy(
            per_sample_loss(member_logits, member_labels), per_sample_loss(unseen_logits, unseen_labels), "loss", seed, max_samples
        ),
        "confidence": attack_accuracy(
            confidence_features(member_logits, member_labels), confidence_features(unseen_logits, unseen_labels), "svc", seed, max_samples
        ),
    }
