"""Build rnnpipe's sample dataset from the Large Movie Review Dataset (IMDB, Maas et al. 2011).

    python sample_data/make_sample.py [--from PATH] [--rows 3000] [--seed 0]

PATH is either a Parquet file with columns id, review, label (1 = positive) and rating
(the layout of ../shared/data/imdb_train.parquet), the ``aclImdb`` folder of the dataset's
archive (``train/pos/*.txt`` and ``train/neg/*.txt``, files named ``<id>_<rating>.txt``),
or the archive ``aclImdb_v1.tar.gz`` itself. Without --from it looks in
$RNNPIPE_DATA_DIR and ../shared/data, then in its download cache, and when none has the
data it downloads the official archive once (84 MB, from the dataset's Stanford page)
into the cache ($RNNPIPE_CACHE_DIR, else $XDG_CACHE_HOME/rnnpipe, else ~/.cache/rnnpipe),
checks its SHA-256, and reads the training reviews straight out of it (nothing else is
unpacked). An interrupted download resumes where it stopped on the next run.
$RNNPIPE_IMDB_URL and $RNNPIPE_IMDB_SHA256 point it at a mirror.

Writes, next to this script (git ignores them; nothing of the dataset is committed):
* ``reviews.parquet``: ``--rows`` reviews, balanced, columns id, text, label
  (negative/positive) and rating (1-4 or 7-10: a multi-class target with --label-col rating);
* ``incoming/part-0001.parquet`` .. ``part-0003.parquet``: other reviews, columns id and
  text only, as new files landing for ``rnnpipe score`` and the scheduled-job example.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
INCOMING_FILES = 3
INCOMING_ROWS = 600  # per file
ARCHIVE = "aclImdb_v1.tar.gz"
ARCHIVE_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# the published archive's SHA-256 (as TensorFlow Datasets and others record it)
ARCHIVE_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
_TRAIN_TEXT = re.compile(r"^(?:\./)?aclImdb/train/(pos|neg)/(\d+)_(\d+)\.txt$")


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
    return _frame(rows)


def _frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=["id", "review", "rating"], orient="row")
    return df.with_columns(label=(pl.col("rating") >= 7).cast(pl.Int8))


def _read_archive(path: Path) -> pl.DataFrame:
    """The training reviews read straight out of the archive (nothing unpacked to disk)."""
    rows = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                m = _TRAIN_TEXT.match(member.name)
                if m is None or not member.isfile():
                    continue
                label, rid, rating = m.groups()
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                rows.append((f"train_{label}_{rid}", text, int(rating)))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SystemExit(f"error: {path} is not a readable {ARCHIVE} ({e})") from None
    if not rows:
        raise SystemExit(f"error: {path} holds no aclImdb/train/pos or neg reviews")
    rows.sort()
    return _frame(rows)


def cache_dir() -> Path:
    """Where the downloaded archive is kept between runs."""
    if os.environ.get("RNNPIPE_CACHE_DIR"):
        return Path(os.environ["RNNPIPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnpipe"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Bar:
    """Download progress on stderr: a line redrawn in place on a terminal, else a line per
    10 % (logs stay short)."""

    def __init__(self, total: int | None, done: int) -> None:
        self.total, self.done, self.last = total, done, -1
        self.tty = sys.stderr.isatty()
        self.t0, self.start = time.monotonic(), done

    def update(self, n: int) -> None:
        self.done += n
        if not self.total:
            return
        pct = int(100 * self.done / self.total)
        if (self.tty and pct != self.last) or (not self.tty and pct // 10 != self.last // 10):
            rate = (self.done - self.start) / max(time.monotonic() - self.t0, 1e-6) / 1e6
            line = (
                f"downloading {ARCHIVE}: {pct:3d} % of {self.total / 1e6:.0f} MB, {rate:.1f} MB/s"
            )
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
                  file=sys.stderr, flush=True)  # fmt: skip
            self.last = pct

    def close(self) -> None:
        if self.tty and self.last >= 0:
            print(file=sys.stderr)


def download(url: str, sha256: str, folder: Path) -> Path:
    """The archive at ``url`` in ``folder``, downloaded once and checked against ``sha256``.

    A partial download (``NAME.part``) is resumed with an HTTP Range request. Exits with one
    line for no network, an interrupted download (kept, resumed next run) or a checksum that
    does not match (the file is removed).
    """
    final, part = folder / ARCHIVE, folder / (ARCHIVE + ".part")
    if final.is_file():
        if _sha256(final) == sha256:
            return final
        final.unlink()  # a corrupted cache: fetch it again
    folder.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part is whole
            response = None
        else:
            raise SystemExit(f"error: could not download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SystemExit(
            f"error: could not download {url} ({reason}): no network? Put the IMDB data in "
            f"$RNNPIPE_DATA_DIR, or unpack {ARCHIVE} and pass --from aclImdb"
        ) from None
    if response is not None:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: start over
        size = response.headers.get("Content-Length")
        bar = _Bar(have + int(size) if size else None, have)
        try:
            with response, open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (OSError, urllib.error.URLError) as e:
            bar.close()
            raise SystemExit(
                f"error: the download of {url} was interrupted ({e}); {part} keeps what came: "
                f"run again to resume"
            ) from None
        bar.close()
        if size and part.stat().st_size < have + int(size):
            raise SystemExit(
                f"error: the download of {url} stopped early ({part.stat().st_size:,} of "
                f"{have + int(size):,} bytes); run again to resume"
            )
    digest = _sha256(part)
    if digest != sha256:
        part.unlink()
        raise SystemExit(
            f"error: {url} has SHA-256 {digest}, expected {sha256}: the download is corrupt "
            f"or not the published archive; it was removed, run again"
        )
    os.replace(part, final)
    return final


def load_source(path: Path | None) -> pl.DataFrame:
    """The IMDB training reviews as a DataFrame with id, review, label, rating."""
    if path is None:
        path = next((p for p in _candidates() if p.exists()), None)
    if path is None:
        url = os.environ.get("RNNPIPE_IMDB_URL", ARCHIVE_URL)
        sha = os.environ.get("RNNPIPE_IMDB_SHA256", ARCHIVE_SHA256)
        path = download(url, sha, cache_dir())
    if path.is_dir():
        return _read_acl(path)
    if path.name.endswith((".tar.gz", ".tgz")):
        return _read_archive(path)
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
