"""Shared pytest setup: make ``tests/helpers.py`` importable as ``helpers``; a thread fixture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tests with one intra-op thread, then restore the previous count.

    On a 2-core machine that is also running something else, two spinning intra-op
    threads make small convolutions tens of times slower; one thread keeps the model
    tests fast and their timing predictable. Opt in with
    ``pytestmark = pytest.mark.usefixtures("torch_single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
