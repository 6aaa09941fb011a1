"""One run of a job: take the lock, score every input not done yet, record each, report.

``run_job`` holds the job's lock for the whole run, logs every event, and turns what
happened into the exit code a scheduler acts on (``EXIT_*``). With the lock held, a run
removes what a killed run left, reads the manifest, loads the model, and then takes each
input in turn (``_LockedRun.take``): too recent, already done, unchanged content, or scored
(with retries) and recorded only after its output is in place.

Example::

    report = run_job(load_spec("jobs/example.toml"))
    sys.exit(report.exit_code)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pipeline import runtime
from pipeline.errors import ConfigError, RnnpipeError
from pipeline.jobs import state
from pipeline.jobs.spec import JobInput, JobSpec, discover_inputs
from pipeline.jobs.state import JobLog, error_text, file_stat, now_iso

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "RunReport",
    "load_model",
    "model_fingerprint",
    "run_job",
    "scorer",
    "step_hook",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_TERMINATED = 0, 1, 2, 3, 143
# A big manifest is rewritten at most this often (seconds): rewriting it after every one of
# thousands of small inputs would cost O(n^2) bytes. An input finished but not yet recorded
# when the run dies is simply scored again next run, overwriting the same output.
_FLUSH_INTERVAL = 1.0
_SMALL_MANIFEST = 256 << 10  # below this many bytes the manifest is rewritten after every input

# Called before each attempt to score an input and at each scoring progress event (file
# start, every batch, file done); None here. The tests set it (a short sleep) so that a run
# lasts long enough to be killed half-way through a file.
step_hook: Callable[[], None] | None = None


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
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------- the model


def load_model(spec: JobSpec):
    """The job's model on its device, bound now: a missing GPU fails the run, not each file.
    Raises ModelFormatError, or DeviceError."""
    return runtime.load_model(spec.model, spec.device)


def model_fingerprint(spec: JobSpec) -> str:
    """The model's fingerprint, whatever the device (no backend is bound)."""
    from pipeline.model import Model

    return Model.load(spec.model).fingerprint()


def scorer(spec: JobSpec):
    """The function that scores one file: ``(path, model, out_path, options, progress)``.

    ``score_file`` for the local engine; for ``ray``, one input file scored on Ray into that
    output file. Raises ConfigError when the engine is not available.
    """
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


def _score_options(spec: JobSpec, backend: str):
    from pipeline.score import ScoreOptions

    return ScoreOptions(
        text_col=spec.text_col, keep=spec.keep, batch_rows=spec.batch_rows, backend=backend
    )


# ----------------------------------------------------------------------------------- the run


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
    report = RunReport(job=spec.name, exit_code=EXIT_OK, started=now_iso())
    try:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the job's state folder {spec.state_dir}: {e}") from None
    emit = JobLog(spec.name, spec.state_dir, stream)
    try:
        with state.job_lock(spec.state_dir) as acquired:
            if not acquired:
                report.exit_code = EXIT_LOCKED
                report.message = (
                    f"another run of job {spec.name!r} holds {spec.state_dir / state.LOCK_FILE}: "
                    "nothing done"
                )
                report.finished = now_iso()
                emit("error", level="warning", error=report.message, exit_code=EXIT_LOCKED)
                return report
            with _sigterm_stops():
                _run_reported(spec, emit, report, started_mono)
    finally:
        emit.close()
    return report


def _run_reported(spec: JobSpec, emit: JobLog, report: RunReport, started_mono: float) -> None:
    """The locked run, its run-level failure (if any) turned into the report's exit code and
    an ``error`` event, and its ``end`` event. A bug or Ctrl-C is logged, then raised."""
    try:
        _LockedRun(spec, emit, report).run()
    except _Terminated:
        report.exit_code = EXIT_TERMINATED
        report.message = "stopped by SIGTERM"
        emit("error", level="error", error=report.message)
    except RnnpipeError as e:
        report.exit_code = e.exit_code
        report.message = error_text(e)
        emit("error", level="error", error=report.message)
    except KeyboardInterrupt:
        report.exit_code = 130
        report.message = "interrupted"
        emit("error", level="error", error=report.message)
        raise
    except Exception as e:  # a bug: logged here, and its traceback kept
        report.exit_code = EXIT_FAILED
        report.message = error_text(e)
        emit("error", level="error", error=report.message)
        raise
    finally:
        report.finished = now_iso()
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


def _up_to_date(entry: Mapping[str, Any] | None, item: JobInput, fingerprint: str) -> bool:
    return (
        entry is not None
        and entry.get("status") == "done"
        and entry.get("model") == fingerprint
        and entry.get("output") == str(item.output)
        and item.output.is_file()
    )


def _progress(*args: Any, **kwargs: Any) -> None:
    if step_hook is not None:
        step_hook()


