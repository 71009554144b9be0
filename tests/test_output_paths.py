"""ops/output_paths.py: the one rule by which no command writes over one of its inputs.

Each case builds the files on disk (hard links, symlinks, symlinked folders, not-yet-existing
outputs) and states by hand which pair clashes; the tools' own tests (test_predict.py,
test_export.py, test_test_models_cli.py, test_check_data.py, test_gen_lists.py,
test_extract_frames.py, test_run_safety.py) check the rule where each tool applies it.
"""

from __future__ import annotations

import os

import pytest

from ops.output_paths import PathClashError, check_outputs, weights_inputs
from tools import visualize_attention


@pytest.fixture
def files(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("a.txt", "d/b.txt"):
        (tmp_path / name).write_text(name)
    return tmp_path


def clash(inputs, outputs, replaced=()) -> str:
    with pytest.raises(PathClashError) as exc:
        check_outputs(inputs, outputs, replaced)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_distinct_paths_pass(files):
    check_outputs(
        [("--in", files / "a.txt"), ("--list", files / "d" / "b.txt"), ("--none", None)],
        [("--out", files / "a.txt.out"), ("--csv", files / "d" / "new.csv"), ("--x", None)],
        replaced=[("OUT", files / "frames")],
    )


def test_the_same_path_and_another_spelling_of_it(files, monkeypatch):
    a = str(files / "a.txt")
    message = clash([("--weights", a)], [("--save_scores", a)])
    assert message == (
        f"--save_scores {a} is the input --weights {a}: it would be written over; give "
        "--save_scores a path of its own"
    )
    monkeypatch.chdir(files / "d")
    message = clash([("--weights", a)], [("--out (pth)", "../d/../a.txt")])
    assert message.startswith(f"--out (pth) ../d/../a.txt is the input --weights {a}: ")
    assert message.endswith("give --out a path of its own")


@pytest.mark.parametrize("link", ["hard", "symlink", "folder_symlink"])
def test_links_to_an_input(files, link):
    src = files / "d" / "b.txt"
    if link == "hard":
        os.link(src, files / "other.txt")
        out = files / "other.txt"
    elif link == "symlink":
        os.symlink(src, files / "other.txt")
        out = files / "other.txt"
    else:  # a symlink to the input's folder: resolving the path finds the input
        os.symlink(files / "d", files / "alias")
        out = files / "alias" / "b.txt"
    message = clash([("--test_list", src)], [("--csv_file", out)])
    assert message.startswith(f"--csv_file {out} is the input --test_list {src} (the same file")


def test_a_symlinked_output_folder_that_does_not_exist_yet(files):
    # Neither exists: only the resolved path can tell that two outputs are one file.
    os.symlink(files / "d", files / "alias")
    message = clash([], [("--out (for x/clip)", files / "d" / "new.gif"),
                         ("--out (for y/clip)", files / "alias" / "new.gif")])  # fmt: skip
    assert message.startswith(f"--out (for y/clip) {files / 'alias' / 'new.gif'} and --out (for ")
    assert "the second would replace the first" in message


def test_two_outputs_hard_linked_to_each_other(files):
    os.link(files / "a.txt", files / "twin.txt")
    message = clash([], [("--save_scores", files / "a.txt"), ("--csv_file", files / "twin.txt")])
    assert "are the same file (the same file under another name)" in message


def test_a_replaced_folder_that_holds_an_input(files):
    message = clash([("", files / "d" / "b.txt")], [], replaced=[("OUT (b's frames)", files / "d")])
    assert message.startswith(
        f"OUT (b's frames) {files / 'd'} holds the input {files / 'd' / 'b.txt'}"
    )
    assert message.endswith("write it to a path of its own")
    # a folder beside the input, or one whose name only starts like the input's folder: fine
    check_outputs([("", files / "d" / "b.txt")], [], replaced=[("OUT", files / "d2")])
    check_outputs([("", files / "d" / "b.txt")], [], replaced=[("OUT", files / "d" / "b")])


def test_weights_inputs_include_the_safetensors_sidecar(files):
    assert weights_inputs("--weights", None) == []
    assert weights_inputs("--weights", "m.pth.tar") == [("--weights", "m.pth.tar")]
    sidecar = ("--weights (its sidecar)", "x/m.json")
    assert weights_inputs("--weights", "x/m.safetensors") == [
        ("--weights", "x/m.safetensors"),
        sidecar,
    ]


def test_visualize_attention_refuses_an_out_that_is_its_video(files, capsys):
    video = files / "d" / "b.txt"
    argv = ["--weights", str(files / "w.pth"), "--video", str(video), "--out", str(video)]
    assert visualize_attention.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: --out {video} is the input --video {video}: it would be written over; give --out a path of its own\n"
    )
    assert video.read_text() == "d/b.txt"
