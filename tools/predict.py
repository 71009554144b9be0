"""What does a trained model say about these videos? Top-5 classes by name, with probabilities.

    python tools/predict.py --weights checkpoint/<run>/ckpt.best.pth.tar clip.mp4 frames/video_7
    python tools/predict.py --weights TSM_kinetics_RGB_resnet50_..._dense_nl_....pth.tar \\
        --category_file kinetics_classes.txt --clips 10 --crops 3 --full_res clip.mp4 --out labelled.mp4

Inputs are video files (anything PyAV's FFmpeg reads, frames numbered exactly as by ops/video.py),
frame folders and packed frames (``clip.zip`` from tools/pack_frames.py; a folder path that does
not exist is read from ``<path>.zip`` when that exists, as the dataset does). A frame folder's
(or packed file's) frame names follow ``--image_tmpl``; without it the template is detected:
the registry's RGB templates (``img_{:05d}.jpg`` as Kinetics / UCF101 / HMDB51 and
tools/extract_frames.py write them, ``{:05d}.jpg`` as Something-Something v1 and Jester,
``{:06d}.jpg`` as Something-Something v2) are tried, and the one that numbers the longest run of
frames 1, 2, ... n is used; frames after a gap are not read, as the dataset would not read them.

Views are test_models.py's, computed by the same code: ``ops.sampling`` picks the frames (segment
centres; ``--twice_sample`` / ``--clips 2`` adds the segment starts, ``--dense_sample`` /
``--clips 10`` takes 10 dense clips), the frame-folder and video-file sources of the dataset
decode them (a broken frame is replaced by its nearest readable neighbour and said so),
``ops.evaluation.build_test_transform`` crops them (``--crops`` 1, 3, 5 or 10, ``--full_res``)
and ``ops.model_loading.load_model`` builds the network. The probabilities are each view's softmax
averaged over the views (mmaction2's ``average_clips='prob'``), i.e. the scores of
``test_models.py --softmax --save_scores`` for the same video, views, segments and input size.

Class names come from ``--category_file``, else from the checkpoint (main.py stores them), else
from the category file of its dataset (the checkpoint's, or ``--dataset``) under ``--data_root``;
without any, classes are shown by number. Published checkpoints store no names, and Kinetics has
no category file in the registry: give ``--category_file`` for them.

Output: per input, its top-5 (``--topk``) as ``probability  name`` lines on stdout, or with
``--json`` one JSON document for all inputs. ``--out FILE.mp4|FILE.gif`` writes the input with its
top-1 class and probability drawn in the top-left corner (mp4: H.264 by PyAV at the video's frame
rate, ``--fps`` for frame folders; gif: PIL, which stores identical consecutive frames once with
their durations added; written to a temporary file and renamed when complete); with several
inputs ``--out`` must contain ``{name}``, replaced by each input's name. Before any work, ``--out``
is refused (``ops/output_paths.py``) where it would write over an input (a video, the weights,
the category file; also through a link) or where two inputs get the same file (``x/clip`` and
``y/clip`` both give ``{name}`` = ``clip``).
An input that cannot be read gets one line on stderr (``error: <input>: <why>``) and the others
still run; the exit status is then 1 (2 for a bad checkpoint or bad flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import av
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ops import evaluation
from ops.atomic import write_atomically
from ops.checkpoint import CheckpointError
from ops.data_problems import DataProblems
from ops.device_input import InputNorm
from ops.frames import FrameFolders, decode_bytes, decode_image
from ops.lists import VideoRecord
from ops.model_loading import load_model
from ops.output_paths import check_outputs, weights_inputs
from ops.packed_frames import EXT as PACKED_EXT
from ops.packed_frames import PackedFile
from ops.sampling import CLIP_SAMPLING, clip_frames
from ops.utils import progress, setup_logging, to_device
from ops.video import VideoError, frame_image
from ops.video_files import VideoFiles
from tools._common import (
    TOOL_ERRORS,
    count_frame_names,
    count_frames,
    fail,
    frame_pattern,
    frame_template,
    frame_template_of,
    model_class_names,
)

logger = logging.getLogger("predict")

CLIP_CHOICES = {1: "one clip of segment centres", 2: "--twice_sample", 10: "--dense_sample"}
OUT_FORMATS = (".mp4", ".gif")


class InputError(Exception):
    """One input cannot be used; the message is one line saying why."""


# ---------------------------------------------------------------------------------------------
# settings and model
# ---------------------------------------------------------------------------------------------
@dataclass
class Views:
    """The test views of every input: test_models.py's flags of the same meaning."""

    crops: int = 1
    full_res: bool = False
    dense_sample: bool = False
    twice_sample: bool = False
    clip_sampling: str = "tsm"  # where dense clips start (ops/sampling.py)

    @property
    def clips(self) -> int:
        return evaluation.num_test_clips(self.dense_sample, self.twice_sample)

    @property
    def count(self) -> int:
        return evaluation.views_per_video(self.crops, self.dense_sample, self.twice_sample)


