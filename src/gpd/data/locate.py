"""Where data sets are looked for, and turning .gz IDX files into what torchvision reads.

torchvision's MNIST classes only read ``ROOT/<Class>/raw/<file>`` uncompressed, while
Debian's ``dataset-fashion-mnist`` ships flat .gz files in a read-only system folder.
Such files are decompressed once into a cache folder and loaded from there.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from gpd.io.atomic import atomic_write, atomic_write_text

# Where the Debian package dataset-fashion-mnist puts its files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# The four IDX files of every MNIST-like set, as torchvision names them (uncompressed).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def cache_dir() -> Path:
    """Folder for decompressed and downloaded data: $GPD_DATA if set, else ~/.cache/gpd/data."""
    env = os.environ.get("GPD_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpd" / "data"


def default_roots() -> list[Path]:
    """Folders searched when no root is given, in order: $GPD_DATA, ./data, ~/.cache/gpd/data."""
    roots: list[Path] = []
    env = os.environ.get("GPD_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots += [Path.cwd() / "data", Path.home() / ".cache" / "gpd" / "data"]
    return _unique(roots)


def _unique(paths: Sequence[Path]) -> list[Path]:
    """Drop repeated folders (e.g. $GPD_DATA pointing at ./data), keeping the first."""
    seen: set[Path] = set()
    out: list[Path] = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def find_idx_root(class_name: str, roots: Sequence[Path]) -> Path | None:
    """A folder torchvision's ``class_name`` (MNIST, FashionMNIST) can load from, or None.

    Each root is tried as ``ROOT/<class_name>/raw/``, ``ROOT/raw/`` and ``ROOT/`` itself, with
    plain or .gz files. Plain files in the torchvision layout are used where they are; anything
    else is decompressed (or copied) into the cache folder first.
    """
    for root in roots:
        if all((root / class_name / "raw" / name).is_file() for name in IDX_FILES):
            return root
        for folder in (root / class_name / "raw", root / "raw", root):
            sources = _idx_sources(folder)
            if sources is not None:
                return _materialize(class_name, sources)
    return None


def _idx_sources(folder: Path) -> list[Path] | None:
    """The four IDX files in ``folder`` (plain preferred over .gz), or None if any is missing."""
    found: list[Path] = []
    for name in IDX_FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found


def _materialize(class_name: str, sources: Sequence[Path]) -> Path:
    """Write ``sources`` uncompressed to ``cache/<class_name>/raw/`` unless already there; return the cache."""
    root = cache_dir()
    raw = root / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for src in sources:
        name = src.name.removesuffix(".gz")
        dest = raw / name
        stamp = raw / f".{name}.source"
        signature = _signature(src)
        if dest.is_file() and stamp.is_file() and stamp.read_text() == signature:
            continue
        _write_atomic(dest, src)
        _write_text_atomic(stamp, signature)
    return root


def _signature(src: Path) -> str:
    """Identifies a source file, so a cache made from another folder is rebuilt, not reused."""
    st = src.stat()
    return f"{src.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n"


def _write_atomic(dest: Path, src: Path) -> None:
    """Decompress (or copy) ``src`` to ``dest`` through a temp file, so readers never see half a file."""
    opener = gzip.open if src.suffix == ".gz" else open

    def copy(tmp: Path) -> None:
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)

    atomic_write(dest, copy)


def _write_text_atomic(dest: Path, text: str) -> None:
    """Write a small text file through a temp file."""
    atomic_write_text(dest, text)
