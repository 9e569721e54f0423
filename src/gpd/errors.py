"""User-facing errors.

Every error a user can cause (a bad config, missing data, an unusable model) derives
from :class:`GPDError`. The CLI prints such errors as one line and exits with code 2;
anything else is a bug and keeps its traceback.

The errors that say an argument's *value* is wrong are also ``ValueError``\\ s, so code
that catches ``ValueError`` around a call of gpd's Python API keeps working:

* :class:`ArgumentError`: a bad argument to a function or class of gpd's Python API
  (an unknown choice, a number out of range, a registration that clashes);
* :class:`ConfigError`, an ArgumentError: a bad value or key in a config (file, override or object);
* :class:`ExpansionError`: a model that ``gpd.expand`` cannot expand exactly (the model is
  the bad argument value).

:class:`DataError`, :class:`ModelError` and :class:`CheckpointError` are about files and
names outside the call (a data set, a model name, a checkpoint on disk): GPDErrors only.
"""

from __future__ import annotations


class GPDError(Exception):
    """Base class of errors caused by the user's input, reported without a traceback."""


class ArgumentError(GPDError, ValueError):
    """A bad argument to gpd's Python API."""


class ConfigError(ArgumentError):
    """An unknown config key, a value of the wrong type or out of range."""


class DataError(GPDError):
    """A data set that cannot be found or read."""


class ModelError(GPDError):
    """An unknown model name or an architecture that cannot be built."""


class ExpansionError(GPDError, ValueError):
    """The dynamic teacher cannot be built exactly from the student."""


class CheckpointError(GPDError):
    """A checkpoint or exported model that is missing, corrupt or of another architecture."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its class name), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
