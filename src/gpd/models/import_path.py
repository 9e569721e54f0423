"""Models of your own, named by import path: ``my_pkg.nets:build_net`` or ``path/to/file.py:build_net``.

The factory is called as ``factory(num_classes=..., in_chans=..., **model.kwargs)`` and
must return an ``nn.Module``. A file path is resolved to an absolute path when the model
is built, and that is what an exported student.pt records, so ``gpd.load_student`` finds
the file again from any working directory; a dotted module must be importable
(installed, or on ``PYTHONPATH``) wherever the student is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from gpd.errors import ModelError, first_line

SEPARATOR = ":"


def is_import_path(name: str) -> bool:
    """Whether ``name`` is ``module:factory`` or ``file.py:factory`` (not a bundled, tv:, timm:, timm-seg: or hf: name)."""
    if SEPARATOR not in name or name.startswith(("tv:", "timm:", "timm-seg:", "hf:")):
        return False
    module, _, attr = name.rpartition(SEPARATOR)
    return bool(module) and attr.isidentifier()


def split(name: str, what: str = "model") -> tuple[str, str]:
    """``(module or file, factory attribute)``; ModelError for a malformed name."""
    module, _, attr = name.rpartition(SEPARATOR)
    if not module or not attr.isidentifier():
        raise ModelError(
            f"{what} {name!r}: an import path is MODULE:FACTORY or path/to/file.py:FACTORY (e.g. my_pkg.nets:build_net)"
        )
    return module, attr


def canonical(name: str) -> str:
    """``name`` with a file path made absolute (what student.pt records)."""
    module, attr = split(name)
    if module.endswith(".py"):
        return f"{Path(module).expanduser().resolve()}{SEPARATOR}{attr}"
    return name


def _load_file(path: Path, name: str, what: str = "model") -> ModuleType:
    if not path.is_file():
        hint = "; check the path in model.student" if what == "model" else ""
        raise ModelError(f"{what} {name!r}: the file {path} does not exist{hint}")
    key = f"gpd_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{what} {name!r}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[key]
        raise ModelError(f"{what} {name!r}: importing {path} failed: {type(err).__name__}: {first_line(err)}") from err
    return module


def _load_module(dotted: str, name: str, what: str = "model") -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as err:
        raise ModelError(
            f"{what} {name!r}: no module named {err.name!r}; install it or add its folder to PYTHONPATH"
        ) from err
    except Exception as err:
        raise ModelError(
            f"{what} {name!r}: importing {dotted} failed: {type(err).__name__}: {first_line(err)}"
        ) from err


def resolve_factory(name: str, what: str = "model") -> Callable[..., Any]:
    """Import the module or file of ``name`` and return its factory (ModelError if anything is off);
    ``what`` names the thing in messages (a KD method class is loaded this way too)."""
    module_name, attr = split(name, what)
    if module_name.endswith(".py"):
        module = _load_file(Path(module_name).expanduser().resolve(), name, what)
    else:
        module = _load_module(module_name, name, what)
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelError(f"{what} {name!r}: {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelError(f"{what} {name!r}: {module_name}.{attr} is a {type(factory).__name__}, not a callable factory")
    return factory


def create(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    """Build the model: ``factory(num_classes=, in_chans=, **kwargs)``, which must return an nn.Module."""
    factory = resolve_factory(name)
    try:
        model = factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise ModelError(
            f"model {name!r}: calling the factory with num_classes, in_chans and model.kwargs failed: {first_line(err)}"
        ) from err
    except Exception as err:
        raise ModelError(f"model {name!r}: the factory raised {type(err).__name__}: {first_line(err)}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model
