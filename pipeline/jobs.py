"""Scheduled batch jobs: a TOML spec, a manifest of processed inputs, a lock, incremental runs.

A job scores every input file matching its spec exactly once, and again only when the
input's content or the model changes. Run it from cron, a systemd timer or Airflow as often
as you like (``jobs/`` has an example of each)::

    rnnpipe job validate jobs/example.toml     # spec, model and inputs check out
    rnnpipe job run jobs/example.toml          # score what is new; exit code for the scheduler
    rnnpipe job status jobs/example.toml       # done / pending / failed, last run
    python -m pipeline.jobs run jobs/example.toml   # the same without the CLI

How a run stays correct whatever happens to it:

* **Lock.** ``<state_dir>/lock`` is held with ``flock`` for the whole run; the kernel drops it
  when the process dies, however it dies. A second run meanwhile exits at once with code 3.
* **Atomic outputs.** ``score_file`` writes each output under a hidden temporary name and
  renames it into place when complete. Temporaries left by a killed run (``.*.tmp`` in the
  output tree) are deleted at the start of the next run, under the lock.
* **Manifest after the rename.** ``<state_dir>/manifest.json`` records, per input (keyed by
  absolute path): size, mtime_ns, sha256 of the content, output, rows, model fingerprint and
  finish time. An input is recorded only after its output is in place, and the manifest is
  replaced atomically (temp + fsync + rename). A run killed between the rename and the record
  scores that input again next time, overwriting the same output: each output exists once.
* **What is scored.** An input is scored when it has no record, its record failed, its
  output is missing, the model fingerprint differs, or its size/mtime differ *and* its
  sha256 differs (a touched but identical file is not rescored).

Exit codes: 0 all done (or nothing to do), 1 some inputs failed (the others are done and
recorded; the failed ones are retried next run), 2 bad spec or usage (or a model that does
not load), 3 another run holds the lock, 143 stopped by SIGTERM.

Every event is one JSON object per line on stderr and appended to ``<state_dir>/log.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pipeline import io, runtime
from pipeline.errors import ConfigError, InputError, RnnpipeError, RunError

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "JobInput",
    "JobSpec",
    "RunReport",
    "discover_inputs",
    "format_status",
    "job_status",
    "load_spec",
    "main",
    "run_job",
    "validate_spec",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_TERMINATED = 0, 1, 2, 3, 143
MANIFEST_VERSION = 1
DEVICES = runtime.DEVICES
ENGINES = ("local", "ray")
STATE_DIR_NAME = ".rnnpipe-job"
MANIFEST_FILE, LOCK_FILE, LOG_FILE = "manifest.json", "lock", "log.jsonl"
# A big manifest is rewritten at most this often (seconds): rewriting it after every one of
# thousands of small inputs would cost O(n^2) bytes. An input finished but not yet recorded
# when the run dies is simply scored again next run, overwriting the same output.
_FLUSH_INTERVAL = 1.0
_SMALL_MANIFEST = 256 << 10  # below this many bytes the manifest is rewritten after every input
_HASH_CHUNK = 1 << 20
_STATUS_LOG_TAIL = 1 << 20  # status reads only the end of log.jsonl
# Tests only: seconds to sleep before each input and after each scored batch, so that a run
# lasts long enough to be killed half-way through a file.
_TEST_DELAY_ENV = "RNNPIPE_JOB_TEST_DELAY"


# --------------------------------------------------------------------------------------- spec


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


# --------------------------------------------------------------------------------------- inputs


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------- state


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_manifest(state_dir: Path) -> dict[str, Any]:
    path = state_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format_version": MANIFEST_VERSION, "inputs": {}}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        # never start over silently: that would rescore (and re-deliver) everything
        raise RunError(
            f"manifest {path} is unreadable ({e}): fix it, or move it aside to score every "
            "input again"
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("format_version") != MANIFEST_VERSION
        or not isinstance(data.get("inputs"), dict)
    ):
        raise RunError(
            f"manifest {path} is not a version-{MANIFEST_VERSION} rnnpipe manifest: move it "
            "aside to score every input again"
        )
    return data


def _write_manifest(state_dir: Path, manifest: dict[str, Any]) -> int:
    manifest["updated"] = _now_iso()
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    io.atomic_write_text(state_dir / MANIFEST_FILE, text)  # temp + fsync + rename + dir fsync
    return len(text)


class _JobLog:
    """JSON lines to a stream (stderr by default) and appended to ``<state_dir>/log.jsonl``."""

    def __init__(self, job: str, state_dir: Path, stream: TextIO | None):
        self.job = job
        self.stream = stream
        # O_APPEND: a whole line lands in one write, even while another process appends
        self.file = open(state_dir / LOG_FILE, "a", encoding="utf-8")

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        record = {"ts": _now_iso(), "level": level, "event": event, "job": self.job, **fields}
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with contextlib.suppress(OSError, ValueError):
            self.file.write(line)
            self.file.flush()
        if self.stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(line)
                self.stream.flush()

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def _job_lock(state_dir: Path) -> Iterator[bool]:
    """Hold ``<state_dir>/lock`` exclusively for the block; yields False if another has it."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            acquired = False
        if acquired:
            # who holds it, for people looking at the file; the flock itself is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {_now_iso()}\n".encode(), 0)
        yield acquired
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _lock_held(state_dir: Path) -> bool:
    """Whether a run holds the job's lock now (probed with a shared lock for an instant)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _remove_stray_temps(*roots: Path) -> list[str]:
    """Delete ``.*.tmp`` files and folders (what a killed writer leaves) under ``roots``."""
    removed: list[str] = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*filenames, *dirnames]:
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                p = Path(dirpath) / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                removed.append(str(p))
            dirnames[:] = [d for d in dirnames if not (d.startswith(".") and d.endswith(".tmp"))]
    return removed


# --------------------------------------------------------------------------------------- run


@dataclass
class RunReport:
    """What one run did. ``exit_code`` is the process exit code a scheduler should see.

    ``scored`` inputs scored (and recorded) this run; ``up_to_date`` inputs already done;
    ``pending`` inputs left for a later run (too recently modified, or changing while read);
    ``failed`` input -> error message; ``rows`` rows scored this run.
    """

    job: str
    exit_code: int
    started: str
    finished: str = ""
    scored: list[str] = field(default_factory=list)
    up_to_date: int = 0
    pending: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0
    temp_files_removed: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Terminated(BaseException):
    """SIGTERM arrived (systemd stopping the unit): stop after logging, exit 143."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _test_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(_TEST_DELAY_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _error_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, RnnpipeError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _load_model(spec: JobSpec):
    """The job's model on its device, bound now: a missing GPU fails the run, not each file.
    Raises ModelFormatError, or DeviceError."""
    return runtime.load_model(spec.model, spec.device)


