"""Is the domain gap real? A linear probe that tries to tell domains apart from embeddings.

If a logistic regression on a frozen foundation model's pooled image embeddings names the
hospital an image came from far above chance, the model "sees" the domain shift, and so will
every head trained on top of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["ProbeResult", "domain_probe"]


@dataclass
class ProbeResult:
    """Cross-validated accuracy of a linear domain classifier.

    Attributes:
        accuracy: mean accuracy over the folds.
        accuracy_std: its standard deviation over folds.
        chance: accuracy of always answering the most frequent domain.
        fold_accuracy: accuracy of each fold.
        confusion: ``(K, K)`` confusion matrix of the out-of-fold predictions (rows: truth).
        labels: domain names in the confusion matrix's order.
    """

    accuracy: float
    accuracy_std: float
    chance: float
    fold_accuracy: list[float]
    confusion: np.ndarray
    labels: list[str]

    def __str__(self) -> str:
        return (f"linear probe accuracy {self.accuracy:.3f} ± {self.accuracy_std:.3f} "
                f"(chance {self.chance:.3f}, {len(self.fold_accuracy)} folds)")


def domain_probe(features: np.ndarray, domains: Sequence[str], *, folds: int = 5, seed: int = 0) -> ProbeResult:
    """Cross-validated logistic-regression accuracy at predicting the domain from features.

    Args:
        features: ``(N, D)`` pooled embeddings.
        domains: ``N`` domain names.
        folds: stratified cross-validation folds (at most the smallest domain's count).
        seed: shuffling seed of the folds.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = sorted(set(domains))
    y = np.array([labels.index(d) for d in domains])
    if features.ndim != 2 or len(features) != len(y):
        raise ValueError(f"features must be (N, D) with N = len(domains) = {len(y)}, got {features.shape}")
    smallest = np.bincount(y).min()
    if len(labels) < 2 or folds > smallest:
        raise ValueError(f"need >= 2 domains and >= {folds} samples of each (smallest has {smallest})")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(clf, features, y, cv=cv)
    fold_acc = [float((pred[test] == y[test]).mean()) for _, test in cv.split(features, y)]
    return ProbeResult(
        accuracy=float((pred == y).mean()), accuracy_std=float(np.std(fold_acc)),
        chance=float(np.bincount(y).max() / len(y)), fold_accuracy=fold_acc,
        confusion=confusion_matrix(y, pred, labels=list(range(len(labels)))), labels=labels,
    )
