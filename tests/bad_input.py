"""What the bad-input tests share (test_bad_input.py, test_bad_input_files.py): the check of a
clean one-line error, the check that nothing changed, and the input files they break."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gpd.cli.main import main
from gpd.data import locate
from gpd.io.student import student_payload
from gpd.models import create_model

FASHION_MNIST_PRESENT = (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_PRESENT, reason="Fashion-MNIST is not installed (make test installs it)"
)


def fails(argv: Sequence[str], capsys) -> str:
    """Run ``gpd ARGV`` in-process; assert exit code 2 and one clean error line, and return it."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert err.startswith("gpd: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert "Traceback" not in err + captured.out, err
    return err.strip()


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """mtime and content hash of every file under ``roots`` (files or folders)."""
    files: dict[str, tuple[int, str]] = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(path)] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


@contextmanager
def untouched(*roots: Path) -> Iterator[None]:
    """Assert that no file under ``roots`` is created, changed or removed inside the block."""
    before = snapshot(*roots)
    yield
    assert snapshot(*roots) == before


def make_files(root: Path) -> Path:
    """Checkpoints of all kinds in ``root`` (no training)."""
    torch.manual_seed(0)
    # gpd student files
    torch.save(
        student_payload(create_model("resnet8", 10, 3), data="cifar10", input_size=[3, 32, 32]), root / "resnet8_c10.pt"
    )
    torch.save(student_payload(create_model("resnet8", 100, 1)), root / "resnet8_fm100.pt")
    torch.save(student_payload(create_model("resnet20", 10, 1)), root / "resnet20_fm_student.pt")
    # plain state_dict files
    torch.save(create_model("resnet20", 10, 1).state_dict(), root / "resnet20_fm.pth")
    torch.save(create_model("resnet8", 10, 3).state_dict(), root / "resnet8_c10.pth")
    # unreadable files
    (root / "garbage.pt").write_bytes(random.Random(0).randbytes(4096))
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes((root / "resnet8_c10.pt").read_bytes()[:5000])
    torch.save(create_model("resnet8", 10, 1), root / "pickled_module.pt")  # a whole module: code, not weights
    (root / "empty_dir").mkdir()
    return root


def make_image_folder(root: Path) -> Path:
    """A tiny ImageNet-style folder in ``root``: 3 classes, 2 images each in train/ and val/."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog", "fox"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / f"{i}.png")
    return root
