"""The import graph of the repository, read from the source: every ``.py`` file is parsed with
``ast`` and every ``import`` statement in it, at module level or inside a function, is an edge.

The rules (issue 24):

- imports run one way: the scripts (main.py, opts.py, test_models.py, tools/, benchmarks/) ->
  ``ops/engine`` -> ``ops`` -> ``archs`` (``LAYERS``); so ``archs`` imports nothing from ``ops``,
  ``ops`` nothing from ``ops/engine``, the tools or the scripts, and ``benchmarks`` nothing from
  ``tools``;
- ``ops/checkpoint.py`` is the checkpoint file format: it imports neither the model
  (``ops.models``) nor the distributed code (``ops.distributed``);
- no cycles among the first-party modules (edges from imports inside functions included);
- no import inside a function, where it would hide a cycle or a layer violation, except the
  optional or version-dependent third-party modules of ``LAZY_THIRD_PARTY``.

``tests/`` may import anything, inside test functions too (it is in the cycle check). Imports
made by ``importlib`` are not seen (the code has none).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top-level folders that hold outputs or environments, not code (.gitignore's, plus builds).
SKIPPED_TOP = {"data", "checkpoint", "log", "runs", "bench_out", "pretrained", "build", "dist"}

# layer: the layers its modules may import. "tests" may import anything.
LAYERS = {
    "archs": {"archs"},
    "ops": {"ops", "archs"},
    "ops.engine": {"ops.engine", "ops", "archs"},
    "opts": {"ops.engine", "ops", "archs"},
    "main": {"opts", "ops.engine", "ops", "archs"},
    "test_models": {"ops.engine", "ops", "archs"},
    "tools": {"tools", "ops.engine", "ops", "archs"},
    "benchmarks": {"benchmarks", "ops.engine", "ops", "archs"},
}

# Third-party modules that code outside tests/ may import inside a function: optional extras,
# or parts of torch that the oldest torch in range lacks. Everything else is imported at the
# top of its module.
LAZY_THIRD_PARTY = {
    "safetensors": "only .safetensors files need it (ops/checkpoint.py, tools/export.py)",
    "onnxruntime": "tools/export.py's ONNX check: the optional `onnx` extra",
    "tensorboardX": "the run logger's curves, imported when a run starts logging",
    "torch.nn.attention": "SDPA kernel selection (ops/attention.py); absent before torch 2.2",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the first-party module imported, or the full name of a third-party one
    path: str  # the importing file, relative to the repository
    line: int
    in_function: bool
    first_party: bool

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def python_files(root: Path) -> dict[str, Path]:
    """``{module name: file}`` of every .py file under ``root`` (``ops/engine/trainer.py`` is
    ``ops.engine.trainer``, ``ops/__init__.py`` is ``ops``), outputs and hidden folders aside."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and not d.endswith(".egg-info")
            and not (rel == Path(".") and d in SKIPPED_TOP)
        )
        for name in files:
            if name.endswith(".py"):
                parts = (rel / name[:-3]).parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = Path(folder) / name
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(node: ast.ImportFrom, source: str, package: bool) -> str:
    """The absolute module name of a ``from ... import`` (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    base = source.split(".") if package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    """The import statements of a module, each with whether it sits inside a function."""

    def __init__(self) -> None:
        self.depth = 0
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function  # noqa: N815

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.append((node, self.depth > 0))

    visit_Import = visit_ImportFrom = _import  # noqa: N815


def import_graph(root: Path) -> tuple[dict[str, Path], list[Import]]:
    """Every module under ``root`` and every import statement in it (one ``Import`` per module
    named: ``from ops import evaluation, utils`` gives two)."""
    modules = python_files(root)
    tops = {name.split(".")[0] for name in modules}

    def known(name: str) -> str | None:
        """The longest first-party module that ``name`` starts with."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    edges = []
    for source, path in modules.items():
        collector = _Collector()
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        rel = path.relative_to(root).as_posix()
        for node, in_function in collector.found:
            if isinstance(node, ast.ImportFrom):
                module = _resolve(node, source, _is_package(path))
                # `from ops import evaluation` imports the module ops.evaluation
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                    for a in node.names
                ]
            else:
                targets = [a.name for a in node.names]
            for target in dict.fromkeys(targets):
                first = target.split(".")[0] in tops
                resolved = (known(target) or target) if first else target
                edges.append(Import(source, resolved, rel, node.lineno, in_function, first))
    return modules, edges


