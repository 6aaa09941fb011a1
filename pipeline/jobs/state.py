"""A job's state on disk, in ``<state_dir>``: the manifest, the lock, the JSON-lines log.

* ``manifest.json`` records, per input, what was scored (``read_manifest``,
  ``write_manifest``: replaced atomically, temp + fsync + rename).
* ``lock`` is held with ``flock`` for a whole run (``job_lock``); the kernel drops it when the
  process dies, however it dies. ``lock_held`` probes it without waiting.
* ``log.jsonl`` receives every event as one JSON object per line (``JobLog``), and
  ``last_runs`` finds the last start and end in its tail.

Temporary files a killed writer leaves (``.*.tmp``) are found and deleted by
``remove_stray_temps``, under the lock.

Example::

    with job_lock(spec.state_dir) as acquired:
        manifest = read_manifest(spec.state_dir)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pipeline import io
from pipeline.errors import RnnpipeError, RunError

__all__ = [
    "LOCK_FILE",
    "LOG_FILE",
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "JobLog",
    "error_text",
    "file_stat",
    "job_lock",
    "last_runs",
    "lock_held",
    "now_iso",
    "read_manifest",
    "remove_stray_temps",
    "sha256",
    "write_manifest",
]

MANIFEST_VERSION = 1
MANIFEST_FILE, LOCK_FILE, LOG_FILE = "manifest.json", "lock", "log.jsonl"
_HASH_CHUNK = 1 << 20
_STATUS_LOG_TAIL = 1 << 20  # status reads only the end of log.jsonl


def now_iso() -> str:
    """The time now, UTC, ISO 8601 to the millisecond: ``2024-06-11T09:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_manifest(state_dir: Path) -> dict[str, Any]:
    """The job's manifest (an empty one when there is none yet).

    Raises RunError for a manifest that cannot be read or is not an rnnpipe manifest of this
    version: starting over silently would score (and deliver) every input again.
    """
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


def write_manifest(state_dir: Path, manifest: dict[str, Any]) -> int:
    """Replace the manifest atomically with ``manifest`` (stamped ``updated``); returns its
    size in bytes."""
    manifest["updated"] = now_iso()
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    io.atomic_write_text(state_dir / MANIFEST_FILE, text)  # temp + fsync + rename + dir fsync
    return len(text)


class JobLog:
    """JSON lines to a stream (stderr by default) and appended to ``<state_dir>/log.jsonl``."""

    def __init__(self, job: str, state_dir: Path, stream: TextIO | None):
        self.job = job
        self.stream = stream
        # O_APPEND: a whole line lands in one write, even while another process appends
        self.file = open(state_dir / LOG_FILE, "a", encoding="utf-8")

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        record = {"ts": now_iso(), "level": level, "event": event, "job": self.job, **fields}
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with contextlib.suppress(OSError, ValueError):
            self.file.write(line)
            self.file.flush()
        if self.stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(line)
                self.stream.flush()

    def close(self) -> None:
        """Close the log file."""
        self.file.close()


@contextlib.contextmanager
def job_lock(state_dir: Path) -> Iterator[bool]:
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
            os.pwrite(fd, f"pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        yield acquired
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lock_held(state_dir: Path) -> bool:
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


def remove_stray_temps(*roots: Path) -> list[str]:
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


def sha256(path: Path) -> str:
    """The sha256 hex digest of the file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def last_runs(state_dir: Path) -> tuple[dict | None, dict | None]:
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


def file_stat(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of ``path``: what the manifest compares first."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def error_text(e: BaseException) -> str:
    """One line for the log and the manifest: an rnnpipe error's message, else the
    exception's type and first line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, RnnpipeError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
