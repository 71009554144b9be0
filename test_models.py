"""Evaluate trained TSM / RNL checkpoints on a test list: multi-clip, multi-crop, ensembles.

The published commands run as written, e.g.

    python test_models.py kinetics \
        --weights=pretrained/TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04.pth.tar \
        --test_segments=8 --batch_size=16 -j 25 --test_crops=3 --dense_sample --full_res

Checkpoints are published ones (settings parsed from the file name, SPEC.md section 6) or our
own (settings stored inside as `model_config`; any file name), both loaded with
`weights_only=True` by `ops.model_loading.load_model`, or `.safetensors` files with their JSON
sidecar (tools/export.py --format safetensors). Every model setting not given on the command line
(frames per clip, input size, modality, shift, attached blocks, backbone) is the checkpoint's.
Several comma-separated `--weights` (with as many `--test_segments`, or none) form an ensemble
whose video scores are averaged, e.g. the paper's "(8+16) x 2 clips". The semantics of crops,
clips and scores are documented in ops/evaluation.py.

CUDA is used when present (the `--gpus` given, else all visible GPUs, through DataParallel, the
first one holding the model; or one GPU per process under torchrun), else the CPU. `--amp` enters
autocast inside the model's forward, so that every DataParallel replica runs in the dtype asked
for. Under torchrun each rank evaluates a contiguous shard of the list and
rank 0 gathers the scores in list order and writes every output.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import torch
import torch.distributed as dist

from ops import bf16_guard, evaluation
from ops import distributed as du
from ops.checkpoint import CheckpointError
from ops.data_problems import data_error_message
from ops.dataset import TSNDataSet
from ops.dataset_config import (
    DATA_FLAGS,
    REGISTRY,
    add_data_args,
    category_file,
    default_data_root,
    read_categories,
    resolve_dataset,
)
from ops.device_augment import use_device_decoding
from ops.metrics import summarize
from ops.model_loading import load_model
from ops.output_paths import check_outputs, weights_inputs
from ops.reports import REPORT_FILES, save_scores, write_prediction_csv, write_report
from ops.sampling import CLIP_SAMPLING
from ops.utils import (
    AMP_CHOICES,
    ensure_writable_dir,
    ensure_writable_file,
    nonfinite_tensors,
    setup_logging,
)

logger = logging.getLogger("test_models")


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of the published test script (same names and defaults) plus our additions."""
    parser = argparse.ArgumentParser(
        description="Evaluate TSM / RNL checkpoints with multi-clip, multi-crop testing"
    )
    parser.add_argument("dataset", type=str, help="dataset name as in ops/dataset_config.py")
    parser.add_argument(
        "--weights",
        type=str,
        required=True,
        help="checkpoint file (.pth.tar or .safetensors), or comma-separated files for an ensemble",
    )
    parser.add_argument(
        "--test_segments",
        type=str,
        default=None,
        help="frames per clip, one per weight (comma-separated), e.g. 8,16 (default: each "
        "checkpoint's own)",
    )
    parser.add_argument(
        "--coeff",
        type=str,
        default=None,
        help="ensemble weights, one per weight (comma-separated); default all 1",
    )
    parser.add_argument(
        "--test_crops",
        type=int,
        default=1,
        choices=evaluation.TEST_CROP_CHOICES,
        help="1: centre crop, 3: full-res 3 crops, 5: corners + centre, 10: 5 crops + flips",
    )
    parser.add_argument(
        "--full_res",
        action="store_true",
        help="crop the scale size (256) instead of the input size (224), as in non-local I3D",
    )
    parser.add_argument("--dense_sample", action="store_true", help="10 dense clips (I3D style)")
    parser.add_argument(
        "--clip_sampling",
        default="tsm",
        choices=CLIP_SAMPLING,
        help="with --dense_sample: where the 10 clips start, as the published TSM code (tsm) or "
        "as mmaction2's SampleFrames (mmaction: its NL I3D protocol; ops/sampling.py)",
    )
    parser.add_argument("--twice_sample", action="store_true", help="2 clips per video")
    parser.add_argument(
        "--device_views",
        action="store_true",
        help="decode, resize and crop on the device (ops/device_augment.py) instead of PIL: "
        "faster input, scores within ~2e-4 (relative) of the published PIL evaluation",
    )
    parser.add_argument(
        "--batch_size", type=int, default=1, help="videos per forward pass (x clips x crops)"
    )
    parser.add_argument(
        "-j", "--workers", type=int, default=8, metavar="N", help="data loading workers"
    )
    parser.add_argument(
        "--softmax",
        action="store_true",
        help="average softmax probabilities instead of logits",
    )
    parser.add_argument(
        "--test_list",
        type=str,
        default=None,
        help="list file replacing the dataset's val list (comma-separated: one per weight)",
    )
    parser.add_argument(
        "--csv_file", type=str, default=None, help="write `video;class` (top-5 for somethingv2)"
    )
    parser.add_argument(
        "--max_num",
        type=int,
        default=-1,
        help="evaluate only the first N >= 1 videos (-1: all; 0 is refused)",
    )
    parser.add_argument(
        "--input_size",
        type=int,
        default=None,
        help="model input size (default: the checkpoint's, else 224); scale size is size*256//224",
    )
    parser.add_argument(
        "--crop_fusion_type",
        type=str,
        default="avg",
        choices=["avg"],
        help="segment consensus (kept for TSM compatibility)",
    )
    parser.add_argument(
        "--save_scores", type=str, default=None, help="write scores/labels/indices to this .npz"
    )
    parser.add_argument(
        "--report_dir",
        type=str,
        default=None,
        help="write a confusion-matrix PNG and a per-class accuracy CSV into this folder",
    )
    parser.add_argument(
        "--amp",
        type=str,
        default="off",
        choices=AMP_CHOICES,
        help="autocast precision for inference",
    )
    parser.add_argument(
        "--device",
        type=str,
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when present, else CPU",
    )
    parser.add_argument(
        "--gpus",
        nargs="+",
        type=int,
        default=None,
        help="GPU ids for DataParallel (default: all visible; ignored under torchrun)",
    )
    add_data_args(parser)
    return parser


