"""What test_models.py writes: the scores file, the published script's prediction CSV, and a
report folder with the confusion matrix (PNG and .npy) and per-class accuracies (CSV)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ops.atomic import write_atomically
from ops.metrics import confusion_matrix, per_class_accuracy

# The files of a report folder (write_report), by kind.
REPORT_FILES = {
    "png": "confusion_matrix.png",
    "npy": "confusion_matrix.npy",
    "csv": "per_class_accuracy.csv",
}


def save_scores(
    path: str,
    scores: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    videos: Sequence[str] | None = None,
) -> None:
    """Write an .npz with `scores` [N, K] float32 (list order), `labels` [N], `indices` [N] and,
    when given, `videos` [N] (the list's folder names, a unicode array: loads without pickle).

    `indices` are the videos' positions among the usable entries of the test list; they differ
    from 0..N-1 only when videos were skipped or --max_num cut the list.
    """
    arrays = {
        "scores": np.asarray(scores, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64),
        "indices": np.asarray(indices, dtype=np.int64),
    }
    if videos is not None:
        arrays["videos"] = np.asarray(list(videos), dtype=np.str_)

    # a file object (np.savez would append .npz to a name); a full disk leaves no partial .npz
    write_atomically(path, lambda f: np.savez(f, **arrays))


def write_prediction_csv(
    path: str,
    video_names: Sequence[str],
    scores: torch.Tensor,
    class_names: Sequence[str],
    top5: bool = False,
) -> None:
    """The published script's submission file: `name;class` per video, or `name;c1;...;c5`.

    Lines are `;`-separated without a header, as the published script wrote them; the top-5
    variant (used for Something-Something V2) lists class names best first.
    """
    scores = torch.as_tensor(np.asarray(scores))
    if len(video_names) != scores.size(0):
        raise ValueError(f"{len(video_names)} video names for {scores.size(0)} score rows")
    k = min(5, scores.size(1)) if top5 else 1
    best = scores.topk(k, dim=1).indices.tolist()  # [N, k]

    lines = [
        ";".join([name] + [class_names[c] for c in row]) for name, row in zip(video_names, best)
    ]
    write_atomically(path, "".join(line + "\n" for line in lines))


def confusion_matrix_image(cm: np.ndarray, max_side: int = 1024) -> Image.Image:
    """Render a confusion matrix as a heat map (rows: true class, columns: prediction).

    Each row is normalised by its count, so the colour is the fraction of that class's videos;
    white is 0, dark blue is 1. Cells are at least 1 px and at most 32 px.
    """
    k = cm.shape[0]
    cell = max(1, min(32, max_side // max(k, 1)))
    margin = 4
    counts = cm.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(cm, np.maximum(counts, 1.0))  # [K, K] in [0, 1]
    # white (255,255,255) -> dark blue (8,48,107)
    dark = np.array([8, 48, 107], dtype=np.float64)
    rgb = 255.0 - frac[..., None] * (255.0 - dark)  # [K, K, 3]
    pixels = np.repeat(np.repeat(rgb.round().astype(np.uint8), cell, axis=0), cell, axis=1)
    side = k * cell + 2 * margin
    image = Image.new("RGB", (side, side), (255, 255, 255))
    image.paste(Image.fromarray(pixels, mode="RGB"), (margin, margin))
    ImageDraw.Draw(image).rectangle(
        [margin - 1, margin - 1, margin + k * cell, margin + k * cell], outline=(0, 0, 0)
    )
    return image


def write_report(
    report_dir: str,
    scores: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
) -> dict:
    """Write `confusion_matrix.png`, `confusion_matrix.npy` and `per_class_accuracy.csv`.

    The CSV has one row per class: index, name, videos, correct, accuracy (percent, empty for a
    class with no video). Returns the paths written.
    """
    scores = torch.as_tensor(np.asarray(scores))
    labels_np = np.asarray(labels, dtype=np.int64)
    k = scores.size(1)
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} score columns")
    os.makedirs(report_dir, exist_ok=True)
    cm = confusion_matrix(labels_np, scores.argmax(dim=1).numpy(), num_classes=k)
    acc = per_class_accuracy(cm)
    paths = {kind: os.path.join(report_dir, name) for kind, name in REPORT_FILES.items()}
    image = confusion_matrix_image(cm)
    write_atomically(paths["png"], lambda f: image.save(f, format="PNG"))
    write_atomically(paths["npy"], lambda f: np.save(f, cm))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["class_index", "class_name", "videos", "correct", "accuracy"])
    for i in range(k):
        a = "" if math.isnan(acc[i]) else f"{acc[i]:.4f}"
        writer.writerow([i, class_names[i], int(cm[i].sum()), int(cm[i, i]), a])
    write_atomically(paths["csv"], text.getvalue())
    return paths
