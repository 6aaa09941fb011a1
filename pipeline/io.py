"""Parquet in and out: sources to bounded Arrow batches, and sinks that never show half a file.

Sources are one Parquet file, a directory (every ``*.parquet`` below it, recursively; names
starting with ``.`` or ``_`` are skipped, like Spark's ``_SUCCESS`` or our own temp files) or a
glob (``*``, ``?``, ``[``, ``**``). ``iter_batches`` streams record batches bounded in rows and
in bytes, reading only the columns asked for, one file and one row group at a time, so memory
stays flat whatever the input size. The text column always arrives as ``large_string``,
whatever the file stores (string, large_string, string_view, dictionary of strings).

Sinks write to a hidden temporary name in the destination's directory (``.NAME.XXXX.tmp``),
fsync, and ``os.replace`` into place only when complete; on an error the temporary is removed.
Readers therefore see either no file or a whole one.

Example::

    paths = resolve_inputs("data/*.parquet")
    text_col = detect_text_column(parquet_schema(paths[0]), None, paths[0])
    with ParquetSink("out.parquet", schema) as sink:
        for fb in iter_batches(paths, [text_col, "id"], text_col=text_col):
            sink.write(score(fb.batch))
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, InputError, OutputError

_GLOB_CHARS = ("*", "?", "[")
_READ_BUFFER = 4 << 20  # read column chunks in 4 MiB pieces instead of whole


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def resolve_inputs(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand files, directories and globs into a sorted, de-duplicated list of files.

    Parameters: ``sources`` one source or a sequence of them; each is a file (taken as is),
    a directory (its ``*.parquet`` files, recursively, skipping names starting with ``.``
    or ``_``) or a glob pattern (``**`` recurses).
    Returns absolute paths, sorted. Raises ``InputError`` naming the first source that is
    missing, matches nothing, or is a directory without Parquet files.

    >>> resolve_inputs("data/train.parquet")  # doctest: +SKIP
    [PosixPath('/home/me/data/train.parquet')]
    """
    if isinstance(sources, str | Path):
        sources = [sources]
    if not sources:
        raise InputError("no input given: pass a Parquet file, a directory or a glob")
    found: set[Path] = set()
    for source in sources:
        text = str(source)
        path = Path(text).expanduser()
        if path.is_file():
            found.add(Path(os.path.abspath(path)))
        elif path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                raise InputError(f"cannot read directory {text}: permission denied")
            files = _parquet_files_under(path)
            if not files:
                raise InputError(f"directory {text} contains no .parquet files")
            found.update(files)
        elif any(c in text for c in _GLOB_CHARS):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            files = []
            for m in matches:
                p = Path(m)
                files.extend(_parquet_files_under(p) if p.is_dir() else [p] if p.is_file() else [])
            if not files:
                raise InputError(f"no files match {text}")
            found.update(Path(os.path.abspath(p)) for p in files)
        else:
            raise InputError(_missing_input(path, text))
    return sorted(found)


