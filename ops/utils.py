"""Small helpers shared by training and evaluation: running averages, top-k accuracy, logging."""

from __future__ import annotations

import logging
import sys

import torch


class AverageMeter:
    """Running sum/count/average of a scalar (loss, accuracy, time per batch)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.sum = 0.0
        self.count = 0
        self.avg = 0.0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count if self.count else 0.0


@torch.no_grad()
def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Top-k accuracy in percent of `output` [N, K] against integer labels `target` [N].

    k larger than the number of classes is clipped to it (so top-5 on a 3-class toy set is 100%).
    """
    if output.numel() == 0:
        return [0.0 for _ in topk]
    maxk = min(max(topk), output.size(1))
    pred = output.topk(maxk, dim=1, largest=True, sorted=True).indices  # [N, maxk]
    correct = pred.eq(target.view(-1, 1))  # [N, maxk]
    n = target.size(0)
    return [correct[:, : min(k, maxk)].any(dim=1).float().sum().item() * 100.0 / n for k in topk]


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record, not the stream that was
    current when logging was set up (it may since have been replaced and closed, e.g. by pytest's
    capture or by a caller that redirects stderr)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Log to stderr with a timestamp; ranks other than 0 only log warnings and errors."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = StderrHandler()
    fmt = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
    if rank != 0:
        fmt = f"[rank {rank}] " + fmt
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