def _model_fingerprint(spec: JobSpec) -> str:
    """The model's fingerprint, whatever the device (no backend is bound)."""
    from pipeline.model import Model

    return Model.load(spec.model).fingerprint()


def _score_options(spec: JobSpec, backend: str):
    from pipeline.score import ScoreOptions

    return ScoreOptions(
        text_col=spec.text_col, keep=spec.keep, batch_rows=spec.batch_rows, backend=backend
    )


def _scorer(spec: JobSpec):
    """The function that scores one file: ``(path, model, out_path, options, progress)``."""
    from pipeline.score import FileResult, score_file

    if spec.engine == "local":
        return score_file
    try:
        import ray  # noqa: F401  (the engine module imports it lazily: check it here)

        from pipeline.engines.ray import score_on_ray
    except ImportError as e:
        raise ConfigError(
            f"engine 'ray' is not available ({e}): pip install 'rnnpipe[ray]' or use "
            'engine = "local"'
        ) from None

    def score_file_on_ray(path, model, out_path, options, progress=None):
        # one input file with an output named *.parquet: the output is that file itself
        summary = score_on_ray([str(path)], model, spec.model, out_path, options, progress=progress)
        return FileResult(Path(path), Path(out_path), summary.rows, summary.null_texts,
                          summary.seconds)  # fmt: skip

    return score_file_on_ray


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _up_to_date(entry: Mapping[str, Any] | None, item: JobInput, fingerprint: str) -> bool:
    return (
        entry is not None
        and entry.get("status") == "done"
        and entry.get("model") == fingerprint
        and entry.get("output") == str(item.output)
        and item.output.is_file()
    )


