"""gpd's packages import one way: each layer uses only the layers below it.

channel maps -> sharing (the student as a view of D) -> expansion -> branches -> distill
-> training -> cli, with the utilities (errors, deprecation aliases, the choices) at the bottom and
models, data and io (what gpd writes and reads on disk) beside them (a model package never imports the expansion engine: it declares
its channel tensors with a class attribute). The edges are read from the source
(every ``import gpd...``, module level or inside a function), so a lazy import that
hides a cycle counts, and any edge up the layers fails. A lower layer that needs a higher
one's behaviour takes it as a plugin: gpd.branches registers its branch kind with the rule
set (gpd.expansion.rules.RULES), which ``gpd.expand(branches=...)`` and the exports use; the
rule set names gpd's own providers by a string it imports on first use (gpd.expansion.pending).
Every top-level package and module also imports on its own, in a fresh interpreter.

Cycles between packages are reported too, inside a layer as across layers: a cycle of
imports, type-only ones (under ``if TYPE_CHECKING:``) included, couples its packages as one.
Each known cycle is listed in KNOWN_CYCLES with its kind: "runtime" when the imports that run
(at module level or inside a function) close it too, an import-order hazard; "type" when only a
type-only import closes it (that import never runs). A new cycle, a fixed one or a change of
kind fails the test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gpd"

# Lower layers first; a package may import its own layer and those before it.
LAYERS: list[set[str]] = [
    {"errors", "deprecated", "choices", "inputs", "outputs"},
    {"channel_maps", "models", "data", "losses", "io"},  # io: files on disk (data writes its cache through it)
    {"sharing"},
    {"expansion", "gpd_model", "testing"},
    {"branches"},
    {"distill", "config"},
    {"training", "integrations", "reporting"},
    {"cli", "__main__", "gpd"},
]

KNOWN: set[tuple[str, str]] = set()  # (importer, imported): edges allowed to point up the layers (none)

# package cycles allowed for now, and their kind (see the module docstring); each entry goes with its cycle
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _package(module: str) -> str:
    parts = [part for part in module.split(".") if part != "__init__"]
    return parts[1] if len(parts) > 1 else "gpd"


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST, runtime_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; with ``runtime_only``, none of an ``if TYPE_CHECKING:`` body."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        if runtime_only and _is_type_checking(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _edges_of(module: str, source: str, *, runtime_only: bool = False) -> set[tuple[str, str]]:
    """The (importer, imported) package edges of one module's source (``runtime_only``: not
    the imports under ``if TYPE_CHECKING:``)."""
    importer = _package(module)
    edges = set()
    for node in _nodes(ast.parse(source), runtime_only):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.split(".")[0] == "gpd" and _package(name) != importer:
                edges.add((importer, _package(name)))
    return edges


def _edges(*, runtime_only: bool = False) -> set[tuple[str, str]]:
    edges = set()
    for path in SRC.rglob("*.py"):
        module = ".".join(("gpd", *path.relative_to(SRC).with_suffix("").parts))
        edges |= _edges_of(module, path.read_text(), runtime_only=runtime_only)
    return edges


def _cycles(edges: set[tuple[str, str]]) -> set[frozenset[str]]:
    """The packages of each import cycle: every strongly connected component of more than one."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    reach = {a: _reachable(graph, a) for a in graph}
    return {frozenset({a} | {b for b in reach[a] if a in reach.get(b, set())}) for a in graph if a in reach[a]}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, ()))
    return seen


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def _upward(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in edges if _layer(b) > _layer(a)}


