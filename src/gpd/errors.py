"""User-facing errors.

Every error a user can cause (a bad config, missing data, an unusable model) derives
from :class:`GPDError`. The CLI prints such errors as one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GPDError(Exception):
    """Base class of errors caused by the user's input, reported without a traceback."""


class ArgumentError(GPDError, ValueError):
    """A bad argument to gpd's Python API (a value error, reported in one line)."""


class ConfigError(GPDError):
    """An unknown config key, a value of the wrong type or out of range."""


class DataError(GPDError):
    """A data set that cannot be found or read."""


class ModelError(GPDError):
    """An unknown model name or an architecture that cannot be built."""


class ExpansionError(GPDError):
    """The dynamic teacher cannot be built exactly from the student."""


class CheckpointError(GPDError):
    """A checkpoint or exported model that is missing, corrupt or of another architecture."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its class name), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
