"""The package's shape, checked from its sources (parsed with ``ast``, nothing imported).

* No module uses another pipeline module's private names (``from pipeline.x import _y``,
  ``x._y``): what two modules share is a public, documented seam.
* No module is over 700 lines, and no function over 80, so each stays one readable role.
  The kernel files (``pipeline/kernels/``) are exempt: a kernel is long because its loop
  is fused on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
# Being split by others as this is written: remove each line once its split lands.
MODULE_SIZE_EXEMPT: set[str] = set()
FUNCTION_SIZE_EXEMPT: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, module: str, modules: set[str], package: bool = False) -> list[str]:
    """``"line: what"`` for every use in ``source`` (the module ``module``, a package's
    ``__init__`` when ``package``) of another pipeline module's private name; ``modules`` is
    every pipeline module's name."""
    tree = ast.parse(source)
    here = module.split(".") if package else module.split(".")[:-1]  # for relative imports
    aliases: dict[str, str] = {}  # local name -> the pipeline module it is bound to
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] != "pipeline":
                    continue
                aliases[a.asname or "pipeline"] = a.name if a.asname else "pipeline"
                if any(_is_private(part) for part in a.name.split(".")):
                    found.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            anchor = here[: len(here) - node.level + 1] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base.split(".")[0] != "pipeline":
                continue
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
                if _is_private(a.name) and base != module:
                    found.append(f"{node.lineno}: from {base} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in aliases:
            continue
        owner = aliases[value.id]
        for attr in reversed(chain):  # walk down submodules to the name used
            if f"{owner}.{attr}" in modules:
                owner = f"{owner}.{attr}"
                continue
            if _is_private(attr) and owner != module and attr == node.attr:
                found.append(f"{node.lineno}: {owner}.{attr}")
            break
    return sorted(set(found))


def test_the_private_name_check_finds_what_it_should():
    modules = {"pipeline", "pipeline.score", "pipeline.kernels", "pipeline.kernels.cpu"}
    source = """
from pipeline.score import _plan, score
from pipeline import score as s
from pipeline.kernels import cpu
import pipeline.kernels.cpu
import pipeline.kernels.cpu as K
s._notify(); cpu._plan(); pipeline.kernels.cpu._STAGE; K._tanh; s.score(); cpu.__name__
"""
    got = private_uses(source, "pipeline.engines.ray", modules)
    assert [g.split(": ", 1)[1] for g in got] == [
        "from pipeline.score import _plan",
        "pipeline.kernels.cpu._STAGE",
        "pipeline.kernels.cpu._plan",
        "pipeline.kernels.cpu._tanh",
        "pipeline.score._notify",
    ]
    # a module's own private names are its own business; relative imports resolve too
    assert private_uses("from pipeline.score import _plan", "pipeline.score", modules) == []
    got = private_uses("from .cpu import _plan", "pipeline.kernels", modules, package=True)
    assert got == ["1: from pipeline.kernels.cpu import _plan"]
    assert private_uses("from . import cpu\ncpu._x", "pipeline.kernels.gemm", modules) == [
        "2: pipeline.kernels.cpu._x"
    ]


@pytest.mark.parametrize("module", sorted(MODULES), ids=lambda m: m)
def test_no_module_uses_another_modules_private_names(module):
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    uses = private_uses(source, module, set(MODULES), package=path.name == "__init__.py")
    assert not uses, f"{_rel(MODULES[module])} uses private names: make them public " + str(uses)


def _outside_kernels(path: Path) -> bool:
    return not _rel(path).startswith("pipeline/kernels/")


def test_no_module_is_over_700_lines():
    big = {
        _rel(p): n
        for p in MODULES.values()
        if _outside_kernels(p)
        and _rel(p) not in MODULE_SIZE_EXEMPT
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"split these by role (lines): {big}"


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    # from the body's first line (its docstring, if any) to its end: a signature of
    # declared options (a CLI command's) is its interface, not its length
    return node.end_lineno - node.body[0].lineno + 1


def test_no_function_is_over_80_lines():
    long = {}
    for path in MODULES.values():
        if not _outside_kernels(path) or _rel(path) in FUNCTION_SIZE_EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := _function_lines(node)) > MAX_FUNCTION_LINES:
                    long[f"{_rel(path)}:{node.lineno} {node.name}"] = n
    assert not long, f"break these into steps (lines): {long}"


def test_rnnpipe_environment_variables_are_read_in_runtime_only():
    # pipeline/runtime.py reads every RNNPIPE_* variable and lists them in its docstring
    named = {}
    for path in MODULES.values():
        if _rel(path) == "pipeline/runtime.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "RNNPIPE_" in node.value
                and id(node) not in docstrings
            ):
                named[f"{_rel(path)}:{node.lineno}"] = node.value
    assert not named, f"read these through pipeline.runtime: {named}"
    table = (PACKAGE / "runtime.py").read_text(encoding="utf-8")
    for name in ("THREAD_ENV", "CPU_TUNING", "FAST_EXIT", "RAY_VERBOSE", "CUDA_TILE"):
        assert f"| `RNNPIPE_{name}` |" in table