class _LockedRun:
    """The body of a run, with the lock held: one ``take`` per input. Run-level failures
    (the manifest, the model, the engine) raise RnnpipeError."""

    def __init__(self, spec: JobSpec, emit: JobLog, report: RunReport):
        self.spec, self.emit, self.report = spec, emit, report
        self.last_flush, self.last_size = time.monotonic(), 0

    def run(self) -> None:
        """Start, score every input not done, record the run."""
        spec, report = self.spec, self.report
        removed = state.remove_stray_temps(spec.output, spec.state_dir)
        report.temp_files_removed = len(removed)
        self.emit(
            "start",
            pid=os.getpid(),
            spec=str(spec.source) if spec.source else None,
            inputs=list(spec.inputs),
            output=str(spec.output),
            temp_files_removed=len(removed),
        )
        self.manifest = state.read_manifest(spec.state_dir)
        self.manifest["job"] = spec.name
        self.entries: dict[str, dict[str, Any]] = self.manifest["inputs"]
        runtime.set_threads(spec.threads)
        self.model = load_model(spec)
        self.fingerprint = self.model.fingerprint()
        self.score = scorer(spec)
        self.options = _score_options(spec, self.model.backend)
        inputs, conflicts = discover_inputs(spec)
        for path, message in conflicts:
            report.failed[str(path)] = message
            self.entries[str(path)] = {"status": "failed", "error": message, "failed_at": now_iso()}
            self.emit("file_failed", level="error", input=str(path), error=message)
        for item in inputs:
            self.take(item)
        report.exit_code = EXIT_FAILED if report.failed else EXIT_OK
        self.manifest["last_run"] = {
            "start": report.started,
            "end": now_iso(),
            "exit_code": report.exit_code,
            "scored": len(report.scored),
            "failed": len(report.failed),
            "rows": report.rows,
        }
        self.record(force=True)

    def record(self, force: bool = False) -> None:
        """Write the manifest: always when ``force`` or while it is small, else at most every
        ``_FLUSH_INTERVAL`` seconds."""
        now = time.monotonic()
        if force or self.last_size < _SMALL_MANIFEST or now - self.last_flush >= _FLUSH_INTERVAL:
            self.last_size = state.write_manifest(self.spec.state_dir, self.manifest)
            self.last_flush = now

    def take(self, item: JobInput) -> None:
        """One input: left for later, found done, or scored and recorded."""
        key, report = str(item.path), self.report
        entry = self.entries.get(key)
        try:
            size, mtime_ns = file_stat(item.path)
        except FileNotFoundError:
            return  # removed since it was listed
        age, min_age = time.time() - mtime_ns / 1e9, self.spec.min_age_seconds
        if age < min_age:
            report.pending.append(key)
            self.emit(
                "file_skipped",
                input=key,
                reason=f"modified {age:.1f} s ago, min_age_seconds is {min_age:g}",
            )
            return
        if (
            _up_to_date(entry, item, self.fingerprint)
            and entry.get("size") == size
            and entry.get("mtime_ns") == mtime_ns
        ):
            report.up_to_date += 1
            return
        try:
            digest = state.sha256(item.path)
            if file_stat(item.path) != (size, mtime_ns):
                report.pending.append(key)
                self.emit("file_skipped", input=key, reason="changed while being read: next run")
                return
        except OSError as e:
            self.fail(item, size, mtime_ns, e, 1)
            self.record()
            return
        if _up_to_date(entry, item, self.fingerprint) and entry.get("sha256") == digest:
            # touched or copied over with the same bytes: same output, only the stat changed
            entry.update(size=size, mtime_ns=mtime_ns)
            report.up_to_date += 1
            return
        self.score_with_retries(item, size, mtime_ns, digest)
        self.record()

    def score_with_retries(self, item: JobInput, size: int, mtime_ns: int, digest: str) -> None:
        """Score ``item`` (``spec.retries`` more attempts on failure) and record the outcome."""
        key = str(item.path)
        for attempt in range(1, self.spec.retries + 2):
            if step_hook is not None:
                step_hook()
            try:
                result = self.score(
                    item.path, self.model, item.output, self.options, progress=_progress
                )
            except Exception as e:  # one bad input must not stop the others
                if attempt <= self.spec.retries:
                    self.emit(
                        "file_failed", level="warning", input=key, error=error_text(e),
                        attempt=attempt, retrying=True,
                    )  # fmt: skip
                    time.sleep(min(2.0 ** (attempt - 1), 30.0))
                    continue
                self.fail(item, size, mtime_ns, e, attempt)
                return
            # the output is complete and renamed into place: only now is the input recorded
            self.done(item, size, mtime_ns, digest, result)
            return

    def done(self, item: JobInput, size: int, mtime_ns: int, digest: str, result: Any) -> None:
        """Record ``item`` as scored into its output, and log it."""
        key = str(item.path)
        self.entries[key] = {
            "status": "done",
            "size": size,
            "mtime_ns": mtime_ns,
            "sha256": digest,
            "output": str(item.output),
            "rows": int(result.rows),
            "null_texts": int(result.null_texts),
            "model": self.fingerprint,
            "finished": now_iso(),
            "seconds": round(float(result.seconds), 3),
        }
        self.report.scored.append(key)
        self.report.rows += int(result.rows)
        self.emit(
            "file_done",
            input=key,
            output=str(item.output),
            rows=int(result.rows),
            null_texts=int(result.null_texts),
            seconds=round(float(result.seconds), 3),
        )

    def fail(
        self, item: JobInput, size: int, mtime_ns: int, error: BaseException, attempts: int
    ) -> None:
        """Record ``item`` as failed (retried next run), and log it."""
        key = str(item.path)
        message = error_text(error)
        previous = self.entries.get(key) or {}
        self.entries[key] = {
            "status": "failed",
            "size": size,
            "mtime_ns": mtime_ns,
            "output": str(item.output),
            "model": self.fingerprint,
            "error": message,
            "attempts": attempts,
            "failures": int(previous.get("failures", 0)) + 1,
            "failed_at": now_iso(),
        }
        self.report.failed[key] = message
        self.emit("file_failed", level="error", input=key, error=message, attempts=attempts)
