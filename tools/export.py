"""Export a trained checkpoint for inference: TorchScript, ONNX and ``torch.export`` programs, and
its weights as safetensors.

    python tools/export.py --weights run/ckpt.best.pth.tar --out exported/rnl8f
    python tools/export.py --weights TSM_kinetics_RGB_resnet50_..._nl_....pth.tar --format onnx
    python tools/export.py --weights TSM_kinetics_..._nl_....pth.tar --out kinetics_rnl --format safetensors
    python tools/export.py --weights kinetics_rnl.safetensors --out kinetics_rnl --format pth

The exported network takes one fixed clip shape, ``[batch, T*3, H, W]`` float32, normalised
(``(pixel / 255 - mean) / std``), and returns the clip logits ``[batch, num_class]`` (average
over the T frames, as TSN). T and the crop size are the checkpoint's unless ``--segments`` /
``--input_size`` say otherwise (the weights do not depend on them). Written next to ``--out``:

- ``<out>.pt``: TorchScript (``torch.jit.trace``), loads with ``torch.jit.load`` without this code;
- ``<out>.onnx``: ONNX through the ``torch.export``-based exporter (needs the ``onnx`` and
  ``onnxscript`` packages; checked with ``onnxruntime`` when it is installed);
- ``<out>.pt2``: a ``torch.export`` program (``torch.export.load(path).module()``);
- ``<out>.safetensors``: the weights (the model's state_dict, no pickle), read by
  ``test_models.py --weights``, ``tools/predict.py`` and ``main.py --tune_from`` through
  ``ops.checkpoint.load_checkpoint`` together with ``<out>.json``, its sidecar, which records the
  model settings (``model_config``), ``dataset``, ``dense_sample``, ``class_names`` and the
  SHA-256 of the weights it belongs to;
- ``<out>.pth.tar``: the same as one of our checkpoints (weights and those settings, no optimizer),
  loaded with ``torch.load(weights_only=True)``;
- ``<out>.json``: what a caller needs: input shape and layout, mean/std, resize and crop sizes,
  classes, the model configuration, and the check results.

Conversion both ways: a published checkpoint (a pickle, loaded with ``weights_only=True``, settings
parsed from its file name) becomes ``.safetensors`` + sidecar holding those parsed settings, so
the converted file needs no published name; ``--weights x.safetensors --format pth`` turns it
back into a ``.pth.tar``. Class names: the checkpoint's, else ``--category_file``, else the
category file of its dataset under ``--data_root`` (none for published Kinetics checkpoints
unless given). All files are written to a temporary name and renamed when complete; none may be the
``--weights`` file or the category file (``ops/output_paths.py``: refused before any work, also
through a link).

Every export is checked: the saved file is loaded back (safetensors and pth through
``ops.checkpoint.load_model``, as the tools load them) and run on a random clip, and its output
must match the eager model within ``--atol`` + ``--rtol`` x max|logit| (exit status 1 if not).
The RNL blocks export with their fused attention (``scaled_dot_product_attention``, an ONNX
``Attention``/MatMul-Softmax pattern); ``--explicit_attention`` exports the materialised ``P x P``
computation instead. The legacy TorchScript-based ONNX exporter is not used: it silently
miscomputes the temporal shift (slice assignment into a new tensor).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import sys
import warnings

import torch

from ops.atomic import write_atomically
from ops.checkpoint import (
    SIDECAR_KEYS,
    CheckpointError,
    file_sha256,
    load_model,
    save_checkpoint,
    sidecar_path,
)
from ops.output_paths import check_outputs, weights_inputs
from ops.utils import nonfinite_tensors, setup_logging
from tools._common import TOOL_ERRORS, fail, model_class_names

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "pt2", "safetensors", "pth")
SUFFIX = {
    "torchscript": ".pt",
    "onnx": ".onnx",
    "pt2": ".pt2",
    "safetensors": ".safetensors",
    "pth": ".pth.tar",
}
WEIGHT_FORMATS = ("safetensors", "pth")  # the model's weights and settings, for our own tools


class ExportError(RuntimeError):
    """An export that cannot be made here; the message says what to install or change."""


def example_input(model, batch: int, seed: int = 0) -> torch.Tensor:
    """A random normalised clip ``[batch, T*C, H, W]`` of the model's fixed shape."""
    channels = (3 if model.modality == "RGB" else 2) * model.new_length
    g = torch.Generator().manual_seed(seed)
    size = model.input_size
    return torch.randn(batch, model.num_segments * channels, size, size, generator=g)


