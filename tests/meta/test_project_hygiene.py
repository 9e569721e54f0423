"""The project stands alone: its code, configs, tests and docs cite the paper and docs/, never
the design notes its authors worked from (users do not have them)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("DESIGN" + ".md", "../" + "shared")


def test_no_reference_to_files_users_do_not_have() -> None:
    files = [
        ROOT / "README.md",
        *[p for d in ("src", "tests", "docs", "benchmarks", "scripts") for p in (ROOT / d).rglob("*")],
    ]
    offending = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in files
        if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"}
        for word in FORBIDDEN
        if word in path.read_text(errors="ignore")
    ]
    assert not offending, offending


MAX_LINES = 400  # a module longer than this does more than one job: split it


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "src" / "gpd").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"
