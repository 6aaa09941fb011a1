"""Check that a job can run, without running it: ``validate_spec``.

Example::

    validate_spec(load_spec("jobs/example.toml"))["inputs"]  # 3
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.jobs.run import load_model, scorer
from pipeline.jobs.spec import JobSpec, discover_inputs

__all__ = ["validate_spec"]


def validate_spec(spec: JobSpec) -> dict[str, Any]:
    """Check that the job can run: the model loads and the inputs resolve (zero is fine).

    Returns ``{"job", "model", "fingerprint", "inputs"}`` (``inputs``: how many were found).
    Raises ModelFormatError when the model does not load, ConfigError when the output path
    is a file, two inputs map to the same output, or the engine is not available.

    Example: ``validate_spec(load_spec("jobs/example.toml"))["inputs"]  # 3``.
    """
    if spec.output.exists() and not spec.output.is_dir():
        raise ConfigError(f"{spec.source or spec.name}: output {spec.output} is not a folder")
    fingerprint = load_model(spec).fingerprint()
    scorer(spec)
    inputs, conflicts = discover_inputs(spec)
    if conflicts:
        path, message = conflicts[0]
        raise ConfigError(f"{spec.source or spec.name}: input {path}: {message}")
    return {
        "job": spec.name,
        "model": str(spec.model),
        "fingerprint": fingerprint,
        "inputs": len(inputs),
    }
