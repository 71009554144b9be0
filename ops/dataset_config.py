"""Dataset registry: where the lists, class names and frames of each dataset live.

Datasets prepared for TSM keep working: the relative layout under the data root is TSM's
(SPEC.md section 8). Only the root is ours: `--data_root DIR`, else the environment variable
`RNL_DATA_ROOT`, else `./data`. Every entry can be overridden on the command line
(`add_data_args` / `resolve_dataset`, which takes their values as keywords, `DATA_FLAGS`),
e.g. to point at a list file outside the root.

The `synthetic` dataset is written by `tools/make_synthetic.py` and used by the demo and tests.

Video files instead of frame folders (`--videos`, or `--video_root DIR`): the lists are video lists
(`<video file relative to the video root> <label> [<num_frames>]`, the mmaction2 convention) and
frames are decoded from the files (ops/video.py). The defaults follow mmaction2's layout names
under the data root for the datasets that ship as videos (`VIDEO_REGISTRY`). `resolve_dataset`
then returns the video root as `root_path` and `VIDEO_TMPL` as `image_tmpl`, which tells
`TSNDataSet` to read video files, so scripts that build a TSNDataSet from these values read
videos without a change. A video root may list several folders separated by `os.pathsep`
(mmaction2 keeps Kinetics' train and val videos apart); a list entry is looked up in each in turn.
"""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)

ENV_DATA_ROOT = "RNL_DATA_ROOT"

# Datasets whose labels depend on left/right ("pushing something from left to right"), so a
# horizontal flip would change the label: train without GroupRandomHorizontalFlip.
NO_FLIP_DATASETS = ("something", "somethingv2", "jester", "synthetic")

# dataset -> modality -> entry. "classes" is a category file (one class name per line, line i is
# label i) or the number of classes. All paths are relative to the data root.
REGISTRY: dict[str, dict[str, dict]] = {
    "something": {
        "RGB": {
            "classes": "something/v1/category.txt",
            "train_list": "something/v1/train_videofolder.txt",
            "val_list": "something/v1/val_videofolder.txt",
            "root_path": "something/v1/20bn-something-something-v1",
            "image_tmpl": "{:05d}.jpg",
        },
        "Flow": {
            "classes": "something/v1/category.txt",
            "train_list": "something/v1/train_videofolder_flow.txt",
            "val_list": "something/v1/val_videofolder_flow.txt",
            "root_path": "something/v1/20bn-something-something-v1-flow",
            "image_tmpl": "{:06d}-{}_{:05d}.jpg",
        },
    },
    "somethingv2": {
        "RGB": {
            "classes": "something/v2/category.txt",
            "train_list": "something/v2/train_videofolder.txt",
            "val_list": "something/v2/val_videofolder.txt",
            "root_path": "something/v2/20bn-something-something-v2-frames",
            "image_tmpl": "{:06d}.jpg",
        },
        "Flow": {
            "classes": "something/v2/category.txt",
            "train_list": "something/v2/train_videofolder_flow.txt",
            "val_list": "something/v2/val_videofolder_flow.txt",
            "root_path": "something/v2/20bn-something-something-v2-flow",
            "image_tmpl": "{:06d}.jpg",
        },
    },
    "jester": {
        "RGB": {
            "classes": "jester/category.txt",
            "train_list": "jester/train_videofolder.txt",
            "val_list": "jester/val_videofolder.txt",
            "root_path": "jester/20bn-jester-v1",
            "image_tmpl": "{:05d}.jpg",
        },
    },
    "kinetics": {
        "RGB": {
            "classes": 400,
            "train_list": "kinetics/labels/train_videofolder.txt",
            "val_list": "kinetics/labels/val_videofolder.txt",
            "root_path": "kinetics/images",
            "image_tmpl": "img_{:05d}.jpg",
        },
    },
    "ucf101": {
        "RGB": {
            "classes": "UCF101/labels/classInd.txt",
            "train_list": "UCF101/file_list/ucf101_rgb_train_split_1.txt",
            "val_list": "UCF101/file_list/ucf101_rgb_val_split_1.txt",
            "root_path": "UCF101/jpg",
            "image_tmpl": "img_{:05d}.jpg",
        },
        "Flow": {
            "classes": "UCF101/labels/classInd.txt",
            "train_list": "UCF101/file_list/ucf101_flow_train_split_1.txt",
            "val_list": "UCF101/file_list/ucf101_flow_val_split_1.txt",
            "root_path": "UCF101/jpg",
            "image_tmpl": "flow_{}_{:05d}.jpg",
        },
    },
    "hmdb51": {
        "RGB": {
            "classes": 51,
            "train_list": "HMDB51/splits/hmdb51_rgb_train_split_1.txt",
            "val_list": "HMDB51/splits/hmdb51_rgb_val_split_1.txt",
            "root_path": "HMDB51/images",
            "image_tmpl": "img_{:05d}.jpg",
        },
        "Flow": {
            "classes": 51,
            "train_list": "HMDB51/splits/hmdb51_flow_train_split_1.txt",
            "val_list": "HMDB51/splits/hmdb51_flow_val_split_1.txt",
            "root_path": "HMDB51/images",
            "image_tmpl": "flow_{}_{:05d}.jpg",
        },
    },
    "synthetic": {
        "RGB": {
            "classes": "synthetic/category.txt",
            "train_list": "synthetic/train_videofolder.txt",
            "val_list": "synthetic/val_videofolder.txt",
            "root_path": "synthetic/frames",
            "image_tmpl": "img_{:05d}.jpg",
        },
    },
}

