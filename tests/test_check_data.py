"""tools/check_data.py finds every planted problem of the bad dataset, and nothing else."""

import os
import re
from collections import Counter

import pytest

from ops.lists import LIST_PROBLEM_KINDS
from tests._data_helpers import BAD_LIST, NUM_CLASS, build_bad_dataset, write_grey_video
from tools.check_data import VIDEO_PROBLEM_KINDS, check, main

LINE = re.compile(r"^(?P<list>.+):(?P<line>\d+): \[(?P<kind>\w+)\] ")


def found(lines):
    out = Counter()
    for line in lines:
        m = LINE.match(line)
        assert m, f"unexpected report line: {line}"
        assert m["kind"] in LIST_PROBLEM_KINDS + VIDEO_PROBLEM_KINDS, line  # documented kinds
        out[(int(m["line"]), m["kind"])] += 1
    return out


def expected():
    return Counter((n, k) for n, (_, kinds) in enumerate(BAD_LIST, start=1) for k in kinds)


def test_finds_every_planted_problem_and_nothing_else(tmp_path):
    frames, lst = build_bad_dataset(tmp_path)
    problems, scanned = check([str(lst)], str(frames), "img_{:05d}.jpg", "RGB", NUM_CLASS)
    assert found(problems) == expected()
    assert scanned == 6  # the 6 well-formed lines
    text = "\n".join(problems)
    assert "frames 3 are missing" in text and "v_missing/img_00003.jpg" in text
    assert "the list says 12 frames but frames 9-12 are not on disk (8 found" in text
    assert "frame 5 does not decode: " in text and "v_corrupt/img_00005.jpg" in text
    assert "v_nodir" in text and "does not exist" in text


def test_cli_report_file_and_exit_codes(tmp_path, capsys):
    frames, lst = build_bad_dataset(tmp_path)
    report = tmp_path / "report.txt"
    common = ["--root_path", str(frames), "--image_tmpl", "img_{:05d}.jpg", "--num_class", "3"]
    code = main(["mydata", "--train_list", str(lst), "--val_list", str(lst), "--split", "train",
                 "--report", str(report)] + common)  # fmt: skip
    assert code == 1
    lines = report.read_text().splitlines()
    assert found(lines[:-1]) == expected()
    assert lines[-1].startswith(f"{sum(expected().values())} problem(s)")
    assert found(capsys.readouterr().out.splitlines()[:-2]) == expected()

    # a clean dataset: exit 0, nothing reported
    write_grey_video(tmp_path / "clean" / "v", 5)
    good = tmp_path / "good.txt"
    good.write_text("v 5 1\n")
    common[1] = str(tmp_path / "clean")
    assert main(["mydata", "--train_list", str(good), "--val_list", str(good)] + common) == 0
    assert capsys.readouterr().out.startswith("0 problem(s)")

    # the check cannot run: exit 2 with a one-line message
    assert main(["nosuchdataset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_report_never_writes_over_the_list_it_checks(tmp_path, capsys, split):
    # Issue 25: `check_data.py --report` given the list it checks overwrote the list. Also
    # through a symlink to it, and for the list of the other split named.
    frames, lst = build_bad_dataset(tmp_path)
    os.symlink(lst, tmp_path / "alias.txt")
    before = lst.read_bytes()
    common = ["--root_path", str(frames), "--image_tmpl", "img_{:05d}.jpg", "--num_class", "3"]
    for report in (lst, tmp_path / "alias.txt"):
        code = main(["mydata", "--train_list", str(lst), "--val_list", str(lst), "--split", split,
                     "--report", str(report)] + common)  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"error: --report {report} is the input --{split}_list {lst}" in err
    assert lst.read_bytes() == before


def test_quick_mode_and_missing_list(tmp_path):
    frames, lst = build_bad_dataset(tmp_path)
    problems, _ = check(
        [str(lst), str(tmp_path / "absent.txt")],
        str(frames),
        "img_{:05d}.jpg",
        "RGB",
        NUM_CLASS,
        decode=False,
    )
    got = found(problems)
    assert got[(0, "missing_list")] == 1
    # without decoding, the corrupt frames go unnoticed; everything else is found
    assert got - Counter({(0, "missing_list"): 1}) == Counter(
        {k: v for k, v in expected().items() if k[1] != "corrupt_frames"}
    )


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--data_root" in out and "--report" in out and "-j" in out
