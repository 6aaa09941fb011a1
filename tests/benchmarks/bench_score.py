"""End-to-end scoring benchmark: rnnpipe against a PyTorch CPU pipeline, Parquet to Parquet.

Run (PyTorch from the optional ``bench`` extra: ``pip install torch==2.13.0``):

    python tests/benchmarks/bench_score.py [--rows 20000] [--files 2] [--threads 2]
        [--repeats 3] [--cells lstm,gru] [--input DIR] [--no-torch]

Input: ``--rows`` reviews made by ``make_reviews.py`` (IMDB unsup repeated and shuffled,
seeded) in ``--files`` Parquet files under ``tests/benchmarks/_gen/``, written only when
absent; or ``--input`` (a folder of Parquet files with ``id`` and ``text`` columns).
Both engines read those files and write one scored Parquet file per input (``id``,
``score``, ``label``, zstd, written to a temporary name, fsynced and renamed); the clock
runs from the first Parquet read to the last rename, tokenizing included. Loading the model
(rnnpipe: the model directory and its folded inference table; PyTorch: the vocabulary frame
and the modules) happens before the clock starts, after one untimed warm-up run on a
64-row file (Numba's cache, oneDNN's primitives).

* rnnpipe: ``pipeline.score.score`` (what ``rnnpipe score`` runs) with a random-weight
  model, ``Model(ModelConfig(cell, E=128, H=128, max_len=256), tokenizer=tok, seed=0)``
  (one direction, last state), or for ``--cells default`` the classifier ``rnnpipe train``
  makes (bidirectional GRU E=H=128, max pooling, the last 400 tokens), its 20,000-word
  vocabulary fitted on the input, and its word n-gram head (bigrams in 2^22 buckets; zero
  weights, so the scores stay comparable: the hashing and sums cost the same), saved once
  and loaded with ``Model.load``. The PyTorch peer of ``default`` is
  ``nn.GRU(bidirectional=True)`` with the max over each review's own steps (its padding
  masked), without a head: rnnpipe does that work on top. ``--cells ensemble``: what
  ``rnnpipe train --ensemble`` saves, two such models whose logits are averaged (and the
  head), and the same two on the PyTorch side.
* PyTorch, built the way a good engineer would: per file, Polars reads it and tokenizes
  (lowercase, ``<br />`` replaced, ``str.extract_all(r"[a-z0-9']+")``, explode, a left join
  to the SAME vocabulary, OOV = 1, regroup, the last 256 tokens kept); NumPy pre-pads
  (Keras style) without a Python loop; batches of 256, padded to their longest review, go
  through ``nn.Embedding + nn.LSTM/GRU(batch_first=True) + nn.Linear + sigmoid`` under
  ``torch.inference_mode()``; Polars writes the scores. The rnnpipe model's weights are
  copied into the modules, so both compute the same function. Pre-padding is exact here:
  the padding row of the embedding is zero and the biases that could move a zero state
  (all but the LSTM forget gate's) are zero, so the state is still zero at the first real
  token, as in rnnpipe, which never runs padding.

Fairness: each engine runs in its own fresh subprocess (this script re-invoking itself),
one after the other, never together. Numba's and PyTorch's thread pools in one process
slow each other down badly on 2 cores. Both get ``--threads`` threads (``set_threads`` for
Numba and BLAS, ``torch.set_num_threads``, ``POLARS_MAX_THREADS``). ``--repeats`` rounds
alternate the engines, one timed run (in a fresh child) per engine a round; reviews/s and
seconds are medians over the rounds, and the ratio is the median of the rounds' ratios
(range in brackets); tokens/s counts each engine's own real tokens (PyTorch also
computes on the padding it adds). Times on these shared VMs vary by 20-40 % between runs:
compare only the ratio measured in one run.

Sanity check, after the timing: the two engines' scores joined on ``id``: max |difference|
and the fraction of rows differing by more than 1e-3, and the same over the rows that both
tokenizers turned into identical ids (there the only difference is float rounding). The two
tokenizers differ slightly (rnnpipe drops every HTML tag, keeps Unicode letters, and strips
leading and trailing apostrophes), so some rows get other ids and other scores; that is
reported, not failed.

OpenBLAS variables (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``) may be left unset for this
command, letting OpenBLAS pick its kernels for the machine; the header prints them. Tests
never depend on them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import make_reviews  # noqa: E402, I001  (first: the runtime defaults before NumPy)
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.bench import machine_line  # noqa: E402

EMBED_DIM = HIDDEN_DIM = 128
MAX_LEN = 256
NUM_WORDS = 20000
BATCH = 256
WARM_ROWS = 64
OOV_ID = 1
PEER_PATTERN = r"[a-z0-9']+"
DIFF_TOL = 1e-3


# ---------------------------------------------------------------------------------------------
# Shared by the PyTorch child and the sanity check
# ---------------------------------------------------------------------------------------------


def read_words(model_dir: Path) -> list[str]:
    """The vocabulary of an rnnpipe model directory, in id order (id = index + 2)."""
    return json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))["words"]


def vocab_frame(words: list[str]):
    """A Polars LazyFrame ``tok -> id`` (Int32) for the join."""
    import polars as pl

    ids = np.arange(2, len(words) + 2, dtype=np.int32)
    return pl.DataFrame({"tok": words, "id": ids}).lazy()


def polars_token_ids(texts, vocab, max_len: int):
    """Token ids per text (a Polars list[i32] Series), the last ``max_len`` kept.

    ``texts`` a Polars string Series; ``vocab`` from ``vocab_frame``.
    """
    import polars as pl

    return (
        texts.rename("text")
        .to_frame()
        .lazy()
        .with_row_index("row")
        .select(
            "row",
            pl.col("text")
            .str.to_lowercase()
            .str.replace_all("<br />", " ", literal=True)
            .str.extract_all(PEER_PATTERN)
            .alias("tok"),
        )
        .explode("tok")
        .join(vocab, on="tok", how="left", maintain_order="left")
        .group_by("row", maintain_order=True)
        # a null or empty review explodes to one null token: keep it as an empty list
        .agg(pl.col("id").fill_null(OOV_ID).filter(pl.col("tok").is_not_null()))
        .select(pl.col("id").list.tail(max_len))
        .collect()["id"]
    )


def list_parts(lists: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths int64[n], flat values) of an Arrow list array, nulls as empty lists."""
    import pyarrow.compute as pc

    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(lists).to_numpy()
    return lengths, flat