def _missing_input(path: Path, text: str) -> str:
    """Why ``path`` is neither a file nor a directory, in words."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"input {text}: too many levels of symbolic links (a link loop)"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"cannot read input {text}: permission denied"
        if e.errno == errno.ENOTDIR:
            return f"input not found: {text} (a parent of it is a file)"
        if os.path.islink(path):
            return f"input {text} is a broken symbolic link (its target does not exist)"
        return f"input not found: {text}"
    return f"input {text} is neither a file nor a directory"


def _parquet_files_under(directory: Path) -> list[Path]:
    out = []
    for p in directory.rglob("*.parquet"):
        rel = p.relative_to(directory).parts
        if any(part.startswith((".", "_")) for part in rel) or not p.is_file():
            continue
        out.append(Path(os.path.abspath(p)))
    return sorted(out)


def _open(path: Path) -> pq.ParquetFile:
    try:
        # pre_buffer (on by default) would load every selected column chunk of the file at once
        return pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
    except FileNotFoundError:
        raise InputError(f"input not found: {path}") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
            raise InputError(f"cannot read {path}: permission denied") from None
        if isinstance(exc, OSError) and exc.errno in (errno.EISDIR, errno.EIO):
            raise InputError(f"cannot read {path}: {os.strerror(exc.errno).lower()}") from None
        raise InputError(f"{path} is not a Parquet file: {_reason(exc)}") from None


def parquet_schema(path: str | Path) -> pa.Schema:
    """The Arrow schema of one Parquet file (footer only). Raises ``InputError``."""
    return _open(Path(path)).schema_arrow


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def detect_text_column(schema: pa.Schema, text_col: str | None, path: str | Path) -> str:
    """The name of the text column of a file with ``schema``.

    Parameters: ``text_col`` the column asked for, or None to take ``text``, else ``review``;
    ``path`` names the file in messages. Accepts string, large_string, string_view and
    dictionary-encoded strings. Raises ``InputError`` when the column is missing (listing the
    columns there are) or is not a string column.

    >>> detect_text_column(pa.schema({"id": pa.int64(), "review": pa.string()}), None, "a")
    'review'
    """
    if text_col is None:
        for name in ("text", "review"):
            if name in schema.names:
                text_col = name
                break
        else:
            strings = [f.name for f in schema if _is_string(f.type)]
            raise InputError(
                f"{path} has no 'text' or 'review' column: pass --text-col "
                f"(string columns: {', '.join(strings) or 'none'})"
            )
    elif text_col not in schema.names:
        raise InputError(
            f"column {text_col!r} not in {path}: columns are {', '.join(schema.names)}"
        )
    t = schema.field(text_col).type
    if not _is_string(t):
        raise InputError(
            f"column {text_col!r} in {path} is {t}, expected a string column: pass --text-col"
        )
    return text_col


def _check_columns(schema: pa.Schema, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputError(
            f"column {missing[0]!r} not in {path}: columns are {', '.join(schema.names)}"
        )


def _normalise_text(batch: pa.RecordBatch, text_col: str | None) -> pa.RecordBatch:
    if text_col is None:
        return batch
    i = batch.schema.get_field_index(text_col)
    col = batch.column(i)
    if pa.types.is_large_string(col.type):
        return batch
    return batch.set_column(i, text_col, col.cast(pa.large_string()))


def _fixed_bytes(t: pa.DataType) -> int:
    """Bytes per value of a fixed-width type (0 for variable width, booleans, dictionaries)."""
    if pa.types.is_dictionary(t):
        return 0
    try:
        return t.bit_width // 8
    except ValueError:
        return 0


def _row_bytes(batch: pa.RecordBatch) -> np.ndarray:
    """Approximate bytes each row holds, summed over columns (exact for strings and numbers)."""
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for col in batch.columns:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_binary(t):
            off = np.frombuffer(col.buffers()[1], np.int32, batch.num_rows + 1, col.offset * 4)
            sizes += np.diff(off) + 4
        elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            off = np.frombuffer(col.buffers()[1], np.int64, batch.num_rows + 1, col.offset * 8)
            sizes += np.diff(off) + 8
        elif _fixed_bytes(t):
            sizes += _fixed_bytes(t)
        elif batch.num_rows:
            sizes += -(-col.nbytes // batch.num_rows)  # spread the rest evenly
    return sizes


def _split_by_bytes(batch: pa.RecordBatch, budget: int) -> Iterator[pa.RecordBatch]:
    """Slices of ``batch`` of at most ``budget`` bytes each (a single bigger row goes alone)."""
    if batch.num_rows <= 1 or batch.nbytes <= budget:
        yield batch
        return
    ends = np.cumsum(_row_bytes(batch))
    start, base = 0, 0
    while start < batch.num_rows:
        stop = int(np.searchsorted(ends, base + budget, side="right"))
        stop = max(stop, start + 1)
        yield batch.slice(start, stop - start)
        base = int(ends[stop - 1])
        start = stop


class FileBatch(NamedTuple):
    """One bounded batch: its file, the Arrow batch, and its first row's index in the file."""

    path: Path
    batch: pa.RecordBatch
    row_offset: int


