"""Registrations that wait for their first use, so that no import registers anything as a side effect.

Two kinds wait (docs/expansion_rules.md, "The rule set"):

* the rules of a third-party package (timm, torchvision) exist only once that package is
  imported: they are registered at the first lookup after it is, and ``import gpd`` imports
  neither (measured: timm alone took 1.4 s of a 2.5 s ``import gpd``);
* gpd's own registrations that live above the expansion engine (:mod:`gpd.branches`: the
  branch kind "orepa" and the rule of OREPAConv2d) are declared by a :class:`BuiltinProvider`,
  whose module the rule set imports, by name, at the first lookup that needs it. So
  ``gpd.expand(branches="orepa")`` works whatever was imported before, and the engine has no
  import of a higher layer (tests/meta/test_layers.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinProvider:
    """gpd's registrations in a module above the engine, imported on first need.

    ``target`` is ``"module:function"``; the function registers (the rule set runs it as
    built-ins) the branch kinds named in ``kinds`` and the rules of the classes defined in
    the modules ``modules`` (such an instance exists, and needs its rule, only once its
    module is imported).
    """

    target: str
    kinds: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    def registration(self) -> Callable[[], None]:
        module, _, function = self.target.partition(":")
        registration: Callable[[], None] = getattr(importlib.import_module(module), function)
        return registration


class PendingRegistrations:
    """The registrations still waiting; :meth:`take` hands out, once each, those due now."""

    def __init__(self) -> None:
        self._when_imported: dict[str, list[Callable[[], None]]] = {}
        self._providers: list[BuiltinProvider] = []

    def when_imported(self, package: str, registration: Callable[[], None]) -> None:
        self._when_imported.setdefault(package, []).append(registration)

    def provider(self, provider: BuiltinProvider) -> None:
        self._providers.append(provider)

    def take(self, kind: str | None = None, *, every_kind: bool = False) -> list[Callable[[], None]]:
        """The registrations due now, no longer waiting: those of every package imported since, of every
        provider whose classes' modules are imported, and of the provider of ``kind`` (of every kind)."""
        due = [
            r
            for package in [p for p in self._when_imported if p in sys.modules]
            for r in self._when_imported.pop(package)
        ]
        for provider in list(self._providers):
            wanted = kind in provider.kinds or (every_kind and provider.kinds)
            if wanted or any(module in sys.modules for module in provider.modules):
                self._providers.remove(provider)
                due.append(provider.registration())
        return due
