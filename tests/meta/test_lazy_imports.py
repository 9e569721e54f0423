"""``import gpd.X`` of a leaf module loads only what it needs (PEP 562 attributes in gpd/__init__),
and gpd's built-in branch kinds are registered at their first lookup, not by an import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gpd

INIT = Path(__file__).resolve().parents[2] / "src" / "gpd" / "__init__.py"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _gpd_modules_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('gpd'))))"
    return json.loads(_run(code))


def test_import_gpd_loads_nothing_else() -> None:
    assert _gpd_modules_after("import gpd") == ["gpd"]


@pytest.mark.parametrize("module", ["gpd.channel_maps", "gpd.errors"])
def test_a_leaf_module_loads_at_most_five_gpd_modules(module: str) -> None:
    loaded = _gpd_modules_after(f"import {module}")
    assert len(loaded) <= 5, loaded


def test_the_losses_load_only_themselves_and_the_utilities() -> None:
    loaded = _gpd_modules_after("import gpd.losses")
    others = [m for m in loaded if not m.startswith("gpd.losses")]
    assert set(others) <= {"gpd", "gpd.deprecated", "gpd.errors"}, loaded  # no distill, expansion or torch zoo


def test_the_public_names_resolve_and_dir_lists_them() -> None:
    from gpd.distill import Distiller
    from gpd.errors import ArgumentError, ConfigError
    from gpd.expansion import expand, register_channel_tensors, register_expansion_rule
    from gpd.gpd_model import GPDModel
    from gpd.io.student import load_student

    assert gpd.Distiller is Distiller and gpd.expand is expand and gpd.GPDModel is GPDModel
    assert gpd.load_student is load_student and gpd.register_expansion_rule is register_expansion_rule
    assert gpd.register_channel_tensors is register_channel_tensors
    assert gpd.ConfigError is ConfigError and gpd.ArgumentError is ArgumentError
    assert set(gpd.__all__) <= set(dir(gpd))
    for name in gpd.__all__:
        assert getattr(gpd, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        gpd.not_a_name  # noqa: B018


def test_the_public_names_resolve_in_a_fresh_interpreter() -> None:
    out = _run(
        "import gpd\n"
        "names = sorted(n for n in dir(gpd) if not n.startswith('_'))\n"
        "print(all(getattr(gpd, n) is not None for n in gpd.__all__), 'Distiller' in names, 'expand' in names,"
        " gpd.expansion.RULES is not None)"
    )
    assert out.split() == ["True"] * 4


def test_the_lazy_table_and_the_type_checking_imports_name_the_same_things() -> None:
    """Each public name is in gpd._LAZY (name -> module) and imported under TYPE_CHECKING from that module."""
    typed = {}
    for node in ast.walk(ast.parse(INIT.read_text())):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module
                typed.update({alias.name: stmt.module for alias in stmt.names})
    assert typed == gpd._LAZY
    assert sorted(gpd.__all__) == sorted(gpd._LAZY)


# --------------------------------------------------------------------- built-in branch kinds


def test_branch_kinds_list_orepa_before_anything_imports_gpd_branches() -> None:
    out = _run(
        "import sys\n"
        "from gpd.expansion.rules import RULES\n"
        "before = 'gpd.branches' in sys.modules\n"
        "print(before, 'orepa' in RULES.branch_kinds, 'gpd.branches' in sys.modules)"
    )
    assert out.split() == ["False", "True", "True"]


def test_expand_with_orepa_works_without_importing_gpd_branches_first() -> None:
    out = _run(
        "import sys, torch, gpd\n"
        "from torch import nn\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))\n"
        "before = 'gpd.branches' in sys.modules\n"
        "gm = gpd.expand(model, 2, input_size=(3, 6, 6), branches='orepa', branch_init='identity')\n"
        "merged = gm.export_student()\n"
        "print(before, type(gm.dynamic[0]).__name__, type(merged[0]).__name__)"
    )
    assert out.split() == ["False", "OREPAConv2d", "Conv2d"]


def test_importing_gpd_branches_registers_nothing_until_a_lookup() -> None:
    out = _run(
        "import gpd.branches\n"
        "from gpd.expansion.rules import RULES\n"
        "from gpd.branches import OREPAConv2d\n"
        "print(len(RULES._branch_kinds[0]), OREPAConv2d in RULES._rules[0], RULES.get(OREPAConv2d).rule.__name__)"
    )
    assert out.split() == ["0", "False", "expand_orepa"]


def test_a_users_branch_kind_registered_first_wins_over_the_builtin() -> None:
    out = _run(
        "import copy\n"
        "from gpd.expansion.rules import RULES\n"
        "def mine(model, init):\n"
        "    return model\n"
        "RULES.register_branch_kind('orepa', mine, copy.deepcopy)  # before gpd's kind is loaded\n"
        "kind = RULES.branch_kind('orepa')\n"
        "print(kind.add is mine, 'orepa' in RULES._branch_kinds[0])"
    )
    assert out.split() == ["True", "True"]  # gpd's built-in is loaded, the user's is used


def test_gpd_never_imports_transformers() -> None:
    """transformers is optional (``gpd[hf]``): the API and the training engine load without it."""
    code = "import sys\nimport gpd, gpd.distill, gpd.expansion, gpd.training.evaluate\nprint('transformers' in sys.modules)"
    assert _run(code) == "False"
