"""Scoring on a Ray cluster: ``read_parquet`` → ``map_batches`` with a warm model per actor →
one scored Parquet file per input, the same files the local engine writes.

An optional extra (``pip install 'rnnpipe[ray]'``); ``ray`` is imported only inside
``score_on_ray``, so importing this module never needs it.

How a run goes:

1. On the driver, exactly as ``pipeline.score.score`` does (both use ``pipeline.outputs``):
   inputs resolved, output paths derived with the same naming rule, every file's columns
   checked from its footer, and ``resume`` skips outputs already complete. Nothing is
   written before all of this passes.
2. The driver scores one row with the model, which compiles (or loads) every Numba kernel
   into the on-disk cache next to the sources. Actors on this node then load compiled code
   from that cache instead of all compiling the same functions into one cache at once.
3. One Ray dataset per run of consecutive files that read the same columns (normally one for
   the whole run): ``read_parquet(files)`` of the text and kept columns → ``map_batches``
   with ``_Scorer``,
   a callable class: each actor loads the model from ``model_dir`` once, checks that its
   fingerprint is the driver's, limits Numba and BLAS to its ``threads_per_worker``
   (= its ``num_cpus``, so Ray's scheduling and Numba's threads never oversubscribe a node)
   and scores one row to warm up; then it turns each Arrow batch into the output columns.
4. The dataset runs with ``preserve_order``; the driver iterates its output blocks in order
   and cuts the stream by each file's row count (from the footers) into that file's output,
   written through ``io.ParquetSink`` (temporary name, renamed when complete). Row counts
   are checked: a stream that ends early or runs long is a ``RunError``, and a failed file
   leaves no output.

Why the driver writes rather than ``Dataset.write_parquet``: Ray names its files by block and
task, not by input, splits or merges them by size, and does not promise the row order within
a file; cutting one ordered stream by footer row counts gives the local engine's names, rows,
order and metadata exactly, with atomic outputs, at the cost of sending the scored columns
(ids and a few floats, small beside the text) back to the driver. The text is read and
tokenized only on the workers, which is where the time goes.

Where the cluster is not this machine: ``model_dir`` and the input files must be readable at
the same paths on every node (a shared filesystem), and rnnpipe of the same version must be
installed there. Each node keeps its own Numba cache; on nodes other than the driver's, the
first actors compile concurrently. ``RNNPIPE_RAY_NUMBA_CACHE_DIR`` (set on the driver or on
the workers) or ``numba_cache_dir`` gives each actor its own cache folder below that
directory (a slot held with ``flock`` while the actor lives, reused by later actors), so no
two live actors ever share a cache. This module imports nothing that loads Numba until an
actor has chosen its folder, as Numba fixes a function's cache folder when it is defined.

Example::

    model = Model.load("model/")
    summary = score_on_ray(["reviews/"], model, "model/", "scores/", ScoreOptions(),
                           address="ray://head:10001", workers=8)
    print(summary.rows, summary.rows_per_s)
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import errors, io, outputs, runtime
from pipeline.errors import ConfigError, RnnpipeError, RunError

if TYPE_CHECKING:  # the modules that load Numba are imported where used (see the docstring)
    from pipeline.model import Model
    from pipeline.outputs import Progress
    from pipeline.score import ScoreOptions, ScoreSummary

__all__ = ["MISSING_RAY", "NUMBA_CACHE_ENV", "RAY_VERBOSE_ENV", "score_on_ray"]

MISSING_RAY = "the ray engine needs the ray extra: pip install 'rnnpipe[ray]'"
NUMBA_CACHE_ENV = runtime.RAY_NUMBA_CACHE_ENV  # read by runtime.ray_numba_cache_dir
RAY_VERBOSE_ENV = runtime.RAY_VERBOSE_ENV  # 1: leave Ray's INFO logging on
# the per-row "null or empty text" flag travels beside the output columns and is dropped
# by the driver; a kept column of that name is refused
_NULL_FLAG = "__rnnpipe_null_text__"
_WARM_TEXT = ["a warm up review"]


def score_on_ray(
    sources: str | Path | Sequence[str | Path],
    model: Model,
    model_dir: str | Path,
    out: str | Path,
    options: ScoreOptions | None = None,
    address: str | None = None,
    workers: int = 0,
    *,
    threads_per_worker: int = 1,
    numba_cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ScoreSummary:
    """Score every Parquet file of ``sources`` on Ray, into one output file each.

    Parameters: ``sources``, ``out`` and ``options`` as for ``pipeline.score.score`` (same
    output names, columns, types, row order and metadata; ``resume`` skips complete outputs);
    ``model`` the loaded model (used on the driver to plan and warm up); ``model_dir`` its
    directory, which every actor loads (it must hold the same model: fingerprints are
    compared); ``address`` the cluster to join (``ray://host:10001``, ``auto``, or None for
    ``$RAY_ADDRESS`` or else a new local cluster), used only when Ray is not initialised yet;
    ``workers`` actors (0: the cluster's CPUs divided by ``threads_per_worker``);
    ``threads_per_worker`` Numba threads per actor, which is also its ``num_cpus``;
    ``numba_cache_dir`` a folder under which each actor gets its own Numba cache (default
    ``$RNNPIPE_RAY_NUMBA_CACHE_DIR``; unset: the shared cache next to the sources);
    ``progress`` called with the local engine's ``ProgressEvent``s, ``batch`` events as the
    scored rows reach the driver (they are written in row groups, and the output is in place
    by ``file_done``).

    Returns a ``ScoreSummary`` (``seconds`` counts from the call: a cluster started here and
    the actors' start are included). Raises ConfigError when ray is not installed, for bad
    options, a CUDA backend, a cluster that cannot be reached, or a ``model_dir`` that holds
    another model; ModelFormatError for a broken ``model_dir``; InputError and ConfigError as
    ``score`` does for inputs and outputs; RunError for broken probabilities or a row count
    that does not match a file's footer. A failed file leaves no output.

    Example::

        summary = score_on_ray(["in/"], Model.load("m/"), "m/", "out/", ScoreOptions())
    """
    started = time.perf_counter()
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(MISSING_RAY) from None
    from pipeline.model import WEIGHTS_FILE
    from pipeline.score import ScoreOptions, ScoreSummary

    options = options or ScoreOptions()
    model_dir = _check_arguments(model, model_dir, options, workers, threads_per_worker)
    weights = model_dir / WEIGHTS_FILE
    fingerprint = model.fingerprint()
    cache_dir = numba_cache_dir if numba_cache_dir is not None else runtime.ray_numba_cache_dir()

    # 1. plan on the driver, exactly as the local engine does
    model = outputs.bind_backend(model, options.backend)
    plans = _plan(sources, model, out, options)
    summary = ScoreSummary()
    todo = _to_score(plans, fingerprint, options, weights, summary, progress)

    if todo:
        # 2. compile or load every kernel once here, before any actor starts
        outputs.predict(model, pa.array(_WARM_TEXT, pa.large_string()), "warm-up", 0)
        _avoid_fsspec_http_race()
        with _quiet_ray_logs():
            if not ray.is_initialized():
                _init_ray(ray, address)
            n_workers = workers or _default_workers(ray, threads_per_worker)
            # 3. and 4. one dataset per run of files that read the same columns
            for group in _groups(todo):
                results = _run_group(
                    ray, group, model_dir, fingerprint, options, n_workers, threads_per_worker,
                    cache_dir, progress,
                )  # fmt: skip
                for rows, nulls in results:
                    summary.files += 1
                    summary.rows += rows
                    summary.null_texts += nulls
    summary.outputs = [(plan.input, plan.output, plan.rows) for plan in plans]
    summary.seconds = time.perf_counter() - started
    summary.rows_per_s = summary.rows / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _check_arguments(
    model: Model,
    model_dir: str | Path | None,
    options: ScoreOptions,
    workers: Any,
    threads_per_worker: Any,
) -> Path:
    """``model_dir`` made absolute, after checking the engine's arguments: counts, a CPU
    backend, and a ``model_dir`` holding ``model`` itself (the actors load it from there)."""
    from pipeline.model import Model as _Model

    _check_count("workers", workers, 0)
    _check_count("threads_per_worker", threads_per_worker, 1)
    if options.backend == "cuda":
        raise ConfigError(
            "the ray engine scores on CPU actors only: use --device cpu or --engine local"
        )
    if model_dir is None:
        raise ConfigError("the ray engine needs the model directory (model_dir) to load on workers")
    model_dir = Path(os.path.abspath(Path(model_dir).expanduser()))
    if _Model.load(model_dir).fingerprint() != model.fingerprint():
        raise ConfigError(
            f"model directory {model_dir} holds another model than the one given: pass the "
            "directory the model was loaded from"
        )
    return model_dir


def _plan(
    sources: str | Path | Sequence[str | Path], model: Model, out: str | Path, options: ScoreOptions
) -> list[outputs.FilePlan]:
    """Every input's plan, checked before anything is written; what a killed run left
    beside the outputs is removed."""
    pairs = outputs.output_paths(sources, Path(out))
    plans = [
        outputs.plan_file(src, dst, model, options.text_col, options.keep) for src, dst in pairs
    ]
    for plan in plans:
        if _NULL_FLAG in plan.keep:
            raise ConfigError(f"keep column {_NULL_FLAG!r} of {plan.input} is a reserved name")
    io.remove_stale_temps(plan.output for plan in plans)  # what a killed run left
    return plans


def _to_score(
    plans: list[outputs.FilePlan],
    fingerprint: str,
    options: ScoreOptions,
    weights: Path,
    summary: ScoreSummary,
    progress: Progress | None,
) -> list[tuple[outputs.FilePlan, pa.Schema]]:
    """Each plan to score with its output schema; with ``resume``, complete outputs are
    counted in ``summary`` as skipped instead."""
    todo = []
    for plan in plans:
        schema = outputs.with_metadata(plan.schema, fingerprint, plan.text_col, options.threshold)
        if options.resume and outputs.is_complete(plan, schema, weights):
            summary.skipped_files += 1
            outputs.notify(progress, "file_skipped", plan.input, plan.rows)
        else:
            todo.append((plan, schema))
    return todo


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _avoid_fsspec_http_race() -> None:
    """Make ``import fsspec.implementations.http`` fail cleanly where aiohttp is missing.

    ``ray[data]`` does not install aiohttp. Ray resolves input paths on several threads, each
    importing that module to ask whether the filesystem is HTTP; one thread can then meet
    another's half-failed import and get an ImportError that Ray does not catch (it catches
    ModuleNotFoundError only), failing ``read_parquet`` at random. ``None`` in sys.modules
    makes every such import raise ModuleNotFoundError at once. Without aiohttp the module
    cannot load anyway, so nothing that worked before stops working.
    """
    name = "fsspec.implementations.http"
    if name not in sys.modules and importlib.util.find_spec("aiohttp") is None:
        sys.modules[name] = None  # type: ignore[assignment]


@contextlib.contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    """Hide Ray Data's INFO lines (execution plans, progress lines, encoding estimates) on
    the driver for the run: the summary and progress bar say what a user needs. Warnings and
    errors still show, except the notice that Ray's own progress bars are off (rnnpipe turns
    them off: it shows its own). ``RNNPIPE_RAY_VERBOSE=1`` keeps Ray's logging and bars."""
    if runtime.ray_verbose():
        yield
        return
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    saved = {}
    for name, level in levels.items():
        log = logging.getLogger(name)
        saved[name] = log.level
        if log.getEffectiveLevel() < level:
            log.setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _init_ray(ray: Any, address: str | None) -> None:
    kwargs: dict[str, Any] = {"address": address}
    if not runtime.ray_verbose():
        kwargs["logging_level"] = logging.WARNING  # no "Started a local Ray instance" etc.
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # a cluster started here: no dashboard (a few hundred MB for nothing on a batch run)
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        raise ConfigError(f"cannot start or join Ray at {where}: {_first_line(e)}") from None


