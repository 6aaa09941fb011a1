"""The errors rnnpipe raises for expected failures.

Every expected failure (bad input, a missing file, a broken model directory) is an
``RnnpipeError``: the CLI prints its message as one line and exits with ``exit_code``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RnnpipeError(Exception):
    """Base class: an expected failure with a one-line message for the user."""

    exit_code = 2


class InputError(RnnpipeError):
    """Bad input data: missing path, not Parquet, missing or mistyped column, bad labels."""


class ModelFormatError(RnnpipeError):
    """A model directory that is missing, of another format version, or with wrong shapes."""


class ConfigError(RnnpipeError):
    """Bad options or a bad job spec."""


class DeviceError(RnnpipeError):
    """A backend that is not available here (for example CUDA on a machine without a GPU)."""


class RunError(RnnpipeError):
    """A failure at run time that is not the input's fault."""

    exit_code = 1


class OutputError(RunError):
    """An output could not be written (no space left, read-only file system, permission
    denied, a parent that is not a directory): the message names the path and the reason.
    Whatever was being written is removed; earlier outputs stay as they were."""
