"""Metrics of video scores: top-k accuracy, confusion matrix, per-class and mean class accuracy."""

from __future__ import annotations

import numpy as np
import torch

from ops.utils import topk_correct


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """`cm[i, j]` = number of videos of class i predicted as class j; int64 `[K, K]`."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Accuracy in percent per true class; NaN for classes with no video in the evaluated set."""
    counts = cm.sum(axis=1).astype(np.float64)
    hits = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1) * 100.0, np.nan)


def summarize(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict:
    """Top-1 / top-5 accuracy and mean class accuracy (all in percent) of video scores `[N, K]`.

    Mean class accuracy averages the per-class accuracies over the classes that have at least one
    evaluated video (the published script divided by zero for absent classes).
    """
    scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if scores.dim() != 2 or labels.dim() != 1 or scores.size(0) != labels.size(0):
        raise ValueError(
            f"summarize expects scores [N, K] and labels [N], got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    n, k = scores.shape
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class_acc": 0.0, "num_videos": 0}
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(
            f"labels range {int(labels.min())}..{int(labels.max())} does not fit {k} classes; "
            "check the list file against the model's number of classes"
        )
    top1, top5 = (100.0 * c / n for c in topk_correct(scores, labels, (1, 5)))
    cm = confusion_matrix(labels.numpy(), scores.argmax(dim=1).numpy(), num_classes=k)
    return {
        "top1": top1,
        "top5": top5,
        "mean_class_acc": float(np.nanmean(per_class_accuracy(cm))),
        "num_videos": int(n),
    }
