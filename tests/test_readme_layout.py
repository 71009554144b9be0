"""README's layout table matches the tree: every path it names exists, every module of ops/ and
every top-level entry of the repository is named (a folder row covers what is inside)."""

import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_LAYOUT = {
    "README.md",
    "pyproject.toml",
    "requirements.txt",
    "requirements-dev.txt",
    ".gitignore",
}


def _named_paths() -> set[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "README: no layout table"
    return {p for row in rows for p in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def _top_level_entries() -> set[str]:
    try:
        files = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what is on disk
        ignored = {".git", ".venv", "data", "checkpoint", "log", "runs", "bench_out"}
        files = [e for e in os.listdir(REPO) if e not in ignored and not e.endswith("_cache")]
    return {f.split("/")[0] for f in files} - NOT_LAYOUT


def _covered(path: str, named: set[str]) -> bool:
    return path in named or any(n.endswith("/") and path.startswith(n) for n in named)


def test_every_named_path_exists():
    for path in _named_paths():
        assert os.path.exists(os.path.join(REPO, path)), f"README layout names {path}: not found"


def test_every_module_of_ops_and_every_top_level_entry_is_named():
    named = _named_paths()
    modules = [
        f"ops/{d}{f}"
        for d in ("", "engine/")
        for f in sorted(os.listdir(os.path.join(REPO, "ops", d)))
        if f.endswith(".py")
    ]
    missing = [m for m in modules if not _covered(m, named)]
    # a top-level entry: named itself, as a folder row, or through the files of it that are named
    top = sorted(_top_level_entries())
    missing += [e for e in top if not any(n == e or n.startswith(e + "/") for n in named)]
    assert not missing, f"README layout table does not name {missing}"
