"""Training benchmark: rnnpipe's trainer step against PyTorch CPU, same model, same batches.

Run (PyTorch from the optional ``bench`` extra: ``pip install torch==2.13.0``):

    python tests/benchmarks/bench_train.py [--model default|lstm128|lstm64x32]
        [--batches 60] [--batch-size 64] [--max-len 400] [--num-words 30000]
        [--threads 2] [--seed 0] [--no-torch]

Data: the ``review`` and ``label`` columns of ../shared/data/imdb_train.parquet (or
``$RNNPIPE_DATA_DIR``), encoded with rnnpipe's ``Tokenizer(num_words)`` fitted on all of it and
truncated to the last ``--max-len`` tokens; without that file, 25,000 generated reviews with
random labels. Minibatches: ``pipeline.batching.length_bucketed_batches`` over every review
with ``default_rng(--seed)``; the first 3 batches warm up untimed (Numba's cache, oneDNN's
primitives), the next ``--batches`` are timed one by one. Every engine gets exactly those
batches in that order.

Models (``--model``):
* ``default``: rnnpipe's shipped classifier, bidirectional GRU E=128 H=128, max pooling
  over each review's valid steps, dropout 0.4 before the dense layer, one logit, BCE (the
  word vectors that start its embedding are learned before training and are not timed).
* ``lstm128``: LSTM E=128 H=128, last state, no dropout (ANCHORS: PyTorch about 58,000
  padded tokens/s at 256 tokens).
* ``lstm64x32``: LSTM E=64 H=32, last state, no dropout.

Per timed batch each engine does what a training step needs, from the ragged token store to
updated weights, and nothing else:
* rnnpipe, as ``pipeline.train._train_epoch`` does: ``tokens.take(idx)``,
  ``model.loss_and_grads(batch, y[idx], None, rng)``, ``clip_global_norm(grads, 5.0)``,
  ``Adam.step(grads, lr)`` with lr 3e-3 (``make_optimizer`` and a constant ``LRSchedule``).
* PyTorch, built the way a good engineer would: the batch is gathered and right-padded to its
  longest review (NumPy, vectorised), then ``nn.Embedding(padding_idx=0)`` +
  ``nn.GRU/LSTM(batch_first=True)`` either over ``pack_padded_sequence`` (``packed``: exact
  results on ragged batches, bidirectional included) or over the padded tensor (``padded``:
  exact for one direction, since right padding never reaches a valid step's state, but the
  backward direction of a bidirectional layer starts on the padding: exact only while the
  biases are still zero, as at initialisation), pooling with a length
  mask (last state gathered at each review's own end), ``nn.Dropout``, ``nn.Linear``,
  ``BCEWithLogitsLoss``, ``clip_grad_norm_(5.0)``, ``torch.optim.Adam(lr=3e-3)``.
Both start from the same weights (rnnpipe's Keras-like initialisation, copied into the
PyTorch modules: rnnpipe keeps PyTorch's gate order and layout), so they train the same
function; as a check each engine reports its loss on the first batch in inference mode
(no dropout) before training: rnnpipe and ``packed`` must agree to float rounding.

Fairness: rnnpipe and each PyTorch variant run in a fresh subprocess of their own (this
script re-invoking itself), one after the other, never together: Numba's and PyTorch's
OpenMP thread pools in one process slow each other down badly on 2 cores. Both get
``--threads`` threads (``set_threads`` for Numba and BLAS, ``torch.set_num_threads``).

Figures: real tokens/s (tokens of the reviews, no padding) as the median over batches of each
batch's throughput and as total tokens / total time; padded tokens/s (batch x longest
review) for PyTorch, which computes on its padding too; seconds per epoch extrapolated to
22,500 reviews (the trainer's default 90 % training split of IMDB) at the mean review length
and the total rate; the ratio rnnpipe / PyTorch on real tokens/s. Times on these shared VMs
vary by 20-40 % between runs: compare only ratios measured in one run.

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

from make_reviews import data_dir  # noqa: E402, I001  (first: the runtime defaults before NumPy)
import numpy as np  # noqa: E402

from pipeline.bench import machine_line  # noqa: E402

WARMUP_BATCHES = 3
LR = 3e-3
CLIP = 5.0
EPOCH_REVIEWS = 22_500  # IMDB train less the trainer's default 10 % validation split

MODELS: dict[str, dict[str, Any]] = {  # fmt: skip
    "default": {
        "cell": "gru",
        "embed_dim": 128,
        "hidden_dim": 128,
        "bidirectional": True,
        "pooling": "max",
        "dropout": 0.4,
    },
    "lstm128": {
        "cell": "lstm",
        "embed_dim": 128,
        "hidden_dim": 128,
        "pooling": "last",
        "bidirectional": False,
        "dropout": 0.0,
    },
    "lstm64x32": {
        "cell": "lstm",
        "embed_dim": 64,
        "hidden_dim": 32,
        "pooling": "last",
        "bidirectional": False,
        "dropout": 0.0,
    },
}


# ---------------------------------------------------------------------------------------------
# Shared by the children
# ---------------------------------------------------------------------------------------------


def model_config(spec: dict[str, Any]):
    """The rnnpipe ``ModelConfig`` of ``spec['model']`` for the prepared vocabulary."""
    from pipeline.model import ModelConfig

    return ModelConfig(
        **MODELS[spec["model"]],
        vocab_size=spec["vocab_size"],
        max_len=spec["max_len"],
        classes=("0", "1"),
    )


def load_data(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def batch_list(data: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The warm-up batches then the timed ones, as row-index arrays, in order."""
    bo, rows = data["batch_offsets"], data["batch_rows"]
    return [rows[bo[k] : bo[k + 1]] for k in range(bo.size - 1)]


