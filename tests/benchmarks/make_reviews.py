"""Make a large review dataset for the scoring benchmarks by repeating and shuffling IMDB.

Writes ``--rows`` rows into ``--files`` Parquet files (``part-00000.parquet`` ...) with the
columns ``id`` (int64, 0..rows-1 in file order) and ``text`` (string), drawn from the
``review`` column of ``imdb_unsup.parquet`` (50,000 reviews) in ../shared/data, or in
``$RNNPIPE_DATA_DIR``. Every source review is used about equally often (``rows / 50,000``
times), in an order fixed by ``--seed``: the same arguments give the same files. Rows are
gathered with Arrow ``take`` (no per-row Python) and written ``--row-group-rows`` at a time,
so each file has row groups of that size (default 100,000 rows, about 130 MB of text, near
Spark's 128 MB block) and nothing bigger than one row group is ever held in memory twice.

The output folder is built under a temporary name beside it and renamed into place when
complete, so a half-written dataset is never mistaken for a finished one. By default it goes
under ``tests/benchmarks/_gen/`` (git-ignored): never commit generated data.

Run:

    python tests/benchmarks/make_reviews.py --rows 200000 --files 10
    python tests/benchmarks/make_reviews.py --rows 20000 --out /tmp/reviews --seed 1

The benchmarks import ``ensure_reviews(rows, files, seed)``, which returns the default
folder for those arguments and writes it only when it is absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The benchmarks measure rnnpipe as its CLI runs it: a benchmark that imports this module
# first gets rnnpipe's runtime defaults before NumPy loads OpenBLAS (which reads its thread
# hand-over then) and before Numba loads, and its child processes inherit them
# (bench_score.py and bench_train.py rely on this).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline import runtime  # noqa: E402

runtime.apply_defaults()

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

GEN_DIR = Path(__file__).resolve().parent / "_gen"
SOURCE_NAME = "imdb_unsup.parquet"
SOURCE_COLUMN = "review"
ROW_GROUP_ROWS = 100_000
SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])


def data_dir() -> Path:
    """The shared data folder: ``$RNNPIPE_DATA_DIR``, else ../shared/data beside the repo."""
    env = os.environ.get("RNNPIPE_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def default_out(rows: int, files: int, seed: int, row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """The folder ``ensure_reviews`` uses for these arguments, under ``_gen/``."""
    groups = "" if row_group_rows == ROW_GROUP_ROWS else f"-rg{row_group_rows}"
    return GEN_DIR / f"reviews-{rows}-{files}f-seed{seed}{groups}"


def draw_rows(source_rows: int, rows: int, seed: int) -> np.ndarray:
    """Source row indices int64[rows]: the source repeated enough times, shuffled, cut.

    Each source row appears ``floor`` or ``ceil(rows / source_rows)`` times when ``rows``
    is a multiple of ``source_rows``, and at most ``ceil`` times otherwise.

    Example: ``draw_rows(50_000, 200_000, 0)`` holds every index 0..49,999 exactly 4 times.
    """
    if source_rows < 1:
        raise ValueError("the source has no rows")
    copies = -(-rows // source_rows)
    order = np.random.default_rng(seed).permutation(copies * source_rows)[:rows]
    return (order % source_rows).astype(np.int64)


def write_reviews(
    rows: int,
    out: str | Path,
    files: int = 1,
    seed: int = 0,
    source: str | Path | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> list[Path]:
    """Write ``rows`` reviews into ``files`` Parquet files in the folder ``out``.

    Parameters: ``rows`` >= 1; ``out`` the folder (replaced whole if it exists); ``files``
    between 1 and ``rows`` (file ``k`` holds rows ``k*rows//files`` to
    ``(k+1)*rows//files``); ``seed`` fixes the order; ``source`` a Parquet file with a
    ``review`` column (default: ``imdb_unsup.parquet`` in ``data_dir()``);
    ``row_group_rows`` rows per Parquet row group.

    Returns the files written, in id order. Raises FileNotFoundError when the source is
    missing, ValueError for bad counts.

    Example: ``write_reviews(20_000, "/tmp/reviews", files=2)``.
    """
    if rows < 1 or files < 1 or files > rows or row_group_rows < 1:
        raise ValueError(
            f"need rows >= 1, 1 <= files <= rows and row_group_rows >= 1, got rows={rows}, "
            f"files={files}, row_group_rows={row_group_rows}"
        )
    source = Path(source) if source is not None else data_dir() / SOURCE_NAME
    if not source.is_file():
        raise FileNotFoundError(
            f"source {source} not found: set RNNPIPE_DATA_DIR to the folder holding {SOURCE_NAME}"
        )
    texts = pq.read_table(source, columns=[SOURCE_COLUMN]).column(SOURCE_COLUMN).combine_chunks()
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise ValueError(f"column {SOURCE_COLUMN!r} of {source} is {texts.type}, expected strings")
    index = draw_rows(len(texts), rows, seed)
    bounds = [k * rows // files for k in range(files + 1)]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        names = []
        for k in range(files):
            name = f"part-{k:05d}.parquet"
            with pq.ParquetWriter(tmp / name, SCHEMA) as writer:
                # one take per row group keeps every string array far below 2 GiB
                for start in range(bounds[k], bounds[k + 1], row_group_rows):
                    stop = min(start + row_group_rows, bounds[k + 1])
                    chunk = texts.take(pa.array(index[start:stop])).cast(pa.string())
                    ids = pa.array(np.arange(start, stop, dtype=np.int64))
                    writer.write_table(
                        pa.Table.from_arrays([ids, chunk], schema=SCHEMA),
                        row_group_size=row_group_rows,
                    )
            names.append(name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in names]


def ensure_reviews(
    rows: int, files: int = 1, seed: int = 0, row_group_rows: int = ROW_GROUP_ROWS
) -> Path:
    """``default_out(rows, files, seed, row_group_rows)``, written by ``write_reviews`` only
    when absent.

    Example: ``ensure_reviews(20_000)`` -> ``.../_gen/reviews-20000-1f-seed0``.
    """
    out = default_out(rows, files, seed, row_group_rows)
    if not (out.is_dir() and len(list(out.glob("part-*.parquet"))) == files):
        write_reviews(rows, out, files=files, seed=seed, row_group_rows=row_group_rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True, help="reviews to write")
    ap.add_argument("--files", type=int, default=1, help="Parquet files to split them into")
    ap.add_argument("--seed", type=int, default=0, help="fixes the order of the reviews")
    ap.add_argument(
        "--out", type=Path, default=None, help="output folder (default: _gen/reviews-...)"
    )
    ap.add_argument("--source", type=Path, default=None, help=f"default: {SOURCE_NAME}")
    ap.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS)
    args = ap.parse_args()
    out = args.out or default_out(args.rows, args.files, args.seed, args.row_group_rows)
    try:
        paths = write_reviews(
            args.rows, out, args.files, args.seed, args.source, args.row_group_rows
        )
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"make_reviews: {exc}")
    size = sum(p.stat().st_size for p in paths) / 1e6
    print(f"wrote {args.rows:,} reviews in {len(paths)} file(s), {size:.1f} MB, to {out}")


if __name__ == "__main__":
    main()
