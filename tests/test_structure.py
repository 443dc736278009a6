"""The codebase's shape, checked: no import cycles between upres modules, short functions, and
no work at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import upres

PACKAGE = Path(upres.__file__).parent
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """upres modules imported at module level (imports inside functions are deferred on
    purpose and cannot form an import-time cycle)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in modules}
    return out


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _top_level_imports(path, set(modules)) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_functions_are_short():
    """No function over ~60 lines, argparse tables (``_add_*``, ``build_parser``) aside."""
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                table = node.name.startswith("_add_") or node.name == "build_parser"
                if lines > MAX_FUNCTION_LINES and not table:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_import_has_no_side_effects():
    """Importing every module neither changes the umask nor sets backend flags."""
    code = (
        "import os, importlib, torch\n"
        "os.umask(0o027); torch.backends.cudnn.benchmark = False\n"
        "calls = []\n"
        "real = os.umask\n"
        "os.umask = lambda m: (calls.append(m), real(m))[1]\n"
        f"for name in {sorted(_modules())!r}:\n"
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
