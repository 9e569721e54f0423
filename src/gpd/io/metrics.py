"""metrics.csv: one row per epoch; the header comes from the first row's keys.

On resume, :meth:`MetricsCSV.rewrite` puts back the rows the checkpoint holds (the row
of each epoch is written before its checkpoint, and kept in it, so neither a gap nor a
duplicate survives a crash between the two writes); :meth:`MetricsCSV.truncate` does
the same from the file alone for older checkpoints without rows.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from gpd.deprecated import upgrade_columns
from gpd.io.atomic import atomic_write_csv


class MetricsCSV:
    """Appends each epoch's row to ``path``; rewrites it (atomically) on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None

    def truncate(self, last_epoch: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) <= last_epoch]
        if reader.fieldnames:
            fields = list(reader.fieldnames)
            names = dict(zip(fields, upgrade_columns(fields, str(self.path))))  # a run of an older gpd
            rows = [{names[k]: v for k, v in row.items() if k in names} for row in rows]
            self.rewrite(rows, fields=list(names.values()))

    def rewrite(self, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
        """Replace the file by ``rows`` (a resume: the rows its checkpoint holds), atomically;
        ``fields``: the header (default: the first row's keys)."""
        if not rows and fields is None:
            self.path.unlink(missing_ok=True)
            self.fields = None
            return
        self.fields = fields or list(rows[0])
        atomic_write_csv(self.path, self.fields, [{k: _fmt(row.get(k)) for k in self.fields} for row in rows])

    def write(self, row: dict[str, Any]) -> None:
        new_file = self.fields is None
        if self.fields is None:
            self.fields = list(row)
        with open(self.path, "a" if not new_file else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.fields})


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
