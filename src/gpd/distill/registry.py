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

from collections.abc import Mapping
from typing import Any, cast

from gpd.distill.class_registry import IMPORT_PATH_HINT, ClassRegistry
from gpd.distill.kd_methods import CallableKD, DecoupledKD, HintonKD, KDLoss, NoKD
from gpd.distill.method import KDMethod
from gpd.distill.reviewkd import ReviewKD
from gpd.errors import ArgumentError


class KDMethodRegistry(ClassRegistry[KDMethod]):
    """KD method classes by name: gpd's built-ins, and the user's, which win over them."""

    def __init__(self, builtins: tuple[type[KDMethod], ...]) -> None:
        super().__init__(builtins, KDMethod, "KD method", "gpd.distill.KDMethod")

    def lookup(self, name: str, key: str = "kd", error: type[Exception] = ArgumentError) -> type[KDMethod]:
        """The method registered as ``name``, or loaded from the import path ``name``; anything
        else is ``error`` in one line naming ``key`` and the registered names."""
        return super().lookup(name, key, error)


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


__all__ = [
    "IMPORT_PATH_HINT",
    "KD_METHODS",
    "KDMethodRegistry",
    "build_kd_method",
    "kd_method_class",
    "register_kd_method",
]