def export_torchscript(model, example: torch.Tensor, path: str):
    """Trace and save; returns a callable of the reloaded file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # trace is deprecated, not gone
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        write_atomically(path, lambda f: torch.jit.save(traced, f))
        return torch.jit.load(path)


def export_pt2(model, example: torch.Tensor, path: str):
    program = torch.export.export(model, (example,))
    write_atomically(path, lambda f: torch.export.save(program, f))
    return torch.export.load(path).module()


def export_onnx(model, example: torch.Tensor, path: str, opset: int | None = None):
    """Export with the ``torch.export``-based ONNX exporter; returns a callable running the file
    in onnxruntime, or None when onnxruntime is not installed."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs the {' and '.join(missing)} package(s): pip install onnx onnxscript "
            "onnxruntime (or use --format torchscript)"
        )
    for name in ("torch.onnx", "torch._export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"opset_version": opset} if opset else {}
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["clip"],
            output_names=["logits"],
            verbose=False,
            **kwargs,
        )
    program.save(path)
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"clip": x.numpy()})[0])

    return run


def write_json(path: str, info: dict) -> None:
    write_atomically(path, json.dumps(info, indent=1))


def export_safetensors(model, settings: dict, info: dict, path: str):
    """Write the weights to ``path`` and the sidecar (``info`` with ``settings`` and the weights'
    SHA-256) next to it; returns the model loaded back from them as the tools load it."""
    from safetensors.torch import save

    # Own copies: safetensors refuses tensors that share memory, and needs contiguous ones.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_atomically(path, save(tensors, metadata={"format": "pt"}))
    link = {"file": os.path.basename(path), "sha256": file_sha256(path)}
    write_json(sidecar_path(path), dict(info, **settings, safetensors=link))
    info["safetensors"] = link
    return load_model(path)[0]


def export_pth(model, settings: dict, path: str):
    """Write one of our checkpoints (published keys without optimizer, plus the settings);
    returns the model loaded back from it."""
    contents = {"epoch": 0, "arch": model.base_model_name, "state_dict": model.state_dict()}
    save_checkpoint(dict(contents, best_prec1=0.0, **settings), path)
    return load_model(path)[0]


def _fails_in_fused_attention(exc: BaseException) -> bool:
    """Whether an exporter error was raised while tracing the fused attention kernel (the one
    case --explicit_attention is a way around)."""
    tb = exc.__traceback__
    while tb is not None:
        if os.path.basename(tb.tb_frame.f_code.co_filename) == "attention.py":
            return True
        tb = tb.tb_next
    return "scaled_dot_product" in str(exc)


