"""train.keep_host_memory: freed host memory is reused without page faults, and glibc's defaults come back."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

from gpd.config import load_config
from gpd.training import host_memory

GLIBC = host_memory._glibc() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="keep_host_memory only acts on glibc")

# In a fresh interpreter (mallopt is process-wide): allocate and free a 64 MB tensor, then
# count the minor page faults of allocating and filling a second one.
SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from gpd.training.host_memory import keep_host_memory

    def faults_of_a_fresh_64mb_tensor():
        torch.empty(16 * 2**20).fill_(1.0)  # allocated, touched and freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 * 2**20).fill_(2.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    system = faults_of_a_fresh_64mb_tensor()
    with keep_host_memory() as reason:
        kept = min(faults_of_a_fresh_64mb_tensor() for _ in range(3))
    restored = faults_of_a_fresh_64mb_tensor()
    print(system, kept, restored, reason)
    """
)


@needs_glibc
def test_freed_memory_is_reused_without_page_faults_inside_and_released_after() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    system, kept, restored = map(int, out[:3])
    pages = 64 * 2**20 // resource.getpagesize()
    assert system >= pages // 2  # glibc mmaps a block this large afresh: a fault per page (or per huge page)
    assert kept < pages // 100  # the freed block is reused: (almost) no faults
    assert restored >= pages // 2  # the defaults are back once the block ends
    assert " ".join(out[3:]) == "kept for reuse (train.keep_host_memory)"


def test_disabled_or_without_glibc_it_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with host_memory.keep_host_memory(False) as reason:
        assert reason == "off (train.keep_host_memory=false)"
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    with host_memory.keep_host_memory() as reason:
        assert reason == "not available (the C library is not glibc)"
    host_memory.release_to_system()  # a no-op without glibc


def test_config_key_defaults_on_and_may_change_on_resume() -> None:
    from gpd.training.launch import RESUMABLE_KEYS

    assert load_config(None).train.keep_host_memory is True
    assert load_config(None, ["train.keep_host_memory=false"]).train.keep_host_memory is False
    assert "train.keep_host_memory" in RESUMABLE_KEYS  # it changes no computation, only where memory comes from
