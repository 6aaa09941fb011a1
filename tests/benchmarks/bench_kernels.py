"""Kernel benchmark: rnnpipe's Numba recurrences against PyTorch CPU and the NumPy reference.

Run (PyTorch from the optional ``bench`` extra: ``pip install torch==2.13.0``):

    python tests/benchmarks/bench_kernels.py [--threads 2] [--repeats 5] [--cap 256]

Everything is measured in this one run, on the same shapes and thread count:
* rnnpipe inference: folded embedding table, each real token one table row plus the
  recurrent product, no padding; PyTorch inference: embedding + nn.LSTM/GRU/RNN + linear on
  batches padded to the longest review (capped at ``--cap``), as a good PyTorch user does.
* rnnpipe training: embedding, layer forward, last-state pooling and full backward; PyTorch
  the same on padded batches (autograd), both without the optimizer step.
* the NumPy reference on a slice of the batch (it is slow), scaled per token.
* the machine's matrix-product rate, (B,H)x(H,G*H) with NumPy's BLAS, for the GFLOP/s column.
PyTorch runs in a child process of its own: Numba's and PyTorch's OpenMP thread pools in one
process would slow each other down on 2 cores, and that would flatter rnnpipe.
Lengths are the real token counts of ../shared/data/imdb_train.parquet (rnnpipe tokenizer),
or an IMDB-shaped synthetic draw when that file is absent. Figures are medians.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline import bench  # noqa: E402
from pipeline.kernels import gates  # noqa: E402
from pipeline.kernels.threads import set_threads  # noqa: E402


def imdb_lengths(cap: int, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    data = Path(os.environ.get("RNNPIPE_DATA_DIR", default))
    path = data / "imdb_train.parquet"
    if path.exists():
        import pyarrow.parquet as pq

        from pipeline.text import Tokenizer

        texts = pq.read_table(path, columns=["review"])["review"]
        tok = Tokenizer(num_words=20000).fit(texts)
        lens = tok.encode(texts).lengths
        src = f"IMDB train lengths ({path.name}, rnnpipe tokenizer)"
    else:
        lens = bench.synthetic_lengths(25000, seed)
        src = "synthetic IMDB-shaped lengths (../shared/data absent)"
    rng = np.random.default_rng(seed)
    return np.minimum(rng.choice(lens, n, replace=False), cap).astype(np.int64), src


def torch_model(torch, shape: bench.Shape, params):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[shape.cell]
    emb = torch.nn.Embedding(shape.vocab, shape.embed_dim, padding_idx=0)
    rnn = cls(shape.embed_dim, shape.hidden_dim, batch_first=True)
    lin = torch.nn.Linear(shape.hidden_dim, 1)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(params["emb"]))
        rnn.weight_ih_l0.copy_(torch.from_numpy(params["W_ih"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(params["W_hh"]))
    return emb, rnn, lin


def padded(torch, offsets, ids):
    lens = np.diff(offsets)
    T = int(lens.max())
    x = np.zeros((lens.size, T), np.int64)
    for i in range(lens.size):  # benchmark setup only
        x[i, T - lens[i] :] = ids[offsets[i] : offsets[i + 1]]  # Keras-style pre-padding
    return torch.from_numpy(x)


def time_torch(torch, shape, params, offsets, ids, train: bool, repeats: int) -> float:
    emb, rnn, lin = torch_model(torch, shape, params)
    x = padded(torch, offsets, ids)

    def infer():
        with torch.inference_mode():
            out, _ = rnn(emb(x))
            return torch.sigmoid(lin(out[:, -1]))

    def step():
        emb.zero_grad(), rnn.zero_grad(), lin.zero_grad()
        out, _ = rnn(emb(x))
        loss = lin(out[:, -1]).mean()
        loss.backward()

    return bench.median_time(step if train else infer, repeats=repeats)


def _cases(args, lengths):
    """(shape, what, batch, offsets, ids) for every row of the table, deterministically."""
    shapes = [bench.Shape(c, 128, 128) for c in args.cells.split(",")]
    if "lstm" in args.cells:
        shapes.insert(1, bench.Shape("lstm", 64, 32))
    for shape in shapes:
        for what, batch in (("infer", 256), ("train", 64)):
            offsets, ids = bench.make_batch(lengths[:batch], shape.vocab)
            yield shape, what, batch, offsets, ids


def torch_peer(args, lengths) -> dict[str, float]:
    """Seconds per batch for PyTorch, measured in a child process (see the module docstring)."""
    import json
    import subprocess

    cmd = [
        sys.executable,
        __file__,
        "--peer",
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--cap",
        str(args.cap),
        "--cells",
        args.cells,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=bench.peer_env())
    if res.returncode != 0:
        print(f"PyTorch peer failed: {res.stderr.strip().splitlines()[-1:]}")
        return {}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cap", type=int, default=256, help="tokens kept per review")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()

    if args.peer:  # child process: PyTorch only, no Numba kernel ever runs here
        import json

        import torch

        torch.set_num_threads(args.threads)
        lengths, _ = imdb_lengths(args.cap, 4096)
        out = {}
        for shape, what, _batch, offsets, ids in _cases(args, lengths):
            params = bench.make_layer(shape)
            t = time_torch(torch, shape, params, offsets, ids, what == "train", args.repeats)
            out[f"{shape}-{what}"] = t
        print(json.dumps(out))
        return

    set_threads(args.threads)
    lengths, src = imdb_lengths(args.cap, 4096)
    peer = {}
    if not args.no_torch:
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                raise ImportError
            peer = torch_peer(args, lengths)
        except ImportError:
            print("PyTorch not installed (pip install torch==2.13.0): its rows are skipped")
    print(
        f"threads={args.threads}  lengths: {src}, capped at {args.cap}, mean {lengths.mean():.0f}"
    )
    peak = {H: bench.matmul_rate(256, H, 4 * H) for H in (32, 128)}
    big = bench.matmul_rate(1024, 1024, 1024, repeats=5)
    print(
        f"matrix-product rate (NumPy BLAS): (256,H)x(H,4H) H=32 {peak[32]:.0f}, "
        f"H=128 {peak[128]:.0f} GFLOP/s; 1024^3 {big:.0f} GFLOP/s"
    )
    hdr = (
        f"{'model':<22}{'what':<10}{'batch':>6}{'rnnpipe tok/s':>15}{'rev/s':>9}"
        f"{'GFLOP/s':>9}{'%peak':>7}{'torch tok/s':>13}{'rev/s':>8}{'ratio':>7}"
        f"{'numpy-ref tok/s':>17}{'ratio':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    shapes = []
    for shape, what, batch, offsets, ids in _cases(args, lengths):
        if shape not in shapes:
            shapes.append(shape)
        params = bench.make_layer(shape)
        lens = np.diff(offsets)
        tokens = int(offsets[-1])
        timer = bench.time_train if what == "train" else bench.time_infer
        t = timer(shape, offsets, ids, params, repeats=args.repeats)
        flops = bench.recurrent_flops(shape, tokens) * (3 if what == "train" else 1)
        gf = flops / t / 1e9
        row = (
            f"{shape.cell} E={shape.embed_dim} H={shape.hidden_dim:<7}{what:<10}{batch:>6}"
            f"{tokens / t:>15,.0f}{batch / t:>9,.0f}{gf:>9.1f}"
            f"{100 * gf / peak.get(shape.hidden_dim, peak[128]):>6.0f}%"
        )
        tt = peer.get(f"{shape}-{what}")
        if tt:
            row += f"{tokens / tt:>13,.0f}{batch / tt:>8,.0f}{tt / t:>6.2f}x"
        else:
            row += f"{'-':>13}{'-':>8}{'-':>7}"
        sub = 8  # the reference is slow: time a slice and compare per real token
        o_s, i_s = bench.make_batch(lens[:sub], shape.vocab)
        tr = timer(shape, o_s, i_s, params, backend="reference", repeats=1)
        ref_tps = o_s[-1] / tr
        row += f"{ref_tps:>17,.0f}{tokens / t / ref_tps:>7.0f}x"
        print(row)
    G = {s.cell: gates(s.cell) for s in shapes}
    print(
        f"GFLOP/s counts the recurrent product only (2*G*H*H per real token, G={G}; "
        "training counts 3x forward); %peak is against the (256,H)x(H,4H) rate above."
    )
    print(
        "torch tok/s counts real tokens too (its padded batch does more work); "
        "ratio = rnnpipe / PyTorch throughput."
    )


if __name__ == "__main__":
    main()
