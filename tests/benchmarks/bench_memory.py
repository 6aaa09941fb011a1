"""Memory and cold-start benchmark of ``rnnpipe score``: flat memory whatever the input size.

Run:

    python tests/benchmarks/bench_memory.py [--rows 20000] [--scale 10] [--threads 2]
        [--repeats 1] [--cold-repeats 3]

What it measures, each ``rnnpipe score`` run being a fresh ``python -m pipeline score``
subprocess whose own peak resident memory is read from ``os.wait4`` (the kernel's
``ru_maxrss`` of that one child, which ``getrusage(RUSAGE_CHILDREN)`` would report too):

* peak RSS scoring ``--rows`` reviews (default 20,000, one file), ``--scale`` times as many
  split into ``--scale`` files (default 200,000 in 10 files of 20,000), and the same big
  count in ONE file once per row-group size of ``--row-groups`` (default 10,000, 50,000
  and 250,000 rows a group; 250,000 makes the whole file one group of about 260 MB of
  text), so peak memory must depend on ``--batch-rows``, not on how the file was written;
  the ratio of each big peak to the small one (target <= 1.3x) and the floor, the peak of
  scoring a 1-row file;
* cold start: wall time of scoring a 1-row file, process start to exit, with Numba's cache
  already warm (target <= 2 s), median of ``--cold-repeats``.

Inputs come from ``make_reviews.py`` (IMDB unsup repeated and shuffled, seeded) under
``tests/benchmarks/_gen/``, written only when absent. The model is a random-weight LSTM
E=128 H=128 (max_len 256) with a 20,000-word vocabulary fitted on ``imdb_unsup.parquet``,
saved once to ``_gen/model-lstm-e128-h128-seed0/`` (in a subprocess, so this process never
runs a Numba kernel) and reused. Before anything is measured one untimed run scores the
small input, so no measured run compiles a kernel (compiling would inflate its peak).
Scores are checked for the right row count; every other output is thrown away.

OpenBLAS variables (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``) may be left unset for this
command; tests never depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import make_reviews  # noqa: E402

MODEL_DIR = make_reviews.GEN_DIR / "model-lstm-e128-h128-seed0"
PEAK_TARGET = 1.3
COLD_TARGET_S = 2.0


def make_model(directory: Path) -> None:
    """Save the benchmark's random-weight LSTM E=128 H=128 model to ``directory``."""
    sys.path.insert(0, str(REPO))
    import pyarrow.parquet as pq

    from pipeline.model import Model, ModelConfig
    from pipeline.text import Tokenizer

    source = make_reviews.data_dir() / make_reviews.SOURCE_NAME
    texts = pq.read_table(source, columns=[make_reviews.SOURCE_COLUMN])[make_reviews.SOURCE_COLUMN]
    tok = Tokenizer(num_words=20000).fit(texts)
    config = ModelConfig(
        cell="lstm", embed_dim=128, hidden_dim=128, vocab_size=tok.vocab_size, max_len=256,
        bidirectional=False, pooling="last", dropout=0.0,
    )  # fmt: skip
    Model(config, tokenizer=tok, seed=0).save(directory, training={"data": source.name})


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def ensure_model() -> Path:
    if not (MODEL_DIR / "weights.npz").is_file():
        cmd = [sys.executable, str(Path(__file__).resolve()), "--make-model", str(MODEL_DIR)]
        subprocess.run(cmd, env=child_env(), check=True)
    return MODEL_DIR


def run_score(source: Path, out: Path, threads: int) -> tuple[int, float, dict]:
    """Run ``python -m pipeline score`` on ``source`` in a fresh process.

    Returns (peak RSS in bytes of that process, wall seconds, its ``--json`` summary).
    """
    cmd = [sys.executable, "-m", "pipeline", "score", str(source), "--model", str(MODEL_DIR)]
    cmd += ["--out", str(out), "--threads", str(threads), "--json"]
    with tempfile.TemporaryFile("w+") as stdout:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, env=child_env(), cwd=REPO)
        # wait4 gives this child's own rusage; Popen is told the exit status by hand
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        text = stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"rnnpipe score {source} failed (exit {proc.returncode}): see above")
    summary = json.loads(text.strip().splitlines()[-1])
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    scale = 1 if sys.platform == "darwin" else 1024
    return usage.ru_maxrss * scale, wall, summary


