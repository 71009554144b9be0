"""tools/gen_lists.py on small annotation files written here in the official formats.

Expected list lines are written out by hand from the annotations and the folders made here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.lists import parse_list_file, parse_video_list_file
from tools import gen_lists


def make_frames(folder: Path, n: int, tmpl: str = "img_{:05d}.jpg", skip: tuple = ()) -> None:
    folder.mkdir(parents=True)
    for k in range(1, n + 1):
        if k not in skip:
            (folder / tmpl.format(k)).write_bytes(b"jpeg")


def read(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_kinetics_csv_with_class_folders_missing_and_gappy_videos(tmp_path, capsys):
    ann = tmp_path / "ann"
    ann.mkdir()
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "kinetics_train.csv").write_text(
        header
        + "abseiling,aaaaaaaaaaa,14,24,train\n"
        + '"passing American football (in game)",bbbbbbbbbbb,5,15,train\n'
        + "air drumming,ccccccccccc,0,10,train\n"
        + "air drumming,missingvid1,3,13,train\n"
    )
    (ann / "kinetics_val.csv").write_text(header + "abseiling,ddddddddddd,1,11,val\n")
    images = tmp_path / "data" / "kinetics" / "images"
    # TSM's layout: class folders with '_' for spaces and no brackets, clips <id>_<start>_<end>
    make_frames(images / "abseiling" / "aaaaaaaaaaa_000014_000024", 7)
    make_frames(images / "passing_American_football_in_game" / "bbbbbbbbbbb_000005_000015", 3)
    make_frames(images / "air_drumming" / "ccccccccccc_000000_000010", 6, skip=(4,))  # gap
    make_frames(images / "abseiling" / "ddddddddddd_000001_000011", 2)
    (images / "abseiling" / "ddddddddddd_000001_000011" / "notes.txt").write_text("not a frame")

    rc = gen_lists.main(
        ["kinetics", "--annotations", str(ann), "--data_root", str(tmp_path / "data")]
    )

    assert rc == 0
    labels = tmp_path / "data" / "kinetics" / "labels"
    # sorted class names: "abseiling" < "air drumming" < "passing American football (in game)"
    assert read(labels / "category.txt") == [
        "abseiling",
        "air drumming",
        "passing American football (in game)",
    ]
    assert read(labels / "train_videofolder.txt") == [
        "abseiling/aaaaaaaaaaa_000014_000024 7 0",
        "passing_American_football_in_game/bbbbbbbbbbb_000005_000015 3 2",
        "air_drumming/ccccccccccc_000000_000010 3 1",  # frames 1-3, then the gap
    ]
    assert read(labels / "val_videofolder.txt") == ["abseiling/ddddddddddd_000001_000011 2 0"]
    assert read(labels / "missing_train_videofolder.txt") == ["missingvid1_000003_000013"]
    assert not (labels / "missing_val_videofolder.txt").exists()
    out = capsys.readouterr().out
    assert "train: 3 videos" in out and "1 missing on disk" in out and "1 with a gap" in out
    records, problems = parse_list_file(str(labels / "train_videofolder.txt"), num_class=400)
    assert problems == [] and [r.num_frames for r in records] == [7, 3, 3]


def test_kinetics_label_map_fixes_the_order_and_spaces_give_csv(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "train.csv").write_text(header + "air drumming,xxxxxxxxxxx,3,13,train\n")
    (ann / "validate.csv").write_text(header + "abseiling,yyyyyyyyyyy,0,10,val\n")
    (ann / "map.txt").write_text("air_drumming\nabseiling\n")  # TSM-style label map order
    frames = tmp_path / "frames"
    make_frames(frames / "air drumming" / "xxxxxxxxxxx_3", 4)  # TSM's <id>_<start> naming
    make_frames(frames / "yyyyyyyyyyy", 5)  # flat layout
    out = tmp_path / "lists"

    rc = gen_lists.main(
        [
            "kinetics",
            "--annotations",
            str(ann),
            "--labels",
            str(ann / "map.txt"),
            "--frames",
            str(frames),
            "--train_out",
            str(out / "train.txt"),
            "--val_out",
            str(out / "val.txt"),
            "--category_out",
            str(out / "classes.txt"),
        ]
    )

    assert rc == 0
    assert read(out / "classes.txt") == ["air_drumming", "abseiling"]
    assert read(out / "train.txt") == ["air drumming/xxxxxxxxxxx_3,4,0"]  # a space: CSV
    assert read(out / "val.txt") == ["yyyyyyyyyyy 5 1"]
    records, problems = parse_list_file(str(out / "train.txt"), num_class=2)
    assert problems == [] and records[0].path == "air drumming/xxxxxxxxxxx_3"


@pytest.mark.parametrize(
    "dataset, prefix", [("something", "something-something-v1"), ("jester", "jester-v1")]
)
def test_something_v1_and_jester_semicolon_csv(tmp_path, dataset, prefix):
    ann = tmp_path / "ann"
    ann.mkdir()
    # labels file in any order; the class index is the sorted order
    (ann / f"{prefix}-labels.csv").write_text("Zooming In\nDoing other things\nSwiping Left\n")
    (ann / f"{prefix}-train.csv").write_text(
        "100;Swiping Left\n7;Zooming In\n55;Doing other things\n"
    )
    (ann / f"{prefix}-validation.csv").write_text("9;Zooming In\n")
    root = (
        "something/v1/20bn-something-something-v1"
        if dataset == "something"
        else "jester/20bn-jester-v1"
    )
    frames = tmp_path / "data" / root
    make_frames(frames / "100", 30, tmpl="{:05d}.jpg")
    make_frames(frames / "7", 12, tmpl="{:05d}.jpg")
    make_frames(frames / "9", 8, tmpl="{:05d}.jpg")
    # video 55 was not extracted

    rc = gen_lists.main([dataset, "--annotations", str(ann), "--data_root", str(tmp_path / "data")])

    assert rc == 0
    base = tmp_path / "data" / ("something/v1" if dataset == "something" else "jester")
    assert read(base / "category.txt") == ["Doing other things", "Swiping Left", "Zooming In"]
    assert read(base / "train_videofolder.txt") == ["100 30 1", "7 12 2"]
    assert read(base / "val_videofolder.txt") == ["9 8 2"]
    assert read(base / "missing_train_videofolder.txt") == ["55"]


def test_something_v2_json_templates(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    labels = {"Holding something": "0", "Pushing something from left to right": "1"}
    (ann / "something-something-v2-labels.json").write_text(json.dumps(labels))
    train = [
        {
            "id": "78687",
            "label": "pushing a pen from left to right",
            "template": "Pushing [something] from left to right",
            "placeholders": ["a pen"],
        },
        {
            "id": "42326",
            "label": "holding a cup",
            "template": "Holding [something]",
            "placeholders": ["a cup"],
        },
    ]
    val = [
        {
            "id": "5",
            "label": "holding a box",
            "template": "Holding [something]",
            "placeholders": ["a box"],
        }
    ]
    (ann / "something-something-v2-train.json").write_text(json.dumps(train))
    (ann / "something-something-v2-validation.json").write_text(json.dumps(val))
    frames = tmp_path / "data" / "something/v2/20bn-something-something-v2-frames"
    make_frames(frames / "78687", 40, tmpl="{:06d}.jpg")
    make_frames(frames / "42326", 25, tmpl="{:06d}.jpg")
    make_frames(frames / "5", 9, tmpl="{:06d}.jpg")

    rc = gen_lists.main(
        ["somethingv2", "--annotations", str(ann), "--data_root", str(tmp_path / "data")]
    )

    assert rc == 0
    base = tmp_path / "data" / "something/v2"
    assert read(base / "category.txt") == [
        "Holding something",
        "Pushing something from left to right",
    ]
    assert read(base / "train_videofolder.txt") == ["78687 40 1", "42326 25 0"]
    assert read(base / "val_videofolder.txt") == ["5 9 0"]


def test_ucf101_split_files_with_class_folders(tmp_path):
    ann = tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    (ann / "trainlist02.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
    )
    (ann / "testlist02.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    jpg = tmp_path / "data" / "UCF101" / "jpg"
    make_frames(jpg / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01", 120)
    make_frames(jpg / "HandstandPushups" / "v_HandStandPushups_g08_c01", 90)
    make_frames(jpg / "HandstandPushups" / "v_HandStandPushups_g01_c01", 80)

    rc = gen_lists.main(
        ["ucf101", "--annotations", str(ann), "--split", "2", "--data_root", str(tmp_path / "data")]
    )

    assert rc == 0
    base = tmp_path / "data" / "UCF101"
    assert read(base / "labels" / "classInd.txt") == ["ApplyEyeMakeup", "HandstandPushups"]
    assert read(base / "file_list" / "ucf101_rgb_train_split_2.txt") == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01 120 0",
        "HandstandPushups/v_HandStandPushups_g08_c01 90 1",
    ]
    assert read(base / "file_list" / "ucf101_rgb_val_split_2.txt") == [
        "HandstandPushups/v_HandStandPushups_g01_c01 80 1"
    ]


def test_hmdb51_per_class_split_files(tmp_path):
    ann = tmp_path / "testTrainMulti_7030_splits"
    ann.mkdir()
    (ann / "wave_test_split1.txt").write_text("w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    (ann / "brush_hair_test_split1.txt").write_text("b1.avi 2 \nb2.avi 1 \n")
    (ann / "wave_test_split2.txt").write_text("w1.avi 2 \n")  # another split: ignored
    images = tmp_path / "data" / "HMDB51" / "images"
    for name, n in (("w1", 10), ("w2", 11), ("w3", 12), ("b1", 13), ("b2", 14)):
        make_frames(images / name, n)

    rc = gen_lists.main(
        ["hmdb51", "--annotations", str(ann), "--data_root", str(tmp_path / "data")]
    )

    assert rc == 0
    splits = tmp_path / "data" / "HMDB51" / "splits"
    assert read(splits / "category.txt") == ["brush_hair", "wave"]  # sorted
    assert read(splits / "hmdb51_rgb_train_split_1.txt") == ["b2 14 0", "w1 10 1"]
    assert read(splits / "hmdb51_rgb_val_split_1.txt") == ["b1 13 0", "w2 11 1"]  # w3: unused


def test_video_lists_from_a_videos_folder(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "labels.json").write_text(
        json.dumps({"Holding something": "0", "Dropping something": "1"})
    )
    (ann / "train.json").write_text(
        json.dumps(
            [
                {"id": "11", "template": "Dropping [something]"},
                {"id": "12", "template": "Holding [something]"},
            ]
        )
    )
    (ann / "validation.json").write_text(
        json.dumps([{"id": "13", "template": "Holding [something]"}])
    )
    videos = tmp_path / "videos"
    (videos / "part1").mkdir(parents=True)
    (videos / "part1" / "11.webm").write_bytes(b"x")
    (videos / "12.webm").write_bytes(b"x")
    (videos / "notes.txt").write_text("not a video")

    rc = gen_lists.main(
        ["somethingv2", "--annotations", str(ann), "--videos", str(videos),
         "--data_root", str(tmp_path / "data")]
    )  # fmt: skip

    assert rc == 0
    base = tmp_path / "data" / "sthv2"  # the video registry's (mmaction2's) names
    assert read(base / "sthv2_train_list_videos.txt") == ["part1/11.webm 1", "12.webm 0"]
    assert read(base / "sthv2_val_list_videos.txt") == []
    assert read(base / "missing_sthv2_val_list_videos.txt") == ["13"]


def test_video_lists_default_to_the_registry_video_folders(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "kinetics_train.csv").write_text(header + "air drumming,aaaaaaaaaaa,3,13,train\n")
    (ann / "kinetics_val.csv").write_text(header + "abseiling,bbbbbbbbbbb,0,10,val\n")
    data = tmp_path / "data"
    (data / "kinetics400" / "videos_train" / "air drumming").mkdir(parents=True)
    (
        data / "kinetics400" / "videos_train" / "air drumming" / "aaaaaaaaaaa_000003_000013.mp4"
    ).write_bytes(b"x")
    (data / "kinetics400" / "videos_val").mkdir(parents=True)
    (data / "kinetics400" / "videos_val" / "bbbbbbbbbbb_000000_000010.mp4").write_bytes(b"x")

    rc = gen_lists.main(
        ["kinetics", "--annotations", str(ann), "--videos", "--data_root", str(data)]
    )

    assert rc == 0
    lists = data / "kinetics400"
    train = lists / "kinetics400_train_list_videos.txt"
    # paths relative to the video root that holds them; a space makes the list comma separated
    assert read(train) == ["air drumming/aaaaaaaaaaa_000003_000013.mp4,1"]
    assert read(lists / "kinetics400_val_list_videos.txt") == ["bbbbbbbbbbb_000000_000010.mp4 0"]
    records, problems = parse_video_list_file(str(train), num_class=400)
    assert problems == [] and records[0].path == "air drumming/aaaaaaaaaaa_000003_000013.mp4"
    assert records[0].label == 1


def test_unknown_class_is_a_one_line_error_naming_the_line(tmp_path, capsys):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "jester-v1-labels.csv").write_text("Swiping Left\n")
    (ann / "jester-v1-train.csv").write_text("1;Swiping Left\n2;Swiping Up\n")
    (ann / "jester-v1-validation.csv").write_text("")
    rc = gen_lists.main(["jester", "--annotations", str(ann), "--data_root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert (
        err[-1].startswith("error: ")
        and "jester-v1-train.csv:2" in err[-1]
        and "Swiping Up" in err[-1]
    )


def test_missing_annotations_and_frames_are_one_line_errors(tmp_path, capsys):
    assert (
        gen_lists.main(["ucf101", "--annotations", str(tmp_path), "--data_root", str(tmp_path)])
        == 2
    )
    assert "classInd.txt" in capsys.readouterr().err
    (tmp_path / "classInd.txt").write_text("1 A\n")
    (tmp_path / "trainlist01.txt").write_text("A/v_a.avi 1\n")
    (tmp_path / "testlist01.txt").write_text("A/v_b.avi\n")
    assert (
        gen_lists.main(["ucf101", "--annotations", str(tmp_path), "--data_root", str(tmp_path)])
        == 2
    )
    assert "extract the frames first" in capsys.readouterr().err


def test_packed_frames_are_listed_like_their_folders(tmp_path, capsys):
    from ops.packed_frames import write_packed

    ann = tmp_path / "ann"
    ann.mkdir()
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "kinetics_train.csv").write_text(
        header + "abseiling,aaaaaaaaaaa,14,24,train\nair drumming,ccccccccccc,0,10,train\n"
    )
    (ann / "kinetics_val.csv").write_text(header + "abseiling,ddddddddddd,1,11,val\n")
    images = tmp_path / "data" / "kinetics" / "images"
    # as extract_frames.py --pack writes them: <class>/<clip>.zip, no frame folders
    for rel, n, skip in (
        ("abseiling/aaaaaaaaaaa_000014_000024", 7, ()),
        ("air_drumming/ccccccccccc_000000_000010", 6, (4,)),
        ("abseiling/ddddddddddd_000001_000011", 2, ()),
    ):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        frames = [(f"img_{k:05d}.jpg", b"jpeg") for k in range(1, n + 1) if k not in skip]
        write_packed(str(images / f"{rel}.zip"), frames)
    (images / "abseiling" / "broken.zip").write_bytes(b"not a zip")  # skipped, not fatal
    make_frames(images / "abseiling" / "ddddddddddd_000001_000011", 2)  # packed beside its folder

    rc = gen_lists.main(["kinetics", "--annotations", str(ann), "--data_root", str(tmp_path / "data")])  # fmt: skip

    assert rc == 0
    labels = tmp_path / "data" / "kinetics" / "labels"
    assert read(labels / "train_videofolder.txt") == [
        "abseiling/aaaaaaaaaaa_000014_000024 7 0",
        "air_drumming/ccccccccccc_000000_000010 3 1",  # frames 1-3, then the gap
    ]
    assert read(labels / "val_videofolder.txt") == ["abseiling/ddddddddddd_000001_000011 2 0"]
    assert "several folders" not in capsys.readouterr().out  # a folder and its .zip: one video
@pytest.mark.parametrize(
    "outs, needle",
    [
        (
            ("ann/train.csv", "val.txt", "classes.txt"),
            "is the input the train annotations (--train) ",
        ),
        (("alias/validate.csv", "val.txt", "c.txt"), "is the input the val annotations (--val) "),
        (("lists.txt", "lists.txt", "classes.txt"), "and the train list (--train_out) "),
        (("train.txt", "val.txt", "train.txt"), "and the train list (--train_out) "),
    ],
)
def test_outputs_are_never_an_input_nor_each_other(tmp_path, capsys, outs, needle):
    # One rule (ops/output_paths.py): an annotation file is never overwritten (also through a
    # symlinked folder), and two outputs that are one file are refused before anything is written.
    ann = tmp_path / "ann"
    ann.mkdir()
    (tmp_path / "alias").symlink_to(ann)
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "train.csv").write_text(header + "air drumming,xxxxxxxxxxx,3,13,train\n")
    (ann / "validate.csv").write_text(header + "abseiling,yyyyyyyyyyy,0,10,val\n")
    before = {p.name: p.read_bytes() for p in ann.iterdir()}
    make_frames(tmp_path / "frames" / "yyyyyyyyyyy", 5)
    flags = ("--train_out", "--val_out", "--category_out")
    argv = ["kinetics", "--annotations", str(ann), "--frames", str(tmp_path / "frames")]
    for flag, out in zip(flags, outs):
        argv += [flag, str(tmp_path / out)]
    assert gen_lists.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in ann.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias", "ann", "frames"]