def _per_weight(text: str, flag: str, kind: type, num_weights: int) -> list:
    """The comma-separated numbers of ``flag``, one per weight (a one-line ValueError if not)."""
    try:
        values = [kind(v) for v in str(text).split(",") if v]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if len(values) != num_weights:
        raise ValueError(
            f"{num_weights} weights but {len(values)} {flag} values: give one per weight, "
            "e.g. --weights=a.pth,b.pth --test_segments=8,16"
        )
    return values


def split_list_args(args: argparse.Namespace) -> tuple[list, list, list, list]:
    """Weights, segments, coefficients and test lists, one per ensemble member. A segment count
    is None where ``--test_segments`` is not given: the checkpoint's own is used.

    Raises ValueError with a one-line message when the lists do not line up.
    """
    weights = [w for w in args.weights.split(",") if w]
    if not weights:
        raise ValueError("--weights is empty: give one checkpoint file or a comma-separated list")
    if args.test_segments is None:  # each checkpoint's own (load_model reads it)
        segments: list = [None] * len(weights)
    else:
        segments = _per_weight(args.test_segments, "--test_segments", int, len(weights))
    if any(s is not None and s <= 0 for s in segments):
        raise ValueError(f"--test_segments must be positive, got {args.test_segments!r}")
    coeffs = [1.0] * len(weights)
    if args.coeff is not None:
        coeffs = _per_weight(args.coeff, "--coeff", float, len(weights))
        # The ensemble is a weighted average: a NaN/inf weight makes every score NaN, all zeros
        # make every score 0 (every video "predicted" as class 0).
        if not all(math.isfinite(c) and c >= 0 for c in coeffs) or not any(coeffs):
            raise ValueError(
                f"--coeff {args.coeff!r}: ensemble weights must be finite, >= 0 and not all 0, "
                "e.g. --coeff 1,1"
            )
    if args.max_num == 0 or args.max_num < -1:
        raise ValueError(
            f"--max_num {args.max_num}: give the number of videos to evaluate (>= 1), or -1 for all"
        )
    if args.test_list is None:
        test_lists = [None] * len(weights)
    else:
        test_lists = args.test_list.split(",")
        if len(test_lists) == 1:
            test_lists = test_lists * len(weights)
        if len(test_lists) != len(weights):
            raise ValueError(
                f"{len(weights)} weights but {len(test_lists)} --test_list files: give one list "
                "for all weights or one per weight"
            )
    if args.batch_size <= 0:
        raise ValueError(f"--batch_size must be positive, got {args.batch_size}")
    evaluation.num_test_clips(dense_sample=args.dense_sample, twice_sample=args.twice_sample)
    if args.clip_sampling != "tsm" and not args.dense_sample:
        raise ValueError(
            f"--clip_sampling {args.clip_sampling} places dense clips: add --dense_sample"
        )
    return weights, segments, coeffs, test_lists