def gather(offsets: np.ndarray, ids: np.ndarray, idx: np.ndarray):
    """(lengths int64[B], flat ids int64[nnz]) of rows ``idx``, one after the other."""
    starts = offsets[idx]
    lens = offsets[idx + 1] - starts
    within = np.zeros(idx.size + 1, np.int64)
    np.cumsum(lens, out=within[1:])
    seq = np.repeat(np.arange(idx.size), lens)
    src = starts[seq] + (np.arange(within[-1]) - within[:-1][seq])
    return lens, ids[src].astype(np.int64)


def bce(z: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy with logits, computed stably in float64."""
    z = z.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


# ---------------------------------------------------------------------------------------------
# Children: each prints one JSON line
# ---------------------------------------------------------------------------------------------


def child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Tokenize the data, cut the batches, write them to ``spec['data']`` (an .npz)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import bench
    from pipeline.batching import length_bucketed_batches
    from pipeline.kernels.threads import set_threads
    from pipeline.text import Tokenizer

    set_threads(spec["threads"])
    path = data_dir() / "imdb_train.parquet"
    if path.exists():
        table = pq.read_table(path, columns=["review", "label"])
        texts, y = table["review"], table["label"].to_numpy().astype(np.int64)
        source = f"{path} ({len(y):,} reviews)"
    else:
        texts = bench.generated_reviews(25_000, seed=spec["seed"])
        y = np.random.default_rng(spec["seed"]).integers(0, 2, len(texts))
        texts, source = pa.chunked_array([texts]), "25,000 generated reviews (no IMDB data)"
    tok = Tokenizer(num_words=spec["num_words"]).fit(texts)
    tokens = tok.encode(texts).truncate(spec["max_len"])
    keep = np.flatnonzero(tokens.lengths > 0)  # pack_padded_sequence refuses empty rows
    dropped = len(tokens) - keep.size
    tokens, y = tokens.take(keep), y[keep]
    need = WARMUP_BATCHES + spec["batches"]
    batches = length_bucketed_batches(
        tokens.lengths, spec["batch_size"], np.random.default_rng(spec["seed"])
    )
    if len(batches) < need:
        raise SystemExit(f"--batches {spec['batches']}: only {len(batches)} batches in the data")
    batches = batches[:need]
    bo = np.zeros(need + 1, np.int64)
    np.cumsum([b.size for b in batches], out=bo[1:])
    np.savez(
        spec["data"],
        offsets=tokens.offsets,
        ids=tokens.ids,
        y=y,
        batch_offsets=bo,
        batch_rows=np.concatenate(batches),
    )
    return {
        "vocab_size": tok.vocab_size,
        "rows": len(tokens),
        "dropped_empty": int(dropped),
        "mean_len": float(tokens.lengths.mean()),
        "source": source,
    }


def child_rnnpipe(spec: dict[str, Any]) -> dict[str, Any]:
    """Time rnnpipe's training step, exactly as ``pipeline.train._train_epoch`` runs it."""
    import math

    import numba

    from pipeline.kernels.threads import set_threads
    from pipeline.model import Model
    from pipeline.optim import LRSchedule, clip_global_norm, make_optimizer
    from pipeline.text import TokenIds

    threads = set_threads(spec["threads"])
    data = load_data(spec["data"])
    tokens = TokenIds(data["offsets"], data["ids"])
    y = data["y"]
    batches = batch_list(data)
    model = Model(model_config(spec), seed=0)
    first = tokens.take(batches[0])
    check_loss = bce(model.forward(first, training=False)[0][:, 0], y[batches[0]])
    optimizer = make_optimizer("adam", model.params, LR)
    schedule = LRSchedule(LR)
    rng = np.random.default_rng(0)
    seconds, real, losses = [], [], []
    for k, idx in enumerate(batches):
        t0 = time.perf_counter()
        batch = tokens.take(idx)
        lr = schedule(optimizer.step_count)
        loss, grads = model.loss_and_grads(batch, y[idx], None, rng)
        if not math.isfinite(loss):
            raise SystemExit(f"rnnpipe diverged at batch {k} (loss {loss})")
        clip_global_norm(grads, CLIP)
        optimizer.step(grads, lr)
        dt = time.perf_counter() - t0
        if k >= WARMUP_BATCHES:
            seconds.append(dt)
            real.append(batch.nnz)
            losses.append(loss)
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "none"
    return {
        "seconds": seconds,
        "real": real,
        "padded": None,
        "check_loss": check_loss,
        "last_loss": losses[-1],
        "threads": threads,
        "info": f"Numba {numba.__version__}, {layer} threading layer",
    }


def child_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the PyTorch training step (``spec['variant']``: packed or padded)."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from pipeline.model import init_params  # NumPy only: no Numba kernel runs here

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    packed = spec["variant"] == "packed"
    cfg = model_config(spec)
    w = init_params(cfg, seed=0)  # the same weights rnnpipe's Model(config, seed=0) starts from
    H, dirs, modes = cfg.hidden_dim, len(cfg.directions), cfg.modes

    emb = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell](
        cfg.embed_dim, H, batch_first=True, bidirectional=cfg.bidirectional
    )
    drop = nn.Dropout(cfg.dropout)
    lin = nn.Linear(cfg.feature_dim, 1)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(w["embedding"]))
        for d, suffix in zip(cfg.directions, ("", "_reverse"), strict=False):
            for mine, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"),
                                 ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):  # fmt: skip
                getattr(rnn, f"{theirs}_l0{suffix}").copy_(torch.from_numpy(w[f"l0.{d}.{mine}"]))
        lin.weight.copy_(torch.from_numpy(w["out.W"]))
        lin.bias.copy_(torch.from_numpy(w["out.b"]))
    modules = nn.ModuleList([emb, rnn, drop, lin])
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(modules.parameters(), lr=LR)

    def logits(x, lens):  # x (B, T) int64 right-padded, lens (B,) int64
        e = emb(x)  # (B, T, E)
        if packed:
            out, _ = rnn(pack_padded_sequence(e, lens, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        else:
            out, _ = rnn(e)  # (B, T, dirs*H)
        mask = (torch.arange(x.shape[1])[None, :] < lens[:, None]).unsqueeze(2)  # (B, T, 1)
        rows = torch.arange(x.shape[0])
        feats = []
        for j in range(dirs):  # direction first, then mode: rnnpipe's feature order
            h = out[:, :, j * H : (j + 1) * H]
            for mode in modes:
                if mode == "last":  # a reverse direction ends its sequence at step 0
                    feats.append(h[rows, lens - 1] if j == 0 else h[:, 0])
                elif mode == "max":
                    feats.append(h.masked_fill(~mask, float("-inf")).amax(dim=1))
                else:
                    feats.append((h * mask).sum(dim=1) / lens[:, None].to(h.dtype))
        return lin(drop(torch.cat(feats, dim=1)))[:, 0]

    data = load_data(spec["data"])
    offsets, ids, y = data["offsets"], data["ids"], data["y"]
    batches = batch_list(data)

    def make_batch(idx):
        lens, flat = gather(offsets, ids, idx)
        T = int(lens.max())
        x = np.zeros((idx.size, T), np.int64)
        starts = np.cumsum(lens) - lens
        x[np.repeat(np.arange(idx.size), lens), np.arange(flat.size) - np.repeat(starts, lens)] = (
            flat
        )
        target = torch.from_numpy(y[idx].astype(np.float32))
        return torch.from_numpy(x), torch.from_numpy(lens), target, int(lens.sum()), x.size

    modules.eval()
    with torch.no_grad():
        x, lens, _, _, _ = make_batch(batches[0])
        check_loss = bce(logits(x, lens).numpy(), y[batches[0]])
    modules.train()
    seconds, real, padded, losses = [], [], [], []
    for k, idx in enumerate(batches):
        t0 = time.perf_counter()
        x, lens, target, n_real, n_padded = make_batch(idx)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(logits(x, lens), target)
        loss.backward()
        nn.utils.clip_grad_norm_(modules.parameters(), CLIP)
        opt.step()
        dt = time.perf_counter() - t0
        if k >= WARMUP_BATCHES:
            seconds.append(dt)
            real.append(n_real)
            padded.append(n_padded)
            losses.append(loss.item())
    return {
        "seconds": seconds,
        "real": real,
        "padded": padded,
        "check_loss": check_loss,
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
        "info": (
            f"PyTorch {torch.__version__}, oneDNN "
            f"{'on' if torch.backends.mkldnn.is_available() else 'off'}"
        ),
    }


CHILDREN = {"prepare": child_prepare, "rnnpipe": child_rnnpipe, "torch": child_torch}


def run_child(role: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script as a fresh subprocess in ``role``; its last stdout line is JSON."""
    env = dict(os.environ)
    if role.startswith("torch"):  # PyTorch's OpenMP pool must wait as it would without rnnpipe
        from pipeline.bench import peer_env

        env = peer_env(env)
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
# Main
# ---------------------------------------------------------------------------------------------


def summarize(r: dict[str, Any]) -> dict[str, float]:
    s, real = np.array(r["seconds"]), np.array(r["real"], np.float64)
    out = {
        "median_tps": float(np.median(real / s)),
        "total_tps": float(real.sum() / s.sum()),
        "padded_tps": float("nan"),
    }
    if r["padded"] is not None:
        out["padded_tps"] = float(np.sum(r["padded"]) / s.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See the module docstring for what is measured and how.",
    )
    ap.add_argument("--model", choices=sorted(MODELS), default="default")
    ap.add_argument("--batches", type=int, default=60, help="timed batches (default 60)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=400, help="last tokens kept per review")
    ap.add_argument("--num-words", type=int, default=30000, help="tokenizer vocabulary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="batch order seed")
    ap.add_argument("--no-torch", action="store_true", help="rnnpipe only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["role"]](spec)))
        return

    for name in ("batches", "batch_size", "max_len", "num_words", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    torch_ok = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not args.no_torch and not torch_ok:
        print("PyTorch not installed (pip install torch==2.13.0): its rows are skipped")

    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        spec: dict[str, Any] = {
            "data": str(Path(tmp) / "batches.npz"),
            "model": args.model,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "max_len": args.max_len,
            "num_words": args.num_words,
            "threads": args.threads,
            "seed": args.seed,
        }
        prep = run_child("prepare", spec)
        spec["vocab_size"] = prep["vocab_size"]
        results = [("rnnpipe", run_child("rnnpipe", spec))]
        if torch_ok:
            for variant in ("packed", "padded"):
                results.append(
                    (f"PyTorch {variant}", run_child("torch", {**spec, "variant": variant}))
                )

    m = MODELS[args.model]
    shape = (
        f"{m['cell'].upper()} E={m['embed_dim']} H={m['hidden_dim']}"
        f"{' bidirectional' if m.get('bidirectional') else ''}, {m['pooling']} pooling"
        f"{', dropout ' + str(m['dropout']) if m.get('dropout') else ''}"
    )
    print(
        f"model {args.model}: {shape}; Adam lr {LR:g}, clip {CLIP:g}; vocabulary "
        f"{prep['vocab_size']:,}; last {args.max_len} tokens"
    )
    print(
        f"data: {prep['source']}, {prep['dropped_empty']} empty dropped, "
        f"mean {prep['mean_len']:.0f} tokens/review; batch "
        f"{args.batch_size}, {WARMUP_BATCHES} warm-up + {args.batches} timed batches "
        f"(seed {args.seed}); threads={args.threads}"
    )
    print(machine_line())
    for info in dict.fromkeys(r["info"] for _, r in results):
        print(f"  {info}")

    stats = {name: summarize(r) for name, r in results}
    mine = stats["rnnpipe"]
    epoch_tokens = EPOCH_REVIEWS * prep["mean_len"]
    header = (
        f"| {'engine':<15} | {'model':<9} | {'batch':>5} | {'real tok/s med':>14} | "
        f"{'real tok/s tot':>14} | {'padded tok/s':>12} | {'s/epoch':>7} | "
        f"{'rnnpipe/PyTorch':>15} |"
    )
    print(header)
    print("|-----------------|-----------|------:|---------------:|---------------:|"
          "-------------:|--------:|----------------:|")  # fmt: skip
    for name, _ in results:
        st = stats[name]
        padded = "-" if np.isnan(st["padded_tps"]) else f"{st['padded_tps']:,.0f}"
        ratio = ""
        if name != "rnnpipe":
            ratio = (
                f"{mine['median_tps'] / st['median_tps']:.2f}x/"
                f"{mine['total_tps'] / st['total_tps']:.2f}x"
            )
        print(
            f"| {name:<15} | {args.model:<9} | {args.batch_size:>5} | "
            f"{st['median_tps']:>14,.0f} | {st['total_tps']:>14,.0f} | {padded:>12} | "
            f"{epoch_tokens / st['total_tps']:>7.0f} | {ratio:>15} |"
        )
    print(
        "ratio = rnnpipe / PyTorch real tokens/s: median of per-batch rates / total tokens over "
        f"total time; s/epoch = {EPOCH_REVIEWS:,} reviews x mean length / total rate "
        "(training steps only, no validation)."
    )
    for name, r in results:
        print(
            f"check {name}: first-batch loss before training (no dropout) {r['check_loss']:.6f}, "
            f"loss on the last timed batch {r['last_loss']:.4f}, "
            f"median {1e3 * statistics.median(r['seconds']):.0f} ms/batch"
        )
    if torch_ok:
        diff = abs(results[0][1]["check_loss"] - results[1][1]["check_loss"])
        if diff > 1e-4:
            print(
                f"WARNING: rnnpipe and PyTorch packed differ by {diff:.2e} on the first batch: "
                "the two do not compute the same function"
            )
        if m.get("bidirectional"):
            print(
                "note: PyTorch padded runs the backward direction over the padding first: exact "
                "at initialisation (zero pad row and zero biases keep the state at zero), "
                "inexact once the biases train; it is timed as the cheaper alternative."
            )


if __name__ == "__main__":
    main()