def iter_batches(
    paths: Sequence[str | Path],
    columns: Sequence[str],
    batch_rows: int = 8192,
    batch_bytes: int = 64 << 20,
    text_col: str | None = None,
) -> Iterator[FileBatch]:
    """Stream ``columns`` of ``paths`` as record batches of at most ``batch_rows`` rows and
    about ``batch_bytes`` bytes (a single row bigger than that comes alone).

    Parameters: ``paths`` Parquet files (see ``resolve_inputs``); ``columns`` the only
    columns read, in this order; ``text_col`` a column of ``columns`` checked to be a string
    column and delivered as ``large_string``.
    Yields ``FileBatch(path, batch, row_offset)``, files in the order given.
    Raises ``InputError`` for a file that is not Parquet, lacks a column (the message lists
    the columns it has) or has a non-string text column. Each file is checked when reached.

    >>> for fb in iter_batches(["a.parquet"], ["review"], text_col="review"):  # doctest: +SKIP
    ...     print(fb.path, fb.row_offset, fb.batch.num_rows)
    """
    if batch_rows < 1 or batch_bytes < 1:
        raise ConfigError("batch_rows and batch_bytes must be positive")
    columns = list(columns)
    if text_col is not None and text_col not in columns:
        raise ConfigError(f"text column {text_col!r} must be one of the columns read")
    for p in paths:
        path = Path(p)
        with _checked(path, columns, text_col) as pf:
            row = 0
            try:
                stream = pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)
                for batch in stream:
                    batch = _normalise_text(batch, text_col)
                    for part in _split_by_bytes(batch, batch_bytes):
                        yield FileBatch(path, part, row)
                        row += part.num_rows
            except _READ_ERRORS as exc:
                raise InputError(f"{path} could not be read at row {row}: {_reason(exc)}") from None


_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowIOError, OSError)


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextlib.contextmanager
def _checked(path: Path, columns: list[str], text_col: str | None) -> Iterator[pq.ParquetFile]:
    """``path`` opened, with ``columns`` present and ``text_col`` a string column."""
    pf = _open(path)
    with contextlib.closing(pf):
        schema = pf.schema_arrow
        _check_columns(schema, columns, path)
        if text_col is not None:
            detect_text_column(schema, text_col, path)
        yield pf


def count_rows(paths: Sequence[str | Path]) -> int:
    """Total rows of ``paths`` from their Parquet footers (no data read). Raises ``InputError``."""
    total = 0
    for p in paths:
        pf = _open(Path(p))
        with contextlib.closing(pf):
            total += pf.metadata.num_rows
    return total