def resolve_views(
    clips: int | None,
    crops: int,
    full_res: bool,
    dense_sample: bool,
    twice_sample: bool,
    clip_sampling: str = "tsm",
) -> Views:
    """``--clips N`` as the published protocol with N clips (2: twice, 10: dense sampling), or
    the test_models.py flags themselves; ValueError when they contradict each other."""
    if clips is not None:
        wanted = {1: (False, False), 2: (False, True), 10: (True, False)}.get(clips)
        if wanted is None:
            raise ValueError(
                f"--clips must be 1, 2 or 10 (the test protocols: "
                f"{', '.join(f'{k}: {v}' for k, v in CLIP_CHOICES.items())}), got {clips}"
            )
        given = (dense_sample, twice_sample)
        if any(given) and given != wanted:
            raise ValueError(
                f"--clips {clips} contradicts {'--dense_sample' if dense_sample else '--twice_sample'}: "
                "give one of them"
            )
        dense_sample, twice_sample = wanted
    evaluation.views_per_video(crops, dense_sample, twice_sample)  # one-line ValueError if bad
    if clip_sampling != "tsm" and not dense_sample:
        raise ValueError(f"--clip_sampling {clip_sampling} places dense clips: add --clips 10")
    return Views(crops, full_res, dense_sample, twice_sample, clip_sampling)