def prepad(lengths: np.ndarray, flat: np.ndarray, width: int) -> np.ndarray:
    """int64[n, width]: each row's ids right-aligned after zeros (Keras pre-padding).

    ``flat`` holds the rows' ids one after the other; no row may be longer than ``width``.
    """
    n = lengths.size
    x = np.zeros((n, width), np.int64)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    cols = np.arange(flat.size) - np.repeat(starts - (width - lengths), lengths)
    x[rows, cols] = flat
    return x


# ---------------------------------------------------------------------------------------------
# Children: each prints one JSON line
# ---------------------------------------------------------------------------------------------


def input_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise SystemExit(f"no Parquet files in {folder}")
    return files


def child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit the vocabulary on the input and save one random-weight model per cell."""
    from pipeline import io, ngrams
    from pipeline.kernels.threads import set_threads
    from pipeline.model import Model, ModelConfig, ensemble
    from pipeline.text import Tokenizer

    set_threads(spec["threads"])
    files = input_files(Path(spec["input"]))
    t0 = time.perf_counter()
    texts = io.read_columns(files, ["text"], text_col="text")["text"]
    tok = Tokenizer(num_words=NUM_WORDS).fit(texts)
    fit_s = time.perf_counter() - t0
    for cell in spec["cells"]:
        if cell in ("default", "ensemble"):  # the classifier rnnpipe train makes, random
            config = ModelConfig(vocab_size=tok.vocab_size)
            model = Model(config, tokenizer=tok, seed=0)
            if cell == "ensemble":  # what train --ensemble saves: two of them, logits averaged
                model = ensemble([model, Model(config, tokenizer=tok, seed=1)])
            # and its word n-gram head, all zeros: every hash and sum is done, the scores
            # stay the recurrent model's, which the PyTorch peer computes and is checked on
            K, bits = config.num_outputs, config.ngram_bits
            head = ngrams.Head(
                2, bits, np.zeros((1 << bits, K), np.float32), np.zeros(K, np.float32), "sqrt"
            )
            model = ngrams.attach(model, head, ngrams.Mix())
            model.save(Path(spec["models"]) / cell)
            continue
        config = ModelConfig(
            cell=cell,
            embed_dim=EMBED_DIM,
            hidden_dim=HIDDEN_DIM,
            vocab_size=tok.vocab_size,
            max_len=MAX_LEN,
            bidirectional=False,
            pooling="last",
            dropout=0.0,
        )
        Model(config, tokenizer=tok, seed=0).save(Path(spec["models"]) / cell)
    return {"vocab_size": tok.vocab_size, "fit_s": fit_s}


def child_rnnpipe(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``pipeline.score.score`` on the input, as ``rnnpipe score`` runs it."""
    import numba

    from pipeline import io
    from pipeline.kernels.threads import set_threads
    from pipeline.model import Model
    from pipeline.score import score

    threads = set_threads(spec["threads"])
    model = Model.load(spec["model"])
    inputs, out = Path(spec["input"]), Path(spec["out"])
    score(spec["warm"], model, Path(spec["scratch"]) / "warm-rnnpipe.parquet")  # untimed
    times, rows = [], 0
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        summary = score(inputs, model, out)
        times.append(time.perf_counter() - t0)
        rows = summary.rows
    tokens = sum(  # counted after the clock: the same encode the scorer ran
        model.encode(io.read_columns([f], ["text"], text_col="text")["text"]).nnz
        for f in input_files(inputs)
    )
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "none"
    return {
        "rows": rows,
        "tokens": int(tokens),
        "seconds": times,
        "threads": threads,
        "info": f"Numba {numba.__version__}, {layer} threading layer",
    }


