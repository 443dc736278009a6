"""The codebase's shape, checked: packages import only downwards (every import, deferred ones
included), no module cycles, short functions, and no work at import time."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import upres

PACKAGE = Path(upres.__file__).parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600  # a newcomer reads a module in one sitting
# Lowest first: a package may import itself and the packages before it, never one after it. The
# package root (``upres/__init__.py``, the public API's lazy exports) sits just below the CLI.
# ``auto`` drives training, inference and scoring; only the API and the CLI sit above it.
LAYERS = ("errors", "models", "io", "scoring", "degradation", "inference", "training", "auto", "cli")


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, known: set[str]) -> list[str]:
    """upres modules an AST node imports: import statements anywhere (in functions too), and
    dotted module names written as strings (for ``importlib.import_module``)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                 for a in node.names]
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
        names = [node.value]
    return [n for n in names if n in known]


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, over every import in the module's source."""
    found = modules(package)
    known = set(found)
    graph: dict[str, dict[str, int]] = {}
    for name, path in found.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, known):
                if target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def layer(module: str) -> float:
    parts = module.split(".")
    if len(parts) == 1:  # the package root: the Python API the CLI wraps
        return LAYERS.index("cli") - 0.5
    return LAYERS.index(parts[1])


def layer_violations(graph: dict[str, dict[str, int]], package: Path = PACKAGE) -> list[str]:
    files = modules(package)
    return sorted(f"{files[m].relative_to(package.parent)}:{line}: {m} imports {t}"
                  for m, edges in graph.items() for t, line in edges.items()
                  if layer(t) > layer(m))


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every import cycle found by a depth-first search (deferred imports count too)."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt):], nxt] if nxt in stack else [*stack, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_every_package_is_one_of_the_layers():
    assert {m.split(".")[1] for m in modules() if "." in m} == set(LAYERS)


def test_imports_only_run_downwards():
    assert layer_violations(import_graph()) == []


def test_no_module_cycles():
    assert cycles(import_graph()) == []


def test_a_planted_upward_import_is_caught(tmp_path):
    """The checks see an import inside a function, and a cycle it closes."""
    copy = tmp_path / "upres"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    files = copy / "io" / "files.py"
    files.write_text(files.read_text() + "\n\ndef _planted():\n    from upres.training import loop\n")
    graph = import_graph(copy)
    assert any("io/files.py" in v and "imports upres.training.loop" in v
               for v in layer_violations(graph, copy))
    assert any(c[0] == "upres.io.files" or "upres.io.files" in c for c in cycles(graph))


def test_lower_layers_and_configs_import_no_torch():
    """Degradation estimation, pairs, configs, the registry and the CLI's parser run without
    PyTorch (fast errors; fingerprints and configs on machines without it)."""
    torch_free = ["upres.degradation.folders", "upres.degradation.synth", "upres.degradation.refine",
                  "upres.io.pairs", "upres.io.tables", "upres.training.config",
                  "upres.models.registry", "upres.inference.backends", "upres.cli"]
    code = ("import importlib, sys\n"
            f"for name in {torch_free!r}:\n"
            "    importlib.import_module(name)\n"
            "from upres.training.config import load_config\n"
            "load_config('recipe-x4plus', ['model.num_feat=96'])\n"
            "from upres.cli import build_parser\n"
            "build_parser()\n"
            "print(sorted(m for m in ('torch', 'spandrel', 'sklearn') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_modules_are_short():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_functions_are_short():
    """No function over ~60 lines, argparse tables (``add_*``, ``build_parser``) aside."""
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                table = node.name.startswith(("_add_", "add_")) or node.name == "build_parser"
                if lines > MAX_FUNCTION_LINES and not table:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_no_source_name_looks_like_a_test():
    """A function named ``test_*`` in src is collected by pytest wherever a test imports it
    (``costs.test_seconds`` once ran as a test with no fixture ``run``)."""
    named = [f"{name}.{node.name}" for name, path in modules().items()
             for node in ast.parse(path.read_text()).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test")]
    assert not named, named


def test_import_has_no_side_effects():
    """Importing every module neither changes the umask nor sets backend flags."""
    code = (
        "import os, importlib, torch\n"
        "os.umask(0o027); torch.backends.cudnn.benchmark = False\n"
        "calls = []\n"
        "real = os.umask\n"
        "os.umask = lambda m: (calls.append(m), real(m))[1]\n"
        f"for name in {sorted(modules())!r}:\n"
        "    importlib.import_module(name)\n"
        "os.umask = real\n"
        "assert calls == [], calls\n"
        "assert torch.backends.cudnn.benchmark is False\n"
        "assert os.umask(0o022) == 0o027\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_still_import_from_upres():
    for name in upres.__all__:
        assert getattr(upres, name) is not None, name
    from upres import RRDBNet, Upscaler, load_model, psnr  # noqa: F401  (the README's API)