def cuda_devices(requested: list[int] | None, num_visible: int) -> list[int]:
    """The GPUs of a single-process CUDA evaluation: ``--gpus`` in the order given, else every
    visible GPU. The first one holds the model, is made the current device and gathers
    DataParallel's outputs; a ValueError names an id that is not visible or is given twice."""
    if not requested:
        return list(range(num_visible))
    given = " ".join(map(str, requested))
    bad = [g for g in requested if not 0 <= g < num_visible]
    if bad:
        raise ValueError(
            f"--gpus {given}: GPU {bad[0]} is not visible ({num_visible} visible, numbered from 0 "
            "after CUDA_VISIBLE_DEVICES): give ids below the number of visible GPUs"
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"--gpus {given} names a GPU twice: give each GPU once")
    return list(requested)


def init_process(
    requested_device: str, gpus: list[int] | None = None
) -> tuple[du.DistContext, list[int]]:
    """Join the torchrun/SLURM process group when launched by one, and pick the device.

    CUDA when present (this rank's GPU under torchrun, NCCL), else the CPU (gloo); `--device cpu`
    forces the CPU even on a GPU machine. Returns the context and, for a single process on CUDA,
    the GPUs DataParallel splits the batch over (``cuda_devices``; the context's device is the
    first of them); an empty list otherwise.
    """
    visible = torch.cuda.device_count()
    if requested_device == "cuda" and visible == 0:
        raise ValueError("--device cuda was given but CUDA is not available: use --device cpu")
    plan = du.plan_launch(
        multiprocessing_distributed=False,
        world_size=1,
        rank=-1,
        dist_url=None,
        dist_backend=None,
        available_gpus=None,
        cpu_procs=None,
        num_visible_gpus=0 if requested_device == "cpu" else visible,
    )
    gpu_ids: list[int] = []
    if plan.mode == "single" and plan.use_cuda:
        gpu_ids = cuda_devices(gpus, visible)
        plan.gpu = gpu_ids[0]  # init_worker makes it the current device
    elif gpus and plan.mode != "single":
        logger.warning("--gpus ignored: under torchrun / SLURM each rank uses its local GPU")
    return du.init_worker(plan, local_rank=0, timeout_minutes=30.0), gpu_ids


def build_model(
    weights: str, num_segments: int | None, args: argparse.Namespace
) -> tuple[torch.nn.Module, tuple]:
    """The network of checkpoint ``weights`` tested on ``num_segments`` frames (None: the
    checkpoint's own, as every other model setting not given: input size, modality, shift,
    attached blocks, backbone), with its weights, and the dataset entry for its modality (``resolve_dataset``); ValueError when its classes do
    not match the dataset's."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights} not found: check the --weights path")
    model, meta = load_model(weights, num_segments=num_segments, input_size=args.input_size)
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise ValueError(
            f"{weights}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); its scores "
            "would mean nothing: test a checkpoint saved before training diverged"
        )
    entry = resolve_dataset(
        args.dataset, model.modality, **{k: getattr(args, k) for k in DATA_FLAGS}
    )
    num_class = entry[0]
    if model.num_class != num_class:
        raise ValueError(
            f"{weights} was trained for {model.num_class} classes but dataset {args.dataset!r} "
            f"has {num_class}: test it on the dataset it was trained on (or fix --num_class / "
            "--category_file)"
        )
    if meta["dataset"] and meta["dataset"] != args.dataset:
        logger.warning(
            "%s was trained on %r, testing on %r", weights, meta["dataset"], args.dataset
        )
    if meta["dense_sample"] and not args.dense_sample:
        logger.warning(
            "%s was trained with dense sampling; the published protocol tests it with "
            "--dense_sample",
            os.path.basename(weights),
        )
    return model, entry


def check_outputs_writable(args: argparse.Namespace) -> None:
    """Refuse, before the evaluation, output paths that cannot be written (its result would be
    lost at the end); one line naming the flag (OutputPathError)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 writes every output
    for flag in ("save_scores", "csv_file"):
        if getattr(args, flag):
            ensure_writable_file(getattr(args, flag), f"--{flag}")
    if args.report_dir:
        ensure_writable_dir(args.report_dir, "--report_dir")


