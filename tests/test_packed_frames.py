"""Packed frames (issue 27): one stored zip per video, read wherever the frame folder would be.

The format is checked against Python's own zipfile (an independent reader and writer); the data
layer against the frame folders the files were packed from: the same frames, pixels, clips and
bad-data counts, for folders with gaps, odd names, grey and CMYK JPEGs and flow pairs; damaged
members against damaged frame files. The tools run as users run them: tools/pack_frames.py killed
with SIGKILL and rerun, check_data on a damaged packed file, predict on packed frames, and
main.py / test_models.py in subprocesses with 2 DataLoader workers.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ops import packed_frames
from ops.checkpoint import load_checkpoint, save_checkpoint
from ops.dataset import TSNDataSet
from ops.device_augment import use_device_decoding
from ops.packed_frames import DamagedMember, PackedError, PackedFile, write_packed
from ops.synthetic import make_tiny
from ops.transforms import (
    GroupMultiScaleCrop,
    GroupRandomHorizontalFlip,
    Stack,
    ToTorchFormatTensor,
)
from tests import _eval_helpers as H
from tests._data_helpers import BAD_LIST, NUM_CLASS, build_bad_dataset
from tools import check_data, pack_frames, predict

REPO = Path(__file__).resolve().parents[1]


def noise_jpeg(seed: int, mode: str = "RGB", size=(40, 30), quality: int = 90) -> bytes:
    """A JPEG of random content in ``mode`` (RGB, L or CMYK): frames that differ everywhere."""
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_video(folder: Path, numbers, mode="RGB", tmpl="img_{:05d}.jpg", seed=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in numbers:
        (folder / tmpl.format(k)).write_bytes(noise_jpeg(seed * 1000 + k, mode))


def pack_tree(frames: Path, out: Path) -> None:
    assert pack_frames.main([str(frames), str(out)]) == 0


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:  # Python's reader: independent of ops/packed_frames.py
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        return {i.filename: zf.read(i) for i in zf.infolist()}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --------------------------------------------------------------------------- the format
def test_packed_file_is_a_stored_zip_of_the_frame_files(tmp_path):
    folder = tmp_path / "v"
    write_video(folder, range(1, 13))
    members = [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]
    count, size = write_packed(str(tmp_path / "v.zip"), iter(members))
    assert count == 12 and size == (tmp_path / "v.zip").stat().st_size
    assert zip_members(tmp_path / "v.zip") == dict(members)  # what any zip tool extracts
    with PackedFile(str(tmp_path / "v.zip")) as pf:
        assert pf.names == [n for n, _ in members]
        assert all(pf.read(n) == data for n, data in members)
        assert pf.check() == []
    # Fixed member times: packing the same frames again gives the same file, byte for byte.
    write_packed(str(tmp_path / "w.zip"), iter(members))
    assert (tmp_path / "v.zip").read_bytes() == (tmp_path / "w.zip").read_bytes()
    # Overhead: 30 + 46 header bytes and the name twice per member, 22 for the end record.
    per_member = 30 + 46 + 2 * len("img_00001.jpg")
    assert size == sum(len(d) for _, d in members) + 12 * per_member + 22
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_zips_written_by_other_tools_read_like_zipfile_reads_them(tmp_path, monkeypatch):
    frames = {f"{k}.jpg": noise_jpeg(k) for k in range(1, 6)}
    # Python's writer with an archive comment, member times and UTF-8 names.
    odd = {**frames, "frame é 6.jpg": noise_jpeg(6)}
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_STORED) as zf:
        for name, data in odd.items():
            zf.writestr(name, data)
        zf.comment = b"written by zipfile" * 100
    # The same with zip64 records and extra fields (forced by a tiny zip64 limit).
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    with zipfile.ZipFile(tmp_path / "b.zip", "w", zipfile.ZIP_STORED) as zf:
        for name, data in frames.items():
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(data)
    monkeypatch.undo()
    # Data before the archive (a self-extractor stub): every offset is shifted.
    (tmp_path / "c.zip").write_bytes(b"#!stub\n" * 50 + (tmp_path / "a.zip").read_bytes())
    for name, expected in (("a.zip", odd), ("b.zip", frames), ("c.zip", odd)):
        with zipfile.ZipFile(tmp_path / name) as zf:
            assert {i.filename: zf.read(i) for i in zf.infolist()} == expected
        with PackedFile(str(tmp_path / name)) as pf:
            assert {n: pf.read(n) for n in pf.names} == expected, name
            assert pf.check() == [], name


def test_compressed_truncated_and_foreign_files_are_refused_with_their_name(tmp_path):
    with zipfile.ZipFile(tmp_path / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("img_00001.jpg", noise_jpeg(1))
    whole = tmp_path / "whole.zip"
    write_packed(str(whole), [(f"img_{k:05d}.jpg", noise_jpeg(k)) for k in range(1, 4)])
    data = whole.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) - 10])  # its end record cut
    (tmp_path / "half.zip").write_bytes(data[: len(data) // 2])
    (tmp_path / "jpeg.zip").write_bytes(noise_jpeg(3))
    (tmp_path / "empty.zip").write_bytes(b"")
    for name, needle in (
        ("deflated.zip", r"compressed \(method 8\)"),
        ("cut.zip", "no index"),
        ("half.zip", "no index"),
        ("jpeg.zip", "not a zip archive"),
        ("empty.zip", "not a zip archive"),
    ):
        with pytest.raises(PackedError, match=needle) as err:
            PackedFile(str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


def test_a_damaged_member_fails_its_crc_and_only_it(tmp_path):
    path = tmp_path / "v.zip"
    frames = [(f"img_{k:05d}.jpg", noise_jpeg(k)) for k in range(1, 6)]
    write_packed(str(path), frames)
    with PackedFile(str(path)) as pf:
        offset, n, size, _ = pf.members["img_00003.jpg"]
    data = bytearray(path.read_bytes())
    data[offset + 30 + n + size // 2] ^= 0x55  # one byte inside member 3's JPEG data
    path.write_bytes(bytes(data))
    with PackedFile(str(path)) as pf:
        with pytest.raises(DamagedMember, match="img_00003.jpg.*CRC"):
            pf.read("img_00003.jpg")
        assert [pf.read(n) for n, _ in frames if n != "img_00003.jpg"] == [
            d for n, d in frames if n != "img_00003.jpg"
        ]
        with pytest.raises(FileNotFoundError):
            pf.read("img_00009.jpg")
        assert pf.check() == [f"member img_00003.jpg of {path} is damaged (CRC mismatch)"]
    with zipfile.ZipFile(path) as zf:  # zipfile agrees that this member is bad
        assert zf.testzip() == "img_00003.jpg"


def test_open_files_are_bounded_and_never_shared_across_fork(tmp_path):
    paths = []
    for v in range(packed_frames.HANDLES + 3):
        paths.append(str(tmp_path / f"v{v}.zip"))
        write_packed(paths[-1], [("img_00001.jpg", noise_jpeg(v))])
    packed_frames.close_handles()
    for p in paths:
        assert packed_frames.read_members(p, ["img_00001.jpg"])["img_00001.jpg"]
        assert packed_frames.open_handles() <= packed_frames.HANDLES
    assert packed_frames.open_handles() == packed_frames.HANDLES
    parents = list(packed_frames._current().files.values())  # this process's open files
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply(_read_in_child, (paths[-1], [pf._fd for pf in parents]))
    # The child read through descriptors of its own; the parent's are still open and usable.
    assert child["parent_copies_closed"] and child["own_handle"]
    assert all(pf._fd >= 0 for pf in parents)
    assert packed_frames.read_members(paths[-1], ["img_00001.jpg"])["img_00001.jpg"]
    packed_frames.close_handles()
    assert packed_frames.open_handles() == 0


def _read_in_child(path: str, parent_fds: list[int]) -> dict:
    inherited = list(packed_frames._handles.files.values())  # copies of the parent's objects
    data = packed_frames.read_members(path, ["img_00001.jpg"])["img_00001.jpg"]
    own = packed_frames._current().files[path]
    return {
        "parent_copies_closed": all(pf._fd == -1 for pf in inherited) and len(inherited) > 0,
        "own_handle": own not in inherited and isinstance(data, bytes),
    }


# --------------------------------------------------------------------------- the data layer
def build_odd_dataset(root: Path) -> tuple[Path, Path]:
    """Frame folders with gaps, odd names, grey and CMYK JPEGs, in class subfolders; a CSV list
    (folder names with spaces). Returns (frames root, list)."""
    frames = root / "frames"
    write_video(frames / "c1" / "gaps", [k for k in range(1, 21) if k not in (3, 7, 8, 20)], seed=1)
    write_video(frames / "c1" / "odd name, é 2", range(1, 10), seed=2)
    write_video(frames / "c2" / "grey", range(1, 12), mode="L", seed=3)
    write_video(frames / "c2" / "cmyk", range(1, 12), mode="CMYK", seed=4)
    write_video(frames / "c2" / "short", range(1, 4), seed=5)  # fewer frames than segments
    (frames / "c2" / "short" / "notes.txt").write_text("not a frame")
    lst = root / "list.csv"
    lst.write_text(
        '"c1/gaps",20,0\n"c1/odd name, é 2",9,1\n"c2/grey",11,0\n"c2/cmyk",11,1\n"c2/short",3,0\n'
    )
    return frames, lst


def arrays(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


@pytest.mark.parametrize(
    "mode", [dict(random_shift=True), dict(random_shift=False), dict(test_mode=True, twice_sample=True), dict(test_mode=True, dense_sample=True)]
)  # fmt: skip
def test_packed_videos_load_the_folders_frames_exactly(tmp_path, mode):
    frames, lst = build_odd_dataset(tmp_path)
    packed = tmp_path / "packed"
    pack_tree(frames, packed)
    assert sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*.zip")) == [
        "c1/gaps.zip", "c1/odd name, é 2.zip", "c2/cmyk.zip", "c2/grey.zip", "c2/short.zip"
    ]  # fmt: skip
    assert "notes.txt" not in zip_members(packed / "c2" / "short.zip")
    sets = {}
    for root in (frames, packed):
        ds = TSNDataSet(str(root), str(lst), num_segments=4, **mode)
        got = []
        for i in range(len(ds)):
            np.random.seed(i)
            got.append(arrays(ds.load(ds.video_list[i])))
        sets[root] = (got, ds.bad_data_counts())
    (a, counts_a), (b, counts_b) = sets[frames], sets[packed]
    assert len(a) == len(b) == 5
    for clip_a, clip_b in zip(a, b):
        assert len(clip_a) == len(clip_b)
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(clip_a, clip_b))
    assert counts_a == counts_b
    if mode.get("random_shift") is False:  # val: segment centres of 20 frames hit 3 and 8
        assert counts_b["frames_missing"] == 2 and counts_b["clips_with_replaced_frames"] == 1


def test_clips_after_the_transforms_and_the_device_path_are_identical(tmp_path):
    frames, lst = build_odd_dataset(tmp_path)
    packed = tmp_path / "packed"
    pack_tree(frames, packed)
    aug = [GroupMultiScaleCrop(24, [1, 0.875, 0.75, 0.66]), GroupRandomHorizontalFlip()]
    transform = torchvision.transforms.Compose([*aug, Stack(), ToTorchFormatTensor()])
    for device in (False, True):
        clips = []
        for root in (frames, packed):
            ds = TSNDataSet(str(root), str(lst), num_segments=4, transform=transform)
            if device:
                use_device_decoding(ds)  # --device_aug: the JPEG bytes travel
            np.random.seed(5)
            random.seed(5)
            clips.append([ds.load(r) for r in ds.video_list] if device else [ds[i][0] for i in range(len(ds))])  # fmt: skip
        for x, y in zip(*clips):
            if device:  # encoded frames: the same bytes (or pixels, for CMYK)
                assert [f.data.tolist() for f in x] == [f.data.tolist() for f in y]
            else:
                assert torch.equal(x, y)


def test_flow_pairs_are_read_from_packed_files(tmp_path):
    frames = tmp_path / "flow"
    for c in ("x", "y"):
        write_video(
            frames / "v", range(1, 9), mode="L", tmpl="flow_" + c + "_{:05d}.jpg", seed=ord(c)
        )
    lst = tmp_path / "l.txt"
    lst.write_text("v 8 0\n")
    flow = dict(num_segments=4, new_length=2, modality="Flow", image_tmpl="flow_{}_{:05d}.jpg")
    ds = TSNDataSet(str(frames), str(lst), random_shift=False, **flow)
    k = ds.sample_frames(ds.video_list[0])[2]
    (frames / "v" / f"flow_y_{k:05d}.jpg").unlink()  # a sampled frame lacks its y image
    packed = tmp_path / "packed"
    pack_tree(frames, packed)
    got = []
    for root in (frames, packed):
        ds = TSNDataSet(str(root), str(lst), random_shift=False, **flow)
        got.append((arrays(ds.load(ds.video_list[0])), ds.bad_data_counts()["frames_missing"]))
    assert got[1][1] == got[0][1] > 0
    assert all(np.array_equal(x, y) for x, y in zip(got[0][0], got[1][0]))


def test_damaged_members_are_bad_frames_like_damaged_files(tmp_path):
    # The bad dataset: truncated and garbage frame files, missing frames, a missing folder...
    frames, lst = build_bad_dataset(tmp_path)
    packed = tmp_path / "packed"
    assert pack_frames.main([str(frames), str(packed)]) == 0
    # ... and one more: a packed video whose member 2 is damaged on disk, beside a folder whose
    # frame 2 file does not decode.
    write_video(frames / "v_bitrot", range(1, 9))
    good = frames / "v_bitrot" / "img_00002.jpg"
    data = good.read_bytes()
    write_packed(str(packed / "v_bitrot.zip"), [(p.name, p.read_bytes()) for p in sorted((frames / "v_bitrot").iterdir())])  # fmt: skip
    good.write_bytes(data[:20])  # the folder's frame 2 does not decode
    blob = bytearray((packed / "v_bitrot.zip").read_bytes())
    with PackedFile(str(packed / "v_bitrot.zip")) as pf:
        offset, n, size, _ = pf.members["img_00002.jpg"]
    blob[offset + 30 + n + size - 100] ^= 0xFF
    (packed / "v_bitrot.zip").write_bytes(bytes(blob))
    (packed / "v_broken.zip").write_bytes(b"PK\x03\x04 not really a zip")  # index unreadable
    write_video(frames / "v_broken", [1])
    (frames / "v_broken" / "img_00001.jpg").write_bytes(b"")  # its folder: no readable frame
    with open(lst, "a") as f:
        f.write("v_bitrot 8 0\nv_broken 1 0\n")
    results = {}
    for root in (frames, packed):
        ds = TSNDataSet(str(root), str(lst), num_segments=8, num_class=NUM_CLASS,
                        skip_bad_lines=True, random_shift=False, test_mode=True)  # fmt: skip
        clips = [ds.load(r) for r in ds.video_list]
        results[root] = (
            [None if c is None else arrays(c) for c in clips],
            ds.bad_data_counts(),
        )
    (clips_f, counts_f), (clips_p, counts_p) = results[frames], results[packed]
    for a, b in zip(clips_f, clips_p):
        assert (a is None) == (b is None)
        assert a is None or all(np.array_equal(x, y) for x, y in zip(a, b))
    assert counts_p == counts_f
    assert counts_p["frames_unreadable"] >= 2 and counts_p["videos_unreadable"] == 2
    assert counts_p["videos_missing_dir"] == 1  # v_nodir: neither folder nor packed file


def test_a_hung_packed_read_gives_up_after_the_timeout(tmp_path, monkeypatch):
    frames = tmp_path / "frames"
    write_video(frames / "v", range(1, 5))
    packed = tmp_path / "packed"
    pack_tree(frames, packed)
    lst = tmp_path / "l.txt"
    lst.write_text("v 4 0\n")
    release = __import__("threading").Event()
    monkeypatch.setattr(packed_frames, "read_members", lambda *a: release.wait(30))  # a hung FS
    monkeypatch.setenv("RNL_READ_TIMEOUT", "0.3")
    ds = TSNDataSet(str(packed), str(lst), num_segments=4, random_shift=False)
    t0 = time.monotonic()
    assert ds.load(ds.video_list[0]) is None
    release.set()
    assert time.monotonic() - t0 < 10
    assert ds.bad_data_counts()["videos_unreadable"] == 1


# --------------------------------------------------------------------------- tools/pack_frames.py
def test_pack_frames_resumes_after_sigkill_and_matches_an_uninterrupted_run(tmp_path):
    frames = tmp_path / "frames"
    big = [noise_jpeg(k, size=(320, 240), quality=95) for k in range(4)]  # ~90 KB each
    for v in range(10):
        folder = frames / f"class{v % 2}" / f"video{v:02d}"
        folder.mkdir(parents=True)
        for k in range(1, 31):
            (folder / f"img_{k:05d}.jpg").write_bytes(big[(k + v) % 4])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    tool = [sys.executable, str(REPO / "tools" / "pack_frames.py"), str(frames)]
    subprocess.run([*tool, str(whole), "-j", "2"], check=True, capture_output=True, timeout=300)
    # Its own process group: the kill takes the worker processes too, as a job scheduler does.
    proc = subprocess.Popen([*tool, str(resumed), "-j", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    partials: list[Path] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            finals = list(resumed.rglob("*.zip")) if resumed.exists() else []
            partials = [p for p in resumed.rglob(".*partial-*")] if finals else []
            if finals and partials:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "packing ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)  # the workers are gone too
    finals = sorted(resumed.rglob("*.zip"))
    assert 0 < len(finals) < 10
    assert [p for p in resumed.rglob("*") if ".partial-" in p.name]  # killed while writing
    for p in finals:  # a file under its final name is complete and verified
        with PackedFile(str(p)) as pf:
            assert len(pf.names) == 30 and pf.check() == []

    rerun = subprocess.run([*tool, str(resumed), "-j", "2"], capture_output=True, text=True, timeout=300)  # fmt: skip

    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finals)} already packed, 0 failed" in rerun.stdout
    assert [p for p in resumed.rglob("*") if ".partial-" in p.name] == []  # left-overs removed
    for p in whole.rglob("*.zip"):  # byte-identical to the uninterrupted run
        assert (resumed / p.relative_to(whole)).read_bytes() == p.read_bytes()
    assert len(list(resumed.rglob("*.zip"))) == 10


def test_pack_frames_reports_failures_and_refuses_bad_roots(tmp_path, capsys):
    frames = tmp_path / "frames"
    write_video(frames / "a", range(1, 4))
    write_video(frames / "b", range(1, 4))
    (frames / "b" / "img_00004.jpg").symlink_to(tmp_path / "nowhere.jpg")  # unreadable
    failed = tmp_path / "failed.txt"
    assert pack_frames.main([str(frames), str(tmp_path / "out"), "--failed_list", str(failed)]) == 1
    out = capsys.readouterr().out
    assert "2 frame folders: 1 packed (3 frames" in out and "1 failed" in out
    assert "failed: b: FileNotFoundError" in out
    assert failed.read_text().startswith("b\tFileNotFoundError")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.zip"]  # nothing for b
    (tmp_path / "file").write_text("x")
    for argv, needle in (
        ([str(tmp_path / "nope"), str(tmp_path / "o")], "is not a folder"),
        ([str(frames / "a"), str(tmp_path / "o")], "holds frame files itself"),
        ([str(frames), str(tmp_path / "file")], "exists and is not a folder"),
        ([str(frames), str(tmp_path / "o"), "-j", "0"], "-j must be >= 1"),
    ):
        assert pack_frames.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and needle in err[-1], err


# --------------------------------------------------------------------------- tools/check_data.py
def test_check_data_finds_the_same_problems_in_packed_files_and_names_damaged_ones(
    tmp_path, capsys
):
    frames, lst = build_bad_dataset(tmp_path)
    packed = tmp_path / "packed"
    assert pack_frames.main([str(frames), str(packed)]) == 0
    on_folders, _ = check_data.check([str(lst)], str(frames), "img_{:05d}.jpg", "RGB", NUM_CLASS)
    on_packed, scanned = check_data.check(
        [str(lst)], str(packed), "img_{:05d}.jpg", "RGB", NUM_CLASS
    )
    kinds = lambda lines: sorted(line.split(" video ")[0] for line in lines)  # noqa: E731
    assert kinds(on_packed) == kinds(on_folders) and scanned == 6
    text = "\n".join(on_packed)
    assert f"(first: {packed / 'v_missing.zip'}:img_00003.jpg)" in text
    assert f"{packed / 'v_corrupt.zip'}:img_00005.jpg" in text
    # Damage two packed files: a member's bytes, and the index of another.
    with PackedFile(str(packed / "v_good.zip")) as pf:
        offset, n, size, _ = pf.members["img_00006.jpg"]
    blob = bytearray((packed / "v_good.zip").read_bytes())
    blob[offset + 30 + n + size // 2] ^= 1
    (packed / "v_good.zip").write_bytes(bytes(blob))
    cut = (packed / "v_toolong.zip").read_bytes()
    (packed / "v_toolong.zip").write_bytes(cut[:-30])
    code = check_data.main(["synthetic", "--test_list", str(lst), "--root_path", str(packed),
                            "--num_class", str(NUM_CLASS), "--image_tmpl", "img_{:05d}.jpg"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert (
        f"list.txt:1: [corrupt_frames] video 'v_good': frame 6 does not decode: "
        f"{packed / 'v_good.zip'}:img_00006.jpg (member img_00006.jpg of "
        f"{packed / 'v_good.zip'} is damaged (CRC mismatch))"
    ) in out
    assert f"list.txt:9: [damaged_packed] video 'v_toolong': packed file {packed / 'v_toolong.zip'}" in out  # fmt: skip
    assert len(BAD_LIST) == 10


# --------------------------------------------------------------------------- tools/predict.py
def test_predict_reads_packed_frames_like_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict, "setup_logging", lambda rank=0: None)
    data_root = tmp_path / "data"
    videos = [("vid_a", 11, 0, (120, 90)), ("vid_b", 3, 1, (84, 100)), ("vid_c", 20, 2, (90, 120))]
    H.write_synthetic_dataset(str(data_root), videos)
    frames = data_root / "synthetic" / "frames"
    packed = tmp_path / "packed"
    pack_tree(frames, packed)
    capsys.readouterr()
    model = H.make_model(0, **H.small_model_config(num_segments=4))
    weights = str(tmp_path / "own.pth.tar")
    save_checkpoint({"state_dict": model.state_dict(), "model_config": model.model_config(),
                     "dataset": "synthetic", "class_names": H.CLASSES}, weights)  # fmt: skip
    inputs = [str(frames / v[0]) for v in videos]
    # named as files, and as folders that do not exist (their .zip is read)
    as_packed = [str(packed / "vid_a.zip"), str(packed / "vid_b.zip"), str(packed / "vid_c")]
    results = {}
    for name, paths in (("folders", inputs), ("packed", as_packed)):
        out = str(tmp_path / name / "{name}.gif")
        code = predict.main(["--weights", weights, *paths, "--crops", "3", "--json", "--out", out])
        text, err = capsys.readouterr()
        assert code == 0, err
        results[name] = json.loads(text)["results"]
    for a, b in zip(results["folders"], results["packed"]):
        assert b["kind"] == "packed" and a["kind"] == "frames"
        assert a["top"] == b["top"] and a["num_frames"] == b["num_frames"]  # exactly
        assert Path(a["out"]).read_bytes() == Path(b["out"]).read_bytes()  # every frame


# --------------------------------------------------------------------------- main.py, test_models.py
def _run(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # about 80 s on 2 cores: four runs of main.py / test_models.py
def test_main_trains_and_test_models_scores_packed_frames_like_folders(tmp_path):
    data_root = make_tiny(tmp_path / "data")
    frames = Path(data_root) / "synthetic" / "frames"
    packed = tmp_path / "packed"
    _run(["tools/pack_frames.py", str(frames), str(packed), "-j", "2"])
    shutil.rmtree(tmp_path / "data" / "synthetic" / "frames" / "train_moving_left_0003")
    assert not (frames / "train_moving_left_0003").exists()
    (packed / "train_moving_left_0003.zip").unlink()  # a missing video on both sides
    common = ["--dataset", "synthetic", "--data_root", data_root, "--arch", "resnet18",
              "--pretrain", "scratch", "--shift", "--non_local", "--num_segments", "4",
              "--input_size", "32", "--batch_size", "2", "--lr", "0.01", "--epochs", "1",
              "--workers", "2", "--print-freq", "1"]  # fmt: skip
    ckpts, logs = {}, {}
    for name, extra in (("folders", []), ("packed", ["--root_path", str(packed)])):
        out = tmp_path / name
        proc = _run(["main.py", *common, *extra, "--root_model", str(out / "ckpt"), "--root_log", str(out / "log")])  # fmt: skip
        (ckpt,) = (out / "ckpt").rglob("ckpt.pth.tar")
        ckpts[name] = load_checkpoint(ckpt)
        logs[name] = proc.stderr
    a, b = ckpts["folders"]["state_dict"], ckpts["packed"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ckpts:  # the missing video is counted the same way on both
        assert "video loads skipped: frame folder missing" in logs[name]
    weights = next((tmp_path / "folders" / "ckpt").rglob("ckpt.pth.tar"))
    scores = {}
    for name, extra in (("folders", []), ("packed", ["--root_path", str(packed)])):
        out = tmp_path / f"{name}.npz"
        _run(["test_models.py", "synthetic", "--weights", str(weights), "--data_root", data_root,
              "--test_segments", "4", "--test_crops", "3", "--twice_sample", "-j", "2",
              "--save_scores", str(out), "--device", "cpu", *extra])  # fmt: skip
        scores[name] = dict(np.load(out))
    assert scores["folders"]["scores"].shape[0] == 4  # 2 classes x 2 validation videos
    for key in ("scores", "labels", "indices"):
        assert np.array_equal(scores["folders"][key], scores["packed"][key]), key


def test_temporary_files_of_other_hosts_are_kept_until_abandoned(tmp_path, capsys):
    frames = tmp_path / "frames"
    write_video(frames / "c" / "a", range(1, 4))
    out = tmp_path / "out" / "c"
    out.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = __import__("socket").gethostname()
    mine = out / f".a.zip.partial-{host}-{dead.pid}-abc"  # this host, its process is gone
    other = out / ".a.zip.partial-node17-4242-def"  # another node, still writing
    old = out / ".b.zip.partial-node17-4243-ghi"  # another node, untouched for two hours
    for p in (mine, other, old):
        p.write_bytes(b"half a zip")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert pack_frames.main([str(frames), str(tmp_path / "out")]) == 0
    assert not mine.exists() and other.exists() and not old.exists()
    assert (out / "a.zip").is_file()
