"""Data that used to be mangled silently (issue 19): 16-bit frames, frames of different sizes in
one video, a byte-order mark in a list, a blank line in a category file, and a tool that
overwrote the official class file it reads."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ops.dataset import TSNDataSet
from ops.dataset_config import read_categories
from ops.frames import decode_image
from ops.lists import parse_list_file
from tools import gen_lists


def solid(size: tuple[int, int], rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, rgb)


def test_16bit_png_frames_are_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    values = np.array([[0, 255, 256, 4095], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL reads it as 16-bit integer data
    rgb = np.asarray(decode_image(str(path), "RGB"))
    expected = values.astype(np.int64) // 256  # the top 8 bits, as OpenCV's imread keeps them
    for channel in range(3):
        assert rgb[..., channel].tolist() == expected.tolist()


def test_frames_of_another_size_are_resized_not_padded_and_counted(tmp_path):
    video = tmp_path / "frames" / "v"
    video.mkdir(parents=True)
    solid((40, 30), (10, 20, 30)).save(video / "img_00001.png")
    solid((80, 50), (200, 100, 50)).save(video / "img_00002.png")  # another size
    solid((40, 30), (10, 20, 30)).save(video / "img_00003.png")
    lst = tmp_path / "list.txt"
    lst.write_text("v 3 0\n")
    ds = TSNDataSet(
        str(tmp_path / "frames"),
        str(lst),
        num_segments=3,
        image_tmpl="img_{:05d}.png",
        random_shift=False,
        test_mode=True,
    )
    images = ds.load(ds.video_list[0])
    assert [im.size for im in images] == [(40, 30)] * 3
    # A solid frame stays solid when resized: no black padding.
    assert set(map(tuple, np.asarray(images[1]).reshape(-1, 3).tolist())) == {(200, 100, 50)}
    assert ds.bad_data_counts()["frames_resized"] == 1
    assert "resized" in ds.bad_data_report()


def test_byte_order_mark_does_not_drop_the_first_video(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_bytes(codecs.BOM_UTF8 + b"first 10 0\nsecond 12 1\n")
    records, problems = parse_list_file(str(lst), num_class=2)
    assert problems == []
    assert [r.path for r in records] == ["first", "second"]


def test_category_file_with_a_blank_line_inside_is_refused(tmp_path):
    path = tmp_path / "category.txt"
    path.write_text("jump\n\nrun\n\n")
    with pytest.raises(ValueError, match="line 2 is blank"):
        read_categories(str(path))
    path.write_bytes(codecs.BOM_UTF8 + b"jump\nrun\n\n")  # trailing blanks and a BOM are fine
    assert read_categories(str(path)) == ["jump", "run"]


def make_frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for k in range(1, n + 1):
        (folder / f"img_{k:05d}.jpg").write_bytes(b"jpeg")


def test_gen_lists_keeps_the_official_class_file_it_reads(tmp_path):
    root = tmp_path / "data"
    labels = root / "UCF101" / "labels"
    labels.mkdir(parents=True)
    official = b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n"
    (labels / "classInd.txt").write_bytes(official)
    (labels / "trainlist01.txt").write_text("ApplyEyeMakeup/v_A_g08_c01.avi 1\n")
    (labels / "testlist01.txt").write_text("HandstandPushups/v_H_g01_c01.avi\n")
    make_frames(root / "UCF101" / "jpg" / "ApplyEyeMakeup" / "v_A_g08_c01", 5)
    make_frames(root / "UCF101" / "jpg" / "HandstandPushups" / "v_H_g01_c01", 6)
    argv = ["ucf101", "--annotations", str(labels), "--data_root", str(root)]

    assert gen_lists.main(argv) == 0
    assert (labels / "classInd.txt").read_bytes() == official
    assert gen_lists.main(argv) == 0  # the next run still reads it
    # and training reads its names, not "1 ApplyEyeMakeup"
    assert read_categories(str(labels / "classInd.txt")) == ["ApplyEyeMakeup", "HandstandPushups"]
    lists = root / "UCF101" / "file_list"
    assert (
        lists / "ucf101_rgb_val_split_1.txt"
    ).read_text() == "HandstandPushups/v_H_g01_c01 6 1\n"


def test_gen_lists_refuses_to_write_a_list_over_its_annotation_file(tmp_path, capsys):
    (tmp_path / "classInd.txt").write_text("1 A\n")
    (tmp_path / "trainlist01.txt").write_text("A/v_a.avi 1\n")
    (tmp_path / "testlist01.txt").write_text("A/v_b.avi\n")
    make_frames(tmp_path / "UCF101" / "jpg" / "A" / "v_a", 3)
    argv = ["ucf101", "--annotations", str(tmp_path), "--data_root", str(tmp_path)]
    argv += ["--train_out", str(tmp_path / "trainlist01.txt")]
    assert gen_lists.main(argv) == 2
    assert "--train_out" in capsys.readouterr().err
    assert (tmp_path / "trainlist01.txt").read_text() == "A/v_a.avi 1\n"


def test_check_data_report_in_the_way_is_refused_before_the_scan(tmp_path, capsys, monkeypatch):
    from tools import check_data

    def no_scan(*a, **k):
        raise AssertionError("scanned although the report could not be written")

    monkeypatch.setattr(check_data, "check", no_scan)
    (tmp_path / "blocker").write_text("a file where the report folder should be")
    lst = tmp_path / "list.txt"
    lst.write_text("v 3 0\n")
    argv = [
        "mydata",
        "--train_list",
        str(lst),
        "--val_list",
        str(lst),
        "--root_path",
        str(tmp_path),
    ]
    argv += ["--image_tmpl", "img_{:05d}.jpg", "--num_class", "1"]
    argv += ["--report", str(tmp_path / "blocker" / "report.txt")]
    assert check_data.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --report") and "blocker" in err[0]