def output_files(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files this evaluation writes (--save_scores, --csv_file, --report_dir's)."""
    outputs = [("--save_scores", args.save_scores), ("--csv_file", args.csv_file)]
    if args.report_dir:
        names = REPORT_FILES.values()
        outputs += [(f"--report_dir ({n})", os.path.join(args.report_dir, n)) for n in names]
    return outputs


def category_path(args: argparse.Namespace, modality: str) -> str | None:
    """The category file the class names are read from: the one given, else the registered."""
    return args.category_file or (
        category_file(args.dataset, modality, args.data_root or default_data_root())
        if args.dataset in REGISTRY
        else None
    )


def class_names(args: argparse.Namespace, modality: str, num_class: int) -> list[str]:
    """Category names (the category file given or registered), else the class indices."""
    path = category_path(args, modality)
    if path and os.path.isfile(path):
        names = read_categories(path)
        if len(names) == num_class:
            return names
    return [str(i) for i in range(num_class)]


def main(args: argparse.Namespace) -> dict | None:
    """Evaluate the weights of `args`; returns the metrics on rank 0 (None on other ranks)."""
    weights, segments, coeffs, test_lists = split_list_args(args)
    check_outputs_writable(args)
    ctx, gpu_ids = init_process(args.device, args.gpus)
    rank, world_size, device = ctx.rank, ctx.world_size, ctx.device
    num_views = evaluation.views_per_video(args.test_crops, args.dense_sample, args.twice_sample)
    clips = evaluation.num_test_clips(args.dense_sample, args.twice_sample)

    models, loaders, datasets = [], [], []
    names: list[str] = []
    for w, seg, test_list in zip(weights, segments, test_lists):
        model, (num_class, _, val_list, root_path, image_tmpl) = build_model(w, seg, args)
        seg = model.num_segments  # the checkpoint's when --test_segments is not given
        modality = model.modality
        crop_size = model.scale_size if args.full_res else model.input_size
        dataset = TSNDataSet(
            root_path,
            test_list or val_list,
            num_segments=seg,
            new_length=model.new_length,
            modality=modality,
            image_tmpl=image_tmpl,
            transform=evaluation.build_test_transform(
                args.test_crops,
                model.scale_size,
                crop_size,
                model.input_mean,
                model.input_std,
                device_views=args.device_views,
            ),
            random_shift=False,
            test_mode=True,
            dense_sample=args.dense_sample,
            twice_sample=args.twice_sample,
            clip_sampling=args.clip_sampling,
            num_class=num_class,
            skip_bad_lines=args.skip_bad_lines,
            strict_data=args.strict_data,
        )
        if args.device_views:
            use_device_decoding(dataset)  # the workers hand over the JPEG bytes
        if datasets and [r.path for r in dataset.video_list] != [
            r.path for r in datasets[0].video_list
        ]:
            raise ValueError(
                "the ensemble's test lists hold different videos: give every weight the same "
                "list (or lists of the same videos in the same order)"
            )
        shape = bf16_guard.clip_shape(model, args.batch_size * num_views, crop_size)
        bf16_guard.guard_bf16(model, shape, device, args.amp, warn=rank == 0, backward=False)
        # DataParallel (several GPUs) splits the videos x views batch; autocast runs inside it.
        models.append(evaluation.inference_model(model, device, args.amp, gpu_ids))
        datasets.append(dataset)
        loaders.append(
            evaluation.make_test_loader(
                dataset,
                batch_size=args.batch_size,
                workers=args.workers,
                rank=rank,
                world_size=world_size,
                max_num=args.max_num,
                pin_memory=device.type == "cuda",
            )
        )
        names = class_names(args, modality, num_class)
        logger.info(
            "%s: %d segments, %d views per video (%d clips x %d crops of %d px), %d videos",
            os.path.basename(w),
            seg,
            num_views,
            clips,
            args.test_crops,
            crop_size,
            len(dataset),
        )

    check_outputs(  # before the evaluation: no output is an input (ops/output_paths.py)
        [i for w in weights for i in weights_inputs("--weights", w)]
        + [("--test_list", d.list_file) for d in datasets]
        + [("--category_file", category_path(args, modality))],
        output_files(args),
    )
    result = evaluation.evaluate_ensemble(
        models,
        loaders,
        [num_views] * len(models),
        device,
        coeffs=coeffs,
        softmax=args.softmax,
        amp=args.amp,
        progress=rank == 0,
    )
    counts: dict[str, int] = {}
    for d in datasets:  # summed over the ensemble's datasets (each loads every video)
        for key, value in d.bad_data_counts().items():
            counts[key] = counts.get(key, 0) + int(value)
    result = evaluation.gather_results(result, extra_counts=counts)
    if result is None:
        return None
    if result.scores.size(0) == 0:
        raise ValueError(
            f"no video of the test list could be evaluated ({result.num_skipped} skipped; data "
            f"problems: {result.extra}): check --data_root/--root_path and the frame files"
        )
    finite = torch.isfinite(result.scores).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(
            f"{int((~finite).sum())} of {finite.numel()} videos got NaN or inf scores: no result "
            "is reported or written; check the weights (and --amp fp16 overflow)"
        )
    metrics = summarize(result.scores, result.labels)
    video_names = [datasets[0].video_list[i].path for i in result.indices.tolist()]
    write_outputs(args, result, video_names, names)
    print_summary(metrics, result, num_models=len(models))
    return metrics


def write_outputs(
    args: argparse.Namespace,
    result: evaluation.EvalResult,
    video_names: list[str],
    names: list[str],
) -> None:
    """--save_scores, --csv_file and --report_dir (rank 0 only)."""
    if args.save_scores:
        save_scores(args.save_scores, result.scores, result.labels, result.indices, video_names)
        logger.info("scores written to %s", args.save_scores)
    if args.csv_file:
        write_prediction_csv(
            args.csv_file, video_names, result.scores, names, top5=args.dataset == "somethingv2"
        )
        logger.info("predictions written to %s", args.csv_file)
    if args.report_dir:
        paths = write_report(args.report_dir, result.scores, result.labels, names)
        logger.info("report written to %s", ", ".join(paths.values()))


def print_summary(metrics: dict, result: evaluation.EvalResult, num_models: int) -> None:
    """The final table (stdout, rank 0)."""
    print("-----Evaluation is finished------")
    print(f"videos evaluated : {metrics['num_videos']}")
    print(f"videos skipped   : {result.num_skipped} (unreadable; excluded from the metrics)")
    problems = {k: v for k, v in sorted(result.extra.items()) if v}
    scope = f", summed over {num_models} models" if num_models > 1 else ""
    if problems:
        text = ", ".join(f"{k}={v}" for k, v in problems.items())
        print(f"data problems    : {text}{scope}")
    else:
        print("data problems    : none")
    print(f"Class Accuracy {metrics['mean_class_acc']:.02f}%")
    print(f"Overall Prec@1 {metrics['top1']:.02f}% Prec@5 {metrics['top5']:.02f}%")
    print(
        f"throughput       : {result.videos_per_s:.2f} videos/s, {result.clips_per_s:.2f} clips/s "
        f"({result.seconds:.1f} s)"
    )


def cli(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends with a one-line message on stderr and exit code 2."""
    args = get_args_parser().parse_args(argv)
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        main(args)
    except (CheckpointError, du.DistributedSetupError, ValueError, FileNotFoundError) as exc:
        print(f"test_models.py: error: {data_error_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output file that could not be written (full disk, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or data_error_message(exc)
        print(f"test_models.py: error: {where}{reason}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
