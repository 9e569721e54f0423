#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh [--dry-run] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" benchmarks/gpu_check.py "$@"
