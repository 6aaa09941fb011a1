"""A job's spec: the TOML file, validated into a ``JobSpec``, and the inputs it finds now.

``load_spec`` reads and checks the file (paths relative to the spec's folder);
``discover_inputs`` lists the input files the spec matches, each with the output path it is
scored to, and the inputs whose output would collide with an input or another output.

Example::

    spec = load_spec("jobs/example.toml")
    inputs, conflicts = discover_inputs(spec)
    [i.output for i in inputs]
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import io, runtime
from pipeline.errors import ConfigError, InputError

__all__ = [
    "DEVICES",
    "ENGINES",
    "STATE_DIR_NAME",
    "JobInput",
    "JobSpec",
    "discover_inputs",
    "load_spec",
]

DEVICES = runtime.DEVICES
ENGINES = ("local", "ray")
STATE_DIR_NAME = ".rnnpipe-job"


@dataclass(frozen=True)
class JobSpec:
    """A validated job. ``load_spec`` builds one from a TOML file.

    Fields: ``name``; ``inputs`` files, directories or globs (``**`` recurses), absolute;
    ``model`` the model directory; ``output`` the folder outputs go to; ``keep`` input columns
    copied to the output; ``text_col`` (None: ``text`` or ``review``); ``batch_rows`` rows per
    scoring batch; ``threads`` (0: all cores); ``device`` cpu|cuda|auto; ``min_age_seconds``
    inputs modified more recently than this are left for a later run (still being written);
    ``retries`` extra attempts for a failing input within one run; ``state_dir`` where the
    manifest, lock and log live (default ``<output>/.rnnpipe-job``); ``engine`` local|ray;
    ``source`` the spec file, named in messages.

    Relative paths given here are taken relative to the current directory (``load_spec``
    resolves them against the spec file's directory first). Raises ConfigError (one line,
    naming the spec file and the key) for any invalid value.

    Example: ``JobSpec(name="daily", inputs=("in/*.parquet",), model="model", output="out")``.
    """

    name: str
    inputs: tuple[str, ...]
    model: Path
    output: Path
    keep: tuple[str, ...] | None = None
    text_col: str | None = None
    batch_rows: int = 8192
    threads: int = 0
    device: str = "cpu"
    min_age_seconds: float = 0.0
    retries: int = 0
    state_dir: Path | None = None
    engine: str = "local"
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source is not None else ""

        def bad(key: str, expected: str, value: Any) -> ConfigError:
            return ConfigError(f"{where}{key} must be {expected}, got {value!r}")

        def path_key(key: str, value: Any) -> Path:
            if not isinstance(value, str | os.PathLike) or not str(value).strip():
                raise bad(key, "a path (a non-empty string)", value)
            return Path(os.path.abspath(os.path.expanduser(str(value))))

        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("name", "a non-empty string", self.name)
        inputs = self.inputs
        if isinstance(inputs, str) or not isinstance(inputs, list | tuple) or not inputs:
            raise bad("inputs", 'a non-empty list of paths or globs, e.g. ["in/*.parquet"]', inputs)
        for item in inputs:
            if not isinstance(item, str | os.PathLike) or not str(item).strip():
                raise bad("inputs", "a list of non-empty strings", inputs)
        object.__setattr__(
            self,
            "inputs",
            tuple(os.path.abspath(os.path.expanduser(str(p))) for p in inputs),
        )
        object.__setattr__(self, "model", path_key("model", self.model))
        object.__setattr__(self, "output", path_key("output", self.output))
        state = self.output / STATE_DIR_NAME if self.state_dir is None else self.state_dir
        object.__setattr__(self, "state_dir", path_key("state_dir", state))
        if self.keep is not None:
            keep = self.keep
            if isinstance(keep, str) or not isinstance(keep, list | tuple):
                raise bad("keep", 'a list of column names, e.g. ["id"]', keep)
            if not all(isinstance(c, str) and c for c in keep):
                raise bad("keep", "a list of non-empty column names", keep)
            object.__setattr__(self, "keep", tuple(keep))
        if self.text_col is not None and (not isinstance(self.text_col, str) or not self.text_col):
            raise bad("text_col", "a column name", self.text_col)
        for key, low in (("batch_rows", 1), ("threads", 0), ("retries", 0)):
            value = getattr(self, key)
            if not _is_int(value) or value < low:
                raise bad(key, f"an integer >= {low}", value)
        age = self.min_age_seconds
        if isinstance(age, bool) or not isinstance(age, int | float) or not 0 <= age < math.inf:
            raise bad("min_age_seconds", "a number of seconds >= 0", age)
        object.__setattr__(self, "min_age_seconds", float(age))
        if self.device not in DEVICES:
            raise bad("device", f"one of {', '.join(DEVICES)}", self.device)
        if self.engine not in ENGINES:
            raise bad("engine", f"one of {', '.join(ENGINES)}", self.engine)
        if self.source is not None:
            object.__setattr__(self, "source", Path(os.path.abspath(self.source)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (paths as strings)."""
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_REQUIRED = ("name", "inputs", "model", "output")
_OPTIONAL = tuple(
    f.name for f in dataclasses.fields(JobSpec) if f.name not in _REQUIRED and f.name != "source"
)
_PATH_KEYS = ("model", "output", "state_dir")


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec (TOML).

    Relative paths in ``inputs``, ``model``, ``output`` and ``state_dir`` are relative to the
    spec file's directory, so a spec works whatever directory cron starts in.

    Raises ConfigError with a one-line message naming the file and the key: a missing file,
    invalid TOML, an unknown key, a missing required key or a value of the wrong type.

    Example::

        spec = load_spec("jobs/example.toml")
        spec.output        # PosixPath('/srv/rnnpipe/scores/example')
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job spec not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read job spec {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    known = (*_REQUIRED, *_OPTIONAL)
    for key in raw:
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {', '.join(known)})")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{path}: missing required key {key!r}")
    base = path.resolve().parent

    def anchored(value: Any) -> Any:
        # only strings are anchored; anything else reaches JobSpec's type checks unchanged
        if not isinstance(value, str) or not value.strip():
            return value
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else base / p)

    values = dict(raw)
    for key in _PATH_KEYS:
        if key in values:
            values[key] = anchored(values[key])
    if isinstance(values["inputs"], list):
        values["inputs"] = [anchored(v) for v in values["inputs"]]
    return JobSpec(**values, source=path)