def run_job(spec: JobSpec, log: TextIO | None = None, echo: bool = True) -> RunReport:
    """Run the job once: score every input not yet done, record it, report.

    Parameters: ``spec`` from ``load_spec``; ``log`` the stream the JSON-line events go to
    besides ``<state_dir>/log.jsonl`` (None: ``sys.stderr``); ``echo=False`` writes them to
    the file only.

    Returns a ``RunReport`` whose ``exit_code`` is 0 (all done, or nothing to do), 1 (some
    inputs failed: the rest are done and recorded), 2 (the model does not load, or another
    run-level problem that a fix of the spec or setup cures), 3 (another run holds the lock:
    nothing was done) or 143 (SIGTERM). Errors that stop the whole run are logged and
    reported, not raised; only a state folder that cannot be created raises ConfigError.

    Example::

        report = run_job(load_spec("jobs/example.toml"))
        sys.exit(report.exit_code)
    """
    stream = (log if log is not None else sys.stderr) if echo else None
    started_mono = time.monotonic()
    report = RunReport(job=spec.name, exit_code=EXIT_OK, started=_now_iso())
    try:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the job's state folder {spec.state_dir}: {e}") from None
    emit = _JobLog(spec.name, spec.state_dir, stream)
    try:
        with _job_lock(spec.state_dir) as acquired:
            if not acquired:
                report.exit_code = EXIT_LOCKED
                report.message = (
                    f"another run of job {spec.name!r} holds {spec.state_dir / LOCK_FILE}: "
                    "nothing done"
                )
                report.finished = _now_iso()
                emit("error", level="warning", error=report.message, exit_code=EXIT_LOCKED)
                return report
            with _sigterm_stops():
                try:
                    _run_locked(spec, emit, report)
                except _Terminated:
                    report.exit_code = EXIT_TERMINATED
                    report.message = "stopped by SIGTERM"
                    emit("error", level="error", error=report.message)
                except RnnpipeError as e:
                    report.exit_code = e.exit_code
                    report.message = _error_text(e)
                    emit("error", level="error", error=report.message)
                except KeyboardInterrupt:
                    report.exit_code = 130
                    report.message = "interrupted"
                    emit("error", level="error", error=report.message)
                    raise
                except Exception as e:  # a bug: logged here, and its traceback kept
                    report.exit_code = EXIT_FAILED
                    report.message = _error_text(e)
                    emit("error", level="error", error=report.message)
                    raise
                finally:
                    report.finished = _now_iso()
                    report.seconds = round(time.monotonic() - started_mono, 3)
                    emit(
                        "end",
                        level="info" if report.exit_code == EXIT_OK else "error",
                        exit_code=report.exit_code,
                        started=report.started,
                        scored=len(report.scored),
                        up_to_date=report.up_to_date,
                        pending=len(report.pending),
                        failed=len(report.failed),
                        rows=report.rows,
                        seconds=report.seconds,
                    )
    finally:
        emit.close()
    return report


