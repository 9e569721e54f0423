"""Reports of training runs: read run directories, plot their curves, summarise them in markdown.

Used by ``gpd report``; importable on its own to build figures in a notebook.
"""

from gpd.reporting.runs import RunRecord, read_run, read_runs

__all__ = ["RunRecord", "read_run", "read_runs"]
