"""rnnpipe: train recurrent sentiment classifiers on Parquet and score huge datasets with them."""

from pipeline.errors import ConfigError, DeviceError, InputError, ModelFormatError, RnnpipeError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeviceError",
    "InputError",
    "ModelFormatError",
    "RnnpipeError",
    "__version__",
]