@dataclass
class Predictor:
    """A loaded model with the test transform of ``views``, and its class names."""

    model: torch.nn.Module
    views: Views
    names: list[str] | None
    device: torch.device
    image_tmpl: str | None = None
    transform: object = field(init=False)

    def __post_init__(self) -> None:
        m = self.model
        crop = m.scale_size if self.views.full_res else m.input_size
        self.transform = evaluation.build_test_transform(
            self.views.crops, m.scale_size, crop, m.input_mean, m.input_std
        )

    def name(self, k: int) -> str:
        return self.names[k] if self.names else f"class {k}"

    def sample(self, num_frames: int) -> list[int]:
        """The frames test_models.py reads of a video of ``num_frames`` frames (all clips)."""
        return clip_frames(
            num_frames,
            self.model.num_segments,
            new_length=self.model.new_length,
            mode="test",
            dense_sample=self.views.dense_sample,
            twice_sample=self.views.twice_sample,
            clip_sampling=self.views.clip_sampling,
        )

    @torch.no_grad()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """Class probabilities ``[K]`` of one video's sampled frames: the views' mean softmax."""
        data = self.transform(images)  # [views*T*C, H, W], crop-major as in the dataset
        views = self.views.count
        x = to_device(data, self.device, norm=InputNorm.of(self.model))
        x = x.view(views, data.size(0) // views, *data.shape[1:])
        logits = self.model(x)  # [views, K]
        return evaluation.average_views(logits, views, softmax=True)[0].cpu()


def build_predictor(args: argparse.Namespace) -> Predictor:
    """The model of ``--weights`` on the device, its views and class names (tool errors raise)."""
    views = resolve_views(
        args.clips,
        args.crops,
        args.full_res,
        args.dense_sample,
        args.twice_sample,
        args.clip_sampling,
    )
    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    if args.image_tmpl:
        frame_pattern(args.image_tmpl)  # a bad template is a bad flag, not a bad input
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available: use --device cpu")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    model, meta = load_model(args.weights, num_segments=args.segments, input_size=args.input_size)
    if model.modality != "RGB":
        raise ValueError(
            f"{args.weights} is a {model.modality} model: predict reads RGB frames from videos "
            "and frame folders; evaluate flow models with test_models.py"
        )
    if meta["dense_sample"] and not views.dense_sample:
        logger.warning(
            "%s was trained with dense sampling; the published protocol tests it with "
            "--dense_sample (--clips 10)",
            os.path.basename(args.weights),
        )
    names = model_class_names(
        meta, model.num_class, args.category_file, args.dataset, args.data_root
    )
    if names is None:
        logger.warning(
            "%s stores no class names and no category file was found for its dataset (%s): "
            "classes are shown by number; pass --category_file for names",
            args.weights,
            meta["dataset"] or "unknown",
        )
    return Predictor(model.to(device).eval(), views, names, device, args.image_tmpl)


# ---------------------------------------------------------------------------------------------
# inputs: the dataset's sources, for one video each
# ---------------------------------------------------------------------------------------------
class _InputProblems(DataProblems):
    """The data layer's problem reports for one input, kept to be said with its result."""

    def __init__(self) -> None:
        super().__init__("predict", strict=False, max_workers=0)
        self.messages: list[str] = []

    def problem(self, record, kind: str, what: str) -> None:
        self.count(kind)
        self.messages.append(what)


@dataclass
class Loaded:
    """The sampled frames of one input, how many frames it has, and what went wrong on the way."""

    kind: str  # "video", "frames" (a folder) or "packed" (packed frames)
    num_frames: int
    images: list[Image.Image]
    problems: list[str]
    image_tmpl: str | None = None


def load_input(path: str, predictor: Predictor) -> Loaded:
    """Decode the frames test_models.py would sample from ``path`` (a video file or a frame
    folder) with the data layer's own source for it; ``InputError`` when it cannot be used."""
    full = os.path.normpath(os.path.abspath(path))
    root, name = os.path.dirname(full), os.path.basename(full)
    problems = _InputProblems()
    counted: list[int] = []

    def sample(num_frames: int) -> list[int]:
        counted.append(num_frames)
        return predictor.sample(num_frames)

    tmpl = None
    packed = None  # the packed file, for packed frames
    if full.endswith(PACKED_EXT) and os.path.isfile(full):
        packed = full
    elif not os.path.exists(full) and os.path.isfile(full + PACKED_EXT):
        packed = full + PACKED_EXT
    if os.path.isdir(full) or packed is not None:
        try:
            if packed is None:
                tmpl = frame_template(full, predictor.image_tmpl)
                usable, found = count_frames(full, tmpl)
            else:
                with PackedFile(packed) as pf:
                    names = pf.names
                tmpl = predictor.image_tmpl or frame_template_of(names, packed)
                usable, found = count_frame_names(names, tmpl)
        except (OSError, ValueError) as exc:
            raise InputError(str(exc)) from None
        if usable == 0:
            raise InputError(f"no frame {tmpl.format(1)} in the folder (template {tmpl!r})")
        if found > usable:
            problems.messages.append(
                f"frame {usable + 1} is missing: only frames 1..{usable} are read"
            )
        kind = "frames" if packed is None else "packed"
        source = FrameFolders(root, tmpl, "RGB", problems)
        record = VideoRecord(name, usable, 0)
    elif os.path.isfile(full):
        kind = "video"
        source = VideoFiles(root, "RGB", problems)
        record = VideoRecord(name, 0, 0)
    else:
        raise InputError("does not exist (give a video file or a folder of frames)")
    try:
        images = source.load(record, sample)
    except VideoError as exc:  # the sources report these themselves; kept as a safety net
        raise InputError(str(exc)) from None
    if images is None:
        raise InputError(problems.messages[-1] if problems.messages else "could not be read")
    return Loaded(kind, counted[-1], images, problems.messages, tmpl)


# ---------------------------------------------------------------------------------------------
# the labelled copy (--out)
# ---------------------------------------------------------------------------------------------
def _font(image: Image.Image, text: str) -> ImageFont.ImageFont:
    """A font for ``text`` on ``image``: 1/12 of its height, smaller where the text would not fit
    its width (down to 6 px), PIL's fixed bitmap font where PIL has no FreeType."""
    size = max(10, image.height // 12)
    try:
        font = ImageFont.load_default(size=size)
        while size > 6 and font.getlength(text) > 0.95 * image.width:
            size -= 1
            font = ImageFont.load_default(size=size)
        return font
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def draw_label(image: Image.Image, text: str, font: ImageFont.ImageFont) -> Image.Image:
    """``image`` with ``text`` in white on a black box in its top-left corner."""
    out = image.convert("RGB")  # a copy: the decoded frame is left as it was
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return out


def all_frames(path: str, loaded: Loaded, fps: float) -> tuple[Iterator[Image.Image], float]:
    """Every frame of the input in order, and its frame rate (a frame folder's is ``fps``)."""
    if loaded.kind == "frames":
        names = [
            os.path.join(path, loaded.image_tmpl.format(k)) for k in range(1, loaded.num_frames + 1)
        ]

        def folder_frames() -> Iterator[Image.Image]:
            for file in names:
                yield decode_image(file)

        return folder_frames(), fps
    if loaded.kind == "packed":
        packed = path if path.endswith(PACKED_EXT) and os.path.isfile(path) else path + PACKED_EXT

        def packed_frames() -> Iterator[Image.Image]:
            with PackedFile(packed) as pf:
                for k in range(1, loaded.num_frames + 1):
                    yield decode_bytes(pf.read(loaded.image_tmpl.format(k)))

        return packed_frames(), fps
    container = av.open(path)
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or fps

    def video_frames() -> Iterator[Image.Image]:
        with container:
            for frame in container.decode(stream):  # the frames ops/video.py numbers
                yield frame_image(frame)

    return video_frames(), float(rate)


def _even(image: Image.Image) -> Image.Image:
    # H.264 in yuv420p needs even sizes: repeat the last column / row where one is odd.
    w, h = image.size
    if w % 2 == 0 and h % 2 == 0:
        return image
    padded = Image.new("RGB", (w + w % 2, h + h % 2))
    padded.paste(image, (0, 0))
    if w % 2:
        padded.paste(image.crop((w - 1, 0, w, h)), (w, 0))
    if h % 2:
        padded.paste(padded.crop((0, h - 1, w + w % 2, h)), (0, h))
    return padded


def write_labelled(
    frames: Iterator[Image.Image], out: str, text: str, fps: float, total: int
) -> int:
    """Write ``frames`` with ``text`` drawn on each to ``out`` (.mp4 or .gif), atomically;
    returns the number of frames written."""
    labelled = _labelled(frames, text, progress(total=total, desc="render", unit="frame"))
    written = []
    if os.path.splitext(out)[1].lower() == ".gif":
        write_atomically(out, lambda f: written.append(_write_gif(labelled, f, fps)))
    else:
        write_atomically(out, lambda f: written.append(_write_mp4(labelled, f, fps)))
    return written[0]


def _labelled(frames: Iterator[Image.Image], text: str, bar) -> Iterator[Image.Image]:
    with bar:
        font = None
        for image in frames:
            font = font or _font(image, text)
            yield draw_label(image, text, font)
            bar.update(1)


def _write_gif(frames: Iterator[Image.Image], f: BinaryIO, fps: float) -> int:
    drawn = list(frames)  # PIL writes an animation from a list of frames
    if not drawn:
        raise InputError("no frame decodes, nothing to write")
    duration = max(1, round(1000.0 / fps))  # ms per frame
    drawn[0].save(
        f, format="GIF", save_all=True, append_images=drawn[1:], duration=duration, loop=0
    )
    return len(drawn)


def _write_mp4(frames: Iterator[Image.Image], f: BinaryIO, fps: float) -> int:
    written = 0
    with av.open(f, mode="w", format="mp4") as container:
        stream = None
        for image in frames:
            image = _even(image)
            if stream is None:
                stream = container.add_stream("libx264", rate=_rate(fps))
                stream.width, stream.height = image.size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18"}  # visually lossless at a small size
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
            written += 1
        if stream is None:
            raise InputError("no frame decodes, nothing to write")
        container.mux(stream.encode(None))  # flush the frames the encoder holds back
    return written


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001


def out_path(template: str, path: str, several: bool) -> str:
    """The --out file of input ``path``: ``{name}`` replaced by its name (required when there are
    several inputs, so that they do not overwrite each other)."""
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    if several and "{name}" not in template:
        raise ValueError(
            f"--out {template} with several inputs: put {{name}} in it, e.g. out/{{name}}.mp4"
        )
    return template.replace("{name}", name)


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def predict_one(path: str, predictor: Predictor, args: argparse.Namespace, several: bool) -> dict:
    """The result of one input: its top-k, its frame count, its problems, and the --out file."""
    loaded = load_input(path, predictor)
    for message in loaded.problems:
        logger.warning("%s: %s", path, message)
    probs = predictor.probabilities(loaded.images)
    values, indices = torch.topk(probs, min(args.topk, probs.numel()))
    top = [
        {"index": int(k), "name": predictor.name(int(k)), "probability": float(p)}
        for p, k in zip(values.tolist(), indices.tolist())
    ]
    result = {
        "input": path,
        "kind": loaded.kind,
        "num_frames": loaded.num_frames,
        "top": top,
        "problems": loaded.problems,
    }
    if args.out:
        out = out_path(args.out, path, several)
        text = f"{top[0]['name']} ({top[0]['probability']:.2f})"
        try:
            frames, fps = all_frames(os.path.abspath(path), loaded, args.fps)
            result["frames_written"] = write_labelled(frames, out, text, fps, loaded.num_frames)
        except (OSError, av.FFmpegError, ValueError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"writing {out} failed ({detail})") from None
        result["out"] = out
    return result


def format_result(result: dict, views: Views) -> str:
    what = {"frames": "frame folder", "packed": "packed frames"}.get(result["kind"], "video")
    clips = f"{views.clips} clip{'s' if views.clips > 1 else ''}"
    crops = f"{views.crops} crop{'s' if views.crops > 1 else ''}"
    lines = [f"{result['input']} ({what}, {result['num_frames']} frames; {clips} x {crops})"]
    lines += [f"  {t['probability']:.4f}  {t['name']}" for t in result["top"]]
    if "out" in result:
        lines.append(f"  -> {result['out']} ({result['frames_written']} frames)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Predict every input; returns the exit status (1 if any input failed)."""
    if args.out and os.path.splitext(args.out)[1].lower() not in OUT_FORMATS:
        raise ValueError(f"--out must end in {' or '.join(OUT_FORMATS)}, got {args.out}")
    several = len(args.inputs) > 1
    if args.out:  # a bad --out fails before any work: a template without {name}, or a clash
        outputs = [(f"--out (for {p})", out_path(args.out, p, several)) for p in args.inputs]
        inputs = [("", p) for p in args.inputs] + weights_inputs("--weights", args.weights)
        check_outputs(inputs + [("--category_file", args.category_file)], outputs)
    predictor = build_predictor(args)
    results, failed = [], 0
    bar = progress(args.inputs, desc="predict", unit="input", enabled=several)
    for path in bar:
        try:
            result = predict_one(path, predictor, args, several)
        except InputError as exc:
            failed += 1
            message = str(exc).splitlines()[0]
            tqdm.write(f"error: {path}: {message}", file=sys.stderr)
            results.append({"input": path, "error": message})
            continue
        results.append(result)
        if not args.json:
            tqdm.write(format_result(result, predictor.views), file=sys.stdout)
    if args.json:
        views = predictor.views
        document = {
            "weights": args.weights,
            "views": {
                "clips": views.clips,
                "crops": views.crops,
                "full_res": views.full_res,
                "dense_sample": views.dense_sample,
                "twice_sample": views.twice_sample,
                "clip_sampling": views.clip_sampling,
                "segments": predictor.model.num_segments,
                "input_size": predictor.model.input_size,
                "scores": "mean over the views of each view's softmax",
            },
            "results": results,
        }
        print(json.dumps(document, indent=1))
    if failed:
        logger.warning("%d of %d inputs could not be predicted", failed, len(args.inputs))
    return 1 if failed else 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Top-5 classes (names and probabilities) of videos and frame folders, with "
        "the views of test_models.py.",
    )
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FRAME_FOLDER")
    parser.add_argument(
        "--weights", required=True, help="checkpoint: ours, a published one, or a .safetensors"
    )
    views = parser.add_argument_group("views (as test_models.py)")
    views.add_argument(
        "--clips",
        type=int,
        default=None,
        help="1: segment centres (default), 2: = --twice_sample, 10: = --dense_sample",
    )
    views.add_argument(
        "--crops",
        "--test_crops",
        dest="crops",
        type=int,
        default=1,
        choices=evaluation.TEST_CROP_CHOICES,
        help="1: centre crop, 3: full-res 3 crops, 5: corners + centre, 10: 5 crops + flips",
    )
    views.add_argument("--full_res", action="store_true", help="crop the scale size (256)")
    views.add_argument("--dense_sample", action="store_true", help="10 dense clips (I3D style)")
    views.add_argument("--twice_sample", action="store_true", help="2 clips per video")
    views.add_argument(
        "--clip_sampling",
        default="tsm",
        choices=CLIP_SAMPLING,
        help="with 10 dense clips: where they start, as TSM (tsm) or mmaction2 (mmaction)",
    )
    views.add_argument(
        "--segments",
        "--test_segments",
        dest="segments",
        type=int,
        default=None,
        help="frames per clip (default: the checkpoint's)",
    )
    views.add_argument(
        "--input_size", type=int, default=None, help="model input size (default: the checkpoint's)"
    )
    parser.add_argument("--topk", type=int, default=5, help="classes shown per input")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--out",
        default=None,
        help="write the input with its top-1 drawn on it: FILE.mp4 or FILE.gif "
        "({name} is replaced by the input's name; required with several inputs)",
    )
    parser.add_argument(
        "--fps", type=float, default=25.0, help="frame rate of --out for frame folders"
    )
    parser.add_argument(
        "--image_tmpl",
        default=None,
        help="frame file names in the folders, e.g. 'img_{:05d}.jpg' (default: detected among "
        "the registry's)",
    )
    parser.add_argument("--category_file", default=None, help="class names, one per line")
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset whose category file names the classes (default: the checkpoint's)",
    )
    parser.add_argument(
        "--data_root", default=None, help="where the dataset's category file is (default ./data)"
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if present"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    if args.fps <= 0:
        return fail(ValueError(f"--fps must be positive, got {args.fps}"))
    try:
        return run(args)
    except (*TOOL_ERRORS, CheckpointError) as exc:
        return fail(exc)


if __name__ == "__main__":
    sys.exit(main())
