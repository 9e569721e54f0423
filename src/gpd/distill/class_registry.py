"""Classes by name, built-in and the user's, with one policy: KD methods and tasks are registered so.

The policy follows :class:`gpd.expansion.rules.RuleSet`:

* a user's class (``register``) under a built-in name replaces the built-in;
* a second registration of a name the user registered already raises ``ArgumentError``
  unless ``override=True``; registering the same class again is a no-op;
* :meth:`ClassRegistry.override` replaces a name's class for a ``with`` block;
* :meth:`ClassRegistry.lookup` also takes an import path ``package.module:ClassName`` or
  ``path/to/file.py:ClassName`` (loaded by the models' import-path loader,
  :mod:`gpd.models.import_path`) and registers the class under its ``name`` if that is free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from gpd.errors import ArgumentError, ModelError, first_line

IMPORT_PATH_HINT = "an import path (package.module:ClassName or path/to/file.py:ClassName)"

T = TypeVar("T")


class ClassRegistry(Mapping[str, type[T]], Generic[T]):
    """Subclasses of ``base`` by name: gpd's built-ins, and the user's, which win over them.

    ``what`` names a class in messages ("KD method"), ``base_path`` the base class as users import it
    (``gpd.distill.KDMethod``); each built-in's class attribute ``name`` is its key."""

    def __init__(self, builtins: Iterable[type[T]], base: type[T], what: str, base_path: str) -> None:
        self._builtin: dict[str, type[T]] = {getattr(cls, "name"): cls for cls in builtins}  # noqa: B009
        self._user: dict[str, type[T]] = {}
        self.base, self.what, self.base_path = base, what, base_path

    def __getitem__(self, name: str) -> type[T]:
        found = self._user.get(name) or self._builtin.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        yield from self._builtin
        yield from (name for name in self._user if name not in self._builtin)

    def __len__(self) -> int:
        return len(self._builtin.keys() | self._user.keys())

    def builtin(self, name: str) -> type[T] | None:
        """gpd's own class called ``name`` (None if there is none), whatever the user registered."""
        return self._builtin.get(name)

    def register(self, name: str, cls: type[T], *, override: bool = False) -> None:
        """Offer ``cls`` under ``name``."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ArgumentError(f"a {self.what} must be a {self.base_path} subclass, got {cls!r}")
        if not isinstance(name, str) or not name or ":" in name:
            raise ArgumentError(f"a {self.what}'s name is a non-empty string without ':', got {name!r}")
        old = self._user.get(name)
        if old is not None and old is not cls and not override:
            raise ArgumentError(
                f"the {self.what} {name!r} is registered already ({old.__qualname__}); pass override=True to replace it"
            )
        self._user[name] = cls

    def unregister(self, name: str) -> None:
        """Drop the user's class called ``name`` (a built-in of that name is back)."""
        self._user.pop(name, None)

    @contextlib.contextmanager
    def override(self, name: str, cls: type[T]) -> Iterator[None]:
        """Use ``cls`` for ``name`` inside the ``with`` block; the user's previous class (or none) is back on exit."""
        previous = self._user.get(name)
        self.register(name, cls, override=True)
        try:
            yield
        finally:
            if previous is None:
                self.unregister(name)
            else:
                self._user[name] = previous

    def names(self) -> str:
        """``'none, kd, dkd or reviewkd'``: the registered names, for messages."""
        names = list(self)
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def lookup(self, name: str, key: str, error: type[Exception] = ArgumentError) -> type[T]:
        """The class registered as ``name``, or loaded from the import path ``name``; anything
        else is ``error`` in one line naming ``key`` and the registered names."""
        found = self._user.get(name) or self._builtin.get(name)
        if found is not None:
            return found
        from gpd.models import import_path  # only for an import path: the model zoo is not needed otherwise

        if not import_path.is_import_path(name):
            raise error(f"{key} must be {self.names()} or {IMPORT_PATH_HINT}, got '{name}'")
        try:
            loaded: Any = import_path.resolve_factory(name, what=self.what)
        except ModelError as err:
            raise error(f"{key}: {first_line(err)}") from None
        if not (isinstance(loaded, type) and issubclass(loaded, self.base)):
            raise error(f"{key}: {name} is {loaded!r}, not a subclass of {self.base_path}")
        loaded_name = getattr(loaded, "name", "")
        if loaded_name and loaded_name not in self:
            self.register(loaded_name, loaded)
        return loaded


__all__ = ["IMPORT_PATH_HINT", "ClassRegistry"]
