"""pathseg's exception types. Every message says what was expected and what to do next.

The CLI catches :class:`PathsegError` and prints its message without a traceback.
"""

from __future__ import annotations


class PathsegError(Exception):
    """Base class: an error whose message is meant for the user."""


class UnknownNameError(PathsegError, KeyError):
    """A model, dataset, method or option name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(PathsegError, ValueError):
    """A configuration key or value that is not valid."""


class DataError(PathsegError, ValueError):
    """An input file that is missing, unreadable or inconsistent (names the file)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset root that does not exist; the message says where to get the data."""


class SlideError(DataError):
    """A whole-slide image that cannot be opened or read."""


class MPPError(SlideError):
    """A slide whose resolution (microns per pixel) is missing or inconsistent."""


class WeightsError(PathsegError, RuntimeError):
    """Pretrained weights that cannot be loaded (offline, missing file, wrong keys)."""
