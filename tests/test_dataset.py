"""TSNDataSet: list parsing, which frames an item holds, flow layouts, and bad-data handling.

Test frames are uniform grey with a level per frame number (see tests/_data_helpers.py), so the
frames an item actually loaded can be read back from its pixels.
"""

import io
import logging

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import ops.frames as frames_mod
from ops.data_problems import DataError, data_error_message
from ops.dataset import TSNDataSet, collate
from ops.lists import parse_list_file
from ops.transforms import GroupFullResSample, Stack, ToTorchFormatTensor
from tests._data_helpers import (
    BAD_LIST,
    NUM_CLASS,
    build_bad_dataset,
    frame_id,
    grey_value,
    jpeg_bytes,
    write_coded_video,
    write_grey_video,
)


def ids(images):
    return [frame_id(im) for im in images]


def make_list(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


# ----------------------------------------------------------------------------- lists
def test_space_and_comma_separated_lists(tmp_path):
    write_grey_video(tmp_path / "frames" / "a", 9)
    write_grey_video(tmp_path / "frames" / "my video", 9)
    space = make_list(tmp_path / "s.txt", ["a 9 1", "", "a  9\t2"])
    csv = make_list(tmp_path / "c.txt", ["my video,9,0", '"a",9,2'])
    recs, problems = parse_list_file(space, num_class=3)
    assert problems == []
    assert [(r.path, r.num_frames, r.label, r.line) for r in recs] == [
        ("a", 9, 1, 1),
        ("a", 9, 2, 3),
    ]
    ds = TSNDataSet(str(tmp_path / "frames"), csv, num_segments=3, random_shift=False, num_class=3)
    assert [(r.path, r.label) for r in ds.video_list] == [("my video", 0), ("a", 2)]
    images, label = ds[0]
    # val, F=9, S=3: tick 3 -> int(1.5 + 3i) = 1 4 7 -> frames 2 5 8
    assert ids(images) == [2, 5, 8] and label == 0


def test_missing_list_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TSNDataSet(str(tmp_path), str(tmp_path / "nope.txt"))


def test_bad_template(tmp_path):
    lst = make_list(tmp_path / "l.txt", ["a 9 0"])
    with pytest.raises(DataError, match="image_tmpl"):
        TSNDataSet(str(tmp_path), lst, image_tmpl="img_{}_{:05d}.jpg")


# ----------------------------------------------------------------------------- sampled content
def test_items_hold_the_sampled_frames(tmp_path):
    write_grey_video(tmp_path / "v", 30)
    lst = make_list(tmp_path / "l.txt", ["v 30 0"])
    root = str(tmp_path)
    val = TSNDataSet(root, lst, num_segments=8, random_shift=False)
    assert ids(val[0][0]) == [2, 6, 10, 14, 17, 21, 25, 29]
    twice = TSNDataSet(root, lst, num_segments=8, test_mode=True, twice_sample=True)
    assert ids(twice[0][0]) == [2, 6, 10, 14, 17, 21, 25, 29, 1, 4, 8, 12, 16, 19, 23, 27]
    train = TSNDataSet(root, lst, num_segments=8)
    np.random.seed(3)
    r = np.random.RandomState(3).randint(3, size=8)  # d = 30 // 8 = 3
    assert ids(train[0][0]) == [3 * i + int(r[i]) + 1 for i in range(8)]


def test_each_distinct_frame_is_decoded_once(tmp_path, monkeypatch):
    write_grey_video(tmp_path / "v", 30)
    lst = make_list(tmp_path / "l.txt", ["v 30 0"])
    calls = []
    real = frames_mod.decode_image
    monkeypatch.setattr(
        frames_mod, "decode_image", lambda p, m="RGB": calls.append(p) or real(p, m)
    )
    ds = TSNDataSet(str(tmp_path), lst, num_segments=8, test_mode=True, dense_sample=True)
    images, _ = ds[0]
    # F=30 <= 64: 10 identical clips of frames 1 9 17 25 3 11 19 27
    assert ids(images) == [1, 9, 17, 25, 3, 11, 19, 27] * 10
    assert len(calls) == 8
    assert images[0] is images[8]


def test_test_views_are_crop_major(tmp_path):
    # 40x24 PNG frames, R = 10 * frame, G = x; 3 crops of 24 at x = 0, 16, 8; twice sampling
    write_coded_video(tmp_path / "v", 16, 40, 24)
    lst = make_list(tmp_path / "l.txt", ["v 16 0"])
    transform = torchvision.transforms.Compose(
        [GroupFullResSample(24, flip=False), Stack(), ToTorchFormatTensor(div=False)]
    )
    ds = TSNDataSet(
        str(tmp_path),
        lst,
        num_segments=4,
        image_tmpl="img_{:05d}.png",
        transform=transform,
        test_mode=True,
        twice_sample=True,
    )
    data, _ = ds[0]
    views = data.view(-1, 4, 3, 24, 24)  # [crops * clips, T, C, H, W]
    assert views.shape[0] == 6
    # F=16, S=4: tick 4 -> clip 0 frames 3 7 11 15, clip 1 frames 1 5 9 13
    clip_frames = [[3, 7, 11, 15], [1, 5, 9, 13]]
    for row in range(6):
        crop, clip = divmod(row, 2)
        assert views[row, :, 0, 0, 0].tolist() == [10.0 * f for f in clip_frames[clip]]
        assert views[row, :, 1, 0, 0].tolist() == [[0, 16, 8][crop]] * 4


def test_return_index(tmp_path):
    write_grey_video(tmp_path / "v", 5)
    lst = make_list(tmp_path / "l.txt", ["v 5 2", "v 5 1"])
    ds = TSNDataSet(str(tmp_path), lst, num_segments=2, random_shift=False, return_index=True)
    assert ds[1][1:] == (1, 1)


# ----------------------------------------------------------------------------- flow layouts
def test_flow_xy_pairs_and_snippets(tmp_path):
    folder = tmp_path / "v"
    write_grey_video(folder, 12, tmpl="flow_x_{:05d}.jpg", mode="L")
    write_grey_video(folder, 12, tmpl="flow_y_{:05d}.jpg", mode="L")
    lst = make_list(tmp_path / "l.txt", ["v 12 0"])
    ds = TSNDataSet(
        str(tmp_path),
        lst,
        num_segments=2,
        new_length=5,
        modality="Flow",
        image_tmpl="flow_{}_{:05d}.jpg",
        random_shift=False,
    )
    images, _ = ds[0]
    # val: tick (12-5+1)/2 = 4 -> starts 3, 7 -> frames 3..7, 7..11, each as x then y
    frames = [3, 4, 5, 6, 7, 7, 8, 9, 10, 11]
    assert len(images) == 20 and all(im.mode == "L" for im in images)
    assert ids(images) == [f for f in frames for _ in (0, 1)]


def test_flow_something_v1_layout_halves_the_count(tmp_path):
    folder = tmp_path / "000123"
    write_grey_video(folder, 8, tmpl="000123-x_{:05d}.jpg", mode="L")
    write_grey_video(folder, 8, tmpl="000123-y_{:05d}.jpg", mode="L")
    lst = make_list(tmp_path / "l.txt", ["123 16 0", "abc 16 0"])
    with pytest.raises(DataError, match="numeric video id"):
        TSNDataSet(str(tmp_path), lst, modality="Flow", image_tmpl="{:06d}-{}_{:05d}.jpg")
    lst = make_list(tmp_path / "l.txt", ["123 16 0"])
    ds = TSNDataSet(
        str(tmp_path),
        lst,
        num_segments=8,
        new_length=1,
        modality="Flow",
        image_tmpl="{:06d}-{}_{:05d}.jpg",
        test_mode=True,
    )
    assert ds.video_list[0].num_frames == 8  # 16 files = 8 x/y pairs
    assert ids(ds[0][0]) == [f for f in range(1, 9) for _ in (0, 1)]


def test_flow_packed_rgb_file(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for k in range(1, 5):
        arr = np.zeros((16, 24, 3), np.uint8)
        arr[..., 0], arr[..., 1] = grey_value(k), 200  # x in R, y in G
        Image.fromarray(arr).save(folder / f"{k:06d}.png")
    lst = make_list(tmp_path / "l.txt", ["v 4 0"])
    ds = TSNDataSet(
        str(tmp_path), lst, num_segments=4, modality="Flow", image_tmpl="{:06d}.png", test_mode=True
    )
    images, _ = ds[0]
    assert ids(images[0::2]) == [1, 2, 3, 4]
    assert all(np.asarray(im).max() == 200 for im in images[1::2])


# ----------------------------------------------------------------------------- bad data
def test_bad_list_lines_stop_the_run_with_file_and_line(tmp_path):
    frames, lst = build_bad_dataset(tmp_path)
    with pytest.raises(DataError) as e:
        TSNDataSet(str(frames), str(lst), num_class=NUM_CLASS)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{lst}:2:" in msg and "4 bad lines in total" in msg and "--skip_bad_lines" in msg


def test_skip_bad_lines_counts_and_logs(tmp_path, caplog):
    frames, lst = build_bad_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ops.dataset"):
        ds = TSNDataSet(
            str(frames), str(lst), num_segments=8, num_class=NUM_CLASS, skip_bad_lines=True,
            test_mode=True,
        )  # fmt: skip
    assert [(p.line, p.kind) for p in ds.bad_lines] == [
        (2, "wrong_fields"),
        (3, "bad_frame_count"),
        (4, "bad_label"),
        (5, "label_range"),
    ]
    logged = [r.getMessage() for r in caplog.records]
    for line in (2, 3, 4, 5):
        assert any(f"{lst}:{line}:" in m for m in logged)
    assert [r.path for r in ds.video_list] == [
        "v_good", "v_nodir", "v_missing", "v_corrupt", "v_toolong", "v_allbad"
    ]  # fmt: skip


def load_all(ds):
    return {r.path: ds[i] for i, r in enumerate(ds.video_list)}


def test_frame_fallback_and_counts(tmp_path, caplog):
    frames, lst = build_bad_dataset(tmp_path)
    ds = TSNDataSet(
        str(frames), str(lst), num_segments=8, num_class=NUM_CLASS, skip_bad_lines=True,
        test_mode=True,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ops.data_problems"):
        items = load_all(ds)
    # test mode, F=8, S=8: frames 1..8
    assert ids(items["v_good"][0]) == [1, 2, 3, 4, 5, 6, 7, 8]
    # frame 3 missing -> nearest readable, the earlier one on a tie: 2
    assert ids(items["v_missing"][0]) == [1, 2, 2, 4, 5, 6, 7, 8]
    # frame 5 truncated -> 4
    assert ids(items["v_corrupt"][0]) == [1, 2, 3, 4, 4, 6, 7, 8]
    # F=12 listed, 8 on disk: tick 1.5 -> frames 1 3 4 6 7 9 10 12; 9, 10, 12 -> 8
    assert ids(items["v_toolong"][0]) == [1, 3, 4, 6, 7, 8, 8, 8]
    assert items["v_nodir"] is None and items["v_allbad"] is None

    counts = ds.bad_data_counts()
    assert counts == {
        "frames_missing": 4,
        "frames_unreadable": 1,
        "frames_resized": 0,
        "frames_timed_out": 0,
        "clips_with_replaced_frames": 3,
        "videos_missing_dir": 1,
        "videos_unreadable": 1,
        "videos_missing_file": 0,
        "videos_too_short": 0,
        "videos_fewer_frames": 0,
        "frame_count_mismatch": 0,
        "videos_skipped": 2,
        "bad_list_lines": 4,
        "short_videos_dropped": 0,
    }
    msgs = [r.getMessage() for r in caplog.records]
    # logged once per video, with the path of the file
    assert sum("v_toolong" in m for m in msgs) == 1
    assert any("img_00009.jpg" in m for m in msgs if "v_toolong" in m)
    assert any("img_00005.jpg" in m and "does not decode" in m for m in msgs)
    assert any("frame folder" in m and "v_nodir" in m for m in msgs)
    assert any("no readable frame" in m and "v_allbad" in m for m in msgs)

    report = ds.bad_data_report()
    assert "missing frames replaced by the nearest readable frame: 4" in report
    assert "video loads skipped: frame folder missing: 1" in report
    assert "list lines skipped (malformed): 4" in report


def test_counts_are_summed_over_dataloader_workers(tmp_path):
    frames, lst = build_bad_dataset(tmp_path)
    ds = TSNDataSet(
        str(frames),
        str(lst),
        num_segments=8,
        num_class=NUM_CLASS,
        skip_bad_lines=True,
        test_mode=True,
        transform=torchvision.transforms.Compose([Stack(), ToTorchFormatTensor()]),
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    labels = []
    for batch in loader:
        if batch is not None:
            labels.extend(batch[1].tolist())
    # the 6 listed videos minus the 2 skipped, in list order: good 0, missing 1, corrupt 2, toolong 0
    assert labels == [0, 1, 2, 0]
    counts = ds.bad_data_counts()
    assert (counts["frames_missing"], counts["frames_unreadable"], counts["videos_skipped"]) == (
        4,
        1,
        2,
    )


def test_strict_data_turns_problems_into_errors(tmp_path):
    frames, lst = build_bad_dataset(tmp_path)
    with pytest.raises(DataError, match="fix the list"):
        TSNDataSet(
            str(frames), str(lst), num_class=NUM_CLASS, skip_bad_lines=True, strict_data=True
        )
    clean = make_list(tmp_path / "clean.txt", ["v_good 8 0", "v_missing 8 1"])
    ds = TSNDataSet(str(frames), clean, num_segments=8, test_mode=True, strict_data=True)
    assert ids(ds[0][0]) == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert "\n" not in msg and "img_00003.jpg" in msg and "--strict_data" in msg


def test_strict_error_from_a_worker_keeps_a_one_line_message(tmp_path):
    frames, _ = build_bad_dataset(tmp_path)
    lst = make_list(tmp_path / "clean.txt", ["v_missing 8 1"])
    ds = TSNDataSet(
        str(frames),
        lst,
        num_segments=8,
        test_mode=True,
        strict_data=True,
        transform=torchvision.transforms.Compose([Stack(), ToTorchFormatTensor()]),
    )
    loader = torch.utils.data.DataLoader(ds, num_workers=1, collate_fn=collate)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    msg = data_error_message(e.value)
    assert msg.startswith("video 'v_missing' (") and "img_00003.jpg" in msg and "\n" not in msg
    assert data_error_message(DataError("plain message")) == "plain message"


def test_short_videos_are_dropped_for_training_and_reported(tmp_path):
    write_grey_video(tmp_path / "v", 5)
    lst = make_list(tmp_path / "l.txt", ["v 5 0", "v 2 1"])
    train = TSNDataSet(str(tmp_path), lst, num_segments=2)
    assert len(train) == 1 and train.bad_data_counts()["short_videos_dropped"] == 1
    assert "fewer than 3 frames" not in train.bad_data_report()  # not a data problem name
    assert "< 3 frames" in train.bad_data_report()
    test = TSNDataSet(str(tmp_path), lst, num_segments=2, test_mode=True)
    assert len(test) == 2


def test_grey_frame_helpers_roundtrip():
    # guard for the helpers the tests rely on: a uniform JPEG decodes to its frame number
    for k in (1, 7, 30):
        img = Image.open(io.BytesIO(jpeg_bytes(np.full((8, 8, 3), grey_value(k), np.uint8))))
        assert frame_id(img) == k


def test_collate_drops_skipped_items():
    a = (torch.ones(2), 1)
    assert collate([None, None]) is None
    out = collate([a, None, (torch.zeros(2), 0)])
    assert out[0].shape == (2, 2) and out[1].tolist() == [1, 0]


def test_bad_list_table_is_consistent():
    # the planted problems cover every list-level kind the loader knows
    kinds = {k for _, ks in BAD_LIST for k in ks}
    assert {"wrong_fields", "bad_frame_count", "bad_label", "label_range"} <= kinds


def test_duplicate_entries_are_counted_and_warned(tmp_path, caplog):
    # They were trained on / scored as often as listed without a word (test_models.py scored
    # a video listed twice twice).
    write_grey_video(tmp_path / "frames" / "a", 9)
    write_grey_video(tmp_path / "frames" / "b", 9)
    lst = make_list(tmp_path / "l.txt", ["a 9 1", "b 9 0", "a 9 1", "a 9 1", "b 9 0", "c 9 2"])
    with caplog.at_level(logging.WARNING, logger="ops.dataset"):
        ds = TSNDataSet(str(tmp_path / "frames"), lst, num_segments=3, random_shift=False)
    assert len(ds) == 6  # kept as listed
    warned = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "3 duplicate entries" in warned[0] and "2 videos" in warned[0]
    assert "'a'" in warned[0] and "lines 1, 3, 4" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ops.dataset"):
        TSNDataSet(str(tmp_path / "frames"), make_list(tmp_path / "m.txt", ["a 9 1", "b 9 0"]))
    assert not [r for r in caplog.records if "duplicate" in r.getMessage()]
