"""rnnpipe: train recurrent sentiment classifiers on Parquet and score huge datasets with them.

Importing the package changes nothing in the process environment. The ``rnnpipe`` command
applies rnnpipe's runtime defaults (thread hand-over, CPU tuning) at start; a library user
gets the same by calling ``pipeline.runtime.apply_defaults()`` before NumPy and Numba load.
"""

from pipeline.errors import (
    ConfigError,
    DeviceError,
    InputError,
    ModelFormatError,
    RnnpipeError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeviceError",
    "InputError",
    "ModelFormatError",
    "RnnpipeError",
    "__version__",
]