DATASETS = tuple(REGISTRY)

# `image_tmpl` value that means "frames are decoded from the video files of a video list".
VIDEO_TMPL = "<video>"

# dataset -> video entry, mmaction2's names (its `data/` folder is our data root). "video_root" is
# a list of folders searched in order for each list entry.
VIDEO_REGISTRY: dict[str, dict] = {
    "kinetics": {
        "classes": 400,
        "train_list": "kinetics400/kinetics400_train_list_videos.txt",
        "val_list": "kinetics400/kinetics400_val_list_videos.txt",
        "video_root": ["kinetics400/videos_train", "kinetics400/videos_val"],
    },
    "somethingv2": {
        "classes": 174,
        "train_list": "sthv2/sthv2_train_list_videos.txt",
        "val_list": "sthv2/sthv2_val_list_videos.txt",
        "video_root": ["sthv2/videos"],
    },
    "ucf101": {
        "classes": 101,
        "train_list": "ucf101/ucf101_train_split_1_videos.txt",
        "val_list": "ucf101/ucf101_val_split_1_videos.txt",
        "video_root": ["ucf101/videos"],
    },
    "hmdb51": {
        "classes": 51,
        "train_list": "hmdb51/hmdb51_train_split_1_videos.txt",
        "val_list": "hmdb51/hmdb51_val_split_1_videos.txt",
        "video_root": ["hmdb51/videos"],
    },
}
_ENTRY_FIELDS = ("train_list", "val_list", "root_path", "image_tmpl")


def default_data_root() -> str:
    """`$RNL_DATA_ROOT` if set, else `./data`."""
    return os.environ.get(ENV_DATA_ROOT) or "data"


