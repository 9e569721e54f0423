"""A refusal of the expansion or a bug: which failures become a one-line ExpansionError.

gpd.errors' rule: an error the user causes is reported in one line, a bug keeps its
traceback. Inside ``gpd.expand`` the user's input is the model, so:

* an :class:`~gpd.errors.ExpansionError` (or any GPDError) raised anywhere is what it says;
* a failure raised while a model's forward runs, in the model's own code or in torch or timm
  called from it, is a refusal: the model cannot run the way the expansion needs (a functional
  op that mixes D's channels, an input it does not take). gpd's model zoo (``gpd.models``)
  counts as a model's code;
* a failure raised by an expansion rule (gpd's or a user's, :func:`rule_failure`), or whose
  innermost frame outside torch is in gpd's own files (a hook, a layout measurement, the
  engine), is a bug: it propagates unchanged. Where gpd calls a model's forward, its calling
  frame is left out, so a model made of torch's layers only fails as a model;
* any other failure is a refusal too (copying a model that holds a lock fails in the
  standard library's frame).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ParamSpec, TypeVar

import torch

from gpd.errors import ExpansionError, GPDError, first_line

P = ParamSpec("P")
R = TypeVar("R")

GPD_FILES = Path(__file__).resolve().parents[1]  # src/gpd
MODEL_FILES = GPD_FILES / "models"  # gpd's model zoo: a model's code, as a user's would be
TORCH_FILES = Path(torch.__file__).resolve().parent
_RULE_FAILURE = "_gpd_rule_failure"  # set on an exception a rule raised


def rule_failure(err: BaseException) -> None:
    """Mark ``err``, raised by an expansion rule, as a bug (to re-raise unchanged)."""
    setattr(err, _RULE_FAILURE, True)


def _frames(tb: TracebackType | None) -> list[Path]:
    files = []
    while tb is not None:
        files.append(Path(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    return files


def _within(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)  # "<string>" and frozen modules: never


def is_bug(err: BaseException, *, below_call_site: bool = False) -> bool:
    """Whether ``err`` is a bug rather than a refusal (see the module docstring).

    ``below_call_site``: ``err`` was caught where gpd called a model's forward; that frame
    (the first of the traceback) is left out, so a failure inside torch's own layers
    (an ``nn.Sequential`` of them) is the model's.
    """
    if isinstance(err, GPDError):
        return False
    if getattr(err, _RULE_FAILURE, False):
        return True
    files = _frames(err.__traceback__)[1 if below_call_site else 0 :]
    innermost = next((f for f in reversed(files) if not _within(f, TORCH_FILES)), None)
    return innermost is not None and _within(innermost, GPD_FILES) and not _within(innermost, MODEL_FILES)


def refusals_only(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` (``gpd.expand``) with every refusal a one-line ExpansionError: a GPDError and a bug
    propagate unchanged, any other failure (the model's, see :func:`is_bug`) becomes an ExpansionError."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except GPDError:
            raise
        except Exception as err:
            if is_bug(err):
                raise
            raise ExpansionError(f"the expansion failed: {type(err).__name__}: {first_line(err)}") from err

    return wrapper
