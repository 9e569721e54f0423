"""Shared steps of the file-backed data sets: download, load torchvision's splits, one-line errors."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.error import URLError

from gpd.data import locate
from gpd.data.augment import AugmentRecipe
from gpd.errors import DataError


def active_recipe(recipe: AugmentRecipe | None) -> AugmentRecipe | None:
    """``recipe`` if it changes anything, else None (the default pipelines)."""
    return recipe if recipe is not None and recipe.active else None


def download_into(title: str, fetch: Callable[[Path], object], roots: list[Path] | None) -> Path:
    """Let torchvision download into data.root, or into the cache folder when no root was given."""
    target = roots[0] if roots else locate.cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        fetch(target)
    except (RuntimeError, URLError, OSError) as e:
        raise DataError(f"{title}: download into {target} failed ({one_line(e)}); is there internet access?") from e
    return target


def load_splits(title: str, root: Path, make: Callable[[Path, bool], object]) -> tuple:
    """Build torchvision's train and test datasets, turning its errors into one-line DataErrors."""
    try:
        return make(root, True), make(root, False)
    except (RuntimeError, OSError, ValueError, TypeError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise DataError(f"{title}: files in {root} are corrupt or incomplete: {one_line(e)}") from e


def where(roots: Sequence[Path], layouts: str) -> str:
    """'A, B, C (as LAYOUTS)' for error messages."""
    return f"{', '.join(str(r) for r in roots)} (as {layouts})"


def one_line(e: BaseException) -> str:
    """An exception's message without newlines, fit for a one-line DataError."""
    text = " ".join(str(e).split())
    return text or type(e).__name__