def _run_locked(spec: JobSpec, emit: _JobLog, report: RunReport) -> None:
    """The body of a run, with the lock held. Raises RnnpipeError for run-level failures."""
    removed = _remove_stray_temps(spec.output, spec.state_dir)
    report.temp_files_removed = len(removed)
    emit(
        "start",
        pid=os.getpid(),
        spec=str(spec.source) if spec.source else None,
        inputs=list(spec.inputs),
        output=str(spec.output),
        temp_files_removed=len(removed),
    )
    manifest = _read_manifest(spec.state_dir)
    manifest["job"] = spec.name
    entries: dict[str, dict[str, Any]] = manifest["inputs"]
    runtime.set_threads(spec.threads)
    model = _load_model(spec)
    fingerprint = model.fingerprint()
    score = _scorer(spec)
    options = _score_options(spec, model.backend)
    inputs, conflicts = discover_inputs(spec)
    delay = _test_delay()

    def progress(*args: Any, **kwargs: Any) -> None:
        if delay:
            time.sleep(delay)

    last_flush, last_size = time.monotonic(), 0

    def record(force: bool = False) -> None:
        nonlocal last_flush, last_size
        now = time.monotonic()
        if force or last_size < _SMALL_MANIFEST or now - last_flush >= _FLUSH_INTERVAL:
            last_size = _write_manifest(spec.state_dir, manifest)
            last_flush = now

    for path, message in conflicts:
        report.failed[str(path)] = message
        entries[str(path)] = {"status": "failed", "error": message, "failed_at": _now_iso()}
        emit("file_failed", level="error", input=str(path), error=message)

    for item in inputs:
        key = str(item.path)
        entry = entries.get(key)
        try:
            size, mtime_ns = _stat(item.path)
        except FileNotFoundError:
            continue  # removed since it was listed
        age = time.time() - mtime_ns / 1e9
        if age < spec.min_age_seconds:
            report.pending.append(key)
            emit(
                "file_skipped",
                input=key,
                reason=f"modified {age:.1f} s ago, min_age_seconds is {spec.min_age_seconds:g}",
            )
            continue
        if (
            _up_to_date(entry, item, fingerprint)
            and entry.get("size") == size
            and entry.get("mtime_ns") == mtime_ns
        ):
            report.up_to_date += 1
            continue
        try:
            digest = _sha256(item.path)
            if _stat(item.path) != (size, mtime_ns):
                report.pending.append(key)
                emit("file_skipped", input=key, reason="changed while being read: next run")
                continue
        except OSError as e:
            _record_failure(entries, key, item, size, mtime_ns, fingerprint, e, 1, report, emit)
            record()
            continue
        if _up_to_date(entry, item, fingerprint) and entry.get("sha256") == digest:
            # touched or copied over with the same bytes: same output, only the stat changed
            entry.update(size=size, mtime_ns=mtime_ns)
            report.up_to_date += 1
            continue
        for attempt in range(1, spec.retries + 2):
            if delay:
                time.sleep(delay)
            try:
                result = score(item.path, model, item.output, options, progress=progress)
            except Exception as e:  # one bad input must not stop the others
                if attempt <= spec.retries:
                    emit(
                        "file_failed",
                        level="warning",
                        input=key,
                        error=_error_text(e),
                        attempt=attempt,
                        retrying=True,
                    )
                    time.sleep(min(2.0 ** (attempt - 1), 30.0))
                    continue
                _record_failure(
                    entries, key, item, size, mtime_ns, fingerprint, e, attempt, report, emit
                )
                break
            # the output is complete and renamed into place: only now is the input recorded
            entries[key] = {
                "status": "done",
                "size": size,
                "mtime_ns": mtime_ns,
                "sha256": digest,
                "output": str(item.output),
                "rows": int(result.rows),
                "null_texts": int(result.null_texts),
                "model": fingerprint,
                "finished": _now_iso(),
                "seconds": round(float(result.seconds), 3),
            }
            report.scored.append(key)
            report.rows += int(result.rows)
            emit(
                "file_done",
                input=key,
                output=str(item.output),
                rows=int(result.rows),
                null_texts=int(result.null_texts),
                seconds=round(float(result.seconds), 3),
            )
            break
        record()

    report.exit_code = EXIT_FAILED if report.failed else EXIT_OK
    manifest["last_run"] = {
        "start": report.started,
        "end": _now_iso(),
        "exit_code": report.exit_code,
        "scored": len(report.scored),
        "failed": len(report.failed),
        "rows": report.rows,
    }
    record(force=True)


def _record_failure(
    entries: dict[str, dict[str, Any]],
    key: str,
    item: JobInput,
    size: int,
    mtime_ns: int,
    fingerprint: str,
    error: BaseException,
    attempts: int,
    report: RunReport,
    emit: _JobLog,
) -> None:
    message = _error_text(error)
    previous = entries.get(key) or {}
    entries[key] = {
        "status": "failed",
        "size": size,
        "mtime_ns": mtime_ns,
        "output": str(item.output),
        "model": fingerprint,
        "error": message,
        "attempts": attempts,
        "failures": int(previous.get("failures", 0)) + 1,
        "failed_at": _now_iso(),
    }
    report.failed[key] = message
    emit("file_failed", level="error", input=key, error=message, attempts=attempts)


# --------------------------------------------------------------------------------------- status


