"""Draw what a non-local block attends to: its attention map over the frames of one clip (PNG).

    python tools/visualize_attention.py --weights W --video FRAMES_DIR --block layer2.0 --query 3,32,40
    python tools/visualize_attention.py --weights W --video clip.mp4 --out attention.png

The model of checkpoint ``W`` runs on one clip of the video (a frame folder, or a video file
read with the data layer's PyAV reader, ops/video.py), sampled and cropped as in validation: ``T`` segment centres, shorter side
resized to ``scale_size``, centre crop. The chosen block (``--block layer2.0``: a residual block
followed by an RNL or non-local block) keeps its softmax-normalised affinity ``A`` ``[P_source,
P]`` for that forward (the explicit computation; the fused kernel never forms it).

- ``--query t,y,x`` (frame index in the clip, pixel row and column in the cropped frame): the map
  is ``A[:, n]`` for the target position ``n`` under that pixel, i.e. how much every source
  position contributes to that output; the query is marked with a cross.
- no ``--query``: the map is the attention each source position receives, averaged over all
  target positions ("the most attended positions"); the ``--top`` strongest are circled.

The PNG shows the T cropped frames side by side with the map (bilinearly upsampled from the
block's feature grid, one colour scale for the whole clip, its maximum in dark red) blended over
them, and a title line with the block, the query, how peaked the map is (its maximum as a
multiple of uniform attention: near 1 means the block attends everywhere alike) and the
predicted class. PIL only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ops.checkpoint import CheckpointError, load_model
from ops.dataset_config import read_categories
from ops.device_input import InputNorm, ToUint8Tensor
from ops.non_local import attention_modules
from ops.output_paths import check_outputs, weights_inputs
from ops.sampling import clip_frames
from ops.transforms import GroupCenterCrop, GroupScale, Stack
from ops.utils import setup_logging, to_device
from ops.video import VideoError, VideoReader
from tools._common import (
    TOOL_ERRORS,
    count_frames,
    fail,
    frame_template,
    model_class_names,
)

logger = logging.getLogger(__name__)

TITLE_H = 20  # pixels of the title line
CAPTION_H = 14  # pixels of the caption under each frame
# Weight of the heat map in the blend: from ALPHA_LOW where the map is 0 to ALPHA_HIGH at its
# maximum, so the frame stays visible where little attention goes.
ALPHA_LOW, ALPHA_HIGH = 0.25, 0.7
# A "jet"-like colour scale: (value, (r, g, b)) anchors, linearly interpolated.
_COLOURS = (
    (0.0, (0, 0, 110)),
    (0.2, (0, 40, 255)),
    (0.45, (0, 220, 255)),
    (0.65, (255, 230, 0)),
    (0.85, (255, 60, 0)),
    (1.0, (150, 0, 0)),
)


# ---------------------------------------------------------------------------------------------
# the clip
# ---------------------------------------------------------------------------------------------
def load_clip(
    video: str, num_segments: int, image_tmpl: str | None = None
) -> tuple[list[Image.Image], list[int]]:
    """The ``num_segments`` frames of one validation clip (segment centres), and their 1-based
    numbers, from a frame folder or a video file."""
    if os.path.isdir(video):
        tmpl = frame_template(video, image_tmpl)
        total, found = count_frames(video, tmpl)
        if total < found:
            logger.warning(
                "%s: frames after %d are missing; using frames 1..%d", video, total + 1, total
            )
        numbers = clip_frames(total, num_segments, mode="val")
        frames = {
            k: Image.open(os.path.join(video, tmpl.format(k))).convert("RGB") for k in set(numbers)
        }
        return [frames[k] for k in numbers], numbers
    if not os.path.isfile(video):
        raise FileNotFoundError(
            f"--video {video} does not exist: give a frame folder or a video file"
        )
    # the data layer's reader (ops.video): the same frame numbers as training and testing
    try:
        with VideoReader(video) as reader:
            numbers = clip_frames(reader.num_frames, num_segments, mode="val")
            frames = reader.read(numbers)
    except VideoError as exc:
        raise ValueError(str(exc)) from None
    broken = sorted(set(numbers) - set(frames))
    if broken:
        raise ValueError(f"frames {broken} of {video} do not decode: choose another video")
    return [frames[k] for k in numbers], numbers


def preprocess(frames: list[Image.Image], model) -> tuple[torch.Tensor, list[Image.Image]]:
    """Validation transform: ``(input [1, T*3, H, W], the cropped frames for display)``."""
    cropped = GroupCenterCrop(model.crop_size)(GroupScale(model.scale_size)(frames))
    x = ToUint8Tensor()(Stack()(cropped)).unsqueeze(0)  # uint8 (1, T*3, H, W)
    x = to_device(x, torch.device("cpu"), norm=InputNorm.of(model))  # as the loops normalise
    return x, cropped


# ---------------------------------------------------------------------------------------------
# the attention
# ---------------------------------------------------------------------------------------------
def run_with_attention(model, block, x: torch.Tensor):
    """Forward ``x`` keeping ``block``'s attention. Returns ``(logits [K], attention [Ps, P],
    target grid (T, H, W), source grid (T, Hs, Ws))``."""
    shapes = {}

    def grab(module, args):
        shapes["x"] = args[0].shape  # (N, C, T, H, W)

    handle = block.register_forward_pre_hook(grab)
    block.store_attention = True
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        block.store_attention = False
        handle.remove()
    attention = block.attention[0]  # (Ps, P)
    block.attention = None
    _, _, t, h, w = shapes["x"]
    src = (t, h // 2, w // 2) if getattr(block, "sub_sample", False) else (t, h, w)
    if attention.shape != (src[0] * src[1] * src[2], t * h * w):
        raise ValueError(
            f"attention of shape {tuple(attention.shape)} does not fit the grids {src} / {(t, h, w)}"
        )
    return logits[0], attention, (t, h, w), src


def pixel_to_cell(y: int, x: int, crop: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """Feature-grid cell under pixel ``(y, x)`` of a ``crop x crop`` frame."""
    return min(y * grid_h // crop, grid_h - 1), min(x * grid_w // crop, grid_w - 1)


def query_map(
    attention: torch.Tensor, grid: tuple, src: tuple, t: int, gy: int, gx: int
) -> torch.Tensor:
    """Weights of all sources for target cell ``(t, gy, gx)``: ``[T, Hs, Ws]`` (sums to 1)."""
    _, h, w = grid
    n = (t * h + gy) * w + gx
    return attention[:, n].reshape(src)


def received_map(attention: torch.Tensor, src: tuple) -> torch.Tensor:
    """Attention each source position receives, averaged over the targets: ``[T, Hs, Ws]``."""
    return attention.mean(dim=1).reshape(src)


def top_positions(amap: torch.Tensor, k: int) -> list[tuple[int, int, int]]:
    """The ``k`` largest cells of ``amap`` ``[T, H, W]`` as ``(t, y, x)``, largest first."""
    _, h, w = amap.shape
    order = torch.argsort(amap.flatten(), descending=True)[:k].tolist()
    return [(i // (h * w), (i // w) % h, i % w) for i in order]


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------
def colourize(values: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in 0..1 -> uint8 ``[H, W, 3]`` on the jet-like scale."""
    v = np.clip(values, 0.0, 1.0)
    stops = [s for s, _ in _COLOURS]
    rgb = [np.interp(v, stops, [c[i] for _, c in _COLOURS]) for i in range(3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def render(
    frames: list[Image.Image],
    amap: torch.Tensor,
    marks: list[tuple[int, float, float]],
    title: str,
    captions: list[str],
    cell: int,
    query: bool = False,
) -> Image.Image:
    """Frames side by side with ``amap`` ``[T', Hs, Ws]`` blended over them.

    ``marks`` are ``(frame index, y, x)`` in 0..1 frame coordinates, drawn as circles, or with
    ``query`` the first as a cross. With temporal pooling the map has fewer time
    steps than frames; frame i shows map step ``i * T' // T``.
    """
    t_frames, t_map = len(frames), amap.shape[0]
    vmax = float(amap.max()) or 1.0
    canvas = Image.new("RGB", (t_frames * cell, TITLE_H + cell + CAPTION_H), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((4, 4), title, fill="black", font=font)
    for i, frame in enumerate(frames):
        heat = Image.fromarray(amap[i * t_map // t_frames].float().numpy() / vmax)  # mode "F"
        heat = np.asarray(heat.resize((cell, cell), Image.BILINEAR))
        base = np.asarray(frame.resize((cell, cell), Image.BILINEAR), dtype=np.float32)
        alpha = (ALPHA_LOW + (ALPHA_HIGH - ALPHA_LOW) * np.clip(heat, 0, 1))[:, :, None]
        blended = (1 - alpha) * base + alpha * colourize(heat).astype(np.float32)
        canvas.paste(Image.fromarray(blended.round().astype(np.uint8)), (i * cell, TITLE_H))
        draw.text((i * cell + 3, TITLE_H + cell + 1), captions[i], fill="black", font=font)
    r = max(3, cell // 24)
    for j, (i, y, x) in enumerate(marks):
        cx, cy = i * cell + x * cell, TITLE_H + y * cell
        if j == 0 and query:
            for colour, width in (("black", 3), ("white", 1)):
                draw.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=width)
                draw.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=width)
        else:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline="white", width=2)
    return canvas


def visualize(
    weights: str,
    video: str,
    out: str,
    block_name: str | None = None,
    query: tuple[int, int, int] | None = None,
    top: int = 5,
    image_tmpl: str | None = None,
    segments: int | None = None,
    cell: int | None = None,
    class_names: list[str] | None = None,
    data_root: str | None = None,
) -> dict:
    """Write the PNG to ``out``; returns what was drawn (block, map, prediction). Without
    ``class_names`` the names are the checkpoint's, else those of the category file of its
    dataset under ``data_root``, when it is there."""
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    if cell is not None and cell < 16:
        raise ValueError(f"--cell must be >= 16 pixels, got {cell}")
    model, meta = load_model(weights, num_segments=segments)
    if class_names is None:
        class_names = model_class_names(meta, model.num_class, data_root=data_root)
    blocks = attention_modules(model)
    if not blocks:
        raise ValueError(f"{weights} has no RNL / non-local block: nothing to visualise")
    block_name = block_name or next(iter(blocks))
    if block_name not in blocks:
        raise ValueError(
            f"--block {block_name} has no attention block; choose one of {', '.join(blocks)}"
        )
    t_frames, crop = model.num_segments, model.crop_size
    if query is not None:
        t, y, xq = query
        if not (0 <= t < t_frames and 0 <= y < crop and 0 <= xq < crop):
            raise ValueError(
                f"--query {t},{y},{xq} is outside the clip: t in 0..{t_frames - 1}, "
                f"y and x in 0..{crop - 1} (pixels of the {crop}x{crop} crop)"
            )
    frames, numbers = load_clip(video, model.num_segments, image_tmpl)
    x, cropped = preprocess(frames, model)
    logits, attention, grid, src = run_with_attention(model, blocks[block_name], x)

    if query is not None:
        gy, gx = pixel_to_cell(y, xq, crop, grid[1], grid[2])
        amap = query_map(attention, grid, src, t * grid[0] // t_frames, gy, gx)
        marks = [(t, (y + 0.5) / crop, (xq + 0.5) / crop)]
        title = f"query t={t} y={y} x={xq} (cell {gy},{gx} of {grid[1]}x{grid[2]})"
    else:
        amap = received_map(attention, src)
        peaks = top_positions(amap, top)
        marks = [
            (ti * t_frames // src[0], (yy + 0.5) / src[1], (xx + 0.5) / src[2])
            for ti, yy, xx in peaks
        ]
        title = f"most attended positions (top {top} circled)"
    pred = int(logits.argmax())
    label = class_names[pred] if class_names and pred < len(class_names) else f"class {pred}"
    # How peaked the map is: its maximum relative to uniform attention (both maps sum to 1).
    peak = float(amap.max()) * amap.numel()
    title = f"{block_name}: {title}; peak {peak:.1f}x uniform; predicted {label}"
    cell = cell or max(crop, 128)
    captions = [f"t={i} (frame {k})" for i, k in enumerate(numbers)]
    image = render(cropped, amap, marks, title, captions, cell, query=query is not None)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    image.save(out)
    return {
        "block": block_name,
        "map": amap,
        "prediction": pred,
        "label": label,
        "dataset": meta["dataset"],
    }


def _parse_query(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--query takes t,y,x (three integers), got {text!r}")
    return tuple(int(p) for p in parts)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Overlay the attention map of an RNL / non-local block on the frames of one clip (PNG).",
    )
    parser.add_argument("--weights", required=True, help="checkpoint with RNL or non-local blocks")
    parser.add_argument("--video", required=True, help="a frame folder or a video file")
    parser.add_argument("--out", default="attention.png", help="PNG to write")
    parser.add_argument(
        "--block",
        default=None,
        help="residual block with attention, e.g. layer2.0 (default: the first)",
    )
    parser.add_argument(
        "--query",
        type=_parse_query,
        default=None,
        help="t,y,x: frame index in the clip and pixel in the crop; omit for the most attended positions",
    )
    parser.add_argument("--top", type=int, default=5, help="positions circled without --query")
    parser.add_argument(
        "--image_tmpl", default=None, help="frame names in the folder (default: detected)"
    )
    parser.add_argument(
        "--segments", type=int, default=None, help="frames per clip (default: as trained)"
    )
    parser.add_argument(
        "--cell", type=int, default=None, help="display size of each frame in pixels"
    )
    parser.add_argument("--category_file", default=None, help="class names, one per line")
    parser.add_argument(
        "--data_root", default=None, help="where to find the dataset's category file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        inputs = weights_inputs("--weights", args.weights) + [("--video", args.video)]
        check_outputs(inputs + [("--category_file", args.category_file)], [("--out", args.out)])
        names = read_categories(args.category_file) if args.category_file else None
        # the flags of the same names as visualize()'s keywords
        same = ("query", "top", "image_tmpl", "segments", "cell", "data_root")
        options = {key: getattr(args, key) for key in same}
        result = visualize(
            args.weights, args.video, args.out, block_name=args.block, class_names=names, **options
        )
    except (*TOOL_ERRORS, CheckpointError) as exc:
        return fail(exc)
    print(f"{args.out}: {result['block']}, predicted {result['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
