"""Seeded mutations of a tiny frame-folder dataset, for the fuzz tests (tests/test_fuzz_data.py).

`build(root, seed)` writes 4 videos (2 classes, 6 JPEG frames of 40x32 each) and one list file,
then applies 1-3 random mutations, each what a careless or hostile user, a broken disk or a bad
copy may do to a list or a frame folder. It returns the description of the mutations, so a
failure names what to reproduce.
"""

from __future__ import annotations

import codecs
import os
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

TMPL = "img_{:05d}.jpg"
VIDEOS = [("v0", 6, 0), ("v1", 6, 1), ("v2", 6, 0), ("v3", 6, 1)]
NUM_CLASS = 2


def _frame(path: Path, value: int, size=(40, 32)) -> None:
    Image.new("RGB", size, (value, 255 - value, (7 * value) % 256)).save(path, quality=90)


def _base(root: Path) -> tuple[Path, Path]:
    frames = root / "frames"
    for name, n, _ in VIDEOS:
        (frames / name).mkdir(parents=True)
        for k in range(1, n + 1):
            _frame(frames / name / TMPL.format(k), 20 * k + 3)
    lst = root / "list.txt"
    lst.write_text("".join(f"{name} {n} {label}\n" for name, n, label in VIDEOS))
    return frames, lst


# ------------------------------------------------------------------ list mutations
def _insert_line(rng, lst: Path, line: bytes) -> None:
    lines = lst.read_bytes().splitlines(keepends=True)
    lines.insert(rng.randint(0, len(lines)), line + b"\n")
    lst.write_bytes(b"".join(lines))


def _list_mutation(rng: random.Random, frames: Path, lst: Path) -> str:
    kind = rng.choice(
        [
            "bom", "blank_lines", "crlf", "not_utf8", "huge_line", "wrong_fields", "bad_count",
            "bad_label", "duplicate", "absolute_path", "dotdot_path", "csv", "empty", "tabs",
            "truncated", "only_bad_lines", "huge_count", "nul_bytes",
        ]
    )  # fmt: skip
    data = lst.read_bytes()
    if kind == "bom":
        lst.write_bytes(codecs.BOM_UTF8 + data)
    elif kind == "blank_lines":
        _insert_line(rng, lst, b"\n  \t")
    elif kind == "crlf":
        lst.write_bytes(data.replace(b"\n", b"\r\n"))
    elif kind == "not_utf8":
        _insert_line(rng, lst, b"\xff\xfev9 3 0")
    elif kind == "huge_line":
        _insert_line(rng, lst, b"x" * rng.choice([1000, 100_000]) + b" 3 0")
    elif kind == "wrong_fields":
        _insert_line(rng, lst, rng.choice([b"v0 6", b"v0 6 0 1", b"v0", b"a b c d e"]))
    elif kind == "bad_count":
        _insert_line(rng, lst, b"v1 " + rng.choice([b"-5", b"0", b"abc", b"1.5", b"1e3"]) + b" 0")
    elif kind == "bad_label":
        _insert_line(rng, lst, b"v1 6 " + rng.choice([b"7", b"-1", b"x", b"2"]))
    elif kind == "duplicate":
        _insert_line(rng, lst, rng.choice(data.splitlines() or [b"v0 6 0"]))
    elif kind == "absolute_path":
        _insert_line(rng, lst, str(frames / "v0").encode() + b" 6 0")
    elif kind == "dotdot_path":
        _insert_line(rng, lst, b"../frames/v1 6 1")
    elif kind == "csv":
        lst.write_bytes(data.replace(b" ", b","))
    elif kind == "empty":
        lst.write_bytes(rng.choice([b"", b"\n\n", codecs.BOM_UTF8]))
    elif kind == "tabs":
        lst.write_bytes(data.replace(b" ", b"\t"))
    elif kind == "truncated":
        lst.write_bytes(data[: rng.randint(1, len(data) - 1)] if len(data) > 1 else b"v")
    elif kind == "only_bad_lines":
        lst.write_bytes(b"nothing here\nat all\n")
    elif kind == "huge_count":
        _insert_line(rng, lst, b"v2 " + rng.choice([b"100000000", b"99999999999999999999"]) + b" 0")
    elif kind == "nul_bytes":
        _insert_line(rng, lst, b"v\x003 6 0")
    return f"list:{kind}"


# ------------------------------------------------------------------ frame mutations
def _frame_mutation(rng: random.Random, frames: Path, lst: Path) -> str:
    name, n, _ = rng.choice(VIDEOS)
    folder = frames / name
    k = rng.randint(1, n)
    path = folder / TMPL.format(k)
    kind = rng.choice(
        [
            "delete", "truncate", "zero_bytes", "garbage", "fifo", "directory", "png16",
            "rgba", "other_size", "no_folder", "folder_is_file", "symlink_loop", "tiny",
            "grey", "cmyk", "all_frames_bad", "dangling_symlink", "huge_size_header",
        ]
    )  # fmt: skip
    if not folder.is_dir():
        return f"frame:{kind}(skipped: {name} already gone)"
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if kind == "delete":
        pass
    elif kind == "truncate":
        _frame(path, 50)
        path.write_bytes(path.read_bytes()[: rng.randint(1, 200)])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 500))))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "png16":
        Image.fromarray(np.full((32, 40), rng.randrange(65536), dtype=np.uint16)).save(
            path, format="PNG"
        )
    elif kind == "rgba":
        Image.new("RGBA", (40, 32), (1, 2, 3, 0)).save(path, format="PNG")
    elif kind == "other_size":
        _frame(path, 90, size=rng.choice([(80, 64), (17, 300), (300, 17)]))
    elif kind == "no_folder":
        shutil.rmtree(folder)
    elif kind == "folder_is_file":
        shutil.rmtree(folder)
        folder.write_text("not a folder")
    elif kind == "symlink_loop":
        os.symlink(path.name, path)
    elif kind == "tiny":
        _frame(path, 10, size=(1, 1))
    elif kind == "grey":
        Image.new("L", (40, 32), 77).save(path, format="JPEG")
    elif kind == "cmyk":
        Image.new("CMYK", (40, 32), (1, 2, 3, 4)).save(path, format="JPEG")
    elif kind == "all_frames_bad":
        for j in range(1, n + 1):
            p = folder / TMPL.format(j)
            if p.is_file() or p.is_symlink():
                p.unlink()
                p.write_bytes(b"broken")
    elif kind == "dangling_symlink":
        os.symlink(folder / "nowhere.jpg", path)
    elif kind == "huge_size_header":  # a PNG header claiming 100000 x 100000 pixels
        Image.new("L", (1, 1)).save(path, format="PNG")
        data = bytearray(path.read_bytes())
        data[16:24] = (100000).to_bytes(4, "big") * 2
        path.write_bytes(bytes(data))
    return f"frame:{kind}({name}/{k})"


def build(root: Path, seed: int) -> tuple[Path, Path, list[str]]:
    """A mutated dataset under ``root``: (frames folder, list file, mutations applied)."""
    rng = random.Random(seed)
    frames, lst = _base(root)
    done = []
    for _ in range(rng.randint(1, 3)):
        mutate = _list_mutation if rng.random() < 0.45 else _frame_mutation
        done.append(mutate(rng, frames, lst))
    return frames, lst, done