def read_columns(
    paths: Sequence[str | Path], columns: Sequence[str], text_col: str | None = None
) -> pa.Table:
    """All rows of ``columns`` of ``paths`` as one table (for training-sized data).

    Same checks and text normalisation as ``iter_batches``; files are concatenated in order.

    >>> read_columns(["train.parquet"], ["review", "label"], text_col="review")  # doctest: +SKIP
    """
    if not paths:
        raise InputError("no input given: pass a Parquet file, a directory or a glob")
    columns = list(columns)
    tables = []
    for p in paths:
        path = Path(p)
        with _checked(path, columns, text_col) as pf:
            try:
                table = pf.read(columns=columns).select(columns)
            except _READ_ERRORS as exc:
                raise InputError(f"{path} could not be read: {_reason(exc)}") from None
        if text_col is not None:
            i = table.schema.get_field_index(text_col)
            table = table.set_column(i, text_col, table.column(i).cast(pa.large_string()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


# ---------------------------------------------------------------------------------------------
# Output paths
# ---------------------------------------------------------------------------------------------


def real_entry(path: str | Path) -> Path:
    """The directory entry that writing ``path`` (a temporary file renamed over it) replaces:
    its parent with every symbolic link resolved, then its own name. A link at ``path``
    itself is replaced by the rename, not followed, so it stays in the name.

    Example: in ``/home/me``, where ``dlink`` links to ``d``, ``real_entry("dlink/a.parquet")``
    is ``Path("/home/me/d/a.parquet")``.
    """
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    return Path(os.path.realpath(p.parent)) / p.name


def would_overwrite(output: str | Path, source: str | Path) -> bool:
    """True when writing ``output`` would replace ``source`` or the file ``source`` names:
    the same real entry, the same real file, or (both existing) the same device and inode."""
    entry = real_entry(output)
    if entry in (real_entry(source), Path(os.path.realpath(source))):
        return True
    try:
        return os.path.samefile(output, source)
    except OSError:
        return False


def is_inside(path: str | Path, directory: str | Path) -> bool:
    """True when ``path`` lies in ``directory`` (or is it) once every link is resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory))


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_writable(path: str | Path) -> None:
    """Before any work: ``ConfigError`` when ``path`` could not be created at all, because a
    parent is a file, or the nearest existing parent is on a read-only file system or not
    writable by this process. (A full disk shows only when writing: ``OutputError`` then.)

    >>> check_writable("scores/a.parquet")  # doctest: +SKIP
    """
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    parent = p.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: {parent} is not a directory")
    ok = os.access(parent, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    if not ok:
        reason = "read-only file system" if _read_only(parent) else "permission denied"
        raise ConfigError(f"cannot write {path}: {reason} ({parent})")


_OUTPUT_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.EFBIG: "file too large",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The one-line ``OutputError`` for an ``OSError`` met while writing ``path``."""
    reason = _OUTPUT_REASONS.get(exc.errno or -1)
    if reason is None:
        reason = os.strerror(exc.errno) if exc.errno else _reason(exc)
    return OutputError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` in the block into ``output_error(path, ...)``.

    >>> with writing("model/"):  # doctest: +SKIP
    ...     save()
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise output_error(path, exc) from None


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public_mode(path: Path, directory: bool = False) -> None:
    """Give a finished temporary the mode a plain ``open`` (or ``mkdir``) would have given
    it: temporaries are created private (0600/0700), outputs honour the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# ---------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------
# Every temporary is created as ``.NAME.XXXX.tmp`` beside its final NAME and held under an
# exclusive ``flock`` by its writer until it is renamed or removed. The kernel drops the lock
# when the writer dies, however it dies, so ``remove_stale_temps`` can tell a killed run's
# leftovers (lock free) from a live writer's temporary (lock held) and delete only those.


def _locked_temp(final: Path, directory: bool = False) -> tuple[Path, int]:
    """A new temporary beside ``final`` and an open descriptor holding its lock."""
    while True:
        if directory:
            name = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            fd = os.open(name, os.O_RDONLY)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a cleaner is deleting it
        if os.fstat(fd).st_nlink > 0:
            return Path(name), fd
        os.close(fd)  # a cleaner took it for a dead writer's between mkstemp and flock


def remove_stale_temps(finals: Iterable[str | Path]) -> list[Path]:
    """Delete the temporaries that killed writers left beside each of ``finals``
    (``.NAME.*.tmp`` whose lock nobody holds); a live writer's temporary stays.

    Returns the paths removed. One directory listing per distinct parent.

    >>> remove_stale_temps(["scores/a.parquet", "scores/b.parquet"])  # doctest: +SKIP
    [PosixPath('scores/.a.parquet.k2j4_x.tmp')]
    """
    by_parent: dict[Path, set[str]] = {}
    for final in finals:
        f = Path(final)
        by_parent.setdefault(f.parent, set()).add(f.name)
    removed: list[Path] = []
    for parent, names in by_parent.items():
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp")) or entry.is_symlink():
                continue
            if name[1:].rsplit(".", 2)[0] not in names:
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its writer is alive
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed.append(Path(entry.path))
            finally:
                os.close(fd)
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable; not every platform lets a directory be opened
    with contextlib.suppress(OSError):
        _fsync_path(directory)


class ParquetSink:
    """A Parquet file written batch by batch that appears at ``path`` only when complete.

    Parameters: ``path`` the final file (its directory is created); ``schema`` of every
    batch; ``compression`` a Parquet codec.

    Raises ``OutputError`` (naming ``path`` and the reason) when the file cannot be written;
    the temporary is removed and an existing file at ``path`` stays as it was.

    >>> with ParquetSink("scores.parquet", schema) as sink:  # doctest: +SKIP
    ...     sink.write(batch)
    """

    def __init__(self, path: str | Path, schema: pa.Schema, compression: str = "zstd"):
        self.path = Path(path)
        self.schema = schema
        self.compression = compression
        self.rows = 0
        self._tmp: Path | None = None
        self._lock = -1
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetSink:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp, self._lock = _locked_temp(self.path)
            try:
                self._writer = pq.ParquetWriter(
                    self._tmp, self.schema, compression=self.compression
                )
            except BaseException:
                self._discard()
                raise
        return self

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        """Append a batch or table with the sink's schema."""
        if self._writer is None:
            raise RuntimeError("ParquetSink.write outside its 'with' block")
        with writing(self.path):
            if isinstance(data, pa.RecordBatch):
                self._writer.write_batch(data)
            else:
                self._writer.write_table(data)
        self.rows += data.num_rows

    def _discard(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)  # a no-op after a successful replace
        if self._lock >= 0:
            os.close(self._lock)
        self._tmp, self._lock = None, -1

    def __exit__(self, exc_type, exc, tb) -> None:
        writer, tmp = self._writer, self._tmp
        self._writer = None
        try:
            if exc_type is not None:
                # the error already on its way is the one to report
                with contextlib.suppress(Exception):
                    writer.close()
                return
            with writing(self.path):
                writer.close()
                _fsync_path(tmp)
                _public_mode(tmp)
                os.replace(tmp, self.path)
                _fsync_dir(self.path.parent)
        finally:
            self._discard()


def write_table_atomic(table: pa.Table, path: str | Path, compression: str = "zstd") -> None:
    """Write ``table`` to ``path`` as Parquet, atomically (see ``ParquetSink``)."""
    with ParquetSink(path, table.schema, compression) as sink:
        sink.write(table)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so readers see the old or the new file, never half.

    Raises ``OutputError`` when it cannot be written (the old file then stays).

    >>> atomic_write_text("config.json", "{}")  # doctest: +SKIP
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, lock = _locked_temp(path)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            _public_mode(tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(lock)


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final_dir``; rename it into place on
    success, remove it on an exception (``final_dir`` is then untouched).

    An existing ``final_dir`` is moved aside, the new one renamed in, then the old one deleted:
    a crash between the two renames leaves the old copy as ``.NAME.XXXX.old`` beside it.
    Callers decide whether an existing ``final_dir`` may be replaced (``Model.save`` replaces
    only a model directory). Temporaries of killed earlier attempts are removed first.
    Raises ``ConfigError`` when ``final_dir`` exists and is not a directory, ``OutputError``
    when the directory cannot be written (nothing is left behind then).

    >>> with atomic_dir("model") as d:  # doctest: +SKIP
    ...     (d / "config.json").write_text("{}")
    """
    final = Path(os.path.abspath(os.path.expanduser(str(final_dir))))
    if final.exists() and not final.is_dir():
        raise ConfigError(f"{final} exists and is not a directory")
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps([final])
        tmp, lock = _locked_temp(final, directory=True)
    try:
        with writing(final):
            yield tmp
        with writing(final):
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_path(f)
            _fsync_dir(tmp)
            _public_mode(tmp, directory=True)
            if final.exists():
                old = Path(
                    tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent)
                )
                os.replace(final, old)  # renames over the empty placeholder directory
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock)
