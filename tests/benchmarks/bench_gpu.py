"""GPU benchmark: rnnpipe's CUDA kernels against PyTorch's nn.LSTM (cuDNN) on one NVIDIA GPU.

Run on a machine with a GPU (called by ``tests/benchmarks/gpu_check.sh``), after
``pip install -e '.[dev,cuda]'`` and a CUDA build of PyTorch:

    python tests/benchmarks/bench_gpu.py [--repeats 10] [--cap 256] [--cell lstm]

Everything is measured in this one run, on the same GPU, shapes and lengths (IMDB-shaped
synthetic lengths, capped at ``--cap`` tokens as the trainer's ``max_len`` would):

* scoring, batch ``--score-batch`` (1024): rnnpipe ``layer_infer`` from the folded table
  (no padding), with the table and ``W_hh`` kept on the GPU as a scorer keeps its model, and
  with them passed from the host each call; PyTorch: ids to the GPU, embedding + nn.LSTM on
  the batch padded to its longest review (and packed, cuDNN's variable-length path), the
  state at each review's true last token back to the host.
* training, batches ``--train-batches`` (64, 256): rnnpipe as the trainer calls it (host
  embedding lookup, ``layer_forward``, last-state pooling and its backward,
  ``layer_backward``, the embedding gradient scattered on the host); PyTorch: ids to the GPU,
  embedding + nn.LSTM forward and backward on the padded batch, gradients left on the GPU.
  Neither runs an optimizer step.

Every rnnpipe call goes host to host (inputs copied in, results copied back): that is the
backend's contract today. Figures are medians after one warm-up call; the first call's time
(kernel compilation or cache load) is shown separately. PyTorch runs in float32 throughout
(TF32 off in cuDNN and cuBLAS), as rnnpipe does. Correctness lines compare the last states on
the scoring batch, same weights, of rnnpipe's CUDA backend with its CPU backend and with
PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline import runtime  # noqa: E402

runtime.apply_defaults()  # as the CLI runs: before NumPy and Numba load

# isort: split
import numpy as np  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="rnnpipe CUDA kernels vs PyTorch nn.LSTM/cuDNN on this machine's GPU.",
        epilog="Example: python tests/benchmarks/bench_gpu.py --repeats 5",
    )
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    p.add_argument("--embed", type=int, default=128, help="embedding size E (default 128)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size H (default 128)")
    p.add_argument("--vocab", type=int, default=20002, help="vocabulary size (default 20002)")
    p.add_argument("--score-batch", type=int, default=1024, help="scoring batch (default 1024)")
    p.add_argument(
        "--train-batches",
        default="64,256",
        help="comma-separated training batch sizes (default 64,256)",
    )
    p.add_argument("--cap", type=int, default=256, help="max tokens per review (default 256)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure (default 10)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def first_and_median(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeats`` later calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()  # a second warm-up: allocator pools and caches settle
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def padded(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Ids as a zero-padded [B, Tmax] int64 matrix (PyTorch's input)."""
    lens = np.diff(offsets)
    out = np.zeros((lens.size, int(lens.max())), np.int64)
    mask = np.arange(out.shape[1]) < lens[:, None]
    out[mask] = ids
    return out


