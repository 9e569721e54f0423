"""Every Python example of docs/expansion_rules.md runs as written, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "expansion_rules.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_doc_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index):
    # each block is a complete program: a fresh namespace, as a reader would run it
    exec(compile(BLOCKS[index], f"{DOC.name}[python block {index}]", "exec"), {"__name__": f"doc_example_{index}"})
