"""Kernel benchmark: rnnpipe's Numba recurrences against PyTorch CPU and the NumPy reference.

Run (PyTorch from the optional ``bench`` extra: ``pip install torch==2.13.0``):

    python tests/benchmarks/bench_kernels.py [--threads 2] [--repeats 7] [--cap 256]

Everything is measured in this one run, on the same shapes and thread count:
* rnnpipe inference: folded embedding table, each real token one table row plus the
  recurrent product, no padding; PyTorch inference: embedding + nn.LSTM/GRU/RNN + linear on
  batches padded to the longest review (capped at ``--cap``), as a good PyTorch user does.
* rnnpipe training: embedding, layer forward, last-state pooling and full backward; PyTorch
  the same on padded batches (autograd), both without the optimizer step.
* the NumPy reference on a slice of the batch (it is slow), scaled per token.
* the machine's matrix-product rate, (B,H)x(H,G*H) with NumPy's BLAS, for the GFLOP/s column.
* the step's matrix products alone, on the kernel's plan, shapes and product routines with
  everything else left out (``kernel_timing.product_fn`` at inference: the recurrent products;
  ``kernel_timing.train_product_fn`` in training: those forward and backward, ``dW_hh``, and the
  input side's BLAS products): "prod%" is the %peak a call that took only their time
  would show, and "floor" the ratio to PyTorch it would reach: the most that cutting
  every other cost (gate math, gathers, sums, allocations) could give.
PyTorch runs in a child process of its own: Numba's and PyTorch's OpenMP thread pools in one
process would slow each other down on 2 cores, and that would flatter rnnpipe.
The measurements are interleaved: each repeat times PyTorch (in the child, which waits
between requests), then rnnpipe (and its products alone), then the matrix product, so a machine that
speeds up or slows down during the run (these shared VMs do, by up to 30 %) moves all three
together. Ratios and %peak are the medians of the per-repeat ratios; times are medians.
Batches are real reviews of ../shared/data/imdb_train.parquet, tokenized by rnnpipe's
tokenizer (their lengths and their token ids, the same for both engines), or an IMDB-shaped
synthetic draw with Zipf-distributed ids when that file is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# rnnpipe's runtime defaults before NumPy: OPENBLAS_THREAD_TIMEOUT is read when NumPy loads
# OpenBLAS. Without it OpenBLAS's idle threads spin for about 0.1 s after every
# multi-threaded product and take a core from whatever runs next (here: the PyTorch peer).
from pipeline import runtime  # noqa: E402

runtime.apply_defaults()

# isort: split
import kernel_timing as kt  # noqa: E402  (beside this script)
import numpy as np  # noqa: E402

from pipeline import bench  # noqa: E402
from pipeline.kernels import gates  # noqa: E402


def imdb_reviews(cap: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(offsets, ids, source)``: ``n`` reviews drawn from ../shared/data/imdb_train.parquet,
    tokenized with rnnpipe's tokenizer (20,000 words, ids below ``kernel_timing.Shape().vocab``)
    and capped at their last ``cap`` tokens, as the scorer and trainer do. Real ids matter
    for training: a batch's distinct ids (the embedding rows it reads and updates) are
    3.9-4.6x fewer than its tokens in real text, about 1.3x with uniform random ids. When
    the file is absent: IMDB-shaped lengths and Zipf-distributed ids."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    data = Path(os.environ.get("RNNPIPE_DATA_DIR", default))
    path = data / "imdb_train.parquet"
    rng = np.random.default_rng(seed)
    vocab = kt.Shape().vocab
    if path.exists():
        import pyarrow.parquet as pq

        from pipeline.text import Tokenizer

        texts = pq.read_table(path, columns=["review"])["review"]
        tok = Tokenizer(num_words=20000).fit(texts)
        pick = rng.choice(len(texts), n, replace=False)
        tokens = tok.encode(texts).take(pick).truncate(cap)
        offsets, ids = tokens.offsets, tokens.ids.astype(np.int32)
        src = f"{n} IMDB train reviews ({path.name}, rnnpipe tokenizer, real token ids)"
    else:
        lens = np.minimum(rng.choice(bench.synthetic_lengths(25000, seed), n), cap)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        ids = (np.minimum(rng.zipf(1.2, int(offsets[-1])), vocab - 2) + 1).astype(np.int32)
        src = "synthetic IMDB-shaped reviews, Zipf ids (../shared/data absent)"
    if ids.size and ids.max() >= vocab:
        raise RuntimeError(f"token id {ids.max()} outside the benchmark vocabulary {vocab}")
    return offsets, ids, src


def first(offsets: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` reviews of ``(offsets, ids)``."""
    return offsets[: k + 1].copy(), ids[: offsets[k]].copy()