def _default_workers(ray: Any, threads_per_worker: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // threads_per_worker)


def _groups(todo: list[tuple[Any, pa.Schema]]) -> Iterator[list[tuple[Any, pa.Schema]]]:
    """Runs of consecutive files that read the same columns (one Ray read each)."""
    group: list[tuple[Any, pa.Schema]] = []
    for item in todo:
        if group and item[0].columns != group[0][0].columns:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _run_group(
    ray: Any,
    group: list[tuple[Any, pa.Schema]],
    model_dir: Path,
    fingerprint: str,
    options: ScoreOptions,
    workers: int,
    threads: int,
    cache_dir: str | Path | None,
    progress: Progress | None = None,
) -> list[tuple[int, int]]:
    """Score the files of ``group`` with one dataset; (rows, null texts) per file."""
    first = group[0][0]
    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.execution_options.preserve_order,
        getattr(ctx, "use_datasource_v2", None),
        ctx.enable_progress_bars,
    )
    # a dataset seals a copy of the context when it is created, so all are undone below
    ctx.execution_options.preserve_order = True
    if not runtime.ray_verbose():
        # rnnpipe's own bar counts rows as they are written; Ray's would draw over it
        ctx.enable_progress_bars = False
    if saved[1] is not None:
        # V2 lists files in a task that needs a whole CPU, which the actors may all hold:
        # the run then waits forever. V1 plans its read tasks on the driver.
        ctx.use_datasource_v2 = False
    try:
        with _ray_errors():
            ds = ray.data.read_parquet(
                [str(plan.input) for plan, _ in group],
                file_extensions=None,  # the inputs are already resolved: take them as named
                # reads are light beside scoring; at 0 CPUs they still run when the actors
                # hold every CPU of the cluster, instead of waiting for one forever
                num_cpus=0,
                # but then nothing bounds how many run at once: Ray started a worker
                # process per file (17 processes for 10 files on 2 CPUs), whose start-up
                # delayed the actors' by 8 s and slowed them while it lasted
                concurrency=_read_tasks(workers),
            ).select_columns(list(first.columns))
            ds = ds.map_batches(
                _Scorer,
                fn_constructor_kwargs={
                    "model_dir": str(model_dir),
                    "backend": options.backend,
                    "fingerprint": fingerprint,
                    "text_col": first.text_col,
                    "keep": list(first.keep),
                    "threshold": options.threshold,
                    "threads": threads,
                    "cache_dir": None if cache_dir is None else str(cache_dir),
                    "chunk_rows": options.batch_rows,
                },
                batch_size=_batch_rows(options.batch_rows, sum(p.rows for p, _ in group), workers),
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=threads,
            )
            blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
            return _write_outputs(_tables(blocks), group, progress)
    finally:
        ctx.execution_options.preserve_order = saved[0]
        if saved[1] is not None:
            ctx.use_datasource_v2 = saved[1]
        ctx.enable_progress_bars = saved[2]


