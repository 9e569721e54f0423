"""Every Python example of docs/expansion_rules.md, and of the Tasks section of docs/distillation.md,
runs as written, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC = DOCS / "expansion_rules.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
# the section alone: the KD-method example before it registers a method for the whole process
TASKS_SECTION = (DOCS / "distillation.md").read_text().split("\n## Tasks")[1].split("\n## ")[0]
TASK_BLOCKS = re.findall(r"```python\n(.*?)```", TASKS_SECTION, flags=re.S)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_doc_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index):
    # each block is a complete program: a fresh namespace, as a reader would run it
    exec(compile(BLOCKS[index], f"{DOC.name}[python block {index}]", "exec"), {"__name__": f"doc_example_{index}"})


def test_tasks_section_has_python_examples():
    assert len(TASK_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(TASK_BLOCKS)))
def test_tasks_doc_example_runs(index):
    name = f"distillation.md[Tasks, python block {index}]"
    exec(compile(TASK_BLOCKS[index], name, "exec"), {"__name__": f"doc_task_example_{index}"})