def test_every_package_has_a_layer() -> None:
    packages = {
        p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    packages = {("gpd" if p == "__init__" else p) for p in packages}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_imports_point_down_the_layers() -> None:
    upward = _upward(_edges())
    assert upward - KNOWN == set(), f"new imports up the layers: {sorted(upward - KNOWN)}"
    assert KNOWN - upward == set(), f"fixed, remove from KNOWN: {sorted(KNOWN - upward)}"
    assert KNOWN == set()


def test_an_upward_import_is_reported() -> None:
    """The checker sees an import up the layers, at module level or hidden in a function."""
    source = (
        "from gpd.channel_maps import WidthPlan\n"  # down: fine
        "import gpd.sharing.steps\n"  # own layer's neighbour below: fine
        "def export(model):\n"
        "    from gpd.branches import merge_branches\n"  # up: expansion -> branches
        "    import gpd.training.trainer\n"  # up: expansion -> training
        "    return merge_branches(model)\n"
    )
    edges = _edges_of("gpd.expansion.fake", source)
    assert edges == {
        ("expansion", "channel_maps"),
        ("expansion", "sharing"),
        ("expansion", "branches"),
        ("expansion", "training"),
    }
    assert _upward(edges) == {("expansion", "branches"), ("expansion", "training")}
    assert _upward(_edges_of("gpd.gpd_model", "from gpd.branches import merge_branches")) == {("gpd_model", "branches")}
    assert _upward(_edges_of("gpd.models.wrn", "from gpd.expansion.rules import RULES")) == {("models", "expansion")}


def _kinds(edges: set[tuple[str, str]], runtime: set[tuple[str, str]]) -> dict[frozenset[str], str]:
    """Each cycle of ``edges`` and its kind: "runtime" if ``runtime`` edges close a cycle inside it, else "type"."""
    closed = _cycles(runtime)
    return {cycle: "runtime" if any(c <= cycle for c in closed) else "type" for cycle in _cycles(edges)}


def test_package_cycles_are_only_the_known_ones() -> None:
    found = _kinds(_edges(), _edges(runtime_only=True))
    new = {tuple(sorted(c)): k for c, k in found.items() if KNOWN_CYCLES.get(c) != k}
    assert new == {}, f"new import cycles (or of another kind): {new}"
    fixed = {tuple(sorted(c)): k for c, k in KNOWN_CYCLES.items() if found.get(c) != k}
    assert fixed == {}, f"fixed (or changed kind), update KNOWN_CYCLES: {fixed}"


def test_a_cycle_inside_a_layer_is_reported() -> None:
    """The checker sees a cycle between two packages of one layer (data and models), also through
    a lazy import inside a function; a type-only import makes a type-level cycle, not a runtime one."""
    assert _layer("data") == _layer("models") == _layer("io")
    lazy = _edges_of("gpd.data.fake", "from gpd.models import create_model\n") | _edges_of(
        "gpd.models.fake", "def load():\n    from gpd.data.fetch import fetch\n"
    )
    assert _upward(lazy) == set()  # one layer: the direction check alone cannot see it
    assert _cycles(lazy) == {frozenset({"data", "models"})}
    three = lazy | _edges_of("gpd.models.other", "import gpd.io.atomic") | _edges_of("gpd.io.fake", "import gpd.data")
    assert _cycles(three) == {frozenset({"data", "models", "io"})}
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gpd.models import Spec\nelse:\n    import gpd.errors\n"
    typed = _edges_of("gpd.io.fake", source) | _edges_of("gpd.models.fake", "import gpd.io.layout")
    runtime = _edges_of("gpd.io.fake", source, runtime_only=True) | _edges_of("gpd.models.fake", "import gpd.io.layout")
    assert _cycles(typed) == {frozenset({"io", "models"})}
    assert _cycles(runtime) == set() and ("io", "errors") in runtime
    assert _kinds(typed, runtime) == {frozenset({"io", "models"}): "type"}
    assert _kinds(lazy, lazy) == {frozenset({"data", "models"}): "runtime"}


def test_channel_maps_and_sharing_stand_alone() -> None:
    """The sharing contract (ParamSlice, its read, the student view) needs no expansion rule: only the
    utilities at the bottom (errors, deprecation aliases, the choices)."""
    for importer, imported in _edges():
        if importer in ("channel_maps", "sharing"):
            assert imported in ("errors", "deprecated", "choices", "channel_maps"), (importer, imported)
        if importer == "models":
            assert imported != "expansion", "a model declares its channel tensors by a class attribute"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_import_gpd_leaves_timm_and_torchvision_alone() -> None:
    out = _run("import sys, gpd; print('timm' in sys.modules, 'torchvision' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_timm_rules_load_on_first_use_and_a_users_earlier_rule_wins() -> None:
    out = _run(
        "import gpd, timm\n"
        "from timm.layers import LayerScale\n"
        "from gpd.expansion.rules import find_rule, keep_unchanged\n"
        "from timm.layers.attention import Attention\n"
        "gpd.register_expansion_rule(LayerScale, keep_unchanged)  # before any lookup\n"
        "print(find_rule(LayerScale(4)).rule is keep_unchanged, find_rule(Attention(8, num_heads=2)) is not None)\n"
    )
    assert out.split() == ["True", "True"]


def _top_level_modules() -> list[str]:
    """gpd and every package and module directly under it (``gpd.__main__`` runs the CLI: left out)."""
    names = [p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__")]
    names += [p.name for p in SRC.iterdir() if (p / "__init__.py").exists()]
    return ["gpd", *sorted(f"gpd.{name}" for name in names)]


def test_the_top_level_list_covers_the_layers() -> None:
    modules = _top_level_modules()
    assert {"gpd.sharing", "gpd.expansion", "gpd.branches", "gpd.gpd_model", "gpd.cli", "gpd.models"} <= set(modules)
    assert {m.split(".")[-1] for m in modules} | {"__main__"} == set().union(*LAYERS)


def test_every_top_level_module_imports_alone_in_a_fresh_interpreter() -> None:
    """``python -c "import gpd.X"`` for each X, one fresh process each (run side by side): a cycle
    that only shows when X is the first gpd module imported raises ImportError here."""
    runs = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import {module}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for module in _top_level_modules()
    }
    failures = {}
    for module, process in runs.items():
        _, stderr = process.communicate(timeout=300)
        if process.returncode != 0:
            failures[module] = stderr.strip().splitlines()[-1:]
    assert failures == {}


@pytest.mark.parametrize("module", ["gpd.expansion.rules", "gpd.expansion.torch_rules", "gpd.branches.expansion_rule"])
def test_the_rule_modules_import_alone(module: str) -> None:
    _run(f"import {module}")


def test_io_stays_below_the_engine() -> None:
    """gpd.io (atomic writes, the run layout, the file formats) uses torch, the utilities (the reader
    of a model's logits and the caller of a model on a batch among them) and the model registry
    only, never the training engine, the reports or the command line."""
    for importer, imported in _edges():
        if importer == "io":
            assert imported in ("errors", "deprecated", "inputs", "outputs", "models"), (importer, imported)
