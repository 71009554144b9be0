"""Dataset registry: TSM's relative layout under --data_root, overrides and clear errors."""

import argparse
import os

import pytest

from ops.dataset_config import (
    DATA_FLAGS,
    NO_FLIP_DATASETS,
    add_data_args,
    read_categories,
    resolve_dataset,
    return_dataset,
)


def write_categories(root, rel, n):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"class {i}\n" for i in range(n)) + "\n")  # trailing blank line
    return path


# SPEC.md section 8, written out by hand
EXPECTED = {
    ("something", "RGB"): (
        "something/v1/train_videofolder.txt",
        "something/v1/val_videofolder.txt",
        "something/v1/20bn-something-something-v1",
        "{:05d}.jpg",
    ),
    ("something", "Flow"): (
        "something/v1/train_videofolder_flow.txt",
        "something/v1/val_videofolder_flow.txt",
        "something/v1/20bn-something-something-v1-flow",
        "{:06d}-{}_{:05d}.jpg",
    ),
    ("somethingv2", "RGB"): (
        "something/v2/train_videofolder.txt",
        "something/v2/val_videofolder.txt",
        "something/v2/20bn-something-something-v2-frames",
        "{:06d}.jpg",
    ),
    ("somethingv2", "Flow"): (
        "something/v2/train_videofolder_flow.txt",
        "something/v2/val_videofolder_flow.txt",
        "something/v2/20bn-something-something-v2-flow",
        "{:06d}.jpg",
    ),
    ("jester", "RGB"): (
        "jester/train_videofolder.txt",
        "jester/val_videofolder.txt",
        "jester/20bn-jester-v1",
        "{:05d}.jpg",
    ),
    ("kinetics", "RGB"): (
        "kinetics/labels/train_videofolder.txt",
        "kinetics/labels/val_videofolder.txt",
        "kinetics/images",
        "img_{:05d}.jpg",
    ),
    ("ucf101", "RGB"): (
        "UCF101/file_list/ucf101_rgb_train_split_1.txt",
        "UCF101/file_list/ucf101_rgb_val_split_1.txt",
        "UCF101/jpg",
        "img_{:05d}.jpg",
    ),
    ("ucf101", "Flow"): (
        "UCF101/file_list/ucf101_flow_train_split_1.txt",
        "UCF101/file_list/ucf101_flow_val_split_1.txt",
        "UCF101/jpg",
        "flow_{}_{:05d}.jpg",
    ),
    ("hmdb51", "RGB"): (
        "HMDB51/splits/hmdb51_rgb_train_split_1.txt",
        "HMDB51/splits/hmdb51_rgb_val_split_1.txt",
        "HMDB51/images",
        "img_{:05d}.jpg",
    ),
    ("hmdb51", "Flow"): (
        "HMDB51/splits/hmdb51_flow_train_split_1.txt",
        "HMDB51/splits/hmdb51_flow_val_split_1.txt",
        "HMDB51/images",
        "flow_{}_{:05d}.jpg",
    ),
    ("synthetic", "RGB"): (
        "synthetic/train_videofolder.txt",
        "synthetic/val_videofolder.txt",
        "synthetic/frames",
        "img_{:05d}.jpg",
    ),
}
CATEGORY_FILES = {
    "something": "something/v1/category.txt",
    "somethingv2": "something/v2/category.txt",
    "jester": "jester/category.txt",
    "ucf101": "UCF101/labels/classInd.txt",
    "synthetic": "synthetic/category.txt",
}


@pytest.mark.parametrize("dataset,modality", sorted(EXPECTED))
def test_registry_layout(tmp_path, dataset, modality):
    root = str(tmp_path)
    if dataset in CATEGORY_FILES:
        write_categories(root, CATEGORY_FILES[dataset], 7)
    n, train, val, frames, tmpl = return_dataset(dataset, modality, data_root=root)
    expected_n = {"kinetics": 400, "hmdb51": 51}.get(dataset, 7)
    rel = EXPECTED[(dataset, modality)]
    assert n == expected_n
    assert (train, val, frames, tmpl) == (
        os.path.join(root, rel[0]),
        os.path.join(root, rel[1]),
        os.path.join(root, rel[2]),
        rel[3],
    )


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RNL_DATA_ROOT", str(tmp_path))
    assert return_dataset("kinetics", "RGB")[1] == str(
        tmp_path / "kinetics/labels/train_videofolder.txt"
    )
    monkeypatch.delenv("RNL_DATA_ROOT")
    assert return_dataset("kinetics", "RGB")[3] == os.path.join("data", "kinetics/images")


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'kinetic'.*kinetics"):
        return_dataset("kinetic", "RGB", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="no Flow entry"):
        return_dataset("kinetics", "Flow", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        return_dataset("something", "RGB", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"something/v1/category.txt"):
        return_dataset("something", "RGB", data_root=str(tmp_path))


def test_category_file_ignores_trailing_blank_lines(tmp_path):
    path = write_categories(str(tmp_path), "c.txt", 3)
    assert read_categories(path) == ["class 0", "class 1", "class 2"]


def resolve_flags(args: argparse.Namespace, modality: str):
    """`resolve_dataset` with the data flags of a command line, as the CLIs call it."""
    return resolve_dataset(args.dataset, modality, **{k: getattr(args, k) for k in DATA_FLAGS})


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset")
    add_data_args(parser)
    return parser.parse_args(argv)


def test_overrides(tmp_path):
    root = str(tmp_path)
    write_categories(root, "jester/category.txt", 27)
    args = parse(["--dataset", "jester", "--data_root", root])
    assert resolve_flags(args, "RGB") == return_dataset("jester", "RGB", data_root=root)
    assert args.skip_bad_lines is False and args.strict_data is False

    cats = write_categories(root, "mine.txt", 5)
    args = parse(
        ["--dataset", "jester", "--data_root", root, "--train_list", "t.txt", "--image_tmpl",
         "f_{:04d}.png", "--category_file", cats, "--skip_bad_lines", "--strict_data"]
    )  # fmt: skip
    n, train, val, frames, tmpl = resolve_flags(args, "RGB")
    assert (n, train, tmpl) == (5, "t.txt", "f_{:04d}.png")
    assert (val, frames) == (os.path.join(root, "jester/val_videofolder.txt"),
                             os.path.join(root, "jester/20bn-jester-v1"))  # fmt: skip
    assert args.skip_bad_lines and args.strict_data

    args = parse(["--dataset", "kinetics", "--data_root", root, "--num_class", "10"])
    assert resolve_flags(args, "RGB")[0] == 10


def test_unregistered_entry_needs_every_override(tmp_path):
    args = parse(["--dataset", "kinetics", "--train_list", "a", "--val_list", "b"])
    with pytest.raises(ValueError, match="no Flow entry"):
        resolve_flags(args, "Flow")
    args = parse(
        ["--dataset", "mydata", "--train_list", "a", "--val_list", "b", "--root_path", "r",
         "--image_tmpl", "{:05d}.jpg", "--num_class", "4"]
    )  # fmt: skip
    assert resolve_flags(args, "RGB") == (4, "a", "b", "r", "{:05d}.jpg")


def test_no_flip_for_left_right_datasets():
    for name in ("something", "somethingv2", "jester", "synthetic"):
        assert name in NO_FLIP_DATASETS
    for name in ("kinetics", "ucf101", "hmdb51"):
        assert name not in NO_FLIP_DATASETS