def torch_setup(torch, args, params):
    """PyTorch embedding + recurrent layer on the GPU, holding rnnpipe's weights."""
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[args.cell]
    emb = torch.nn.Embedding(args.vocab, args.embed, padding_idx=0).cuda()
    rnn = cls(args.embed, args.hidden, batch_first=True).cuda()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(params["emb"]))
        rnn.weight_ih_l0.copy_(torch.from_numpy(params["W_ih"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(params["W_hh"]))
        rnn.bias_ih_l0.copy_(torch.from_numpy(params["b_ih"]))
        rnn.bias_hh_l0.copy_(torch.from_numpy(params["b_hh"]))
    return emb, rnn


def torch_score(torch, emb, rnn, ids_pad, lens, packed: bool):
    """Last-state features of a batch, ids from the host, features back to the host."""
    with torch.inference_mode():
        ids = torch.from_numpy(ids_pad).cuda(non_blocking=True)
        x = emb(ids)
        if packed:
            seq = torch.nn.utils.rnn.pack_padded_sequence(
                x, torch.from_numpy(lens), batch_first=True, enforce_sorted=False
            )
            _, h = rnn(seq)
            last = (h[0] if isinstance(h, tuple) else h)[0]
        else:
            out, _ = rnn(x)
            idx = torch.from_numpy(lens - 1).cuda(non_blocking=True)
            last = out[torch.arange(out.shape[0], device=out.device), idx]
        return last.cpu().numpy()


def torch_train(torch, emb, rnn, ids_pad, lens, dfeat):
    """Forward and backward of embedding + layer + last-state pooling on the padded batch."""
    emb.zero_grad(set_to_none=True)
    rnn.zero_grad(set_to_none=True)
    ids = torch.from_numpy(ids_pad).cuda(non_blocking=True)
    out, _ = rnn(emb(ids))
    idx = torch.from_numpy(lens - 1).cuda(non_blocking=True)
    last = out[torch.arange(out.shape[0], device=out.device), idx]
    (last * dfeat).sum().backward()
    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        print("NUMBA_ENABLE_CUDASIM is set: unset it, this benchmark needs a real GPU")
        return 2
    import kernel_timing as bench  # beside this script
    from numba import cuda

    from pipeline.kernels import get_backend

    if not cuda.is_available():
        print("numba-cuda sees no CUDA GPU: nothing to measure")
        return 2
    be = get_backend("cuda")
    try:
        import torch

        have_torch = torch.cuda.is_available()
        why = "" if have_torch else f"torch {torch.__version__} has no CUDA"
    except ImportError:
        torch, have_torch, why = None, False, "torch is not installed"
    if have_torch:
        card = torch.cuda.get_device_name(0)
        torch.backends.cudnn.benchmark = True
        # float32 against float32: no TF32 tensor-core shortcuts in cuDNN or cuBLAS
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        name = cuda.get_current_device().name
        card = name.decode() if isinstance(name, bytes) else str(name)

    train_batches = [int(b) for b in args.train_batches.split(",") if b.strip()]
    n_max = max([args.score_batch, *train_batches])
    lengths = np.minimum(bench.synthetic_lengths(n_max, args.seed), args.cap).astype(np.int64)
    shape = bench.Shape(args.cell, args.embed, args.hidden, args.score_batch, args.vocab)
    params = bench.make_layer(shape, args.seed)
    rows = []

    def row(task, batch, impl, first, med, tokens, padded_tokens=None):
        pad = f"{padded_tokens / tokens:.2f}x" if padded_tokens else "none"
        rows.append((task, batch, impl, med * 1e3, tokens / med / 1e3, first * 1e3, pad))

    # ---- scoring
    lens = lengths[: args.score_batch]
    offsets, ids = bench.make_batch(lens, args.vocab, args.seed)
    tokens = int(offsets[-1])
    p = params
    table = be.fold_table(args.cell, p["emb"], p["W_ih"], p["b_ih"], p["b_hh"])
    table_d, W_hh_d = cuda.to_device(table), cuda.to_device(p["W_hh"])

    def score_dev():
        return be.layer_infer(args.cell, table_d, ids, offsets, W_hh_d, p["b_hh"], False, ("last",))

    def score_host():
        return be.layer_infer(
            args.cell, table, ids, offsets, p["W_hh"], p["b_hh"], False, ("last",)
        )

    f, m = first_and_median(score_dev, args.repeats)
    row("score", lens.size, "rnnpipe cuda, model on GPU", f, m, tokens)
    cpu_feat = get_backend("cpu").layer_infer(
        args.cell, table, ids, offsets, p["W_hh"], p["b_hh"], False, ("last",)
    )
    diff_cpu = np.abs(score_dev() - cpu_feat).max()
    checks = [
        f"max |rnnpipe cuda - rnnpipe cpu| on the scoring batch's last states: {diff_cpu:.2e}"
    ]
    if not diff_cpu < 1e-4:
        checks[-1] += "  <-- MISMATCH: the CUDA and CPU backends disagree"
    f, m = first_and_median(score_host, args.repeats)
    row("score", lens.size, "rnnpipe cuda, model from host", f, m, tokens)
    if have_torch:
        emb, rnn = torch_setup(torch, args, p)
        ids_pad = padded(ids, offsets)
        for packed in (False, True):
            f, m = first_and_median(
                lambda packed=packed: torch_score(torch, emb, rnn, ids_pad, lens, packed),
                args.repeats,
            )
            impl = "torch cuDNN, packed" if packed else "torch cuDNN, padded"
            row("score", lens.size, impl, f, m, tokens, None if packed else ids_pad.size)
        diff = np.abs(score_dev() - torch_score(torch, emb, rnn, ids_pad, lens, True)).max()
        checks.append(f"max |rnnpipe cuda - torch fp32| on the same last states: {diff:.2e}")
        if not diff < 1e-3:
            checks[-1] += "  <-- MISMATCH: rnnpipe's CUDA kernels and PyTorch disagree"

    # ---- training
    for batch in train_batches:
        lens = lengths[:batch]
        offsets, ids = bench.make_batch(lens, args.vocab, args.seed + 1)
        tokens = int(offsets[-1])
        tshape = bench.Shape(args.cell, args.embed, args.hidden, batch, args.vocab)
        t0 = time.perf_counter()
        bench.time_train(tshape, offsets, ids, params, backend="cuda", repeats=1)
        first = time.perf_counter() - t0
        med = bench.time_train(tshape, offsets, ids, params, backend="cuda", repeats=args.repeats)
        row("train", batch, "rnnpipe cuda (host<->GPU each call)", first, med, tokens)
        if have_torch:
            ids_pad = padded(ids, offsets)
            dfeat = torch.full((batch, args.hidden), 1.0 / batch).cuda()
            f, m = first_and_median(
                lambda ids_pad=ids_pad, lens=lens, dfeat=dfeat: torch_train(
                    torch, emb, rnn, ids_pad, lens, dfeat
                ),
                args.repeats,
            )
            row("train", batch, "torch cuDNN, padded", f, m, tokens, ids_pad.size)

    import numba_cuda

    print(f"\nGPU: {card}")
    versions = f"numba-cuda {numba_cuda.__version__}"
    versions += f", torch {torch.__version__}" if have_torch else f" (no PyTorch rows: {why})"
    print(
        f"{args.cell} E={args.embed} H={args.hidden} V={args.vocab}, lengths capped at "
        f"{args.cap} (IMDB-shaped synthetic), median of {args.repeats}; {versions}"
    )
    head = ("task", "batch", "implementation", "ms/batch", "k tok/s", "first call ms", "padding")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for task, batch, impl, ms, ktok, first_ms, pad in rows:
        print(f"| {task} | {batch} | {impl} | {ms:.2f} | {ktok:.0f} | {first_ms:.0f} | {pad} |")
    for line in checks:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