def child_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the Polars + PyTorch pipeline on the input."""
    import polars as pl
    import torch

    torch.set_num_threads(spec["threads"])
    model_dir = Path(spec["model"])
    config = json.loads((model_dir / "config.json").read_text())
    cell = config["cell"]
    with np.load(model_dir / "weights.npz", allow_pickle=False) as npz:
        w = {k: npz[k] for k in npz.files}
    vocab = vocab_frame(read_words(model_dir))
    max_len = int(config["max_len"])

    V, E = w["embedding"].shape
    H = w["l0.fwd.W_hh"].shape[1]
    bidirectional, pooling = bool(config["bidirectional"]), config["pooling"]
    if pooling not in ("last", "max") or (bidirectional and pooling != "max"):
        raise SystemExit(f"the PyTorch peer pools last (one direction) or max, not {pooling}")

    def build(prefix: str) -> tuple[Any, Any, Any]:
        emb = torch.nn.Embedding(V, E, padding_idx=0)
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
            E, H, batch_first=True, bidirectional=bidirectional
        )
        lin = torch.nn.Linear(H * (2 if bidirectional else 1), 1)
        with torch.no_grad():
            emb.weight.copy_(torch.from_numpy(w[f"{prefix}embedding"]))
            # rnnpipe keeps PyTorch's gate order and layout, so the arrays copy as they are
            for d, suffix in (("fwd", ""), ("bwd", "_reverse"))[: 2 if bidirectional else 1]:
                for mine, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"),
                                     ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):  # fmt: skip
                    getattr(rnn, f"{theirs}_l0{suffix}").copy_(
                        torch.from_numpy(w[f"{prefix}l0.{d}.{mine}"])
                    )
            lin.weight.copy_(torch.from_numpy(w[f"{prefix}out.W"]))
            lin.bias.copy_(torch.from_numpy(w[f"{prefix}out.b"]))
        for m in (emb, rnn, lin):
            m.eval()
        return emb, rnn, lin

    # an ensemble (train --ensemble): its members' logits averaged, as rnnpipe scores it
    members = [build("" if k == 0 else f"m{k}.") for k in range(config.get("members", 1))]

    def score_file(src: Path, dst: Path) -> int:
        frame = pl.read_parquet(src, columns=["id", "text"])
        lengths, flat = list_parts(polars_token_ids(frame["text"], vocab, max_len).to_arrow())
        x = prepad(lengths, flat.astype(np.int64), max_len)  # (n, max_len)
        scores = np.empty(lengths.size, np.float32)
        with torch.inference_mode():
            for b0 in range(0, lengths.size, BATCH):
                b1 = min(b0 + BATCH, lengths.size)
                width = max(1, int(lengths[b0:b1].max()))
                xb = torch.from_numpy(np.ascontiguousarray(x[b0:b1, max_len - width :]))
                logits = 0.0
                for emb, rnn, lin in members:
                    if pooling == "max":
                        # max over each review's own steps: the pre-padding's outputs are
                        # masked (the backward direction reaches them after the real tokens)
                        outputs, _ = rnn(emb(xb))  # (B, width, dirs*H)
                        lens = torch.from_numpy(lengths[b0:b1].astype(np.int64))
                        pad = torch.arange(width)[None, :] < (width - lens)[:, None]
                        pooled = outputs.masked_fill(pad[:, :, None], float("-inf")).amax(dim=1)
                        pooled = torch.where(lens[:, None] > 0, pooled, torch.zeros_like(pooled))
                        logits = logits + lin(pooled)
                        continue
                    _, state = rnn(emb(xb))
                    h = state[0] if cell == "lstm" else state  # (1, B, H)
                    logits = logits + lin(h[-1])
                scores[b0:b1] = torch.sigmoid(logits / len(members))[:, 0].numpy()
        out = pl.DataFrame({"id": frame["id"], "score": scores}).with_columns(
            label=pl.when(pl.col("score") >= 0.5)
            .then(pl.lit("positive"))
            .otherwise(pl.lit("negative"))
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        out.write_parquet(tmp, compression="zstd")
        with open(tmp, "rb") as f:  # same durability as rnnpipe's sink
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        return int(lengths.sum())

    out = Path(spec["out"])
    score_file(Path(spec["warm"]), Path(spec["scratch"]) / "warm-torch.parquet")  # untimed
    files = input_files(Path(spec["input"]))
    times, tokens = [], 0
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        tokens = sum(score_file(f, out / f.name) for f in files)
        times.append(time.perf_counter() - t0)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return {
        "rows": rows,
        "tokens": tokens,
        "seconds": times,
        "threads": torch.get_num_threads(),
        "info": (
            f"PyTorch {torch.__version__}, oneDNN "
            f"{'on' if torch.backends.mkldnn.is_available() else 'off'}, Polars {pl.__version__}"
        ),
    }


CHILDREN = {"prepare": child_prepare, "rnnpipe": child_rnnpipe, "torch": child_torch}


def run_child(role: str, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run this script as a fresh subprocess in ``role``; its last stdout line is JSON."""
    env = dict(os.environ)
    if role == "torch":  # PyTorch's OpenMP pool must wait as it would without rnnpipe
        from pipeline.bench import peer_env

        env = peer_env(env)
    env["POLARS_MAX_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps({**spec, "role": role}),
    ]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {role} subprocess failed (exit {proc.returncode}): see above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Sanity check: do the two engines compute the same function?
