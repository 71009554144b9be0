"""Small helpers shared by training (main.py), evaluation (test_models.py) and the tools: logging
set-up, the AMP choices and their autocast, moving a batch of clips to the device, top-k counts,
progress bars, and output paths checked writable before the work (``ops.atomic`` writes the
files). Each exists once, here."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from ops.device_input import InputNorm

AMP_CHOICES = ("off", "fp16", "bf16")


def autocast(device: torch.device, amp: str = "off"):
    """The autocast context of ``--amp off|fp16|bf16`` on ``device`` (training and evaluation).

    Training refuses fp16 on a CPU before it gets here (its gradient scaler needs CUDA).
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(
    data,
    device: torch.device,
    channels_last: bool = False,
    norm: InputNorm | None = None,
) -> torch.Tensor:
    """Move a batch of clips ``[B, T*C, H, W]`` to ``device`` (asynchronously from pinned memory),
    channels-last with ``--channels_last``: the one place where the training loop, validation and
    test-time evaluation hand their data to the model.

    A float batch is already normalised (``ToTorchFormatTensor`` + ``GroupNormalize`` in the
    workers). A uint8 batch (``ops.device_input.ToUint8Tensor``, a quarter of the bytes) is
    converted and normalised here, on the device, with ``norm`` (the model's
    ``InputNorm.of(model)``). A batch of encoded clips (``--device_aug``) is decoded, cropped,
    resized, flipped and normalised here (``ops.device_augment``)."""
    if not isinstance(data, torch.Tensor):
        if norm is None:
            raise ValueError("encoded clips need the model's input normalisation (norm=)")
        data = data.to_model_input(device, norm)
    else:
        data = data.to(device, non_blocking=True)
        if data.dtype == torch.uint8:
            if norm is None:
                raise ValueError(
                    "a uint8 batch needs the model's input normalisation: pass "
                    "norm=InputNorm.of(model) (ops.device_input)"
                )
            data = norm(data)
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    return data


@torch.no_grad()
def topk_correct(
    output: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[int]:
    """For each k, how many rows of ``output`` ``[N, K]`` have their label ``target`` ``[N]``
    among the k highest scores (k larger than K counts as K, so top-5 of 3 classes is every row)."""
    return [int(c) for c in topk_hits(output, target, ks).tolist()]


def topk_hits(
    output: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> torch.Tensor:
    """`topk_correct` as an int64 tensor ``[len(ks)]`` on ``output``'s device, without reading it
    (no host-device synchronisation: the training loop sums these on the device)."""
    if output.numel() == 0:
        return torch.zeros(len(ks), dtype=torch.int64, device=output.device)
    maxk = min(max(ks), output.size(1))
    hit = output.topk(maxk, dim=1).indices.eq(target.view(-1, 1))  # [N, maxk]
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    off_tty: bool = False,
):
    """A tqdm bar on stderr (rank 0: ``enabled``). When stderr is not a terminal (logs, CI) the
    bar is off, unless ``off_tty``: then it prints a plain line every 30 s (the data tools, which
    have no log lines of their own)."""
    tty = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=tty,
        mininterval=0.1 if tty else 30.0,
        ascii=not tty,
        disable=not enabled or not (tty or off_tty),
    )


def distinct_items(items: Sequence, convert: Callable) -> tuple[list, list[int]]:
    """Each distinct object of ``items`` once (by identity, as ``convert(item)``), and the
    position of every item's object in that list: a clip that repeats a frame decodes it once."""
    seen: dict[int, int] = {}
    unique: list = []
    index = []
    for item in items:
        if id(item) not in seen:
            seen[id(item)] = len(unique)
            unique.append(convert(item))
        index.append(seen[id(item)])
    return unique, index


def key_mismatch(missing: list, unexpected: list, misshaped: list, shown: int = 6) -> str:
    """``3 missing: a, b, c; 1 unexpected: d`` for a weights file that does not fit a model: the
    first ``shown`` names of each kind, and how many more."""

    def few(names: list) -> str:
        more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
        return ", ".join(names[:shown]) + more

    kinds = (("missing", missing), ("unexpected", unexpected), ("with other shapes", misshaped))
    return "; ".join(f"{len(names)} {what}: {few(names)}" for what, names in kinds if names)


def map_with_progress(
    fn: Callable, items: Sequence, workers: int = 1, *, desc: str, unit: str, chunksize: int = 1
) -> list:
    """``[fn(item) for item in items]`` in ``workers`` processes (``fn`` must pickle), results in
    the order of ``items``, with a progress bar that also prints off a terminal (the data tools).
    A worker takes the next item as soon as it is free, so one slow item holds up no other."""
    results: list = [None] * len(items)
    bar = progress(total=len(items), desc=desc, unit=unit, off_tty=True)
    try:
        if workers <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                bar.update(1)
        else:
            with multiprocessing.Pool(workers) as pool:
                indexed = pool.imap_unordered(_Indexed(fn), enumerate(items), chunksize)
                for i, result in indexed:
                    results[i] = result
                    bar.update(1)
    finally:
        bar.close()
    return results


class _Indexed:
    """``fn`` of an ``(index, item)`` pair, returning the index with the result (picklable)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, pair: tuple) -> tuple:
        return pair[0], self.fn(pair[1])


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


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an inf: weights that
    make every score NaN, which argmax/top-k would silently read as class 0."""
    return [
        name
        for name, t in state.items()
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


# ---------------------------------------------------------------------------------------------
# output files
# ---------------------------------------------------------------------------------------------
class OutputPathError(ValueError):
    """An output path that cannot be written; the message is one line naming path and flag."""


def ensure_writable_dir(folder: str, flag: str) -> None:
    """Create ``folder`` if needed and prove it takes a new file (a probe file, created and removed:
    ``os.access`` says yes to root on a read-only mount). Raises OutputPathError (one line naming
    ``flag``) before any work whose result would be lost."""
    folder = folder or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(
            f"{flag} {folder}: cannot write there ({reason}): give a writable folder"
        ) from None


def ensure_writable_file(path: str, flag: str) -> None:
    """``ensure_writable_dir`` of the folder of ``path``, and ``path`` is not a folder."""
    if os.path.isdir(path):
        raise OutputPathError(f"{flag} {path} is a folder: give a file name")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)), flag)
