"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_config_keys_in_the_readme_exist():
    """Every key the README's config table names is a key of the schema."""
    from omegaconf import OmegaConf

    from gpd.config import Config

    schema = OmegaConf.structured(Config)
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    keys = {key for row in rows for key in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", row.split("|")[1])}
    assert len(keys) > 20
    missing = [key for key in sorted(keys) if OmegaConf.select(schema, key, default="MISSING!") == "MISSING!"]
    assert not missing, missing


def test_the_front_door_is_short():
    """A newcomer meets the first command within 25 lines; the Quick start stays at most 40 lines."""
    lines = README.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines, 1) if line.startswith(("make ", "gpd ", "pip ")))
    assert first_command <= 25, first_command
    start = lines.index("## Quick start")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    assert end - start <= 40, end - start