def layer(module: str) -> str:
    if module == "ops.engine" or module.startswith("ops.engine."):
        return "ops.engine"
    return module.split(".")[0]


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself),
    each as its modules in a cycle order (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.first_party and e.target != e.source:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe_cycle(component: list[str], edges: list[Import]) -> str:
    inside = set(component)
    links = sorted(
        {f"{e.source} -> {e.target} ({e.where()})" for e in edges
         if e.source in inside and e.target in inside and e.source != e.target}
    )  # fmt: skip
    return "cycle among " + ", ".join(component) + ": " + "; ".join(links)


def layer_violations(edges: list[Import]) -> list[str]:
    bad = []
    for e in edges:
        if not e.first_party or layer(e.source) == "tests":
            continue
        allowed = LAYERS.get(layer(e.source))
        if allowed is None:
            bad.append(f"{e.where()}: {e.source} is in no layer: add its folder to LAYERS")
        elif layer(e.target) not in allowed:
            bad.append(f"{e.where()}: {e.source} ({layer(e.source)}) imports {e.target}")
    return bad


def lazy_import_violations(edges: list[Import]) -> list[str]:
    bad = []
    for e in edges:
        if not e.in_function or layer(e.source) == "tests":
            continue
        if e.first_party:
            bad.append(f"{e.where()}: {e.source} imports {e.target} inside a function")
        elif not any(e.target == m or e.target.startswith(m + ".") for m in LAZY_THIRD_PARTY):
            bad.append(
                f"{e.where()}: {e.source} imports {e.target} inside a function "
                "(not an optional dependency of LAZY_THIRD_PARTY)"
            )
    return bad


@pytest.fixture(scope="module")
def repo_graph() -> tuple[dict[str, Path], list[Import]]:
    return import_graph(REPO)


# ---------------------------------------------------------------------------------------------
# the checker itself, on a planted repository
# ---------------------------------------------------------------------------------------------
def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checker_finds_planted_cycles_layer_breaks_and_hidden_imports(tmp_path):
    _plant(tmp_path, {
        "archs/__init__.py": "def f():\n    from ops.checkpoint import read\n",
        "ops/__init__.py": "",
        "ops/checkpoint.py": "import os\nfrom . import models\n",
        "ops/models.py": "import torch\nfrom archs import build\n",
        "ops/a.py": "from ops import b\n",
        "ops/b.py": "from .engine import loop\n",
        "ops/engine/__init__.py": "",
        "ops/engine/loop.py": "import ops.a\n",
        "tools/__init__.py": "",
        "tools/_common.py": "def g():\n    import av\n    from safetensors.torch import save_file\n",
        "benchmarks/__init__.py": "",
        "benchmarks/bench.py": "from tools._common import g\n",
        "tests/test_x.py": "def test():\n    import main\n",
        "main.py": "from opts import parse\nimport tools._common\n",
        "opts.py": "",
        ".venv/lib/site.py": "import main\n",  # hidden folders are not the repository's code
        "data/gen.py": "import main\n",  # nor the outputs
    })  # fmt: skip
    modules, edges = import_graph(tmp_path)
    assert "site" not in str(sorted(modules)) and "data.gen" not in modules
    assert {(e.source, e.target) for e in edges if e.first_party} == {
        ("archs", "ops.checkpoint"),
        ("ops.checkpoint", "ops.models"),  # `from . import models`: the module, resolved
        ("ops.models", "archs"),
        ("ops.a", "ops.b"),
        ("ops.b", "ops.engine.loop"),
        ("ops.engine.loop", "ops.a"),
        ("benchmarks.bench", "tools._common"),
        ("tests.test_x", "main"),
        ("main", "opts"),
        ("main", "tools._common"),
    }
    found = cycles(edges)
    assert sorted(found) == [
        ["archs", "ops.checkpoint", "ops.models"],  # through the import inside a function
        ["ops.a", "ops.b", "ops.engine.loop"],
    ]
    assert sorted(v.split(": ", 1)[1] for v in layer_violations(edges)) == [
        "archs (archs) imports ops.checkpoint",
        "benchmarks.bench (benchmarks) imports tools._common",
        "main (main) imports tools._common",
        "ops.b (ops) imports ops.engine.loop",
    ]
    lazy = lazy_import_violations(edges)
    assert [v.split(": ", 1)[0] for v in lazy] == ["archs/__init__.py:2", "tools/_common.py:2"]
    assert "imports ops.checkpoint inside a function" in lazy[0]
    assert "imports av inside a function (not an optional dependency" in lazy[1]


# ---------------------------------------------------------------------------------------------
# the repository
# ---------------------------------------------------------------------------------------------
def test_the_graph_covers_the_repository(repo_graph):
    modules, edges = repo_graph
    for name in ("main", "opts", "test_models", "archs", "ops.models", "ops.engine.trainer",
                 "tools.predict", "benchmarks.bench_step", "tests.test_import_graph"):  # fmt: skip
        assert name in modules
    pairs = {(e.source, e.target) for e in edges if e.first_party}
    assert ("main", "opts") in pairs and ("ops.models", "archs") in pairs
    assert ("test_models", "ops.evaluation") in pairs  # `from ops import evaluation`
    assert not [m for m in modules if m.startswith((".venv", "data."))]


def test_no_import_cycles(repo_graph):
    _, edges = repo_graph
    assert [_describe_cycle(c, edges) for c in cycles(edges)] == []


def test_imports_run_one_way(repo_graph):
    _, edges = repo_graph
    assert layer_violations(edges) == []


def test_archs_imports_nothing_from_ops_and_benchmarks_nothing_from_tools(repo_graph):
    _, edges = repo_graph
    found = [
        e.where()
        for e in edges
        if (layer(e.source), e.target.split(".")[0]) in {("archs", "ops"), ("benchmarks", "tools")}
    ]
    assert found == []


def test_the_checkpoint_file_format_imports_neither_the_model_nor_the_distributed_code(
    repo_graph,
):
    _, edges = repo_graph
    found = [
        f"{e.where()}: {e.target}"
        for e in edges
        if e.source == "ops.checkpoint" and e.target in ("ops.models", "ops.distributed")
    ]
    assert found == []


def test_no_imports_inside_functions_but_optional_dependencies(repo_graph):
    _, edges = repo_graph
    assert lazy_import_violations(edges) == []
