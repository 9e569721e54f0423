"""The project stands alone: its code, configs, tests and docs cite the paper and docs/, never
the design notes its authors worked from (users do not have them)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