def torch_model(torch, shape: kt.Shape, params):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[shape.cell]
    emb = torch.nn.Embedding(shape.vocab, shape.embed_dim, padding_idx=0)
    rnn = cls(shape.embed_dim, shape.hidden_dim, batch_first=True)
    lin = torch.nn.Linear(shape.hidden_dim, 1)
    # Every parameter the same as rnnpipe's, so both sides compute the same function and
    # the same gradients: biases copied; the readout sums the last state (weights 1, bias
    # 0), so the loss's mean over the batch sends dL/dh_last = 1/n, as train_fn does. With
    # PyTorch's random biases and readout instead, its training speed varied from one model
    # object to the next by up to 4x (LSTM: 66-323 reviews/s in one process): the random
    # parts decide how many gradients reach float32's subnormal range, where this CPU is
    # slow, and PyTorch's kernels more so than rnnpipe's.
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(params["emb"]))
        rnn.weight_ih_l0.copy_(torch.from_numpy(params["W_ih"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(params["W_hh"]))
        rnn.bias_ih_l0.copy_(torch.from_numpy(params["b_ih"]))
        rnn.bias_hh_l0.copy_(torch.from_numpy(params["b_hh"]))
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    return emb, rnn, lin


def padded(torch, offsets, ids):
    lens = np.diff(offsets)
    T = int(lens.max())
    x = np.zeros((lens.size, T), np.int64)
    for i in range(lens.size):  # benchmark setup only
        x[i, T - lens[i] :] = ids[offsets[i] : offsets[i + 1]]  # Keras-style pre-padding
    return torch.from_numpy(x)


def torch_fn(torch, shape, params, offsets, ids, train: bool):
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

    return step if train else infer


def _cases(args, reviews):
    """(shape, what, batch, offsets, ids) for every row of the table, deterministically."""
    shapes = [kt.Shape(c, 128, 128) for c in args.cells.split(",")]
    if "lstm" in args.cells:
        shapes.insert(1, kt.Shape("lstm", 64, 32))
    for shape in shapes:
        for what, batch in (("infer", 256), ("train", 64)):
            offsets, ids = first(*reviews, batch)
            yield shape, what, batch, offsets, ids


def serve_peer(args) -> None:
    """Child process: PyTorch only (no Numba kernel runs here). Reads ``case ftz`` per line
    on stdin, runs that case once (warming it up the first time) with subnormal flushing
    on (ftz 1) or off, and prints its seconds."""
    import json
    import time

    import torch

    torch.set_num_threads(args.threads)
    offsets, ids, _ = imdb_reviews(args.cap, 4096)
    cases = list(_cases(args, (offsets, ids)))
    fns: dict[int, object] = {}
    print(json.dumps({"cases": len(cases)}), flush=True)
    for line in sys.stdin:
        i, ftz = (int(v) for v in line.split())
        torch.set_flush_denormal(bool(ftz))
        if i not in fns:
            shape, what, _batch, offsets, ids = cases[i]
            fns[i] = torch_fn(torch, shape, kt.make_layer(shape), offsets, ids, what == "train")
            fns[i]()
        t0 = time.perf_counter()
        fns[i]()
        print(json.dumps(time.perf_counter() - t0), flush=True)


class Peer:
    """The PyTorch child process (see ``serve_peer``); ``time(i)`` runs case ``i`` once."""

    def __init__(self, args) -> None:
        import json
        import subprocess

        cmd = [sys.executable, __file__, "--peer", "--threads", str(args.threads)]
        cmd += ["--cap", str(args.cap), "--cells", args.cells]
        self._json = json
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=runtime.peer_environment(),
        )
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError("the PyTorch peer did not start (see its error above)")

    def time(self, i: int, ftz: bool = False) -> float:
        self.proc.stdin.write(f"{i} {int(ftz)}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch peer died on case {i}")
        return float(self._json.loads(line))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cap", type=int, default=256, help="tokens kept per review")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()

    if args.peer:
        serve_peer(args)
        return

    runtime.set_threads(args.threads)
    r_offsets, r_ids, src = imdb_reviews(args.cap, 4096)
    lengths = np.diff(r_offsets)
    peer = None
    if not args.no_torch:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            print("PyTorch not installed (pip install torch==2.13.0): its rows are skipped")
        else:
            peer = Peer(args)
    print(bench.machine_line())
    print(
        f"threads={args.threads}  batches: {src}, capped at {args.cap} tokens, mean length "
        f"{lengths.mean():.0f}"
        f"  repeats={args.repeats} (interleaved)"
    )
    big = bench.matmul_rate(1024, 1024, 1024, repeats=5)
    print(f"matrix product 1024^3 (NumPy BLAS): {big:.0f} GFLOP/s at the start")
    hdr = (
        f"{'model':<22}{'what':<7}{'batch':>6}{'rnnpipe tok/s':>15}{'rev/s':>9}"
        f"{'GFLOP/s':>9}{'peak':>6}{'%peak':>7}{'prod%':>7}{'torch tok/s':>13}{'rev/s':>8}"
        f"{'ratio':>7}{'FTZ rev/s':>10}{'ratio':>7}{'floor':>7}"
        f"{'numpy-ref tok/s':>17}{'ratio':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    shapes = []
    for i, (shape, what, batch, offsets, ids) in enumerate(_cases(args, (r_offsets, r_ids))):
        if shape not in shapes:
            shapes.append(shape)
        params = kt.make_layer(shape)
        tokens = int(offsets[-1])
        make = kt.train_fn if what == "train" else kt.infer_fn
        ours = make(shape, offsets, ids, params)
        H = shape.hidden_dim
        peak_run, peak_flops = bench.matmul_fn(256, H, gates(shape.cell) * H)
        flops = kt.recurrent_flops(shape, tokens) * (3 if what == "train" else 1)
        # the same step's matrix products alone (its plan and product routines, nothing else)
        if what == "train":
            prod = kt.train_product_fn(shape, offsets, ids, params)
        else:
            prod = kt.product_fn(shape, offsets, params)
        ours(), peak_run(), prod()  # warm-up
        t_ours, t_torch, rates, pct, ratios, prod_pct, floors = [], [], [], [], [], [], []
        t_ftz, ratios_ftz = [], []
        for _ in range(args.repeats):
            if peer is not None:
                t_torch.append(peer.time(i))
                t_ftz.append(peer.time(i, ftz=True))
                time.sleep(0.05)  # let the peer's OpenMP threads go to sleep
            t0 = time.perf_counter()
            ours()
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            prod()
            t_prod = time.perf_counter() - t0
            best = np.inf
            for _ in range(2):  # the first call also wakes BLAS's sleeping threads
                t0 = time.perf_counter()
                peak_run()
                best = min(best, time.perf_counter() - t0)
            rates.append(peak_flops / best / 1e9)
            pct.append(100 * flops / t_ours[-1] / 1e9 / rates[-1])
            prod_pct.append(100 * flops / t_prod / 1e9 / rates[-1])
            if peer is not None:
                ratios.append(t_torch[-1] / t_ours[-1])
                ratios_ftz.append(t_ftz[-1] / t_ours[-1])
                floors.append(t_torch[-1] / t_prod)
        t = float(np.median(t_ours))
        row = (
            f"{shape.cell} E={shape.embed_dim} H={H:<7}{what:<7}{batch:>6}"
            f"{tokens / t:>15,.0f}{batch / t:>9,.0f}{flops / t / 1e9:>9.1f}"
            f"{np.median(rates):>6.0f}{np.median(pct):>6.0f}%{np.median(prod_pct):>6.0f}%"
        )
        if peer is not None:
            tt = float(np.median(t_torch))
            row += f"{tokens / tt:>13,.0f}{batch / tt:>8,.0f}{np.median(ratios):>6.2f}x"
            tf = float(np.median(t_ftz))
            row += f"{batch / tf:>10,.0f}{np.median(ratios_ftz):>6.2f}x{np.median(floors):>6.2f}x"
        else:
            row += f"{'-':>13}{'-':>8}{'-':>7}{'-':>10}{'-':>7}{'-':>7}"
        sub = 8  # the reference is slow: time a slice and compare per real token
        o_s, i_s = first(offsets, ids, sub)
        timer = kt.time_train if what == "train" else kt.time_infer
        tr = timer(shape, o_s, i_s, params, backend="reference", repeats=1)
        ref_tps = o_s[-1] / tr
        row += f"{ref_tps:>17,.0f}{tokens / t / ref_tps:>7.0f}x"
        print(row, flush=True)
    if peer is not None:
        peer.close()
    G = {s.cell: gates(s.cell) for s in shapes}
    print(
        f"GFLOP/s counts the recurrent product only (2*G*H*H per real token, G={G}; "
        "training counts 3x forward); peak: the (256,H)x(H,G*H) product's GFLOP/s with "
        "NumPy's BLAS, the faster of two calls right after each rnnpipe call; "
        "%peak: median of GFLOP/s / peak; prod%: the same for the step's matrix products "
        "alone (the kernel's plan, shapes and product routines; in training also dW_hh "
        "and the input side's BLAS products), everything else skipped."
    )
    print(
        "torch tok/s counts real tokens too (its padded batch does more work); "
        "ratio = median of PyTorch time / rnnpipe time, per interleaved repeat; floor: "
        "the same with the products-alone time, the ratio a step with no other cost "
        "would reach. "
        "FTZ: PyTorch again with torch.set_flush_denormal(True), which flushes float32 "
        "subnormals to zero (this CPU computes them slowly, and gradients reach them "
        "in long backward passes); rnnpipe runs in the default floating-point mode."
    )


if __name__ == "__main__":
    main()
