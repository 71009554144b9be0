"""Write a dataset's list and category files from its official annotation files.

    python tools/gen_lists.py kinetics --annotations ~/kinetics400 --data_root data
    python tools/gen_lists.py ucf101 --annotations ~/ucfTrainTestlist --split 2
    python tools/gen_lists.py somethingv2 --annotations ~/sthv2/labels --videos ~/sthv2/videos

Reads the annotation files in their official formats and the extracted frame folders
(tools/extract_frames.py), or packed frames (``<video>.zip``, tools/pack_frames.py or
``extract_frames.py --pack``: listed under the folder name the loader looks them up by), and
writes what the frame-folder dataset reads, at the registry's paths
under ``--data_root`` (ops/dataset_config.py, SPEC.md section 8):

- the category file, one class name per line, line i is label i (for kinetics and hmdb51, whose
  registry entry is a class count, ``category.txt`` beside the lists);
- the train and val lists, one line ``<folder relative to the frames root> <frames> <label>``,
  the frame count being the frames found on disk (1..n without a gap; gaps are reported);
- ``missing_<list name>``: the videos of the annotations that have no frame folder, one per line.

With ``--videos [DIR ...]`` instead of frames it writes video lists ``<file relative to DIR>
<label>`` (the mmaction2 convention) at the paths of ``VIDEO_REGISTRY`` (e.g.
``kinetics400/kinetics400_train_list_videos.txt``), for reading videos directly; without DIR the
registry's video folders are searched. Paths with spaces make a list comma separated (the
dataset reads both forms).

Annotations (``--annotations DIR`` holding the official file names, or each file given with
``--labels`` / ``--train`` / ``--val``):

| dataset | labels | train / val |
| --- | --- | --- |
| kinetics | sorted class names of the CSVs, or ``--labels`` (one per line) | CSV ``label,youtube_id,time_start,time_end,split`` |
| something | ``something-something-v1-labels.csv`` (sorted) | ``...-train.csv`` / ``...-validation.csv``, ``id;label`` |
| somethingv2 | ``something-something-v2-labels.json`` ``{name: "index"}`` | ``...-train.json`` / ``...-validation.json``, label from the template without brackets |
| jester | ``jester-v1-labels.csv`` (sorted) | ``jester-v1-train.csv`` / ``...-validation.csv``, ``id;label`` |
| ucf101 | ``classInd.txt`` (``1 ApplyEyeMakeup``) | ``trainlist0N.txt`` / ``testlist0N.txt`` |
| hmdb51 | sorted class names of the split files | ``<class>_test_splitN.txt``: 1 train, 2 test (val), 0 unused |

Videos are found on disk by name anywhere under the frames (or videos) root, so flat layouts and
per-class folders both work; Kinetics clips are matched as ``<id>_<start:06d>_<end:06d>``,
``<id>_<start>`` or ``<id>``. Videos missing on disk are reported (not fatal); an annotation that
is not understood is a one-line error naming the file and line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ops.atomic import write_atomically
from ops.dataset_config import REGISTRY, VIDEO_REGISTRY, default_data_root
from ops.output_paths import check_outputs
from ops.packed_frames import EXT as PACKED_EXT
from ops.packed_frames import PackedFile
from ops.utils import progress, setup_logging
from tools._common import (
    TOOL_ERRORS,
    VIDEO_EXTENSIONS,
    count_frame_names,
    fail,
    frame_pattern,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
DATASETS = ("kinetics", "something", "somethingv2", "jester", "ucf101", "hmdb51")

# Official annotation file names looked for in --annotations, best first ({n}: the split number).
ANNOTATION_FILES = {
    "kinetics": {
        "labels": ("kinetics_label_map.txt", "kinetics_400_labels.txt"),
        "train": (
            "kinetics_train.csv",
            "kinetics-400_train.csv",
            "kinetics400_train.csv",
            "train.csv",
        ),
        "val": (
            "kinetics_val.csv",
            "kinetics-400_val.csv",
            "kinetics400_val.csv",
            "validate.csv",
            "val.csv",
        ),
    },
    "something": {
        "labels": ("something-something-v1-labels.csv",),
        "train": ("something-something-v1-train.csv",),
        "val": ("something-something-v1-validation.csv",),
    },
    "somethingv2": {
        "labels": ("something-something-v2-labels.json", "labels.json"),
        "train": ("something-something-v2-train.json", "train.json"),
        "val": ("something-something-v2-validation.json", "validation.json"),
    },
    "jester": {
        "labels": ("jester-v1-labels.csv",),
        "train": ("jester-v1-train.csv",),
        "val": ("jester-v1-validation.csv",),
    },
    "ucf101": {
        "labels": ("classInd.txt",),
        "train": ("trainlist{n:02d}.txt",),
        "val": ("testlist{n:02d}.txt",),
    },
    "hmdb51": {},  # one file per class, found by pattern
}
OPTIONAL_ROLES = {"kinetics": ("labels",)}  # kinetics: class names from the CSVs if absent

# Video-list names (mmaction2's) for the datasets without a VIDEO_REGISTRY entry, written next to
# the registry's frame lists.
VIDEO_LIST_PREFIX = {
    "kinetics": "kinetics400",
    "something": "sthv1",
    "somethingv2": "sthv2",
    "jester": "jester",
    "ucf101": "ucf101",
    "hmdb51": "hmdb51",
}


class AnnotationError(ValueError):
    """An annotation file that is not in the expected format; the message names file and line."""


@dataclass(frozen=True)
class Annotation:
    """One annotated video: names it may have on disk (best first), label, expected class folder."""

    keys: tuple[str, ...]
    label: int
    hints: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.keys[0]


@dataclass
class SplitReport:
    """What happened to the videos of one split."""

    written: int = 0
    missing: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # folder without frame 1
    gaps: list[str] = field(default_factory=list)  # frames missing in the middle
    ambiguous: list[str] = field(default_factory=list)  # several folders of that name


# ---------------------------------------------------------------------------------------------
# annotation readers: each returns (class names, {"train": [...], "val": [...]})
# ---------------------------------------------------------------------------------------------
def _lines(path: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers."""
    with open(path, encoding="utf-8-sig") as f:
        return [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]


