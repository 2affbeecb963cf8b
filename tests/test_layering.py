"""fp4train's import graph keeps its layers, read from the source with ``ast`` (nothing is imported).

The numerics stack in three layers, bottom up: ``fp4train.quant`` (the quantized-tensor type and
the reference math), ``fp4train.kernels`` (Triton, equal to the reference), ``fp4train.dispatch``
(picks one or the other). Checked: no import circle among fp4train's modules; no layer imports
one above it (``quant`` nothing outside itself but the facade's one lazy import, ``kernels``
nothing but ``quant`` and itself); no module imports another's ``_private`` names; and every
fp4train import resolves (the lazy kernel imports of the GPU routes run in no CPU test).

Every ``import`` statement is an edge, those inside functions too: a lazy import still makes the
importer depend on the module, and a circle of lazy imports was the knot (``quant.api`` ->
``kernels.dispatch`` -> ``kernels.*`` -> ``quant.api``) this file keeps out. ``import a.b.c`` and
``from a.b import c`` (``c`` a module) are edges to ``a.b.c``, not to the package ``a.b``: the
module depends on ``c``, not on what ``a.b``'s ``__init__`` re-exports.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fp4train"
LAYERS = ("fp4train.quant", "fp4train.kernels", "fp4train.dispatch")  # bottom up
# The one edge out of the bottom layer: the package facade hands out the dispatched ops
# (``quantize``, …) from the layer above by a lazy import (see fp4train/quant/__init__.py).
FACADE = ("fp4train.quant", "fp4train.dispatch")


@dataclass(frozen=True)
class Import:
    """One edge: ``importer`` imports the fp4train module ``target``; ``name``: what it takes from
    it (``None``: the module itself), ``binds``: the local name bound to ``target`` if any
    (``import a.b as m``, ``from a import b``), ``lazy``: the statement runs inside a function,
    ``typing_only``: it sits under ``if TYPE_CHECKING:`` and never runs (annotations only)."""

    importer: str
    target: str
    name: str | None
    binds: str | None
    lazy: bool
    typing_only: bool = False


def _modules() -> dict[str, Path]:
    """fp4train's modules by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class TypeCheckingBlock:
    """The scope marker of the body of an ``if TYPE_CHECKING:`` block."""


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nodes(tree: ast.AST, scopes: tuple[type, ...] = ()):
    """``(node, types of the function and class definitions around it)`` for every node of
    ``tree``; the body of an ``if TYPE_CHECKING:`` block adds ``TypeCheckingBlock``."""
    for node in ast.iter_child_nodes(tree):
        yield node, scopes
        if _is_type_checking(node):
            for child in node.body:
                yield child, (*scopes, TypeCheckingBlock)
                yield from _nodes(child, (*scopes, TypeCheckingBlock))
            for child in node.orelse:
                yield child, scopes
                yield from _nodes(child, scopes)
            continue
        inner = (*scopes, type(node)) if isinstance(node, (*_FUNCTIONS, ast.ClassDef)) else scopes
        yield from _nodes(node, inner)


@functools.cache
def _parse(module: str) -> ast.Module:
    path = MODULES[module]
    return ast.parse(path.read_text(), str(path))


def _imports_of(module: str) -> list[Import]:
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, scopes in _nodes(_parse(module)):
        lazy = any(issubclass(t, _FUNCTIONS) for t in scopes)
        typing_only = TypeCheckingBlock in scopes
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, None, alias.asname, lazy, typing_only) for alias in node.names]
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:
                found.append(Import(module, sub, None, alias.asname or alias.name, lazy, typing_only))
            else:
                found.append(Import(module, base, alias.name, None, lazy, typing_only))
    return [i for i in found if i.target.split(".")[0] == "fp4train"]


IMPORTS = [i for module in MODULES for i in _imports_of(module)]


def _layer(module: str) -> int | None:
    return next((n for n, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")), None)


@functools.cache
def _top_level_names(module: str) -> set[str] | None:
    """The names ``module`` binds when it runs (outside functions and classes); ``None`` if it
    defines a module ``__getattr__``, which may hand out any name."""
    names = set()
    for node, scopes in _nodes(_parse(module)):
        if scopes:
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return None if "__getattr__" in names else names


def _circles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle; imports
    for annotations only (``if TYPE_CHECKING:``) never run and make no circle."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.target in MODULES and not i.typing_only:  # the others fail test_every_fp4train_import_resolves
            edges[i.importer].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in edges[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            component = stack[stack.index(m):]
            del stack[stack.index(m):]
            if len(component) > 1:
                circles.append(sorted(component))

    for m in MODULES:
        if m not in index:
            visit(m)
    return circles


def test_the_graph_sees_lazy_relative_and_submodule_imports():
    """The reading itself: edges this file's rules rest on are found (an empty graph passes all)."""
    found = {(i.importer, i.target, i.lazy) for i in IMPORTS}
    assert ("fp4train.kernels.quantize", "fp4train.kernels.triton_common", False) in found  # relative
    assert ("fp4train.dispatch", "fp4train.quant.reference", False) in found  # `from fp4train.quant import reference`
    assert ("fp4train.dispatch", "fp4train.kernels.gemm", True) in found  # inside a function
    assert (*FACADE, True) in found
    typing_only = {(i.importer, i.target) for i in IMPORTS if i.typing_only}
    assert ("fp4train.methods", "fp4train.linear") in typing_only  # under `if TYPE_CHECKING:`


def test_every_fp4train_import_resolves():
    """Each imported fp4train module exists and defines the imported name, lazy imports included:
    the CPU tests never run the GPU routes of ``fp4train.dispatch``, whose kernel imports are lazy."""
    broken = []
    for i in IMPORTS:
        names = _top_level_names(i.target) if i.target in MODULES else set()
        if i.target not in MODULES or (i.name and names is not None and i.name not in names):
            broken.append((i.importer, i.target, i.name))
    assert broken == []


def test_no_import_circle_among_fp4train_modules():
    assert _circles() == []


@pytest.mark.parametrize("layer", LAYERS[:2])
def test_a_layer_imports_nothing_of_the_layers_above_it(layer):
    """``fp4train.quant`` imports only itself; ``fp4train.kernels`` only ``quant`` and itself; at
    module level and inside functions — but for the facade's one lazy import (``FACADE``)."""
    level = LAYERS.index(layer)
    upward = [
        (i.importer, i.target, "lazy" if i.lazy else "module level")
        for i in IMPORTS
        if _layer(i.importer) == level and (_layer(i.target) is None or _layer(i.target) > level)
    ]
    expected = [(*FACADE, "lazy")] if layer == "fp4train.quant" else []
    assert upward == expected


def test_no_module_imports_a_private_name_of_another():
    """Neither ``from m import _x`` nor ``m._x`` on an imported fp4train module ``m``."""
    private = [(i.importer, f"{i.target}.{i.name}") for i in IMPORTS if i.name and _is_private(i.name)]
    for module in MODULES:
        bound = {i.binds: i.target for i in IMPORTS if i.importer == module and i.binds}
        private += [
            (module, f"{bound[node.value.id]}.{node.attr}")
            for node in ast.walk(_parse(module))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
            and _is_private(node.attr)
        ]
    assert private == []


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")
