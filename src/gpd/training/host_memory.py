"""Keep freed host memory in the process for reuse (``train.keep_host_memory``).

torch's CPU tensors come from the C library's ``malloc``. glibc serves every block above
its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back with
``munmap`` when the tensor is freed, so a training step that allocates the same
gradients, kernels and activations again every step pays a page fault for every 4 KB
page of them every step: on the 2-core test machine a new 38 MB tensor costs about
17 ms of faults, as long as several passes over it (measured step times with and
without this setting: docs/training.md, "Freed host memory").
GPU runs have torch's caching allocator for the same reason; on the CPU the usual fix
is jemalloc or tcmalloc in ``LD_PRELOAD``. This module asks glibc itself, with
``mallopt``, to serve large blocks from its heap and not to trim it, so freed memory is
reused without faults. The price: the process keeps its peak memory until it ends
(no more than the peak it already reached).

It is a process-wide setting, so the entry points (``gpd train``, the benchmarks) turn
it on for the duration of a run and restore glibc's defaults afterwards; the library
never calls it. Without glibc (macOS, musl, Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024
GLIBC_DEFAULT_MMAP_MAX = 65536
NO_TRIM = 2**31 - 1  # the largest threshold mallopt takes: glibc keeps up to 2 GB free at its heap's top


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def _set(libc: ctypes.CDLL, trim_threshold: int, mmap_max: int) -> bool:
    return bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)) and bool(libc.mallopt(M_MMAP_MAX, mmap_max))


def release_to_system() -> None:
    """glibc's defaults again (large blocks mmap'd, the heap trimmed), and the freed memory given back."""
    libc = _glibc()
    if libc is not None:
        _set(libc, GLIBC_DEFAULT_TRIM_THRESHOLD, GLIBC_DEFAULT_MMAP_MAX)
        libc.malloc_trim(0)


@contextmanager
def keep_host_memory(enabled: bool = True) -> Iterator[str]:
    """Within the block, freed host memory stays in the process and is reused without page faults.

    Yields a short description for the run's log. On exit glibc's defaults are restored
    and the kept memory is given back to the system.
    """
    if not enabled:
        yield "off (train.keep_host_memory=false)"
        return
    libc = _glibc()
    if libc is None or not _set(libc, NO_TRIM, 0):
        release_to_system()  # undo a setting that took when the other did not
        yield "not available (the C library is not glibc)"
        return
    try:
        yield "kept for reuse (train.keep_host_memory)"
    finally:
        release_to_system()