def _label_of(names: dict[str, int], name: str, where: str) -> int:
    if name not in names:
        raise AnnotationError(f"{where}: class {name!r} is not in the class list")
    return names[name]


def kinetics_folder_name(label: str) -> str:
    """Class folder name used by TSM's Kinetics frames: spaces -> '_', no quotes or brackets."""
    return re.sub(r"[\"'()]", "", label.replace(" ", "_"))


def read_kinetics(
    train: str, val: str, labels: str | None = None
) -> tuple[list[str], dict[str, list[Annotation]]]:
    """Kinetics-400 CSVs (``label,youtube_id,time_start,time_end[,split[,is_cc]]`` with a header).

    Class order: ``labels`` (one name per line, e.g. TSM's kinetics_label_map.txt, the order the
    published checkpoints use) or the sorted class names found in the two CSVs.
    """
    rows: dict[str, list[tuple[str, str, int, int, str]]] = {}
    for split, path in (("train", train), ("val", val)):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            need = {"label", "youtube_id", "time_start", "time_end"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise AnnotationError(
                    f"{path}: expected a Kinetics CSV with header label,youtube_id,time_start,"
                    f"time_end,split; found {reader.fieldnames}"
                )
            rows[split] = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                try:
                    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                except (TypeError, ValueError):
                    raise AnnotationError(f"{where}: time_start/time_end are not numbers") from None
                rows[split].append(
                    (row["label"].strip(), row["youtube_id"].strip(), start, end, where)
                )
    all_names = {r[0] for split_rows in rows.values() for r in split_rows}
    if labels:
        classes = [line for _, line in _lines(labels)]
        if len(set(classes)) != len(classes):
            raise AnnotationError(f"{labels}: a class name appears twice")
    else:
        classes = sorted(all_names)
    # Accept both the official names and TSM's folder-style names on either side.
    index = {kinetics_folder_name(c): i for i, c in enumerate(classes)}
    index.update({c: i for i, c in enumerate(classes)})
    for name in all_names:
        if name not in index and kinetics_folder_name(name) in index:
            index[name] = index[kinetics_folder_name(name)]
    out = {}
    for split, split_rows in rows.items():
        out[split] = [
            Annotation(
                keys=(f"{yid}_{start:06d}_{end:06d}", f"{yid}_{start}", yid),
                label=_label_of(index, label, where),
                hints=(label, kinetics_folder_name(label)),
            )
            for label, yid, start, end, where in split_rows
        ]
    return classes, out


def read_something(
    labels: str, train: str, val: str
) -> tuple[list[str], dict[str, list[Annotation]]]:
    """Something-Something v1 and Jester: a labels CSV (one name per line, label = sorted order)
    and ``id;label`` CSVs."""
    classes = sorted({line for _, line in _lines(labels)})
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, path in (("train", train), ("val", val)):
        anns = []
        for n, line in _lines(path):
            video, sep, label = line.partition(";")
            if not sep or not video.strip():
                raise AnnotationError(f"{path}:{n}: expected 'id;label', got {line!r}")
            anns.append(
                Annotation(
                    keys=(video.strip(),), label=_label_of(index, label.strip(), f"{path}:{n}")
                )
            )
        out[split] = anns
    return classes, out


def read_something_v2(
    labels: str, train: str, val: str
) -> tuple[list[str], dict[str, list[Annotation]]]:
    """Something-Something v2: labels JSON ``{name: "index"}`` and lists of
    ``{"id", "label", "template", "placeholders"}``; the class is the template without brackets."""
    with open(labels, encoding="utf-8-sig") as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise AnnotationError(f"{labels}: expected a JSON object {{class name: index}}")
    try:
        by_index = sorted((int(i), name) for name, i in mapping.items())
    except (TypeError, ValueError):
        raise AnnotationError(f"{labels}: class indices must be integers") from None
    if [i for i, _ in by_index] != list(range(len(by_index))):
        raise AnnotationError(
            f"{labels}: class indices must be 0..{len(by_index) - 1} without gaps"
        )
    classes = [name for _, name in by_index]
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, path in (("train", train), ("val", val)):
        with open(path, encoding="utf-8-sig") as f:
            items = json.load(f)
        if not isinstance(items, list):
            raise AnnotationError(f"{path}: expected a JSON list of videos")
        anns = []
        for n, item in enumerate(items):
            where = f"{path} item {n}"
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise AnnotationError(f"{where}: expected an object with 'id' and 'template'")
            name = item["template"].replace("[", "").replace("]", "")
            anns.append(Annotation(keys=(str(item["id"]),), label=_label_of(index, name, where)))
        out[split] = anns
    return classes, out


def read_ucf101(labels: str, train: str, val: str) -> tuple[list[str], dict[str, list[Annotation]]]:
    """UCF101: ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0N.txt`` (``Class/v_x.avi 1``)
    and ``testlist0N.txt`` (``Class/v_x.avi``, the class from the folder)."""
    classes: list[str] = []
    for n, line in _lines(labels):
        number, _, name = line.partition(" ")
        if not number.isdigit() or int(number) != len(classes) + 1 or not name.strip():
            raise AnnotationError(
                f"{labels}:{n}: expected '{len(classes) + 1} ClassName', got {line!r}"
            )
        classes.append(name.strip())
    index = {c.lower(): i for i, c in enumerate(classes)}
    out = {}
    for split, path in (("train", train), ("val", val)):
        anns = []
        for n, line in _lines(path):
            video = line.split()[0]
            folder, _, file = video.replace("\\", "/").rpartition("/")
            where = f"{path}:{n}"
            label = _label_of(index, folder.lower(), where)
            parts = line.split()
            if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
                raise AnnotationError(f"{where}: label {parts[1]} does not match class {folder!r}")
            anns.append(Annotation(keys=(Path(file).stem,), label=label, hints=(folder,)))
        out[split] = anns
    return classes, out


def read_hmdb51(split_dir: str, split: int) -> tuple[list[str], dict[str, list[Annotation]]]:
    """HMDB51: ``<class>_test_split<N>.txt`` per class, lines ``<video>.avi <0|1|2>`` (1 train,
    2 test, 0 unused); classes in sorted order."""
    suffix = f"_test_split{split}.txt"
    files = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix))
    if not files:
        raise FileNotFoundError(f"no HMDB51 split file '*{suffix}' in {split_dir}")
    classes = [f[: -len(suffix)] for f in files]
    out: dict[str, list[Annotation]] = {"train": [], "val": []}
    for label, (name, file) in enumerate(zip(classes, files)):
        path = os.path.join(split_dir, file)
        for n, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(f"{path}:{n}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] != "0":
                split_name = "train" if parts[1] == "1" else "val"
                out[split_name].append(
                    Annotation(keys=(Path(parts[0]).stem,), label=label, hints=(name,))
                )
    return classes, out


def find_annotation_files(
    dataset: str, annotations: str | None, split: int, given: dict[str, str | None]
) -> dict[str, str]:
    """Paths of the annotation files: those given explicitly, else the official names in the
    ``annotations`` folder. A missing required file is a FileNotFoundError naming what was tried."""
    found: dict[str, str] = {}
    for role, names in ANNOTATION_FILES[dataset].items():
        if given.get(role):
            if not os.path.isfile(given[role]):
                raise FileNotFoundError(f"--{role} file {given[role]} does not exist")
            found[role] = given[role]
            continue
        tried = [os.path.join(annotations or ".", n.format(n=split)) for n in names]
        hit = next((p for p in tried if annotations and os.path.isfile(p)), None)
        if hit:
            found[role] = hit
        elif role not in OPTIONAL_ROLES.get(dataset, ()):
            raise FileNotFoundError(
                f"{dataset} {role} annotations not found (tried {', '.join(tried)}): "
                f"pass --annotations DIR or --{role} FILE"
            )
    return found


def read_annotations(
    dataset: str, files: dict[str, str], annotations: str | None, split: int
) -> tuple[list[str], dict[str, list[Annotation]]]:
    """Class names and per-split annotations of ``dataset``."""
    if dataset == "kinetics":
        return read_kinetics(files["train"], files["val"], files.get("labels"))
    if dataset in ("something", "jester"):
        return read_something(files["labels"], files["train"], files["val"])
    if dataset == "somethingv2":
        return read_something_v2(files["labels"], files["train"], files["val"])
    if dataset == "ucf101":
        return read_ucf101(files["labels"], files["train"], files["val"])
    if not annotations or not os.path.isdir(annotations):
        raise FileNotFoundError("hmdb51 needs --annotations DIR, the folder of its split files")
    return read_hmdb51(annotations, split)


# ---------------------------------------------------------------------------------------------
# what is on disk
# ---------------------------------------------------------------------------------------------
def index_frame_folders(root: str, image_tmpl: str) -> dict[str, list[tuple[str, int, int]]]:
    """Every folder under ``root`` holding frames of ``image_tmpl``, and every packed file
    (``<folder>.zip``) holding them, by folder name: ``name -> [(path relative to root without
    .zip, usable frames, frames found)]``. Frame folders are not searched further; a packed
    file whose index does not read is skipped with a warning (tools/check_data.py names it)."""
    frame_pattern(image_tmpl)  # validate before walking a large tree
    index: dict[str, list[tuple[str, int, int]]] = {}
    walker = progress(os.walk(root), desc="scan frames", unit="dir", off_tty=True)
    for folder, dirs, files in walker:
        usable, found = count_frame_names(files, image_tmpl)
        if found:
            rel = Path(os.path.relpath(folder, root)).as_posix()
            index.setdefault(os.path.basename(folder), []).append((rel, usable, found))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if f.endswith(PACKED_EXT) and not f.startswith(".")):
            if name[: -len(PACKED_EXT)] in dirs:
                continue  # packed beside its folder: the loader reads the folder
            try:
                with PackedFile(os.path.join(folder, name)) as pf:
                    usable, found = count_frame_names(pf.names, image_tmpl)
            except OSError as exc:
                logger.warning("skipped %s", str(exc).splitlines()[0])
                continue
            if found:
                stem = name[: -len(PACKED_EXT)]
                rel = Path(os.path.relpath(os.path.join(folder, stem), root)).as_posix()
                index.setdefault(stem, []).append((rel, usable, found))
    walker.close()
    return index


