"""ROC, AUC and TPR at a fixed low FPR (Carlini et al. 2022 report TPR at 0.1% FPR)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics


def roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) over all thresholds; higher score means member."""
    fpr, tpr, _ = sk_metrics.roc_curve(np.asarray(is_member, bool), np.asarray(scores, float))
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR with FPR <= target (the convention of the LiRA reference code)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict:
    fpr, tpr = roc(scores, is_member)
    return {"auc": float(sk_metrics.auc(fpr, tpr)),
            "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
            "tpr_at_0.1pct_fpr": tpr_at_fpr(fpr, tpr, 0.001),
            "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2))}
