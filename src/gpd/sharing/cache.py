"""A value computed from tensors, reused while none of them can have changed.

Every in-place write to a tensor (an optimizer step, an EMA update, ``load_state_dict``,
writes through a view or ``detach()``) bumps its ``_version``, so a value keyed on the
tensors themselves (held, so that their ids cannot be reused) and their versions is stale
exactly when one of them was written. Writes through ``tensor.data`` bypass the version
counter (torch's semantics) and are not seen; gpd and timm's EMA do not write that way.
Inference tensors have no version counter: nothing is cached for them.

Copies and pickles of a cache start empty, so a copied module (an EMA copy, a deepcopy in
export) never reuses a value computed from the original's tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor


def versions(tensors: Sequence[Tensor]) -> tuple[int, ...] | None:
    """Each tensor's version, or None when one has no version counter (an inference tensor)."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return None


class VersionedCache:
    """One cached value keyed on (tensors by identity, their versions, an extra hashable key)."""

    def __init__(self) -> None:
        self._tensors: tuple[Tensor, ...] = ()
        self._key: tuple[Any, ...] | None = None
        self._value: Any = None
        self.hits = 0  # for tests and the benchmark's report
        self.misses = 0

    def get(self, tensors: Sequence[Tensor], extra: Any = None) -> Any:
        """The cached value if it was stored for these very tensors at their current versions, else None."""
        current = versions(tensors)
        if (
            current is None
            or self._key != (extra, current)
            or len(tensors) != len(self._tensors)
            or any(a is not b for a, b in zip(tensors, self._tensors))
        ):
            self.misses += 1
            return None
        self.hits += 1
        return self._value

    def put(self, tensors: Sequence[Tensor], value: Any, extra: Any = None) -> Any:
        """Store ``value`` for the tensors' current versions (nothing when they have none); returns value."""
        current = versions(tensors)
        if current is None:
            self.clear()
        else:
            self._tensors, self._key, self._value = tuple(tensors), (extra, current), value
        return value

    def clear(self) -> None:
        """Drop the value and the references to the tensors (frees their memory once unused elsewhere)."""
        self._tensors, self._key, self._value = (), None, None

    def __deepcopy__(self, memo: dict[int, Any]) -> VersionedCache:
        return VersionedCache()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (VersionedCache, ())