def index_video_files(
    roots: list[str], extensions: Iterable[str] = VIDEO_EXTENSIONS
) -> dict[str, list[str]]:
    """Every video file under the ``roots`` by file stem: ``stem -> [path relative to the root it
    is in]`` (the video reader looks a list entry up in each root in turn)."""
    extensions = tuple(e.lower() for e in extensions)
    index: dict[str, list[str]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.lower().endswith(extensions) and not name.startswith("."):
                    rel = Path(os.path.relpath(os.path.join(folder, name), root)).as_posix()
                    index.setdefault(Path(name).stem, []).append(rel)
    return index


def resolve(ann: Annotation, index: dict[str, list], path_of=lambda c: c) -> tuple[object, bool]:
    """``(entry of index, ambiguous)`` for the first key of ``ann`` found in ``index`` (None if
    none). Among several entries of one name, the one inside the expected class folder wins."""
    for key in ann.keys:
        candidates = index.get(key)
        if not candidates:
            continue
        if len(candidates) == 1:
            return candidates[0], False
        hints = {h.lower() for h in ann.hints}
        preferred = [c for c in candidates if Path(path_of(c)).parent.name.lower() in hints]
        return (preferred or candidates)[0], len(preferred) != 1
    return None, False


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def write_list(path: str, rows: list[tuple]) -> None:
    """One row per line, space separated; comma separated (CSV) when a path contains a space.
    Written atomically (the folder created if needed)."""
    text = io.StringIO()
    if any(re.search(r"\s", str(row[0])) for row in rows):
        logger.info("%s: some paths contain spaces, writing comma-separated fields", path)
        csv.writer(text, lineterminator="\n").writerows(rows)
    else:
        text.writelines(" ".join(str(x) for x in row) + "\n" for row in rows)
    write_atomically(path, text.getvalue())


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def output_paths(
    dataset: str, data_root: str, split: int, videos: bool
) -> tuple[str, dict[str, str]]:
    """(category file, {split: list file}) at the registry's places under ``data_root``: the
    frame lists, or with ``videos`` the video lists of ``VIDEO_REGISTRY`` (mmaction2's names;
    for datasets without an entry, the same naming beside the frame lists)."""
    entry = REGISTRY[dataset]["RGB"]
    classes = entry["classes"]
    lists = {s: os.path.join(data_root, entry[f"{s}_list"]) for s in SPLITS}
    list_dir = os.path.dirname(lists["train"])
    if videos and dataset in VIDEO_REGISTRY:
        lists = {s: os.path.join(data_root, VIDEO_REGISTRY[dataset][f"{s}_list"]) for s in SPLITS}
    elif videos:
        prefix = VIDEO_LIST_PREFIX[dataset]
        lists = {s: os.path.join(list_dir, f"{prefix}_{s}_list_videos.txt") for s in SPLITS}
    if dataset in ("ucf101", "hmdb51"):
        lists = {s: p.replace("split_1", f"split_{split}") for s, p in lists.items()}
    category = (
        os.path.join(list_dir, "category.txt")
        if isinstance(classes, int)
        else os.path.join(data_root, classes)
    )
    return category, lists


def generate(
    dataset: str,
    classes: list[str],
    annotations: dict[str, list[Annotation]],
    category_file: str,
    list_files: dict[str, str],
    frames_root: str | None = None,
    video_roots: list[str] | None = None,
    image_tmpl: str = "img_{:05d}.jpg",
    inputs: dict[str, str] | None = None,
) -> dict[str, SplitReport]:
    """Match the annotations with the folders (or video files) on disk and write the files;
    ``inputs`` (the annotation files read, by role: labels, train, val) are never overwritten
    (``ops/output_paths.py``), and the outputs are distinct files."""
    if (frames_root is None) == (video_roots is None):
        raise ValueError("give exactly one of a frames root and video roots")
    inputs = inputs or {}
    outputs = [(f"the {s} list (--{s}_out)", p) for s, p in list_files.items()]
    # --annotations is the registry's label folder: the official class file is the category
    # file (read_categories reads UCF101's numbered classInd.txt): kept, not written.
    category_is_input = "labels" in inputs and _same_file(category_file, inputs["labels"])
    if not category_is_input:
        outputs.append(("the category file (--category_out)", category_file))
    check_outputs([(f"the {r} annotations (--{r})", f) for r, f in inputs.items()], outputs)
    if frames_root is not None and not os.path.isdir(frames_root):
        raise FileNotFoundError(
            f"frames folder {frames_root} does not exist: extract the frames first "
            "(tools/extract_frames.py) or pass --frames DIR"
        )
    absent = [r for r in video_roots or [] if not os.path.isdir(r)]
    if absent:
        raise FileNotFoundError(
            f"videos folder {absent[0]} does not exist: pass the folders holding the videos "
            "with --videos DIR [DIR ...]"
        )
    registered = REGISTRY[dataset]["RGB"]["classes"]
    if isinstance(registered, int) and registered != len(classes):
        logger.warning(
            "%s has %d classes in the registry but %d in these annotations: train with "
            "--num_class %d or --category_file %s",
            dataset,
            registered,
            len(classes),
            len(classes),
            category_file,
        )
    if frames_root is not None:
        index = index_frame_folders(frames_root, image_tmpl)
    else:
        index = index_video_files(video_roots)
    if category_is_input:
        logger.info("kept %s: it is the annotation file the classes were read from", category_file)
    else:
        write_atomically(category_file, "".join(c + "\n" for c in classes))

    reports = {}
    for split in SPLITS:
        report = SplitReport()
        rows = []
        for ann in annotations[split]:
            if frames_root is not None:
                hit, ambiguous = resolve(ann, index, path_of=lambda c: c[0])
                if hit is None:
                    report.missing.append(ann.name)
                    continue
                rel, usable, found = hit
                if usable == 0:
                    report.empty.append(rel)
                    continue
                if usable < found:
                    report.gaps.append(rel)
                rows.append((rel, usable, ann.label))
            else:
                rel, ambiguous = resolve(ann, index)
                if rel is None:
                    report.missing.append(ann.name)
                    continue
                rows.append((rel, ann.label))
            if ambiguous:
                report.ambiguous.append(ann.name)
        write_list(list_files[split], rows)
        report.written = len(rows)
        missing_file = os.path.join(
            os.path.dirname(list_files[split]), "missing_" + os.path.basename(list_files[split])
        )
        if report.missing:
            write_atomically(missing_file, "".join(m + "\n" for m in report.missing))
        elif os.path.exists(missing_file):
            os.remove(missing_file)  # from an earlier run; nothing is missing now
        reports[split] = report
    return reports


def summarize(reports: dict[str, SplitReport], list_files: dict[str, str]) -> str:
    lines = []
    for split, r in reports.items():
        line = f"{split}: {r.written} videos -> {list_files[split]}"
        if r.missing:
            missing_file = os.path.join(
                os.path.dirname(list_files[split]), "missing_" + os.path.basename(list_files[split])
            )
            line += f"; {len(r.missing)} missing on disk (listed in {missing_file})"
        if r.empty:
            line += (
                f"; {len(r.empty)} folders without frame 1 left out ({', '.join(r.empty[:3])}...)"
            )
        if r.gaps:
            line += f"; {len(r.gaps)} with a gap in the frame numbers, listed up to the gap"
        if r.ambiguous:
            line += f"; {len(r.ambiguous)} names found in several folders ({', '.join(r.ambiguous[:3])})"
        lines.append(line)
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write list files and the category file of a dataset from its official "
        "annotations and the extracted frames (or the videos).",
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument(
        "--annotations", default=None, help="folder with the official annotation files"
    )
    parser.add_argument("--labels", default=None, help="class list / label map file (overrides)")
    parser.add_argument("--train", default=None, help="training annotation file (overrides)")
    parser.add_argument("--val", default=None, help="validation annotation file (overrides)")
    parser.add_argument(
        "--split", type=int, default=1, choices=(1, 2, 3), help="UCF101/HMDB51 split"
    )
    parser.add_argument(
        "--data_root",
        default=None,
        help="root of the dataset layout; the lists go to the registry's paths under it "
        "(default: $RNL_DATA_ROOT, else ./data)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--frames", default=None, help="frames root (default: the registry's)")
    source.add_argument(
        "--videos",
        nargs="*",
        default=None,
        metavar="DIR",
        help="write video lists for the video files under these folders (no folder: the "
        "registry's video roots under --data_root)",
    )
    parser.add_argument(
        "--image_tmpl", default=None, help="frame name template (default: registry)"
    )
    parser.add_argument("--train_out", default=None, help="write the training list here instead")
    parser.add_argument("--val_out", default=None, help="write the validation list here instead")
    parser.add_argument("--category_out", default=None, help="write the class names here instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        data_root = args.data_root or default_data_root()
        given = {"labels": args.labels, "train": args.train, "val": args.val}
        files = find_annotation_files(args.dataset, args.annotations, args.split, given)
        classes, annotations = read_annotations(args.dataset, files, args.annotations, args.split)
        category, lists = output_paths(args.dataset, data_root, args.split, args.videos is not None)
        category = args.category_out or category
        lists = {"train": args.train_out or lists["train"], "val": args.val_out or lists["val"]}
        entry = REGISTRY[args.dataset]["RGB"]
        frames = video_roots = None
        if args.videos is None:
            frames = args.frames or os.path.join(data_root, entry["root_path"])
        elif args.videos:
            video_roots = list(args.videos)
        elif args.dataset in VIDEO_REGISTRY:
            video_roots = [
                os.path.join(data_root, r) for r in VIDEO_REGISTRY[args.dataset]["video_root"]
            ]
        else:
            raise ValueError(f"{args.dataset} has no registered video folder: pass --videos DIR")
        counts = Counter(a.label for split in SPLITS for a in annotations[split])
        logger.info(
            "%s: %d classes (%d without any video), %d train / %d val annotations",
            args.dataset,
            len(classes),
            sum(1 for i in range(len(classes)) if not counts[i]),
            len(annotations["train"]),
            len(annotations["val"]),
        )
        reports = generate(
            args.dataset,
            classes,
            annotations,
            category,
            lists,
            frames_root=frames,
            video_roots=video_roots,
            image_tmpl=args.image_tmpl or entry["image_tmpl"],
            inputs={r: f for r, f in files.items() if isinstance(f, str)},
        )
    except (*TOOL_ERRORS, OSError, json.JSONDecodeError, csv.Error) as exc:
        return fail(exc)
    print(f"classes: {len(classes)} -> {category}")
    print(summarize(reports, lists))
    return 0


if __name__ == "__main__":
    sys.exit(main())
