"""Tokenizer benchmark: rnnpipe's Tokenizer.encode against plain Python and Polars.

Encodes every review of a Parquet file (by default ../shared/data/imdb_train.parquet,
25,000 reviews, 33 MB) to ids of a 20,000-word vocabulary, three ways, in one run:

* Python: ``re.findall(r"[a-z0-9']+")`` on the lowercased text with ``<br />`` removed, then a
  dict lookup per word (the peers' tokenizer, see ../shared/ANCHORS.md);
* Polars: the same rules as expressions (lowercase, replace, ``str.extract_all``) then the
  vocabulary lookup, in two forms (explode + join + regroup, and ``list.eval`` +
  ``replace_strict``); the faster one is the Polars figure;
* rnnpipe: ``Tokenizer.encode`` from the Arrow column (fitted once beforehand; fit is timed
  separately). Its rules do more (all HTML tags, Unicode letters, apostrophes).

Each figure is the median of ``--repeats`` runs. Polars and Numba get 2 threads.

Run:  python tests/benchmarks/bench_tokenizer.py [--data PATH] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "2")  # must precede the polars import

import argparse  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

try:
    from pipeline.text import OOV_ID, Tokenizer
    from pipeline.text.rules import NORMALISATION, NORMALISATIONS
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from pipeline.text import OOV_ID, Tokenizer
    from pipeline.text.rules import NORMALISATION, NORMALISATIONS

THREADS = 2
PEER_PATTERN = r"[a-z0-9']+"


def default_data() -> Path:
    env = os.environ.get("RNNPIPE_DATA_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return folder / "imdb_train.parquet"


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeats`` runs after one untimed warm-up run."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def python_encoder(words: list[str]) -> Callable[[list[str | None]], list[list[int]]]:
    vocab = {w: i + 2 for i, w in enumerate(words)}
    findall = re.compile(PEER_PATTERN).findall
    get = vocab.get

    def encode(texts: list[str | None]) -> list[list[int]]:
        return [
            [get(w, OOV_ID) for w in findall(t.lower().replace("<br />", " "))] if t else []
            for t in texts
        ]

    return encode


def polars_tokens(series: pl.Series) -> pl.Expr:
    return (
        pl.col(series.name)
        .str.to_lowercase()
        .str.replace_all("<br />", " ", literal=True)
        .str.extract_all(PEER_PATTERN)
    )


def polars_join(words: list[str]) -> Callable[[pl.Series], pl.Series]:
    vocab = pl.DataFrame({"tok": words, "id": np.arange(2, len(words) + 2, dtype=np.int32)}).lazy()

    def encode(series: pl.Series) -> pl.Series:
        out = (
            series.to_frame()
            .lazy()
            .with_row_index("row")
            .select("row", polars_tokens(series).alias("tok"))
            .explode("tok")
            .join(vocab, on="tok", how="left", maintain_order="left")
            .group_by("row", maintain_order=True)
            # an empty review explodes to one null token: keep it as an empty list
            .agg(pl.col("id").fill_null(OOV_ID).filter(pl.col("tok").is_not_null()))
            .collect()
        )
        return out["id"]

    return encode


def polars_replace(words: list[str]) -> Callable[[pl.Series], pl.Series]:
    ids = np.arange(2, len(words) + 2, dtype=np.int32)

    def encode(series: pl.Series) -> pl.Series:
        lookup = pl.element().replace_strict(words, ids, default=OOV_ID, return_dtype=pl.Int32)
        return series.to_frame().select(polars_tokens(series).list.eval(lookup))[series.name]

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="Parquet file")
    parser.add_argument("--column", default="review", help="text column (default: review)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--num-words", type=int, default=20000, help="vocabulary size")
    parser.add_argument(
        "--normalisation", default=NORMALISATION, choices=NORMALISATIONS, help="the rules"
    )
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"data not found: {args.data} (pass --data or set RNNPIPE_DATA_DIR)")

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    column = pq.read_table(args.data, columns=[args.column]).column(args.column)
    arrow = column.combine_chunks().cast(pa.large_string())
    texts = arrow.to_pylist()
    series = pl.Series(args.column, arrow)
    n = len(texts)
    mb = sum(len(t.encode("utf-8")) for t in texts if t) / 1e6

    tok = Tokenizer(num_words=args.num_words, normalisation=args.normalisation)
    fit_s, _ = median_time(lambda: tok.fit(arrow), args.repeats)
    words = tok.words

    results: dict[str, float] = {}
    outputs: dict[str, int] = {}

    t, out = median_time(lambda: python_encoder(words)(texts), args.repeats)
    results["Python re.findall + dict"] = t
    outputs["Python re.findall + dict"] = sum(map(len, out))
    python_out = out
    for name, make in (
        ("Polars explode + join + group_by", polars_join),
        ("Polars list.eval + replace_strict", polars_replace),
    ):
        t, out = median_time(lambda make=make: make(words)(series), args.repeats)
        results[name] = t
        outputs[name] = int(out.list.len().sum())
        if out.to_list() != python_out:
            sys.exit(f"{name} disagrees with the Python tokenizer: the benchmark is broken")
    t, ids = median_time(lambda: tok.encode(arrow), args.repeats)
    results[f"rnnpipe Tokenizer.encode ({numba.get_num_threads()} threads)"] = t
    outputs[f"rnnpipe Tokenizer.encode ({numba.get_num_threads()} threads)"] = ids.nnz
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    t, ids = median_time(lambda: tok.encode(arrow), args.repeats)
    results["rnnpipe Tokenizer.encode (1 thread)"] = t
    outputs["rnnpipe Tokenizer.encode (1 thread)"] = ids.nnz
    numba.set_num_threads(threads)

    python_s = results["Python re.findall + dict"]
    polars_s = min(v for k, v in results.items() if k.startswith("Polars"))
    print(
        f"{args.data.name}: {n:,} reviews, {mb:.1f} MB, vocabulary {tok.vocab_size:,} "
        f"(fit {fit_s:.2f} s, {mb / fit_s:.0f} MB/s, 1 thread); median of {args.repeats}; "
        f"POLARS_MAX_THREADS={os.environ['POLARS_MAX_THREADS']}, Numba threading layer "
        f"{numba.threading_layer()}"
    )
    header = f"| {'method':<40} | {'s':>6} | {'MB/s':>6} | {'reviews/s':>9} | {'tokens':>9} |"
    print(header + " vs Python | vs Polars |")
    print("|" + "-" * 42 + "|-------:|-------:|----------:|----------:|----------:|----------:|")
    for name, s in results.items():
        print(
            f"| {name:<40} | {s:6.3f} | {mb / s:6.1f} | {n / s:9,.0f} | {outputs[name]:9,} |"
            f" {python_s / s:8.2f}x | {polars_s / s:8.2f}x |"
        )


if __name__ == "__main__":
    main()