def count_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("*.parquet"))


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.parquet")) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See the module docstring for what is measured and how.",
    )
    ap.add_argument("--rows", type=int, default=20000, help="small input (default 20000)")
    ap.add_argument("--scale", type=int, default=10, help="big input = scale x rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="runs per input (median peak)")
    ap.add_argument("--cold-repeats", type=int, default=3, help="timed 1-row runs")
    ap.add_argument("--seed", type=int, default=0, help="make_reviews seed")
    ap.add_argument(
        "--row-groups",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[10_000, 50_000, 250_000],
        help="row-group sizes of the big one-file inputs (default 10000,50000,250000)",
    )
    ap.add_argument("--make-model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--make-inputs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.make_model:
        make_model(args.make_model)
        return
    if min(args.rows, args.scale, args.threads, args.repeats, args.cold_repeats) < 1:
        raise SystemExit("--rows, --scale, --threads, --repeats and --cold-repeats must be >= 1")
    if not args.make_inputs:
        # Linux carries a process's peak RSS across fork and exec into the child's ru_maxrss,
        # so this process must stay small: the inputs are written by a child of their own.
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--make-inputs"], check=True)

    big = args.rows * args.scale
    inputs = {
        f"{args.rows:,} rows, 1 file": make_reviews.ensure_reviews(args.rows, 1, args.seed),
        f"{big:,} rows, {args.scale} files": make_reviews.ensure_reviews(
            big, args.scale, args.seed
        ),
    }
    for rg in args.row_groups:
        inputs[f"{big:,} rows, 1 file, {rg:,}-row groups"] = make_reviews.ensure_reviews(
            big, 1, args.seed, row_group_rows=rg
        )
    one_row = make_reviews.ensure_reviews(1, 1, args.seed)
    if args.make_inputs:
        return
    ensure_model()

    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        tmp = Path(tmp)
        small = next(iter(inputs.values()))
        run_score(small, tmp / "warm", args.threads)  # untimed: warms Numba's cache

        cold, floor = [], []
        for i in range(args.cold_repeats):
            peak, wall, _ = run_score(one_row, tmp / f"one-{i}", args.threads)
            cold.append(wall)
            floor.append(peak)

        rows_out = []
        for i, (name, folder) in enumerate(inputs.items()):
            expected = count_rows(folder)
            peaks, walls = [], []
            for r in range(args.repeats):
                peak, wall, summary = run_score(folder, tmp / f"out-{i}-{r}", args.threads)
                if summary["rows"] != expected:
                    raise SystemExit(f"{name}: scored {summary['rows']} rows, expected {expected}")
                peaks.append(peak)
                walls.append(wall)
            rows_out.append(
                (name, folder, expected, statistics.median(peaks), statistics.median(walls))
            )

    mib = 1 << 20
    base = rows_out[0][3]
    print(
        f"rnnpipe score, LSTM E=128 H=128, threads={args.threads}, Numba cache warm; "
        f"peaks are median of {args.repeats}; each run a fresh process, whose wall time "
        "and reviews/s include its start-up (see cold start)"
    )
    header = (
        f"| {'input':<40} | {'MB':>6} | {'peak RSS MiB':>12} | {'vs small':>8} | "
        f"{'wall s':>7} | {'reviews/s':>9} |"
    )
    print(header)
    print(f"|{'-' * 42}|-------:|-------------:|---------:|--------:|----------:|")
    for name, folder, rows, peak, wall in rows_out:
        print(
            f"| {name:<40} | {folder_mb(folder):>6.1f} | {peak / mib:>12.0f} | "
            f"{peak / base:>7.2f}x | {wall:>7.2f} | {rows / wall:>9,.0f} |"
        )
    worst = max(r[3] for r in rows_out[1:]) / base
    cold_s = statistics.median(cold)
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )
    print(
        f"this process's own peak RSS {own / mib:.0f} MiB (a child's ru_maxrss starts from "
        "its parent's at fork, so every figure above is at least this)"
    )
    print(
        f"floor (1-row file): peak RSS {statistics.median(floor) / mib:.0f} MiB; "
        f"big/small peak ratio {worst:.2f}x (target <= {PEAK_TARGET}x: "
        f"{'met' if worst <= PEAK_TARGET else 'NOT met'})"
    )
    print(
        f"cold start (1-row file, process start to exit, median of {args.cold_repeats}): "
        f"{cold_s:.2f} s (target <= {COLD_TARGET_S:g} s: "
        f"{'met' if cold_s <= COLD_TARGET_S else 'NOT met'}); runs "
        + ", ".join(f"{s:.2f}" for s in cold)
    )


if __name__ == "__main__":
    main()
