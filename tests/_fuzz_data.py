"""Seeded mutations of a tiny frame-folder dataset, for the fuzz tests (tests/test_fuzz_data.py);
and (issue 25) seeded output-path clashes for every tool and main.py, and concurrent runs.

`build(root, seed)` writes 4 videos (2 classes, 6 JPEG frames of 40x32 each) and one list file,
then applies 1-3 random mutations, each what a careless or hostile user, a broken disk or a bad
copy may do to a list or a frame folder. It returns the description of the mutations, so a
failure names what to reproduce.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import random
import shutil
from dataclasses import dataclass
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


# ------------------------------------------------------------------ output-path clashes (issue 25)
# How an output path names an existing input: literally, spelled another way, or through a link.
RELATIONS = ("same_path", "respelled", "hard_link", "symlink", "symlinked_folder")


@dataclass
class Clash:
    """One seeded clash: run ``tool`` with ``argv``; the one error line must contain each of
    ``needles``; ``what`` says what was chosen."""

    tool: str
    argv: list[str]
    needles: list[str]
    what: str


def name_of(rng: random.Random, root: Path, target: Path, relations=RELATIONS) -> tuple[str, str]:
    """(a path that is ``target``, the relation used); links are made under ``root/links``."""
    relation = rng.choice(relations)
    links = root / "links" / str(rng.randrange(10**9))
    if relation == "same_path":
        return str(target), relation
    if relation == "respelled":  # parent/./../parent/name
        return str(target.parent / "." / ".." / target.parent.name / target.name), relation
    links.mkdir(parents=True)
    if relation == "hard_link":
        os.link(target, links / target.name)
        return str(links / target.name), relation
    if relation == "symlink":
        (links / target.name).symlink_to(target)
        return str(links / target.name), relation
    (links / "folder").symlink_to(target.parent, target_is_directory=True)
    return str(links / "folder" / target.name), relation


def _files(root: Path, *names: str, content: bytes = b"x\n") -> list[Path]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        paths.append(path)
    return paths


def _predict(rng, root: Path, shared: dict) -> Clash:
    a, b = _files(root, "v/a.mp4", "v/b.mp4", content=b"not decoded: refused before")
    (weights,) = _files(root, "w.pth")
    kind = rng.choice(["victim", "template_in_source", "same_name"])
    if kind == "victim":  # one input, --out names it
        target = rng.choice([a, b])
        out, rel = name_of(rng, root, target)
        argv = ["--weights", str(weights), str(target), "--out", out]
        return Clash("predict", argv, ["is the input", str(target)], f"predict out={rel}")
    if kind == "template_in_source":
        argv = ["--weights", str(weights), str(a), str(b), "--out", str(root / "v" / "{name}.mp4")]
        return Clash("predict", argv, ["is the input", str(a)], "predict v/{name}.mp4")
    x, y = root / "x" / "clip", root / "y" / "clip"
    _files(root, "x/clip/img_00001.jpg", "y/clip/img_00001.jpg")
    suffix = rng.choice([".gif", ".mp4"])
    argv = [
        "--weights",
        str(weights),
        str(x),
        str(y),
        "--out",
        str(root / "o" / f"{{name}}{suffix}"),
    ]
    return Clash("predict", argv, ["are the same file", str(x), str(y)], "predict x/clip y/clip")


def _export(rng, root: Path, shared: dict) -> Clash:
    weights, labels = _files(root, "R/ckpt.pth.tar", "labels.json")
    formats = rng.sample(["torchscript", "onnx", "pt2", "safetensors"], rng.randint(0, 2))
    if rng.random() < 0.5:
        path, rel = name_of(rng, root, weights)
        out, formats = path[: -len(".pth.tar")], formats + ["pth"]
        victim = "--weights"
    else:  # <out>.json, the description every export writes, is the category file
        path, rel = name_of(rng, root, labels)
        out, victim = path[: -len(".json")], "--category_file"
    argv = ["--weights", str(weights), "--out", out, "--category_file", str(labels)]
    argv += ["--format", *rng.sample(formats, len(formats))] if formats else []
    return Clash("export", argv, ["is the input", victim], f"export {victim} {rel} {formats}")


def _check_data(rng, root: Path, shared: dict) -> Clash:
    train, val, test = _files(root, "train.txt", "val.txt", "test.txt", content=b"v 3 0\n")
    (cats,) = _files(root, "cats.txt", content=b"a\nb\n")
    (root / "frames").mkdir()
    argv = ["mydata", "--train_list", str(train), "--val_list", str(val)]
    argv += ["--root_path", str(root / "frames"), "--image_tmpl", TMPL]
    argv += ["--category_file", str(cats)] if rng.random() < 0.5 else ["--num_class", "2"]
    if rng.random() < 0.3:
        argv += ["--test_list", str(test)]
        victims = {"--test_list": test}
    else:
        splits = rng.sample(["train", "val"], rng.randint(1, 2))
        argv += ["--split", *splits]
        victims = {f"--{s}_list": {"train": train, "val": val}[s] for s in splits}
    if "--category_file" in argv:
        victims["--category_file"] = cats
    flag, target = rng.choice(sorted(victims.items()))
    report, rel = name_of(rng, root, target)
    argv += ["--report", report]
    return Clash(
        "check_data", argv, ["is the input", flag, str(target)], f"check_data {flag} {rel}"
    )


def _gen_lists(rng, root: Path, shared: dict) -> Clash:
    header = b"label,youtube_id,time_start,time_end,split\n"
    (train,) = _files(root, "ann/train.csv", content=header + b"a,xxxxxxxxxxx,3,13,train\n")
    (val,) = _files(root, "ann/validate.csv", content=header + b"b,yyyyyyyyyyy,0,10,val\n")
    (root / "frames" / "yyyyyyyyyyy").mkdir(parents=True)
    outs = {
        "--train_out": root / "t.txt",
        "--val_out": root / "v.txt",
        "--category_out": root / "c.txt",
    }
    if rng.random() < 0.5:  # an output named as an annotation file
        flag, target = rng.choice(sorted(outs)), rng.choice([train, val])
        outs[flag], rel = name_of(rng, root, target)
        needles = ["is the input", flag, str(target)]
    else:  # two outputs that are one file (not there yet: no links possible)
        first, second = rng.sample(sorted(outs), 2)
        outs[second], rel = name_of(rng, root, outs[first], ("same_path", "respelled"))
        needles = ["are the same file", first, second]
    argv = ["kinetics", "--annotations", str(root / "ann"), "--frames", str(root / "frames")]
    for flag, path in outs.items():
        argv += [flag, str(path)]
    return Clash("gen_lists", argv, needles, f"gen_lists {needles[1:]} {rel}")


def _extract_frames(rng, root: Path, shared: dict) -> Clash:
    video, inner = _files(root, "v/cls.mp4", "v/cls/a.mp4", content=b"not decoded")
    kind = rng.choice(["holds", "failed_list", "out_is_video"])
    if kind == "holds":  # cls.mp4's frame folder is v/cls, which holds cls/a.mp4
        argv = [str(root / "v"), str(root / "v")] + (["--overwrite"] if rng.random() < 0.5 else [])
        return Clash("extract_frames", argv, ["holds the input", str(inner)], "extract holds")
    target = rng.choice([video, inner])
    path, rel = name_of(rng, root, target)
    if kind == "failed_list":
        argv = [str(root / "v"), str(root / "out"), "--failed_list", path]
    else:
        argv = [str(target), path]
    return Clash("extract_frames", argv, ["is the input", str(target)], f"extract {kind} {rel}")


def _visualize_attention(rng, root: Path, shared: dict) -> Clash:
    weights, video, cats = _files(root, "w.pth", "clip.mp4", "cats.txt")
    flag, target = rng.choice(
        [("--weights", weights), ("--video", video), ("--category_file", cats)]
    )
    out, rel = name_of(rng, root, target)
    argv = ["--weights", str(weights), "--video", str(video), "--category_file", str(cats)]
    return Clash(
        "visualize_attention", argv + ["--out", out], ["is the input", flag], f"vis {flag} {rel}"
    )


def _test_models(rng, root: Path, shared: dict) -> Clash:
    """Needs ``shared['eval_root']`` (tests/_eval_helpers.py's dataset) and ``shared['eval_weights']``
    (a published-name checkpoint of it): the check runs once the models are built."""
    data = Path(shared["eval_root"]) / "synthetic"
    test = root / "test.txt"
    test.write_bytes((data / "val_videofolder.txt").read_bytes())
    cats = root / "cats.txt"
    cats.write_bytes((data / "category.txt").read_bytes())
    weights = Path(shared["eval_weights"])
    inputs = {"--test_list": test, "--category_file": cats}
    if rng.random() < 0.3:  # the weights themselves (a copy: this case may link to it)
        weights = root / weights.name
        weights.write_bytes(Path(shared["eval_weights"]).read_bytes())
        inputs["--weights"] = weights
    argv = ["synthetic", f"--weights={weights}", "--test_segments=4", "-j", "0", "--input_size=32"]
    argv += ["--data_root", shared["eval_root"], "--device", "cpu"]
    argv += [f"--test_list={test}", f"--category_file={cats}"]
    if rng.random() < 0.25:  # two outputs that are one file
        argv += ["--save_scores", str(root / "s.out"), "--csv_file", str(root / "s.out")]
        return Clash(
            "test_models", argv, ["are the same file", "--save_scores"], "test_models pair"
        )
    flag, victim = rng.choice(sorted(inputs.items()))
    output = rng.choice(["--save_scores", "--csv_file"])
    path, rel = name_of(rng, root, victim)
    return Clash(
        "test_models",
        argv + [output, path],
        ["is the input", flag],
        f"test_models {output} {flag} {rel}",
    )


def _main(rng, root: Path, shared: dict) -> Clash:
    """main.py on ``shared['tiny_root']`` (ops.synthetic.make_tiny) whose run folders already
    hold the files a run writes: a flag that reads one of them is refused."""
    base = list(shared["main_argv"](str(root)))
    model_dir, log_dir = Path(shared["run_dir"](str(root))), Path(shared["log_dir"](str(root)))
    ckpts = _files(
        model_dir, "ckpt.pth.tar", "ckpt.best.pth.tar", "ckpt.ema.pth.tar", "run_config.json"
    )
    logs = _files(log_dir, "log.csv", "log.txt", "args.txt", content=b"left\nright\n")
    pairs = [("--tune_from", p) for p in ckpts[:3]] + [
        ("--resume", ckpts[3]),
        ("--resume", logs[0]),
    ]
    pairs += [(f, p) for f in ("--train_list", "--val_list", "--category_file") for p in logs]
    flag, target = rng.choice(pairs)
    path, rel = name_of(rng, root, target)
    return Clash(
        "main",
        base + [flag, path],
        ["is the input", flag, str(target)],
        f"main {flag}={target.name} {rel}",
    )


CLASH_TOOLS = {
    "predict": _predict,
    "export": _export,
    "check_data": _check_data,
    "gen_lists": _gen_lists,
    "extract_frames": _extract_frames,
    "visualize_attention": _visualize_attention,
    "test_models": _test_models,
    "main": _main,
}


def clash_case(root: Path, seed: int, shared: dict) -> Clash:
    """A seeded output-path clash for one of the tools (or main.py), its files under ``root``."""
    rng = random.Random(seed)
    tool = rng.choice(sorted(CLASH_TOOLS))
    root.mkdir(parents=True, exist_ok=True)
    return CLASH_TOOLS[tool](rng, root, shared)


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root``: a link's target, a file's bytes' hash, or 'dir'."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[path] = "dir"
            else:
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


# ------------------------------------------------------------------ concurrent runs (issue 25)
def concurrent_case(seed: int) -> dict:
    """Who holds the folder a second run asks for, and how that run is started: ``held`` the
    folder locked ('model_dir', or 'log_dir' of a run with another --root_model), ``holder``
    'alive' or 'killed' (SIGKILL), ``child`` whether the holder forked a child that outlives
    it, ``flags`` the second run's extra flags."""
    rng = random.Random(seed)
    return {
        "held": rng.choice(["model_dir", "log_dir"]),
        "holder": rng.choice(["alive", "killed"]),
        "child": rng.random() < 0.5,
        "flags": rng.choice([[], ["--resume", "auto"], ["--overwrite"], ["--seed", "7"]]),
    }
