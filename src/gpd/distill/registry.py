"""The KD methods by name: gpd's built-ins and the user's, as the expansion's rule set has them.

``kd.method`` (and ``Distiller(kd=...)``) names a method of :data:`KD_METHODS`, or gives an
import path ``package.module:ClassName`` or ``path/to/file.py:ClassName`` (loaded by the
models' import-path loader, :mod:`gpd.models.import_path`, and registered under the class's
``name`` if that name is free). The policy follows :class:`gpd.expansion.rules.RuleSet`:

* a user's method (:func:`register_kd_method`) under a built-in name replaces the built-in;
* a second registration of a name the user registered already raises ``ArgumentError``
  unless ``override=True``; registering the same class again is a no-op;
* :meth:`KDMethodRegistry.override` replaces a name's method for a ``with`` block.

The accepted names, each method's config section and its validation all come from here:
the config loader reads the sections of the registered methods (:mod:`gpd.config.loading`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from gpd.distill.kd_methods import CallableKD, DecoupledKD, HintonKD, KDLoss, NoKD
from gpd.distill.method import KDMethod
from gpd.distill.reviewkd import ReviewKD
from gpd.errors import ArgumentError, ModelError, first_line

IMPORT_PATH_HINT = "an import path (package.module:ClassName or path/to/file.py:ClassName)"


class KDMethodRegistry(Mapping[str, type[KDMethod]]):
    """KD method classes by name: gpd's built-ins, and the user's, which win over them."""

    def __init__(self, builtins: Iterable[type[KDMethod]]) -> None:
        self._builtin = {cls.name: cls for cls in builtins}
        self._user: dict[str, type[KDMethod]] = {}

    def __getitem__(self, name: str) -> type[KDMethod]:
        found = self._user.get(name) or self._builtin.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        yield from self._builtin
        yield from (name for name in self._user if name not in self._builtin)

    def __len__(self) -> int:
        return len(self._builtin.keys() | self._user.keys())

    def register(self, name: str, cls: type[KDMethod], *, override: bool = False) -> None:
        """Offer ``cls`` as ``kd.method=name`` (and ``Distiller(kd=name)``)."""
        if not (isinstance(cls, type) and issubclass(cls, KDMethod)):
            raise ArgumentError(f"a KD method must be a gpd.distill.KDMethod subclass, got {cls!r}")
        if not isinstance(name, str) or not name or ":" in name:
            raise ArgumentError(f"a KD method's name is a non-empty string without ':', got {name!r}")
        old = self._user.get(name)
        if old is not None and old is not cls and not override:
            raise ArgumentError(
                f"the KD method {name!r} is registered already ({old.__qualname__}); pass override=True to replace it"
            )
        self._user[name] = cls

    def unregister(self, name: str) -> None:
        """Drop the user's method called ``name`` (a built-in of that name is back)."""
        self._user.pop(name, None)

    @contextlib.contextmanager
    def override(self, name: str, cls: type[KDMethod]) -> Iterator[None]:
        """Use ``cls`` for ``name`` inside the ``with`` block; the user's previous method (or none) is back on exit."""
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

    def lookup(self, name: str, key: str = "kd", error: type[Exception] = ArgumentError) -> type[KDMethod]:
        """The method registered as ``name``, or loaded from the import path ``name``; anything
        else is ``error`` in one line naming ``key`` and the registered names."""
        found = self._user.get(name) or self._builtin.get(name)
        if found is not None:
            return found
        from gpd.models import import_path  # only for an import path: the model zoo is not needed otherwise

        if not import_path.is_import_path(name):
            raise error(f"{key} must be {self.names()} or {IMPORT_PATH_HINT}, got '{name}'")
        try:
            loaded: Any = import_path.resolve_factory(name, what="KD method")
        except ModelError as err:
            raise error(f"{key}: {first_line(err)}") from None
        if not (isinstance(loaded, type) and issubclass(loaded, KDMethod)):
            raise error(f"{key}: {name} is {loaded!r}, not a subclass of gpd.distill.KDMethod")
        if loaded.name and loaded.name not in self:
            self.register(loaded.name, loaded)
        return loaded


KD_METHODS = KDMethodRegistry((NoKD, HintonKD, DecoupledKD, ReviewKD))


def register_kd_method(name: str, cls: type[KDMethod], *, override: bool = False) -> None:
    """Offer a KD method of your own as ``kd.method=name`` and ``Distiller(kd=name)``: a
    :class:`~gpd.distill.KDMethod` subclass with its ``Options`` (its config ``section``) and loss."""
    KD_METHODS.register(name, cls, override=override)


def kd_method_class(name: str, key: str = "kd", error: type[Exception] = ArgumentError) -> type[KDMethod]:
    """The method class called ``name`` (a ``kd.method`` value or import path); any other name is refused."""
    return KD_METHODS.lookup(name, key, error)


def build_kd_method(kd: str | KDMethod | type[KDMethod] | KDLoss, options: Mapping[str, Any] | None = None) -> KDMethod:
    """The method ``Distiller(kd=..., kd_options=...)`` asks for: a name (or import path) with its
    options, a method object as it is, a method class with its options, or a plain logit loss
    (whose only option is ``ce_weight``)."""
    if isinstance(kd, KDMethod):
        if options:
            raise ArgumentError(f"kd_options go with a method name; {kd!r} has its options already")
        return kd
    if isinstance(kd, str):
        return kd_method_class(kd).from_options(options)
    if isinstance(kd, type) and issubclass(kd, KDMethod):
        return kd.from_options(options)
    return CallableKD(cast(KDLoss, kd), CallableKD.parse_options(options))


__all__ = ["KD_METHODS", "KDMethodRegistry", "build_kd_method", "kd_method_class", "register_kd_method"]