def read_categories(path: str) -> list[str]:
    """Class names of a category file (line i is label i); trailing blank lines are ignored, a
    byte-order mark too. A blank line before the last name is refused (ValueError): it would be a
    class without a name, and dropping it would shift every later label. UCF101's official
    ``classInd.txt`` (``1 ApplyEyeMakeup``, numbered 1..N in order) is read as its names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"category file not found: {path} (check --data_root, or pass --category_file / "
            "--num_class)"
        )
    with open(path, encoding="utf-8-sig") as f:
        names = [line.rstrip("\r\n").strip() for line in f]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"category file {path} is empty: it needs one class name per line")
    if "" in names:
        raise ValueError(
            f"category file {path}: line {names.index('') + 1} is blank (line i names class i): "
            "remove the blank line, or name the class"
        )
    numbered = [name.split(None, 1) for name in names]
    if all(len(p) == 2 and p[0] == str(i) for i, p in enumerate(numbered, start=1)):
        return [p[1].strip() for p in numbered]
    return names


def _entry(dataset: str, modality: str) -> dict:
    if dataset not in REGISTRY:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if modality not in REGISTRY[dataset]:
        have = ", ".join(REGISTRY[dataset])
        raise ValueError(
            f"dataset {dataset!r} has no {modality} entry (it has {have}); give all of "
            "--train_list --val_list --root_path --image_tmpl and --num_class to use your own"
        )
    return REGISTRY[dataset][modality]


def return_dataset(
    dataset: str, modality: str, data_root: str | None = None
) -> tuple[int, str, str, str, str]:
    """(num_class, train_list, val_list, root_path, image_tmpl) of a registered dataset.

    Paths are joined to `data_root` (default: `default_data_root()`). The class count comes from
    the category file (which must exist) or the registry. List files are not opened here: the
    dataset reports a missing list when it is built, so a test run needs no training list.
    """
    root = data_root if data_root is not None else default_data_root()
    entry = _entry(dataset, modality)
    classes = entry["classes"]
    if isinstance(classes, int):
        num_class = classes
    else:
        path = os.path.join(root, classes)
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"data root {root} does not exist: pass --data_root DIR or set {ENV_DATA_ROOT}"
            )
        num_class = len(read_categories(path))
    logger.info("%s (%s): %d classes, data root %s", dataset, modality, num_class, root)
    return (
        num_class,
        os.path.join(root, entry["train_list"]),
        os.path.join(root, entry["val_list"]),
        os.path.join(root, entry["root_path"]),
        entry["image_tmpl"],
    )


def category_file(dataset: str, modality: str, data_root: str | None = None) -> str | None:
    """Path of the registered category file, or None when the registry gives a class count."""
    classes = _entry(dataset, modality)["classes"]
    if isinstance(classes, int):
        return None
    root = data_root if data_root is not None else default_data_root()
    return os.path.join(root, classes)


def dataset_class_names(
    dataset: str | None,
    modality: str = "RGB",
    data_root: str | None = None,
    category_path: str | None = None,
    num_class: int | None = None,
) -> list[str] | None:
    """Class names (line i is class i) from ``category_path``, else from the registered category
    file of ``dataset`` under ``data_root``; None when there is no such file (Kinetics and HMDB51
    register only a count) or when its length is not ``num_class``, which is logged."""
    path = category_path
    if path is None and dataset in REGISTRY and modality in REGISTRY[dataset]:
        path = category_file(dataset, modality, data_root)
    if path is None or (category_path is None and not os.path.isfile(path)):
        return None
    names = read_categories(path)  # a category file given must be there
    if num_class is not None and len(names) != num_class:
        logger.warning(
            "%s names %d classes, not %d: class names not used", path, len(names), num_class
        )
        return None
    return names


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the data flags shared by main.py, test_models.py and tools/check_data.py."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data_root",
        default=None,
        help=f"root of the dataset layout (default: ${ENV_DATA_ROOT}, else ./data)",
    )
    g.add_argument("--train_list", default=None, help="override the training list file")
    g.add_argument("--val_list", default=None, help="override the validation list file")
    g.add_argument("--root_path", default=None, help="override the folder holding frame folders")
    g.add_argument(
        "--image_tmpl", default=None, help="override the frame file name, e.g. 'img_{:05d}.jpg'"
    )
    g.add_argument(
        "--videos",
        action="store_true",
        help="read video files instead of frame folders: the dataset's video lists and videos "
        "(mmaction2 layout under the data root, or --video_root / --train_list / --val_list)",
    )
    g.add_argument(
        "--video_root",
        default=None,
        metavar="DIR",
        help="folder holding the video files of the video lists (implies --videos); several "
        f"folders separated by {os.pathsep!r} are searched in order for each list entry",
    )
    g.add_argument("--num_class", type=int, default=None, help="override the number of classes")
    g.add_argument(
        "--category_file", default=None, help="override the category file (one class per line)"
    )
    g.add_argument(
        "--skip_bad_lines",
        action="store_true",
        help="skip (and count) malformed list lines instead of stopping",
    )
    g.add_argument(
        "--strict_data",
        action="store_true",
        help="make any data problem (bad list line, missing/corrupt frame) an error",
    )
    return parser


# The destinations of `add_data_args`' flags that `resolve_dataset` takes, under the same names:
# a command line resolves with `resolve_dataset(dataset, modality, **{k: getattr(args, k) for k
# in DATA_FLAGS})`.
DATA_FLAGS = (
    "data_root", "train_list", "val_list", "root_path", "image_tmpl", "videos", "video_root",
    "num_class", "category_file",
)  # fmt: skip


def resolve_dataset(
    dataset: str | None,
    modality: str,
    *,
    data_root: str | None = None,
    train_list: str | None = None,
    val_list: str | None = None,
    root_path: str | None = None,
    image_tmpl: str | None = None,
    videos: bool = False,
    video_root: str | None = None,
    num_class: int | None = None,
    category_file: str | None = None,
) -> tuple[int, str, str, str, str]:
    """`return_dataset` for `dataset` with the overrides of `add_data_args` (None: not given).

    A dataset or modality missing from the registry works when every entry is given.
    `videos` or a `video_root` read video files (`_resolve_videos`). Returns (num_class,
    train_list, val_list, root_path, image_tmpl).
    """
    over = {"train_list": train_list, "val_list": val_list, "root_path": root_path}
    over["image_tmpl"] = image_tmpl
    root = data_root or default_data_root()
    if num_class is not None and num_class < 1:
        raise ValueError(f"--num_class must be >= 1, got {num_class}")
    if videos or video_root:
        return _resolve_videos(dataset, modality, root, over, video_root, num_class, category_file)
    cat_file = category_file

    registered = dataset in REGISTRY and modality in REGISTRY.get(dataset, {})
    if not registered:
        missing = [f"--{k}" for k, v in over.items() if v is None]
        if num_class is None and cat_file is None:
            missing.append("--num_class or --category_file")
        if missing:
            _entry(str(dataset), modality)  # raises the registry's message
        n = num_class if num_class is not None else len(read_categories(cat_file))
        return n, over["train_list"], over["val_list"], over["root_path"], over["image_tmpl"]

    entry = _entry(dataset, modality)
    if num_class is not None:
        n = num_class
    elif cat_file is not None:
        n = len(read_categories(cat_file))
    elif isinstance(entry["classes"], int):
        n = entry["classes"]
    else:
        n = len(read_categories(os.path.join(root, entry["classes"])))
    paths = {
        k: over[k] if over[k] is not None else os.path.join(root, entry[k])
        for k in ("train_list", "val_list", "root_path")
    }
    tmpl = over["image_tmpl"] if over["image_tmpl"] is not None else entry["image_tmpl"]
    logger.info("%s (%s): %d classes, data root %s", dataset, modality, n, root)
    return n, paths["train_list"], paths["val_list"], paths["root_path"], tmpl


def _resolve_videos(
    dataset: str | None,
    modality: str,
    root: str,
    over: dict,
    video_root: str | None,
    num_class: int | None,
    cat_file: str | None,
) -> tuple[int, str, str, str, str]:
    """`resolve_dataset` for video files: (num_class, train_list, val_list, video roots joined
    with os.pathsep, VIDEO_TMPL)."""
    for flag in ("root_path", "image_tmpl"):
        if over[flag] is not None:
            raise ValueError(
                f"--{flag} names frame folders; with --videos give the video folder with "
                "--video_root DIR"
            )
    if modality != "RGB":
        raise ValueError(
            f"video files hold RGB frames, not {modality}: use frame folders for --modality "
            f"{modality} (tools/extract_frames.py), or drop --videos / --video_root"
        )
    entry = VIDEO_REGISTRY.get(dataset, {})
    given = {"train_list": over["train_list"], "val_list": over["val_list"]}
    given["video_root"] = video_root
    missing = [f"--{k}" for k, v in given.items() if v is None and k not in entry]
    if num_class is None and cat_file is None and "classes" not in entry:
        missing.append("--num_class or --category_file")
    if missing:
        have = ", ".join(VIDEO_REGISTRY)
        raise ValueError(
            f"dataset {dataset!r} has no video entry (registered: {have}); give "
            f"{' '.join(missing)} to read its videos"
        )
    if num_class is not None:
        n = num_class
    elif cat_file is not None:
        n = len(read_categories(cat_file))
    else:
        n = entry["classes"]
    lists = {
        k: given[k] if given[k] is not None else os.path.join(root, entry[k])
        for k in ("train_list", "val_list")
    }
    roots = given["video_root"] or os.pathsep.join(
        os.path.join(root, r) for r in entry["video_root"]
    )
    logger.info("%s (videos): %d classes, video root %s", dataset, n, roots)
    return n, lists["train_list"], lists["val_list"], roots, VIDEO_TMPL