# ---------------------------------------------------------------------------------------------


def read_scores(folder: Path) -> np.ndarray:
    """Scores float64[n] ordered by id."""
    table = pq.read_table(folder, columns=["id", "score"]).sort_by("id")
    return table["score"].to_numpy().astype(np.float64)


def compare(inputs: Path, model_dir: Path, rnnpipe_out: Path, torch_out: Path) -> dict[str, float]:
    """Score differences overall and on rows that both tokenizers encode identically."""
    import polars as pl

    from pipeline.text import Tokenizer

    a, b = read_scores(rnnpipe_out), read_scores(torch_out)
    if a.shape != b.shape:
        raise SystemExit(f"rnnpipe scored {a.size} rows, PyTorch {b.size}: a benchmark bug")
    diff = np.abs(a - b)
    # the model's own length: the default keeps 400 tokens, the single-cell models 256
    max_len = int(json.loads((model_dir / "config.json").read_text())["max_len"])
    texts = pq.read_table(input_files(inputs), columns=["id", "text"]).sort_by("id")["text"]
    tokens = Tokenizer.load(model_dir / "vocab.json").encode(texts).truncate(max_len)
    mine = prepad(tokens.lengths.astype(np.int64), tokens.ids.astype(np.int64), max_len)
    peer = polars_token_ids(
        pl.from_arrow(texts.combine_chunks()), vocab_frame(read_words(model_dir)), max_len
    )
    lengths, flat = list_parts(peer.to_arrow())
    same = (mine == prepad(lengths, flat.astype(np.int64), max_len)).all(axis=1)
    return {
        "rows": int(a.size),
        "max_diff": float(diff.max(initial=0.0)),
        "frac_over": float((diff > DIFF_TOL).mean()) if diff.size else 0.0,
        "same_tokens": float(same.mean()) if same.size else 0.0,
        "max_diff_same": float(diff[same].max(initial=0.0)),
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def write_warm_file(inputs: Path, path: Path) -> None:
    """The first ``WARM_ROWS`` rows of the first input file, for the untimed warm-up."""
    pf = pq.ParquetFile(input_files(inputs)[0])
    batch = next(pf.iter_batches(batch_size=WARM_ROWS, columns=["id", "text"]))
    pq.write_table(pa.Table.from_batches([batch]), path)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See the module docstring for what is measured and how.",
    )
    ap.add_argument("--rows", type=int, default=20000, help="reviews to score (default 20000)")
    ap.add_argument("--files", type=int, default=2, help="Parquet files they come in")
    ap.add_argument("--seed", type=int, default=0, help="make_reviews seed")
    ap.add_argument("--input", type=Path, default=None, help="use this folder instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine")
    ap.add_argument(
        "--cells",
        default="lstm,gru",
        help="comma-separated: lstm, gru, default (the trainer's), ensemble (train --ensemble's)",
    )
    ap.add_argument("--no-torch", action="store_true", help="rnnpipe rows only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["role"]](spec)))
        return

    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in ("lstm", "gru", "default", "ensemble")]
    if bad or not cells:
        raise SystemExit(f"--cells takes lstm, gru, default, ensemble, got {args.cells!r}")
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be >= 1")
    torch_ok = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not args.no_torch and not torch_ok:
        print("PyTorch not installed (pip install torch==2.13.0): its rows are skipped")
    inputs = args.input or make_reviews.ensure_reviews(args.rows, args.files, args.seed)
    files = input_files(inputs)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    mb = sum(f.stat().st_size for f in files) / 1e6

    with tempfile.TemporaryDirectory(prefix="bench_score-") as tmp:
        tmp = Path(tmp)
        warm = tmp / "warm.parquet"
        write_warm_file(inputs, warm)
        base = {"input": str(inputs), "threads": args.threads, "repeats": args.repeats}
        base |= {"warm": str(warm), "scratch": str(tmp)}
        prep = run_child("prepare", {**base, "cells": cells, "models": str(tmp / "models")}, 1)
        results: list[tuple[str, str, dict[str, Any]]] = []
        checks: dict[str, dict[str, float]] = {}
        engines = ("rnnpipe", "torch") if torch_ok else ("rnnpipe",)
        for cell in cells:
            model = tmp / "models" / cell
            # Interleaved rounds, one timed run per engine each: a machine that speeds up
            # or slows down for a minute moves both engines of a round together.
            rounds: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
            for _ in range(args.repeats):
                for engine in engines:
                    out = str(tmp / f"out-{engine}-{cell}")
                    spec = {**base, "repeats": 1, "model": str(model), "out": out}
                    rounds[engine].append(run_child(engine, spec, args.threads))
            for engine in engines:
                merged = dict(rounds[engine][0])
                merged["seconds"] = [r["seconds"][0] for r in rounds[engine]]
                results.append((engine, cell, merged))
            if torch_ok:
                checks[cell] = compare(
                    inputs, model, tmp / f"out-rnnpipe-{cell}", tmp / f"out-torch-{cell}"
                )

    print(
        f"{rows:,} reviews in {len(files)} file(s), {mb:.1f} MB ({inputs}); vocabulary "
        f"{prep['vocab_size']:,}, E={EMBED_DIM} H={HIDDEN_DIM}, last {MAX_LEN} tokens; "
        f"threads={args.threads}; median of {args.repeats}"
    )
    print(machine_line())
    for info in dict.fromkeys(r["info"] for _, _, r in results):
        print(f"  {info}")
    header = (
        f"| {'engine':<8} | {'cell':<4} | {'reviews/s':>9} | {'tokens/s':>10} | "
        f"{'seconds':>7} | {'rnnpipe/PyTorch':>22} |"
    )
    print(header)
    print("|----------|------|----------:|-----------:|--------:|-----------------------:|")
    median_s = {(e, c): statistics.median(r["seconds"]) for e, c, r in results}
    secs = {(e, c): r["seconds"] for e, c, r in results}
    for engine, cell, r in results:
        s = median_s[engine, cell]
        ratio = "-"
        if ("torch", cell) in secs:
            pairs = zip(secs["torch", cell], secs["rnnpipe", cell], strict=True)
            per_round = [t / o for t, o in pairs]
            ratio = f"{statistics.median(per_round):.2f}x"
            if len(per_round) > 1:
                ratio += f" ({min(per_round):.2f}-{max(per_round):.2f})"
        name = "PyTorch" if engine == "torch" else engine
        print(
            f"| {name:<8} | {cell:<4} | {r['rows'] / s:>9,.0f} | {r['tokens'] / s:>10,.0f} | "
            f"{s:>7.2f} | {ratio if engine == 'rnnpipe' else '':>22} |"
        )
    for cell, c in checks.items():
        print(
            f"sanity {cell}: {c['rows']:,} rows, max |score difference| {c['max_diff']:.2e}, "
            f"{100 * c['frac_over']:.2f} % of rows differ by > {DIFF_TOL:g}; "
            f"{100 * c['same_tokens']:.1f} % of rows tokenized identically, on them max "
            f"|difference| {c['max_diff_same']:.2e}"
        )
        if c["max_diff_same"] > DIFF_TOL:
            print(
                f"WARNING: {cell} scores differ on identically tokenized rows: the two "
                "pipelines do not compute the same function"
            )


if __name__ == "__main__":
    main()
