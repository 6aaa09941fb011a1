"""Build rnnpipe's sample dataset from the Large Movie Review Dataset (IMDB, Maas et al. 2011).

    python sample_data/make_sample.py [--from PATH] [--rows 3000] [--seed 0]

PATH is either a Parquet file with columns id, review, label (1 = positive) and rating
(the layout of ../shared/data/imdb_train.parquet), or the ``aclImdb`` folder of the
dataset's archive (``train/pos/*.txt`` and ``train/neg/*.txt``, files named
``<id>_<rating>.txt``). Without --from it looks in $RNNPIPE_DATA_DIR and ../shared/data.

Writes, next to this script (git ignores them; nothing of the dataset is committed):
* ``reviews.parquet``: ``--rows`` reviews, balanced, columns id, text, label
  (negative/positive) and rating (1-4 or 7-10: a multi-class target with --label-col rating);
* ``incoming/part-0001.parquet`` .. ``part-0003.parquet``: other reviews, columns id and
  text only, as new files landing for ``rnnpipe score`` and the scheduled-job example.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
INCOMING_FILES = 3
INCOMING_ROWS = 600  # per file


def _candidates() -> list[Path]:
    env = os.environ.get("RNNPIPE_DATA_DIR")
    found = [Path(env) / "imdb_train.parquet"] if env else []
    return found + [HERE.parents[1] / "shared" / "data" / "imdb_train.parquet"]


def _read_acl(folder: Path) -> pl.DataFrame:
    rows = []
    for label in ("pos", "neg"):
        for f in sorted((folder / "train" / label).glob("*.txt")):
            rid, rating = f.stem.split("_")
            rows.append((f"train_{label}_{rid}", f.read_text(encoding="utf-8"), int(rating)))
    if not rows:
        raise SystemExit(f"error: {folder} has no train/pos or train/neg reviews")
    df = pl.DataFrame(rows, schema=["id", "review", "rating"], orient="row")
    return df.with_columns(label=(pl.col("rating") >= 7).cast(pl.Int8))


def load_source(path: Path | None) -> pl.DataFrame:
    """The IMDB training reviews as a DataFrame with id, review, label, rating."""
    if path is None:
        path = next((p for p in _candidates() if p.exists()), None)
        if path is None:
            raise SystemExit(
                "error: no IMDB data found. Download the Large Movie Review Dataset "
                "(aclImdb_v1.tar.gz, https://ai.stanford.edu/~amaas/data/sentiment/), unpack "
                "it and run: python sample_data/make_sample.py --from aclImdb"
            )
    if path.is_dir():
        return _read_acl(path)
    return pl.read_parquet(path, columns=["id", "review", "label", "rating"])


def build(df: pl.DataFrame, rows: int, seed: int) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """A balanced sample of ``rows`` labelled reviews and disjoint unlabelled incoming files."""
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed)
    per_class = rows // 2
    picked = shuffled.group_by("label", maintain_order=True).head(per_class)
    rest = shuffled.join(picked.select("id"), on="id", how="anti")
    sample = (
        picked.sample(fraction=1.0, shuffle=True, seed=seed + 1)
        .select(
            pl.col("id").cast(pl.String),
            pl.col("review").alias("text"),
            pl.when(pl.col("label") == 1).then(pl.lit("positive")).otherwise(pl.lit("negative"))
            .alias("label"),
            pl.col("rating").cast(pl.Int8),
        )
    )  # fmt: skip
    incoming = rest.head(INCOMING_FILES * INCOMING_ROWS).select(
        pl.col("id").cast(pl.String), pl.col("review").alias("text")
    )
    parts = [incoming.slice(i * INCOMING_ROWS, INCOMING_ROWS) for i in range(INCOMING_FILES)]
    return sample, parts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    sample, parts = build(load_source(args.source), args.rows, args.seed)
    (args.out / "incoming").mkdir(parents=True, exist_ok=True)
    sample.write_parquet(args.out / "reviews.parquet", compression="zstd")
    for i, part in enumerate(parts, 1):
        part.write_parquet(args.out / "incoming" / f"part-{i:04d}.parquet", compression="zstd")
    counts = dict(sample.group_by("label").len().iter_rows())
    print(f"wrote {args.out / 'reviews.parquet'} ({sample.height} reviews: {counts}) and "
          f"{len(parts)} incoming files of {INCOMING_ROWS} reviews", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
