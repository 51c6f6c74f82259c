"""The house plan's layer table, read off the source with ``ast`` (../shared/ARCHITECTURE.md).

| layer        | may import of ours                                     |
| ------------ | ------------------------------------------------------ |
| theory       | theory                                                 |
| sim          | sim, theory                                            |
| gpu          | gpu, sim                                               |
| studies      | anything, but gpu only inside a function (lazily)      |
| paper_figs   | paper_figs                                             |

Every import counts: module-level ones, the ones inside functions, relative ones (resolved), and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. And one place
decides "on the device": only ``sim/backend.py`` spells the test for a device array or defines
an ``on_device``-like helper, and only ``gpu/detect.py`` probes for a GPU (CuPy's
``cuda.is_available``, calls of ``gpu_available``).
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("theory", "sim", "gpu", "studies", "paper_figs")
ALLOWED = {
    "theory": {"theory"},
    "sim": {"sim", "theory"},
    "gpu": {"gpu", "sim"},
    "studies": set(OURS),
    "paper_figs": {"paper_figs"},
}
LAZY_ONLY = {"studies": {"gpu"}}  # importer -> packages it may import only inside functions
DEVICE_DECIDER = "sim/backend.py"
DEVICE_PROBE = "gpu/detect.py"
_DEVICE_HELPER = re.compile(r"^_?(on_device|is_device(_array)?|on_gpu|device_available)$")


@functools.cache
def _read_sources() -> tuple[tuple[str, str], ...]:
    """(path relative to the repository, source) of every module of the five packages."""
    return tuple((p.relative_to(ROOT).as_posix(), p.read_text())
                 for pkg in OURS for p in sorted((ROOT / pkg).rglob("*.py")))


def sources() -> list[tuple[str, str]]:
    return list(_read_sources())


class _Imports(ast.NodeVisitor):
    """(imported module, line, inside a function) for every import of one module."""

    def __init__(self, rel: str):
        parts = rel[:-3].split("/")
        self.is_package = parts[-1] == "__init__"
        self.name = ".".join(parts[:-1] if self.is_package else parts)
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, target: str, node):
        self.found.append((target, node.lineno, self.depth > 0))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        if node.level:  # relative: resolve against this module's package
            base = self.name.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self._add(target, node)

    def visit_Call(self, node):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def imports_of(rel: str, text: str) -> list[tuple[str, int, bool]]:
    v = _Imports(rel)
    v.visit(ast.parse(text, filename=rel))
    return v.found


def violations(srcs) -> list[str]:
    bad = []
    for rel, text in srcs:
        layer = rel.split("/")[0]
        for target, line, lazy in imports_of(rel, text):
            top = target.split(".")[0]
            if top not in OURS:
                continue
            where = f"{rel}:{line} imports {target}"
            if top not in ALLOWED[layer]:
                bad.append(f"{where} ({layer} may import only {', '.join(sorted(ALLOWED[layer]))})")
            elif top in LAZY_ONLY.get(layer, ()) and not lazy:
                bad.append(f"{where} at module level ({layer} imports {top} only inside a function)")
    return bad


def device_places(srcs) -> tuple[set[str], set[str]]:
    """(deciders, probes): modules that test for device arrays or define an on_device-like
    helper, and modules that probe for a GPU (``cuda.is_available()``, ``gpu_available()``)."""
    deciders, probes = set(), set()
    for rel, text in srcs:
        for node in ast.walk(ast.parse(text, filename=rel)):
            if isinstance(node, ast.Constant) and node.value == "__cuda_array_interface__":
                deciders.add(rel)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _DEVICE_HELPER.match(node.name):
                deciders.add(rel)
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr == "is_available" and \
                        isinstance(f.value, ast.Attribute) and f.value.attr == "cuda":
                    probes.add(rel)
                elif "gpu_available" in (getattr(f, "id", None), getattr(f, "attr", None)):
                    probes.add(rel)
    return deciders, probes


def test_every_package_is_scanned():
    srcs = sources()
    for pkg in OURS:
        assert any(rel.startswith(pkg + "/") for rel, _ in srcs), pkg
    assert len(srcs) > 50


def test_imports_follow_the_layer_table():
    assert violations(sources()) == []


def test_the_reader_sees_lazy_relative_and_dynamic_imports():
    text = ("import numpy\nfrom .. import backend\nfrom .sibling import x\n"
            "def f():\n    from gpu.attention import MAX_DIM\n    return MAX_DIM\n"
            "def g():\n    import importlib\n    return importlib.import_module('gpu')\n")
    found = imports_of("sim/inner/mod.py", text)
    assert ("numpy", 1, False) in found
    assert ("sim", 2, False) in found
    assert ("sim.inner.sibling", 3, False) in found
    assert ("gpu.attention", 5, True) in found
    assert ("gpu", 9, True) in found
    assert imports_of("sim/inner/__init__.py", "from .mod import y\n") == [("sim.inner.mod", 1, False)]


@pytest.mark.parametrize("rel, text, ok", [
    ("sim/planted.py", "def f():\n    import gpu\n", False),  # sim never imports gpu, even lazily
    ("sim/planted.py", "x = __import__('gpu.attention')\n", False),
    ("sim/planted.py", "from theory import token_sample\n", True),
    ("theory/planted.py", "import sim.backend\n", False),
    ("gpu/planted.py", "from sim.philox import U64\n", True),
    ("gpu/planted.py", "import studies.cli\n", False),
    ("studies/planted.py", "import gpu\n", False),  # module level
    ("studies/planted.py", "def f():\n    import gpu\n", True),
    ("studies/planted.py", "from paper_figs import convergence\n", True),
    ("paper_figs/planted.py", "from studies.sweep import open_store\n", False),
    ("paper_figs/planted.py", "from .common import style\n", True),
])
def test_a_planted_import_is_judged(rel, text, ok):
    assert (violations([(rel, text)]) == []) is ok


def test_one_place_decides_the_device():
    deciders, probes = device_places(sources())
    assert deciders == {DEVICE_DECIDER}, sorted(deciders)
    assert probes == {DEVICE_PROBE}, sorted(probes)


@pytest.mark.parametrize("text, kind", [
    ("def _on_device(*a):\n    return all(hasattr(x, '__cuda_array_interface__') for x in a)\n", 0),
    ("def f(x):\n    return hasattr(x, '__cuda_array_interface__')\n", 0),
    ("def is_device_array(x):\n    return False\n", 0),
    ("def f():\n    import cupy\n    return cupy.cuda.is_available()\n", 1),
    ("from gpu import gpu_available\nuse = gpu_available()\n", 1),
])
def test_a_second_device_decision_is_caught(text, kind):
    """One more decision planted anywhere makes the count two (the check can fail)."""
    places = device_places(sources() + [("studies/planted.py", text)])
    assert len(places[kind]) == 2
