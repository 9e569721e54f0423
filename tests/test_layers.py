"""gpd's packages import one way: each layer uses only the layers below it.

channel maps -> sharing (the student as a view of D) -> expansion -> branches -> distill
-> training -> cli, with the utilities (errors, deprecation aliases, the choices) at the bottom and
models beside them (a model package never imports the expansion engine: it declares
its channel tensors with a class attribute). The edges are read from the source
(every ``import gpd...``, module level or inside a function), so a lazy import that
hides a cycle counts. ``KNOWN`` lists the edges that still point the wrong way: this
test fails on any new one, and on a known one that is gone (remove it from the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gpd"

# Lower layers first; a package may import its own layer and those before it.
LAYERS: list[set[str]] = [
    {"errors", "deprecated", "choices"},
    {"channel_maps", "models", "data", "losses"},
    {"sharing"},
    {"expansion", "gpd_model", "testing"},
    {"branches"},
    {"distill", "export", "config"},
    {"training", "integrations", "evaluation", "reporting"},
    {"cli", "__main__", "gpd"},
]

KNOWN = {  # (importer, imported): edges that still point down-up, to be removed (issue #13)
    ("expansion", "branches"),  # gpd.expand(branches="orepa") builds the blocks first
    ("gpd_model", "branches"),  # export merges the branches
}


def _package(module: str) -> str:
    parts = [part for part in module.split(".") if part != "__init__"]
    return parts[1] if len(parts) > 1 else "gpd"


def _edges() -> set[tuple[str, str]]:
    edges = set()
    for path in SRC.rglob("*.py"):
        importer = _package(".".join(("gpd", *path.relative_to(SRC).with_suffix("").parts)))
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.split(".")[0] == "gpd" and _package(name) != importer:
                    edges.add((importer, _package(name)))
    return edges


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_every_package_has_a_layer() -> None:
    packages = {
        p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    packages = {("gpd" if p == "__init__" else p) for p in packages}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_imports_point_down_the_layers() -> None:
    upward = {(a, b) for a, b in _edges() if _layer(b) > _layer(a)}
    assert upward - KNOWN == set(), f"new imports up the layers: {sorted(upward - KNOWN)}"
    assert KNOWN - upward == set(), f"fixed, remove from KNOWN: {sorted(KNOWN - upward)}"


def test_channel_maps_and_sharing_stand_alone() -> None:
    """The sharing contract (ParamSlice, its read, the student view) needs no expansion rule."""
    for importer, imported in _edges():
        if importer in ("channel_maps", "sharing"):
            assert imported in ("errors", "channel_maps"), (importer, imported)
        if importer == "models":
            assert imported != "expansion", "a model declares its channel tensors by a class attribute"


def _run(code: str) -> str:
    import subprocess
    import sys

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
