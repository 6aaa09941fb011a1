"""Ray engine benchmark: reviews/s of ``--engine ray`` against the local engine, and memory.

Run (needs the ray extra: ``pip install 'rnnpipe[ray]'``):

    python tests/benchmarks/bench_ray.py [--rows 200000] [--files 10] [--workers 2]
        [--threads 2] [--cell lstm] [--input DIR] [--seed 0] [--rounds 1] [--ray-only]

Input: ``--rows`` reviews in ``--files`` Parquet files (``id``, ``text``) made by
``make_reviews.py`` (IMDB unsup repeated and shuffled, seeded) under
``tests/benchmarks/_gen/``, written only when absent; where that script is missing, the
same kind of input is made here with Polars (seeded). Or ``--input`` (a folder of Parquet
files with ``id`` and ``text`` columns).

Model: a random-weight ``ModelConfig(cell, E=128, H=128, max_len=256)`` with a 20,000-word
vocabulary fitted on the first input file, saved once under ``_gen/``.

Each engine runs in its own fresh subprocess, one after the other:

* local: ``pipeline.score.score`` (what ``rnnpipe score`` runs) with ``--threads`` Numba
  threads, after one untimed warm-up run on a 64-row file;
* ray: a local Ray cluster of ``--workers * --threads-per-worker`` CPUs is started (timed
  apart), one untimed ``score_on_ray`` on the 64-row file (its time is mostly actor start:
  process, imports, model load, Numba cache load), then the timed ``score_on_ray`` with
  ``--workers`` actors. The timed figure includes that run's own actor start, as a user's
  run would.

Both write one output per input (``id``, ``score``, ``label``). Figures: wall seconds and
reviews/s of one timed run each (``--repeats`` for the median of more), the ratio ray/local
(target >= 0.80; with ``--rounds N`` the engines alternate N times and the ratio is the
median of the rounds' ratios), and memory: the peak private memory (``RssAnon``, sampled)
and peak RSS (``VmHWM``, which also counts object-store pages) of each Ray actor, that of the
driver, and the RSS of every Ray process of this run together at its
highest (raylet, GCS, workers, ...), sampled from /proc every 0.2 s (psutil is not
needed); the local engine's peak RSS for comparison. Afterwards both engines' scores are
compared row by row.

Times on these shared 2-core VMs vary by 20-40 % between runs: read the ratio of one run.
``--ray-only`` skips the local engine (memory on inputs too big to score twice).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GEN = HERE / "_gen"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from make_reviews import data_dir  # noqa: E402, I001  (first: the runtime defaults before NumPy)
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

EMBED_DIM = HIDDEN_DIM = 128
MAX_LEN = 256
NUM_WORDS = 20000
WARM_ROWS = 64
TARGET = 0.80


# ---------------------------------------------------------------------------------------------
# Input and model
# ---------------------------------------------------------------------------------------------


def make_input(rows: int, files: int, seed: int) -> Path:
    """The benchmark input: ``make_reviews.ensure_reviews`` when that script is there, else
    the same thing made here with Polars (IMDB unsup sampled with a seed, ``files`` parts)."""
    try:
        import make_reviews
    except ImportError:
        make_reviews = None
    if make_reviews is not None and hasattr(make_reviews, "ensure_reviews"):
        return make_reviews.ensure_reviews(rows, files, seed)

    import polars as pl

    out = GEN / f"ray-reviews-{rows}-{files}f-seed{seed}"
    if out.is_dir() and len(list(out.glob("part-*.parquet"))) == files:
        return out
    source = data_dir() / "imdb_unsup.parquet"
    if not source.is_file():
        raise SystemExit(f"{source} not found: set RNNPIPE_DATA_DIR or pass --input")
    texts = pl.read_parquet(source, columns=["review"])["review"]
    idx = np.random.default_rng(seed).integers(0, len(texts), size=rows)
    frame = pl.DataFrame({"id": np.arange(rows, dtype=np.int64), "text": texts.gather(idx)})
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=GEN))
    bounds = [k * rows // files for k in range(files + 1)]
    for k in range(files):
        part = frame.slice(bounds[k], bounds[k + 1] - bounds[k])
        part.write_parquet(tmp / f"part-{k:05d}.parquet", row_group_size=100_000)
    tmp.rename(out)
    return out


def input_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise SystemExit(f"no Parquet files in {folder}")
    return files


def make_model(inputs: Path, cell: str) -> Path:
    """A random-weight model whose vocabulary is fitted on the first input file (cached)."""
    from pipeline import io
    from pipeline.model import Model, ModelConfig
    from pipeline.text import Tokenizer

    first = input_files(inputs)[0]
    stat = first.stat()
    out = GEN / f"ray-model-{cell}-{stat.st_size}-{stat.st_mtime_ns}"
    if (out / "weights.npz").is_file():
        return out
    tok = Tokenizer(num_words=NUM_WORDS).fit(io.read_columns([first], ["text"], "text")["text"])
    cfg = ModelConfig(cell=cell, embed_dim=EMBED_DIM, hidden_dim=HIDDEN_DIM,
                      vocab_size=tok.vocab_size, max_len=MAX_LEN, bidirectional=False,
                      pooling="last", dropout=0.0)  # fmt: skip
    Model(cfg, tokenizer=tok, seed=0).save(out)
    return out


def write_warm_file(inputs: Path, path: Path) -> Path:
    table = pq.read_table(input_files(inputs)[0], columns=["id", "text"]).slice(0, WARM_ROWS)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------
# Memory from /proc
# ---------------------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status_kb(int(entry), "PPid")  # a plain number, read the same way
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class MemorySampler:
    """Samples, every ``interval`` s, this process's descendants (a local Ray cluster started
    here: GCS, raylet, workers): each actor's peak RSS (VmHWM, by pid), its peak private
    memory (the highest RssAnon sampled) and the RSS of all of them together at its highest.

    VmHWM counts the pages of Ray's shared-memory object store that an actor has touched
    (it reads its input blocks there and writes its outputs there): those grow with the
    data that flows through, up to the store's size, although no process owns them. The
    actor's own memory is RssAnon."""

    def __init__(self, interval: float = 0.2, actor_tag: str = "ray::MapWorker"):
        self.interval, self.actor_tag = interval, actor_tag
        self.actor_peak_kb: dict[int, int] = {}
        self.actor_anon_peak_kb: dict[int, int] = {}
        self.total_peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _descendants(self) -> list[int]:
        kids, out, todo = _children(), [], [os.getpid()]
        while todo:
            for child in kids.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def sample(self) -> None:
        total = 0
        for pid in self._descendants():
            total += _status_kb(pid, "VmRSS")
            if _cmdline(pid).startswith(self.actor_tag):
                peak = _status_kb(pid, "VmHWM")
                self.actor_peak_kb[pid] = max(self.actor_peak_kb.get(pid, 0), peak)
                anon = _status_kb(pid, "RssAnon")
                self.actor_anon_peak_kb[pid] = max(self.actor_anon_peak_kb.get(pid, 0), anon)
        self.total_peak_kb = max(self.total_peak_kb, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _self_peak_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child
    # would report the parent's peak at fork time (the parent fits a vocabulary on the
    # first input file, which for a file of 200,000 reviews took about 930 MB)
    kb = _status_kb(os.getpid(), "VmHWM")
    return (kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


# ---------------------------------------------------------------------------------------------
# Children: each prints one JSON line
# ---------------------------------------------------------------------------------------------


def child_local(spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline.model import Model
    from pipeline.runtime import set_threads
    from pipeline.score import ScoreOptions, score

    threads = set_threads(spec["threads"])
    model = Model.load(spec["model"])
    options = ScoreOptions(keep=("id",), batch_rows=spec["batch_rows"])
    score(spec["warm"], model, Path(spec["scratch"]) / "warm-local.parquet", options)
    times, rows = [], 0
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        rows = score(spec["input"], model, spec["out"], options).rows
        times.append(time.perf_counter() - t0)
    return {"rows": rows, "seconds": times, "threads": threads, "peak_rss_mb": _self_peak_mb()}


def child_ray(spec: dict[str, Any]) -> dict[str, Any]:
    import ray

    from pipeline.engines.ray import score_on_ray
    from pipeline.model import Model
    from pipeline.runtime import set_threads
    from pipeline.score import ScoreOptions

    set_threads(spec["threads"])  # the driver's own warm-up and planning
    model = Model.load(spec["model"])
    options = ScoreOptions(keep=("id",), batch_rows=spec["batch_rows"])
    cpus = spec["workers"] * spec["threads_per_worker"]
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False)
        init_s = time.perf_counter() - t0
        try:
            kw = {"workers": spec["workers"], "threads_per_worker": spec["threads_per_worker"]}
            t0 = time.perf_counter()
            score_on_ray([spec["warm"]], model, spec["model"],
                         Path(spec["scratch"]) / "warm-ray.parquet", options, **kw)  # fmt: skip
            warm_s = time.perf_counter() - t0
            times, rows = [], 0
            for _ in range(spec["repeats"]):
                t0 = time.perf_counter()
                rows = score_on_ray([spec["input"]], model, spec["model"], spec["out"],
                                    options, **kw).rows  # fmt: skip
                times.append(time.perf_counter() - t0)
            mem.sample()
        finally:
            ray.shutdown()
    return {
        "rows": rows,
        "seconds": times,
        "init_s": init_s,
        "warm_s": warm_s,
        "actor_peak_rss_mb": sorted(kb / 1024 for kb in mem.actor_peak_kb.values()),
        "actor_peak_anon_mb": sorted(kb / 1024 for kb in mem.actor_anon_peak_kb.values()),
        "ray_total_peak_rss_mb": mem.total_peak_kb / 1024,
        "driver_peak_rss_mb": _self_peak_mb(),
        "ray_version": ray.__version__,
    }


CHILDREN = {"local": child_local, "ray": child_ray}


def run_child(role: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script as a fresh subprocess in ``role``; its last JSON stdout line is read."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           json.dumps({**spec, "role": role})]  # fmt: skip
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {role} subprocess failed (exit {proc.returncode}): see above")
    for line in reversed(proc.stdout.strip().splitlines()):  # Ray may print to stdout too
        if line.startswith('{"role"'):
            return json.loads(line)
    raise SystemExit(f"the {role} subprocess printed no result")


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def compare(inputs: Path, local: Path, ray_out: Path) -> tuple[float, int]:
    """(max |score difference|, rows whose id or label differ) over every output file."""
    worst, mismatched = 0.0, 0
    for f in input_files(inputs):
        a, b = pq.read_table(local / f.name), pq.read_table(ray_out / f.name)
        if a.num_rows != b.num_rows:
            return float("inf"), abs(a.num_rows - b.num_rows)
        diff = np.abs(a["score"].to_numpy() - b["score"].to_numpy())
        worst = max(worst, float(diff.max(initial=0.0)))
        same = pc.and_(pc.equal(a["id"], b["id"]),
                               pc.equal(a["label"], b["label"]))  # fmt: skip
        mismatched += a.num_rows - int(pc.sum(same).as_py() or 0)
    return worst, mismatched


def _memory_line(ray_res: dict[str, Any]) -> str:
    def mbs(key: str) -> str:
        return ", ".join(f"{mb:.0f}" for mb in ray_res.get(key, [])) or "none seen"

    return (
        f"memory: actor private memory at its highest (RssAnon, MB, each actor of every run): "
        f"{mbs('actor_peak_anon_mb')}; actor peak RSS with the object-store pages it touched "
        f"(VmHWM): {mbs('actor_peak_rss_mb')}; driver peak {ray_res['driver_peak_rss_mb']:.0f} "
        f"MB; all Ray processes together at most {ray_res['ray_total_peak_rss_mb']:.0f} MB"
    )


def report_ray_only(args, inputs: Path, ray_res: dict[str, Any]) -> None:
    ray_s = statistics.median(ray_res["seconds"])
    print(
        f"input: {ray_res['rows']:,} reviews in {len(input_files(inputs))} files ({inputs}); "
        f"ray engine ({args.workers} actors x {args.threads_per_worker} thread): {ray_s:.2f} s "
        f"{ray_res['rows'] / ray_s:,.0f} reviews/s (local engine not run)"
    )
    print(_memory_line(ray_res))
    print(json.dumps({"ray": ray_res}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", type=Path, default=None, help="a folder of Parquet files")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors")
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="Numba threads of the local engine")
    ap.add_argument("--batch-rows", type=int, default=8192)
    ap.add_argument("--cell", default="lstm", choices=("lstm", "gru", "rnn"))
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per engine and round")
    ap.add_argument("--rounds", type=int, default=1, help="alternating ray/local rounds")
    ap.add_argument(
        "--ray-only", action="store_true", help="skip the local engine (for memory on big inputs)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        spec = json.loads(args.child)
        result = CHILDREN[spec["role"]](spec)
        print(json.dumps({"role": spec["role"], **result}), flush=True)
        return

    inputs = args.input or make_input(args.rows, args.files, args.seed)
    model_dir = make_model(inputs, args.cell)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        scratch = Path(scratch)
        spec = {
            "input": str(inputs),
            "model": str(model_dir),
            "warm": str(write_warm_file(inputs, scratch / "warm" / "warm.parquet")),
            "scratch": str(scratch),
            "threads": args.threads,
            "workers": args.workers,
            "threads_per_worker": args.threads_per_worker,
            "batch_rows": args.batch_rows,
            "repeats": args.repeats,
        }
        # rounds alternate the engines, so a machine that changes speed during the run
        # moves both; the ratio is the median of the rounds' ratios
        rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for _ in range(args.rounds):
            ray_res = run_child("ray", {**spec, "out": str(scratch / "ray")})
            if args.ray_only:
                report_ray_only(args, inputs, ray_res)
                return
            local = run_child("local", {**spec, "out": str(scratch / "local")})
            rounds.append((local, ray_res))
        worst, mismatched = compare(inputs, scratch / "local", scratch / "ray")

    rows = local["rows"]
    local_s = statistics.median(t for lo, _ in rounds for t in lo["seconds"])
    ray_s = statistics.median(t for _, ra in rounds for t in ra["seconds"])
    local_rps, ray_rps = rows / local_s, ray_res["rows"] / ray_s
    ratios = [
        statistics.median(lo["seconds"]) / statistics.median(ra["seconds"]) for lo, ra in rounds
    ]
    ratio = statistics.median(ratios)
    for key in ("actor_peak_rss_mb", "actor_peak_anon_mb"):
        ray_res[key] = sorted(m for _, ra in rounds for m in ra[key])
    ray_res["driver_peak_rss_mb"] = max(ra["driver_peak_rss_mb"] for _, ra in rounds)
    ray_res["ray_total_peak_rss_mb"] = max(ra["ray_total_peak_rss_mb"] for _, ra in rounds)
    local["peak_rss_mb"] = max(lo["peak_rss_mb"] for lo, _ in rounds)
    n_files = len(input_files(inputs))
    print(
        f"input: {rows:,} reviews in {n_files} files ({inputs}); model {args.cell} "
        f"E={EMBED_DIM} H={HIDDEN_DIM}; {os.cpu_count()} CPUs; ray {ray_res['ray_version']}"
    )
    print(
        f"local engine ({local['threads']} Numba threads): {local_s:8.2f} s "
        f"{local_rps:10,.0f} reviews/s  peak RSS {local['peak_rss_mb']:.0f} MB"
    )
    print(
        f"ray engine ({args.workers} actors x {args.threads_per_worker} thread): "
        f"{ray_s:8.2f} s {ray_rps:10,.0f} reviews/s  (cluster start {ray_res['init_s']:.1f} s "
        f"untimed; a {WARM_ROWS}-row run, mostly actor start, {ray_res['warm_s']:.1f} s)"
    )
    print(
        f"ray / local: {ratio:.2f} (median of rounds {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"target >= {TARGET:.2f}: "
        f"{'met' if ratio >= TARGET else 'NOT met'})"
    )
    print(_memory_line(ray_res))
    print(f"check: max |score difference| {worst:.2e}, rows with another id or label: {mismatched}")
    print(
        json.dumps(
            {
                "rows": rows,
                "local_s": local_s,
                "ray_s": ray_s,
                "local_rps": local_rps,
                "ray_rps": ray_rps,
                "ratio": ratio,
                "local": local,
                "ray": ray_res,
                "max_abs_diff": worst,
                "mismatched_rows": mismatched,
            }
        )
    )


if __name__ == "__main__":
    main()