def _last_runs_from_log(state_dir: Path) -> tuple[dict | None, dict | None]:
    """The last ``start`` and the last ``end`` event in the end of ``log.jsonl``."""
    path = state_dir / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STATUS_LOG_TAIL))
            lines = f.read().splitlines()
    except OSError:
        return None, None
    start = end = None
    for line in lines:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the first line of the tail may be cut
        if not isinstance(rec, dict):
            continue
        if rec.get("event") == "start":
            start = rec
        elif rec.get("event") == "end":
            end = rec
    return start, end


def job_status(spec: JobSpec) -> dict[str, Any]:
    """Where the job stands, without changing anything (no lock taken for long, no hashing).

    Returns a JSON-ready dict: ``job``, ``spec``, ``output``, ``state_dir``, ``running``
    (whether a run holds the lock now), ``model`` (path, fingerprint or error), ``last_run``
    (start, end, exit_code, ``interrupted`` when a run started and never ended),
    ``counts`` (done, pending, failed, gone), ``rows_done``, and ``inputs``: one dict per
    input now found (input, state done|pending|failed, reason, rows, output, finished, error),
    and ``gone``: recorded inputs no longer found. A changed size or mtime shows as pending
    (a run hashes it and may find the content unchanged).

    Raises RunError for an unreadable manifest.

    Example: ``print(format_status(job_status(load_spec("jobs/example.toml"))))``.
    """
    manifest = (
        _read_manifest(spec.state_dir)
        if spec.state_dir.is_dir()
        else {"format_version": MANIFEST_VERSION, "inputs": {}}
    )
    entries: dict[str, dict[str, Any]] = manifest["inputs"]
    model: dict[str, Any] = {"path": str(spec.model), "fingerprint": None, "error": None}
    try:
        model["fingerprint"] = _model_fingerprint(spec)
    except RnnpipeError as e:
        model["error"] = _error_text(e)
    fingerprint = model["fingerprint"]

    inputs, conflicts = discover_inputs(spec)
    rows: list[dict[str, Any]] = []
    now = time.time()
    for item in inputs:
        key = str(item.path)
        entry = entries.get(key)
        row: dict[str, Any] = {
            "input": key,
            "output": str(item.output),
            "state": "pending",
            "reason": None,
            "rows": None,
            "finished": None,
            "error": None,
        }
        try:
            size, mtime_ns = _stat(item.path)
        except OSError:
            continue
        if entry is None:
            row["reason"] = "new"
        elif entry.get("status") == "failed":
            row.update(state="failed", error=entry.get("error"), reason="retried next run")
        elif (entry.get("size"), entry.get("mtime_ns")) != (size, mtime_ns):
            row["reason"] = "changed"
        elif fingerprint is not None and entry.get("model") != fingerprint:
            row["reason"] = "model changed"
        elif entry.get("output") != str(item.output) or not item.output.is_file():
            row["reason"] = "output missing"
        else:
            row.update(state="done", rows=entry.get("rows"), finished=entry.get("finished"))
        if row["state"] == "pending" and now - mtime_ns / 1e9 < spec.min_age_seconds:
            row["reason"] = f"{row['reason']}; too recent (min_age_seconds)"
        rows.append(row)
    for path, message in conflicts:
        rows.append(
            {"input": str(path), "output": None, "state": "failed", "reason": None,
             "rows": None, "finished": None, "error": message}
        )  # fmt: skip
    rows.sort(key=lambda r: r["input"])
    found = {r["input"] for r in rows}
    gone = sorted(k for k in entries if k not in found)

    start, end = _last_runs_from_log(spec.state_dir)
    running = spec.state_dir.is_dir() and _lock_held(spec.state_dir)
    last_run: dict[str, Any] | None = None
    if end is not None and (start is None or end["ts"] >= start["ts"]):
        last_run = {
            "start": end.get("started", start["ts"] if start else None),
            "end": end["ts"],
            "exit_code": end.get("exit_code"),
            "interrupted": False,
        }
    elif start is not None:
        # started and not (yet) ended: still running, or killed if the lock is free
        last_run = {"start": start["ts"], "end": None, "exit_code": None,
                    "interrupted": not running}  # fmt: skip
    elif manifest.get("last_run"):  # log.jsonl deleted or rotated away
        recorded = manifest["last_run"]
        last_run = {
            "start": recorded.get("start"),
            "end": recorded.get("end"),
            "exit_code": recorded.get("exit_code"),
            "interrupted": False,
        }
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "pending", "failed")}
    counts["gone"] = len(gone)
    return {
        "job": spec.name,
        "spec": str(spec.source) if spec.source else None,
        "output": str(spec.output),
        "state_dir": str(spec.state_dir),
        "running": running,
        "model": model,
        "last_run": last_run,
        "counts": counts,
        "rows_done": sum(r["rows"] or 0 for r in rows if r["state"] == "done"),
        "inputs": rows,
        "gone": gone,
    }