# One read task decodes Parquet text far faster than an actor scores it (about 2,000 reviews
# per second and core): one reader at a time per this many actors keeps them all fed.
ACTORS_PER_READER = 8


def _read_tasks(workers: int) -> int:
    """How many read tasks may run at once for ``workers`` scoring actors."""
    return max(1, -(-workers // ACTORS_PER_READER))


# Each Ray batch pays for scheduling and object-store transfers: at 8,192 rows the engine
# reached 0.70 of the local engine's rate on 200,000 reviews, at 32,768 rows 0.75-0.92
# (tests/benchmarks/bench_ray.py, measured before reads were bounded; these VMs are noisy).
# An actor holds about two batches at once (Ray sends the next while one is scored).
RAY_MIN_BATCH_ROWS = 32768


def _batch_rows(batch_rows: int, rows: int, workers: int) -> int:
    """The Ray batch size: ``max(batch_rows, RAY_MIN_BATCH_ROWS)``, made smaller only where
    the input would not give every actor a batch (idle actors cost time). It depends on the
    input's size only below that, so an actor's memory stays flat as inputs grow beyond
    ``workers * RAY_MIN_BATCH_ROWS`` rows. Scores do not depend on the batching."""
    return max(1, min(max(batch_rows, RAY_MIN_BATCH_ROWS), -(-rows // workers)))


def _tables(blocks: Iterable[Any]) -> Iterator[pa.Table]:
    for block in blocks:
        if isinstance(block, pa.RecordBatch):
            block = pa.Table.from_batches([block])
        if block.num_rows:
            yield block


class _RowStream:
    """An ordered stream of tables, taken ``n`` rows at a time (slices, no copies)."""

    def __init__(self, tables: Iterator[pa.Table]):
        self._tables = tables
        self._head: pa.Table | None = None

    def _next(self) -> pa.Table | None:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        return next(self._tables, None)

    def take(self, n: int, where: Path) -> Iterator[pa.Table]:
        """The next ``n`` rows; RunError naming ``where`` if the stream ends first."""
        left = n
        while left > 0:
            table = self._next()
            if table is None:
                raise RunError(f"{where}: Ray returned {n - left} rows but its footer says {n}")
            if table.num_rows > left:
                self._head = table.slice(left)
                table = table.slice(0, left)
            left -= table.num_rows
            yield table

    def rest(self) -> int:
        """Rows left over (draining the stream)."""
        return sum(t.num_rows for t in iter(self._next, None))


def _write_outputs(
    tables: Iterator[pa.Table],
    group: list[tuple[Any, pa.Schema]],
    progress: Progress | None = None,
) -> list[tuple[int, int]]:
    stream = _RowStream(tables)
    done = []
    last = len(group) - 1
    for i, (plan, schema) in enumerate(group):
        nulls = 0
        pending: list[pa.Table] = []
        pending_rows = pending_bytes = 0
        outputs.notify(progress, "file_start", plan.input, 0)
        with io.ParquetSink(plan.output, schema) as sink:
            for piece in stream.take(plan.rows, plan.input):
                nulls += int(pc.sum(piece.column(_NULL_FLAG)).as_py() or 0)
                # Ray unifies types across files; each output keeps its own input's types
                table = _cast(piece.select(schema.names), schema, plan.input)
                pending.append(table)
                pending_rows += table.num_rows
                pending_bytes += table.nbytes
                outputs.notify(progress, "batch", plan.input, table.num_rows)
                # row groups gathered as the local engine gathers them
                if (
                    pending_rows >= outputs.ROW_GROUP_ROWS
                    or pending_bytes >= outputs.ROW_GROUP_BYTES
                ):
                    sink.write(pa.concat_tables(pending))
                    pending, pending_rows, pending_bytes = [], 0, 0
            if pending:
                sink.write(pa.concat_tables(pending))
            # rows beyond the footers mean the stream is not what was planned: the last
            # output is not put in place (leaving the block with an error removes it)
            extra = stream.rest() if i == last else 0
            if extra:
                raise RunError(
                    f"{plan.input}: Ray returned {extra} rows more than the inputs' footers say"
                )
        done.append((plan.rows, nulls))
        outputs.notify(progress, "file_done", plan.input, 0)
    return done


def _cast(table: pa.Table, schema: pa.Schema, where: Path) -> pa.Table:
    if table.schema.equals(schema, check_metadata=False):
        return table.replace_schema_metadata(schema.metadata)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise RunError(
            f"{where}: scored columns do not convert to its types: {_first_line(e)}"
        ) from None


_ERROR_LINE = re.compile(r"pipeline\.errors\.(\w+): (.+)")


def _cause(exc: BaseException) -> RnnpipeError | None:
    """The rnnpipe error behind ``exc``: itself, or the one a Ray error wraps.

    Ray chains the user's error, stores it as ``cause``, raises a class derived from both,
    or (for an actor that died in its constructor) keeps only its traceback as text, whose
    last ``pipeline.errors.X: message`` line names it.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    found: RnnpipeError | None = None
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RnnpipeError) and type(e).__module__.startswith("pipeline."):
            return e
        if found is None:
            matches = _ERROR_LINE.findall(str(e))
            cls = getattr(errors, matches[-1][0], None) if matches else None
            if isinstance(cls, type) and issubclass(cls, RnnpipeError):
                found = cls(matches[-1][1].strip())
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return found


@contextlib.contextmanager
def _ray_errors() -> Iterator[None]:
    """Expected failures on an actor come back as the one-line RnnpipeError they were."""
    try:
        yield
    except Exception as e:
        cause = _cause(e)
        if cause is None or cause is e:
            raise
        raise type(cause)(_first_line(cause)) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Actor side
# ---------------------------------------------------------------------------------------------

_HELD_LOCKS: list[int] = []  # slot locks, held until the actor's process exits


def _own_cache_dir(base: str | Path) -> Path:
    """Claim a Numba cache folder of its own under ``base``: the first free slot, locked with
    ``flock`` for the life of this process, so no two live actors share one and later actors
    reuse what earlier ones compiled.

    Example: ``_own_cache_dir("/var/tmp/rnnpipe-numba")  # .../slot-0``.
    """
    root = Path(base).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        fd = os.open(root / f"slot-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            slot += 1
            continue
        _HELD_LOCKS.append(fd)
        path = root / f"slot-{slot}"
        path.mkdir(exist_ok=True)
        return path


def _use_cache_dir(base: str | Path) -> Path:
    """Point Numba's cache at a folder of this actor's own (see ``_own_cache_dir``)."""
    path = _own_cache_dir(base)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    if "numba" in sys.modules:
        import numba.core.config

        numba.core.config.reload_config()
    if any(m in sys.modules for m in ("pipeline.text", "pipeline.model")):
        # a reused worker process: functions already defined keep the folder they had
        warnings.warn(
            f"this Ray worker imported rnnpipe before choosing its Numba cache; {path} applies "
            "only to functions defined from now on",
            RuntimeWarning,
            stacklevel=2,
        )
    return path


class _Scorer:
    """The callable class ``map_batches`` runs on each actor: a warm model, batch in, scores out.

    The constructor chooses the Numba cache folder (before anything loads Numba), sets the
    thread count, loads the model once, checks its fingerprint against the driver's and
    scores one row, so the first real batch pays no compile or cache load. ``__call__`` maps
    an Arrow table holding the text and kept columns to the kept columns, the probability
    columns, ``label`` and the null-or-empty flag.
    """

    def __init__(
        self,
        model_dir: str,
        backend: str,
        fingerprint: str,
        text_col: str,
        keep: list[str],
        threshold: float,
        threads: int,
        cache_dir: str | None,
        chunk_rows: int = 8192,
    ) -> None:
        cache_dir = cache_dir or runtime.ray_numba_cache_dir()
        if cache_dir:
            _use_cache_dir(cache_dir)
        from pipeline.model import Model as _Model

        runtime.set_threads(threads)
        self.model = _Model.load(model_dir, backend=backend)
        if self.model.fingerprint() != fingerprint:
            raise ConfigError(
                f"model directory {model_dir} holds another model than the driver's "
                "(it changed during the run?): score again"
            )
        self.text_col = text_col
        self.chunk_rows = max(1, int(chunk_rows))
        self.keep = list(keep)
        self.threshold = threshold
        self.names = outputs.prediction_names(self.model)
        outputs.predict(self.model, pa.array(_WARM_TEXT, pa.large_string()), "warm-up", 0)

    def __call__(self, table: pa.Table) -> pa.Table:
        # Scored ``chunk_rows`` rows at a time (the local engine's batch_rows): tokenizing
        # needs a few times the text's bytes while it runs, so an actor's memory follows the
        # chunk, not the Ray batch (which is large to keep Ray's per-batch costs small).
        # Text is cast to large_string per chunk, as the local engine reads it: the same
        # kernel specialisations, so the cache the driver filled is the one used here.
        column = table.column(self.text_col)
        n = table.num_rows
        probs = np.empty((n, len(self.model.config.classes)), np.float32)
        empty = np.empty(n, np.bool_)
        for a in range(0, n, self.chunk_rows):
            b = min(n, a + self.chunk_rows)
            texts = column.slice(a, b - a).combine_chunks().cast(pa.large_string())
            probs[a:b] = outputs.predict(self.model, texts, "a Ray batch", a)
            empty[a:b] = outputs.null_or_empty(texts)
        cols: list[Any] = [table.column(c) for c in self.keep]
        cols += outputs.prediction_columns(probs, self.model, self.threshold)
        cols.append(pa.array(empty))
        return pa.table(cols, names=[*self.keep, *self.names, "label", _NULL_FLAG])