@dataclass(frozen=True)
class JobInput:
    """One input file of a job and the output it is scored to."""

    path: Path  # absolute
    output: Path  # absolute


def _input_root(pattern: str) -> Path:
    """The directory part of ``pattern`` before any glob character (a file: its directory)."""
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return Path(*parts[:i])
    p = Path(pattern)
    return p if p.is_dir() else p.parent


def discover_inputs(spec: JobSpec) -> tuple[list[JobInput], list[tuple[Path, str]]]:
    """The job's input files now, each with its output path; zero inputs is not an error.

    An input ``<root>/<rel>`` (``root`` being the pattern's directory part before any glob
    character) is scored to ``<output>/<rel>`` with the suffix ``.parquet``. Files in the
    state folder are never inputs, nor are files in the output folder unless the pattern's
    root itself lies inside it; so ``data/**/*.parquet`` with output ``data/scored`` never
    scores its own outputs.

    Returns ``(inputs, conflicts)``: inputs sorted by path, and ``(path, message)`` for every
    input whose output path is its own path or another input's (each such input fails).

    Example: ``inputs, _ = discover_inputs(spec); [i.output for i in inputs]``.
    """
    # Paths are compared with every link resolved: an input reached through a link to the
    # output folder (or an output folder reached through a link into the inputs) is still
    # the same file, and scoring it would replace an input or nest outputs run after run.
    real_output = Path(os.path.realpath(spec.output))
    real_state = Path(os.path.realpath(spec.state_dir))
    found: list[tuple[Path, Path]] = []  # (input, output)
    seen: set[Path] = set()
    for pattern in spec.inputs:
        try:
            paths = io.resolve_inputs(pattern)
        except InputError:
            continue  # nothing there yet: nothing to do
        root = _input_root(pattern)
        skip_output = not io.is_inside(root, spec.output)
        for path in paths:
            real = Path(os.path.realpath(path))
            if real in seen or real.is_relative_to(real_state):
                continue
            if skip_output and real.is_relative_to(real_output):
                continue
            seen.add(real)
            found.append((path, (spec.output / path.relative_to(root)).with_suffix(".parquet")))
    by_output: dict[Path, JobInput] = {}
    conflicts: list[tuple[Path, str]] = []
    for path, out in found:
        entry = io.real_entry(out)
        other = by_output.get(entry)
        if entry in seen:
            what = "it" if entry == Path(os.path.realpath(path)) else f"the input {entry}"
            message = f"its output {out} would overwrite {what}: choose another output"
            conflicts.append((path, message))
        elif other is not None:
            conflicts.append((path, f"output {out} is already the output of {other.path}"))
        else:
            by_output[entry] = JobInput(path, out)
    return sorted(by_output.values(), key=lambda i: str(i.path)), conflicts