def format_status(status: Mapping[str, Any]) -> str:
    """A human-readable table of ``job_status``'s result (one line per input).

    Example: ``print(format_status(job_status(spec)))``.
    """
    c = status["counts"]
    lines = [
        f"job {status['job']}: {c['done']} done, {c['pending']} pending, {c['failed']} failed"
        + (f", {c['gone']} recorded inputs gone" if c["gone"] else "")
        + f"; {status['rows_done']} rows scored"
        + ("; RUNNING now" if status["running"] else ""),
    ]
    model = status["model"]
    if model["error"]:
        lines.append(f"model: {model['error']}")
    else:
        lines.append(f"model: {model['path']} (fingerprint {model['fingerprint'][:12]})")
    last = status["last_run"]
    if last is None:
        lines.append("last run: never")
    elif last["interrupted"]:
        lines.append(f"last run: started {last['start']}, never ended (killed)")
    elif last["end"] is None:
        lines.append(f"last run: started {last['start']}, still running")
    else:
        lines.append(f"last run: {last['start']} -> {last['end']}, exit code {last['exit_code']}")
    lines.append(f"output: {status['output']}")
    if status["inputs"]:
        header = ("STATE", "ROWS", "FINISHED / WHY", "INPUT")
        table = [
            (
                r["state"],
                "" if r["rows"] is None else str(r["rows"]),
                r["finished"] or r["reason"] or "",
                r["input"] + (f"\n    error: {r['error']}" if r["error"] else ""),
            )
            for r in status["inputs"]
        ]
        widths = [max(len(header[i]), *(len(t[i]) for t in table)) for i in range(3)]
        lines.append("")
        for t in (header, *table):
            lines.append("  ".join(t[i].ljust(widths[i]) for i in range(3)) + "  " + t[3])
    else:
        lines.append("no inputs match the spec yet")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- validate


def validate_spec(spec: JobSpec) -> dict[str, Any]:
    """Check that the job can run: the model loads and the inputs resolve (zero is fine).

    Returns ``{"job", "model", "fingerprint", "inputs", "outputs_conflicting"}``.
    Raises ModelFormatError when the model does not load, ConfigError when the output path
    is a file, two inputs map to the same output, or the engine is not available.

    Example: ``validate_spec(load_spec("jobs/example.toml"))["inputs"]  # 3``.
    """
    if spec.output.exists() and not spec.output.is_dir():
        raise ConfigError(f"{spec.source or spec.name}: output {spec.output} is not a folder")
    fingerprint = _load_model(spec).fingerprint()
    _scorer(spec)
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


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.jobs run|status|validate JOB.toml``: the jobs without the CLI.

    Returns the exit code (see the module docstring).
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.jobs", description="Run, inspect or check an rnnpipe job."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="score the inputs not done yet")
    p_run.add_argument("spec")
    p_run.add_argument("--quiet", action="store_true", help="log to log.jsonl only")
    p_status = sub.add_parser("status", help="done, pending and failed inputs, last run")
    p_status.add_argument("spec")
    p_status.add_argument("--json", action="store_true", help="print JSON")
    p_val = sub.add_parser("validate", help="check the spec, the model and the inputs")
    p_val.add_argument("spec")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.command == "run":
            return run_job(spec, echo=not args.quiet).exit_code
        if args.command == "status":
            status = job_status(spec)
            print(json.dumps(status, indent=2) if args.json else format_status(status))
            return EXIT_OK
        info = validate_spec(spec)
        print(
            f"ok: job {info['job']!r}: model {info['model']} "
            f"(fingerprint {info['fingerprint'][:12]}), {info['inputs']} input(s) found"
        )
        return EXIT_OK
    except RnnpipeError as e:
        print(f"error: {_error_text(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