def check(run, model, example: torch.Tensor, atol: float, rtol: float) -> dict:
    """Compare ``run`` with the eager model on ``example`` and on a second random clip; a NaN or
    inf anywhere is a failed check (NaN compares as neither larger nor smaller)."""
    worst = 0.0
    scale = 0.0
    for x in (example, torch.randn_like(example)):
        with torch.no_grad():
            expected = model(x).float()
            got = run(x).float()
        if not (bool(torch.isfinite(expected).all()) and bool(torch.isfinite(got).all())):
            return {"max_abs_diff": math.nan, "max_abs_logit": math.nan, "ok": False}
        worst = max(worst, (got - expected).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return {"max_abs_diff": worst, "max_abs_logit": scale, "ok": worst <= atol + rtol * scale}


def export(
    weights: str,
    out: str,
    formats: tuple[str, ...] = ("torchscript", "onnx"),
    batch: int = 1,
    segments: int | None = None,
    input_size: int | None = None,
    explicit_attention: bool = False,
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    category_file: str | None = None,
    data_root: str | None = None,
) -> dict:
    """Export ``weights`` to ``out`` + suffix for each format; returns the description written
    to ``<out>.json`` (with a ``checks`` entry per format; with safetensors also the sidecar)."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    check_outputs(export_inputs(weights, out, category_file), export_outputs(out, formats))
    overrides = {"rnl_fused": False} if explicit_attention else {}
    model, meta = load_model(weights, num_segments=segments, input_size=input_size, **overrides)
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # every check would compare NaN with NaN and pass
        raise ValueError(
            f"{weights}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}): export a "
            "checkpoint saved before training diverged"
        )
    example = example_input(model, batch)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    names = model_class_names(meta, model.num_class, category_file, data_root=data_root)
    settings = {key: meta[key] for key in SIDECAR_KEYS if key != "class_names"}
    settings["class_names"] = names
    info = dict(describe(weights, model, example, explicit_attention), **settings)
    keep_link(out, info, "safetensors" in formats)
    exporters = {
        "torchscript": export_torchscript,
        "onnx": lambda m, x, path: export_onnx(m, x, path, opset),
        "pt2": export_pt2,
        "safetensors": lambda m, x, path: export_safetensors(m, settings, info, path),
        "pth": lambda m, x, path: export_pth(m, settings, path),
    }
    checks = info["checks"]
    for fmt in formats:
        path = out + SUFFIX[fmt]
        logger.info("exporting %s", path)
        args = (model, example, path)
        try:
            # No autograd while exporting: training-only fast paths (e.g. the shift fused into
            # the conv with a custom backward) switch off and the plain inference graph is kept.
            with torch.no_grad():
                run = exporters[fmt](*args)
        except (ExportError, CheckpointError, OSError):
            raise  # OSError: the output path (full disk, read-only), one line from main()
        except Exception as exc:  # exporter internals: report in one line, keep the cause
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            hint = (
                "--explicit_attention or another --format"
                if not explicit_attention and _fails_in_fused_attention(exc)
                else "another --format"
            )
            raise ExportError(
                f"{fmt} export failed ({type(exc).__name__}: {detail}); try {hint}"
            ) from exc
        if run is None:
            logger.warning(
                "onnxruntime is not installed: %s was written but not checked "
                "(pip install onnxruntime to check it)",
                path,
            )
            checks[fmt] = {"file": path, "checked": False}
            continue
        checks[fmt] = {"file": path, "checked": True, **check(run, model, example, atol, rtol)}
    write_json(out + ".json", info)
    return info


def export_outputs(out: str, formats: tuple[str, ...]) -> list:
    """The files an export writes (``<out>.json`` last), for ``ops.output_paths``."""
    return [(f"--out ({fmt})", out + SUFFIX[fmt]) for fmt in formats] + [
        ("--out (description)", out + ".json")
    ]


def export_inputs(weights: str, out: str, category_file: str | None) -> list:
    """The files an export reads. The sidecar of ``--weights x.safetensors`` is not one when
    ``--out x`` (``--format pth``): ``x.json`` is then rewritten as the description of the same
    export, keeping its link to ``x.safetensors`` (``keep_link``), and stays its sidecar."""
    inputs = weights_inputs("--weights", weights)
    if os.path.realpath(weights) == os.path.realpath(out + SUFFIX["safetensors"]):
        inputs = inputs[:1]
    return inputs + [("--category_file", category_file)]


def keep_link(out: str, info: dict, exporting_safetensors: bool) -> None:
    """``<out>.json`` is also the sidecar of ``<out>.safetensors``: an export in other formats to
    the same ``out`` keeps its link to weights that are still there."""
    if exporting_safetensors or not os.path.isfile(out + SUFFIX["safetensors"]):
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(out + ".json", encoding="utf-8") as f:
            link = json.load(f).get("safetensors")
        if link:
            info["safetensors"] = link


def describe(weights: str, model, example: torch.Tensor, explicit: bool) -> dict:
    """What a caller of the exported network needs to know (``<out>.json``, before checks)."""
    return {
        "weights": os.path.abspath(weights),
        "input": {
            "name": "clip",
            "shape": list(example.shape),
            "layout": "[batch, T*C, H, W]: the T frames' channels one after the other",
            "dtype": "float32",
            "normalise": "pixel / 255, then (x - mean) / std per channel",
            "mean": model.input_mean,
            "std": model.input_std,
            "resize_shorter_side": model.scale_size,
            "center_crop": model.crop_size,
            "num_segments": model.num_segments,
        },
        "output": {
            "name": "logits",
            "shape": [example.size(0), model.num_class],
            "meaning": "clip scores",
        },
        "attention": "explicit" if explicit else "fused",
        "checks": {},
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a trained checkpoint (fixed clip shape) to TorchScript / ONNX / "
        "torch.export and check each file against the eager model.",
    )
    parser.add_argument("--weights", required=True, help="checkpoint (ours or a published one)")
    parser.add_argument("--out", required=True, help="output path without suffix")
    parser.add_argument(
        "--format", nargs="+", choices=FORMATS, default=["torchscript", "onnx"], help="formats"
    )
    parser.add_argument("--batch", type=int, default=1, help="clips per call (fixed)")
    parser.add_argument(
        "--segments", type=int, default=None, help="frames per clip (default: as trained)"
    )
    parser.add_argument(
        "--input_size", type=int, default=None, help="crop size (default: as trained)"
    )
    parser.add_argument(
        "--explicit_attention",
        action="store_true",
        help="export the materialised P x P attention instead of the fused kernel",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="check tolerance (absolute)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="check tolerance (x max |logit|)")
    parser.add_argument(
        "--category_file",
        default=None,
        help="class names for safetensors / pth (default: the checkpoint's, else its dataset's)",
    )
    parser.add_argument(
        "--data_root", default=None, help="where the dataset's category file is (default ./data)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        # the flags of the same names as export()'s keywords
        same = ("batch", "segments", "input_size", "explicit_attention", "opset", "atol", "rtol")
        same += ("category_file", "data_root")
        options = {key: getattr(args, key) for key in same}
        formats = tuple(dict.fromkeys(args.format))
        info = export(args.weights, args.out, formats=formats, **options)
    except (*TOOL_ERRORS, CheckpointError, ExportError) as exc:
        return fail(exc)
    ok = True
    for fmt, c in info["checks"].items():
        if not c["checked"]:
            print(f"{fmt}: {c['file']} (not checked: onnxruntime missing)")
            continue
        ok &= c["ok"]
        verdict = "matches the eager model" if c["ok"] else "DIFFERS from the eager model"
        print(
            f"{fmt}: {c['file']} {verdict} (max |diff| {c['max_abs_diff']:.2e}, max |logit| {c['max_abs_logit']:.2e})"
        )
    print(
        f"input {info['input']['shape']} -> logits {info['output']['shape']}; details in {args.out}.json"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
