"""The project as an installed package: pyproject.toml agrees with the requirements files, its
package list is the code's folders, nothing edits sys.path, and the published commands run as
written (``python main.py``, ``python test_models.py``, ``python tools/<tool>.py``) as well as
``python -m tools.<tool>`` from any folder (subprocesses, as users run them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: requirements-dev.txt installs tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py") if not p.stem.startswith("_"))
SCRIPTS = ("main", "opts", "test_models")  # run from the checkout, not installed
PROJECT = "rnl-tsm"


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a requirements file: comments, blank lines and ``-r`` lines aside."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip() if not line.startswith("#") else ""
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def normalised(requirements: list[str]) -> dict[str, tuple]:
    """``{name: (specifiers, extras, marker)}``, so that spelling differences do not count."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} listed twice"
        out[name] = (req.specifier, frozenset(req.extras), str(req.marker or ""))
    return out


def _outside_the_code(path: Path, tests: bool = True) -> bool:
    """Whether ``path`` is in a hidden folder (.venv, .git), a build's or the data's output
    folder, or (``tests``) the test suite, which is not installed."""
    top = path.relative_to(REPO).parts[0]
    return top.startswith(".") or top in ("build", "dist", "data") or (tests and top == "tests")


def test_requirement_lines_reads_what_pip_reads(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(
        "# a comment\n-r other.txt\n\ntorch>=2.1,<3            # why\n"
        'tomli>=1.1; python_version < "3.11"\n'
    )
    assert requirement_lines(path) == ["torch>=2.1,<3", 'tomli>=1.1; python_version < "3.11"']
    assert normalised(["Pillow>=9.0"]) == normalised(["pillow >= 9.0"])
    assert normalised(["torch>=2.1,<3"]) != normalised(["torch>=2.1"])


def test_requirements_txt_and_pyproject_list_the_same_dependencies():
    project = pyproject()["project"]
    assert normalised(requirement_lines(REPO / "requirements.txt")) == normalised(
        project["dependencies"]
    )
    assert project["requires-python"] == ">=3.10"


def test_requirements_dev_and_the_dev_extra_list_the_same():
    extras = pyproject()["project"]["optional-dependencies"]
    dev = requirement_lines(REPO / "requirements-dev.txt")
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    assert normalised(dev) == normalised(extras["dev"])
    assert set(normalised(extras["onnx"])) <= set(normalised(extras["dev"]))


def test_the_package_list_is_every_code_folder_and_ruff_knows_them():
    config = pyproject()
    folders = sorted(
        p.parent.relative_to(REPO).as_posix().replace("/", ".")
        for p in REPO.glob("*/**/__init__.py")
        if not _outside_the_code(p)
    )
    assert sorted(config["tool"]["setuptools"]["packages"]) == folders
    tops = {f.split(".")[0] for f in folders}
    first_party = set(config["tool"]["ruff"]["lint"]["isort"]["known-first-party"])
    assert first_party == tops | set(SCRIPTS)
    assert {p.stem for p in REPO.glob("*.py")} == set(SCRIPTS)  # each top-level script is known


def test_no_code_edits_sys_path():
    # (the pattern in two pieces, so that this file does not match it)
    edits = re.compile(r"sys\.path\.(insert|append)|sys\.path\[.*\] *=|noqa: " + "E402")
    found = []
    for path in REPO.rglob("*.py"):
        if _outside_the_code(path, tests=False):
            continue
        rel = path.relative_to(REPO)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if edits.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert found == []


# ---------------------------------------------------------------------------------------------
# the commands, as users run them
# ---------------------------------------------------------------------------------------------
def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def installed_here(tmp_path_factory) -> Path:
    """The folder to run from, outside the checkout, once this checkout is proven installed:
    ``ops`` imported from elsewhere is this checkout's (an editable install of another checkout,
    or a stale copy, would run other code)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = _run(["-c", "import ops, tools; print(ops.__file__); print(tools.__file__)"], elsewhere)
    assert proc.returncode == 0, (
        f"the project is not installed in {sys.executable}: run `pip install -e .` in {REPO} "
        f"(scripts/_venv.sh does): {proc.stderr.strip().splitlines()[-1:]}"
    )
    found = [Path(line).resolve() for line in proc.stdout.split()]
    assert found == [REPO / "ops" / "__init__.py", REPO / "tools" / "__init__.py"], (
        f"`import ops` outside the checkout finds {found}, not {REPO}: "
        f"run `pip install -e .` in {REPO}"
    )
    return elsewhere


def _usage(proc: subprocess.CompletedProcess, prog: str) -> None:
    """``--help`` printed the usage of ``prog`` (so that program's module ran) and exited 0."""
    command = " ".join(proc.args[1:])
    assert proc.returncode == 0, f"python {command}: {proc.stderr[-2000:]}"
    first = proc.stdout.split("\n", 1)[0]
    assert re.match(rf"usage: (python )?(\S*/)?{prog} ", first), f"python {command}: {first}"


def _all_print_their_usage(runs: list[tuple[str, list[str], Path]]) -> None:
    """Run ``python <argv>`` in ``cwd`` for each ``(program, argv, cwd)``, 4 at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda r: _run(r[1], r[2]), runs))
    for (prog, _, _), proc in zip(runs, done):
        _usage(proc, f"{prog}.py")


def test_the_published_commands_run_from_the_checkout_and_tools_as_modules(installed_here):
    # As README writes them, from the checkout's root; a tool also as `python -m tools.predict`
    # from another folder. The tools find `ops` through the install: nothing edits sys.path.
    _all_print_their_usage([
        ("main", ["main.py", "--help"], REPO),
        ("test_models", ["test_models.py", "--help"], REPO),
        ("predict", ["tools/predict.py", "--help"], REPO),
        ("predict", ["-m", "tools.predict", "--help"], installed_here),
    ])  # fmt: skip


@pytest.mark.slow
def test_every_tool_runs_as_a_script_and_as_a_module_from_anywhere(installed_here):
    runs = [(tool, [f"tools/{tool}.py", "--help"], REPO) for tool in TOOLS]
    runs += [
        (tool, [str(REPO / "tools" / f"{tool}.py"), "--help"], installed_here) for tool in TOOLS
    ]
    runs += [(tool, ["-m", f"tools.{tool}", "--help"], installed_here) for tool in TOOLS]
    runs += [(name, [str(REPO / f"{name}.py"), "--help"], installed_here)
             for name in ("main", "test_models")]  # fmt: skip
    runs += [("gpu_check", ["benchmarks/gpu_check.py", "--help"], REPO)]
    runs += [
        (name, ["-m", f"benchmarks.{name}", "--help"], installed_here)
        for name in ("bench_step", "bench_rnl", "bench_data", "bench_test", "gpu_check")
    ]
    assert len(TOOLS) >= 8
    _all_print_their_usage(runs)


def test_the_wheel_holds_the_packages_and_not_the_scripts(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools here")
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to the code
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".*", "__pycache__", "data", "build", "*.egg-info"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {n for n in names if not n.startswith(f"{PROJECT.replace('-', '_')}-")}
    expected = {
        p.relative_to(REPO).as_posix()
        for top in ("ops", "archs", "tools", "benchmarks")
        for p in (REPO / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert code == expected  # every module of the packages, and no script, test or data file
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    requires = [
        line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Requires-Dist: ")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    assert normalised(runtime) == normalised(requirement_lines(REPO / "requirements.txt"))
