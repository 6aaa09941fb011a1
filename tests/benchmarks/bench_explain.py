"""Explanations: speed against Captum, faithfulness, completeness, the HTML page.

Run (PyTorch and Captum from the ``bench`` extra):

    python tests/benchmarks/bench_explain.py [--reviews 1000] [--timed 100] [--threads 2]
        [--model DIR]

Model: rnnpipe's default classifier trained on the movie-disjoint IMDB training split of
``bench_quality.py`` (trained once with ``rnnpipe train ... --valid-group movie`` and kept
under ``tests/benchmarks/_gen/explain/``), or ``--model`` (one trained on the same split,
e.g. with ``--ensemble``: Captum then explains the same members, their logits averaged).
Reviews: ``--reviews`` drawn at random (seed 0) from that split's held-out films, never
trained on.

* **Speed.** Integrated gradients with 32 Gauss-Legendre steps toward the positive class:
  rnnpipe (``pipeline.attribution.attributions`` on all the timed reviews at once) as
  ``rnnpipe explain`` runs it (reviews whose completeness gap exceeds 1 % refined with
  more alphas) and with the fixed 32-node rule alone, against Captum's
  ``LayerIntegratedGradients`` on the embedding layer of the same model in PyTorch (the
  weights copied: embedding, bidirectional GRU, max over the review's steps, linear), one
  review at a time with its 32 steps as one batch (no padding, so both compute exactly the
  same function), in a child process of its own; the first ``--timed`` reviews, reviews/s
  of each and the ratios. The model's word n-gram head is rnnpipe's alone: its exact
  token shares are added inside rnnpipe's timing (extra work, not in Captum's), and taken
  out again for the check, the correlation of the two engines' attributions under the
  same fixed rule. Then gradient x input (``grad``) reviews/s for all
  ``--reviews`` (median of 3 runs).
* **Faithfulness** (ERASER's comprehensiveness, DeYoung et al. 2020): for each review,
  the probability of its predicted class, minus the same after deleting the 10 % of its
  tokens with the highest attribution toward that class, against deleting 10 % of its
  tokens at random (seed 0); the ratio of the mean drops (target >= 3 for ig).
* **Completeness**: the median of ``ig_gap`` (target <= 1 %) as ``rnnpipe explain``
  computes it, and with the fixed rule at 32 and at 64 steps.
* **The page**: ``rnnpipe explain --html`` of 200 reviews: its size, and the time headless
  Chromium takes to start, load and lay it out (``--dump-dom``) and exit, against the
  same for an empty page (the browser's own start-up), when Chromium is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GEN = HERE / "_gen" / "explain"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

# first: rnnpipe's runtime defaults, before NumPy loads OpenBLAS. rnnpipe runs in this
# process, and OpenBLAS's threads left spinning after each product (its default) took a
# core from the Numba kernel that follows: grad ran at about 70 % of its speed under
# `rnnpipe explain`
import make_reviews  # noqa: E402, F401, I001
import bench_quality  # noqa: E402
import numpy as np  # noqa: E402

STEPS = 32
TOLERANCE = 0.01  # ExplainOptions' default


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def ensure_model(threads: int) -> Path:
    """The model ``rnnpipe train`` makes on the movie-disjoint split (trained again when
    the one kept under _gen predates the word n-gram head)."""
    model = GEN / "model"
    config = model / "config.json"
    if not (model / "weights.npz").is_file() or "ngrams" not in json.loads(config.read_text()):
        train, _ = bench_quality.imdb_split()
        cmd = [sys.executable, "-m", "pipeline", "train", str(train), "--out", str(model),
               "--valid-group", "movie", "--threads", str(threads), "--quiet"]  # fmt: skip
        subprocess.run(cmd, env=_env(), check=True)
    return model


def held_out(n: int, columns: tuple[str, ...] = ("review",)):
    """``n`` reviews of the held-out films drawn at random (seed 0): the split's file is
    ordered by label, so its first rows would all be negative. One column: a list of
    texts; more: a pyarrow Table."""
    import pyarrow.parquet as pq

    _, held = bench_quality.imdb_split()
    table = pq.read_table(held, columns=list(columns))
    table = table.take(np.random.default_rng(0).permutation(table.num_rows)[:n])
    return table[columns[0]].to_pylist() if len(columns) == 1 else table


def child_torch(spec: dict) -> dict:
    """Captum's LayerIntegratedGradients, one review at a time (its steps as one batch)."""
    import torch
    from captum.attr import LayerIntegratedGradients

    torch.set_num_threads(spec["threads"])
    w = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    V, E = w["embedding"].shape
    H = w["l0.fwd.W_hh"].shape[1]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, E, padding_idx=0)
            self.rnn = torch.nn.GRU(E, H, batch_first=True, bidirectional=True)
            self.out = torch.nn.Linear(2 * H, 1)

        def forward(self, ids):
            states, _ = self.rnn(self.emb(ids))  # (B, L, 2H): no padding, one review
            return self.out(states.amax(dim=1))  # (B, 1), the positive class's logit

    def member(prefix: str) -> Net:
        net = Net()
        with torch.no_grad():
            net.emb.weight.copy_(w[f"{prefix}embedding"])
            for d, suffix in (("fwd", ""), ("bwd", "_reverse")):
                for mine, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"),
                                     ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):  # fmt: skip
                    getattr(net.rnn, f"{theirs}_l0{suffix}").copy_(w[f"{prefix}l0.{d}.{mine}"])
            net.out.weight.copy_(w[f"{prefix}out.W"])
            net.out.bias.copy_(w[f"{prefix}out.b"])
        return net.eval()

    # a train --ensemble model: its members' logits averaged, every member's embedding
    # output scaled along the path together (Captum's multi-layer form), as rnnpipe does
    nets = [member("" if k == 0 else f"m{k}.") for k in range(spec.get("members", 1))]
    layers = [net.emb for net in nets]
    lig = LayerIntegratedGradients(
        lambda ids: sum(net(ids)[:, 0] for net in nets) / len(nets),
        layers if len(layers) > 1 else layers[0],
    )
    seqs = [np.asarray(s, dtype=np.int64) for s in spec["sequences"]]
    attrs, times = [], []
    for k, seq in enumerate(seqs):
        ids = torch.from_numpy(seq)[None, :]
        t0 = time.perf_counter()
        a = lig.attribute(ids, baselines=torch.zeros_like(ids), n_steps=STEPS,
                          internal_batch_size=STEPS)  # fmt: skip
        if k:  # the first review warms PyTorch up
            times.append(time.perf_counter() - t0)
        a = sum(a) if isinstance(a, list | tuple) else a  # one per member's embedding
        attrs.append(a.sum(dim=-1)[0].detach().numpy().astype(np.float64).tolist())
    return {"seconds": sum(times), "reviews": len(times), "attributions": attrs,
            "info": f"PyTorch {torch.__version__}"}  # fmt: skip


def comprehensiveness(model, tokens, exp, rng) -> tuple[float, float]:
    """Mean drop of the predicted class's probability when the top 10 % of tokens (by
    attribution toward it) are deleted, and when 10 % chosen at random are."""
    from pipeline.text import TokenIds

    base = model.predict_proba(tokens)
    pred = exp.target
    p0 = base[np.arange(len(tokens)), pred]
    top_ids, rand_ids, top_off, rand_off = [], [], [0], [0]
    for i in range(len(tokens)):
        seq = tokens[i]
        vals = exp.values[exp.offsets[i] : exp.offsets[i + 1]]
        k = max(1, int(round(0.1 * seq.size))) if seq.size else 0
        drop_top = set(np.argsort(-vals)[:k].tolist())
        drop_rand = set(rng.choice(seq.size, size=k, replace=False).tolist()) if k else set()
        top_ids.append(np.array([t for j, t in enumerate(seq) if j not in drop_top], np.int32))
        rand_ids.append(np.array([t for j, t in enumerate(seq) if j not in drop_rand], np.int32))
        top_off.append(top_off[-1] + top_ids[-1].size)
        rand_off.append(rand_off[-1] + rand_ids[-1].size)
    p_top = model.predict_proba(TokenIds(np.array(top_off), np.concatenate(top_ids)))
    p_rand = model.predict_proba(TokenIds(np.array(rand_off), np.concatenate(rand_ids)))
    idx = np.arange(len(tokens))
    return float(np.mean(p0 - p_top[idx, pred])), float(np.mean(p0 - p_rand[idx, pred]))


def page_check(model_dir: Path, threads: int) -> tuple[float, tuple[float, float] | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = held_out(200)
        pq.write_table(pa.table({"id": list(range(200)), "review": texts}), tmp / "r.parquet")
        html = tmp / "report.html"
        cmd = [sys.executable, "-m", "pipeline", "explain", str(tmp / "r.parquet"), "-m",
               str(model_dir), "-o", str(tmp / "e.parquet"), "--html", str(html), "--rows",
               "200", "--method", "grad", "--threads", str(threads), "-q"]  # fmt: skip
        subprocess.run(cmd, env=_env(), check=True, capture_output=True)
        size = html.stat().st_size / 1e6
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            return size, None
        empty = tmp / "empty.html"
        empty.write_text("<!doctype html><title>empty</title>")

        def load(page: Path, k: int) -> float:
            t0 = time.perf_counter()
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={tmp / f'profile{k}'}", "--dump-dom",
                            page.as_uri()],
                           capture_output=True, check=True, timeout=120)  # fmt: skip
            return time.perf_counter() - t0

        # the page and an empty one alternate, so the browser's own start-up can be told apart
        pages, blanks = [], []
        for k in range(5):
            pages.append(load(html, 2 * k))
            blanks.append(load(empty, 2 * k + 1))
        return size, (statistics.median(pages), statistics.median(blanks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviews", type=int, default=1000)
    ap.add_argument("--timed", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a model directory instead of the default one")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        print(json.dumps(child_torch(spec)))
        return

    from pipeline import ngrams
    from pipeline.explain import attributions
    from pipeline.model import Model
    from pipeline.runtime import set_threads

    set_threads(args.threads)
    model_dir = args.model or ensure_model(args.threads)
    model = Model.load(model_dir)
    texts = held_out(args.reviews)
    tokens = model.encode(texts)
    timed = tokens.take(np.arange(min(args.timed + 1, len(tokens))))

    # speed: ig toward the positive class, the same reviews as Captum (the first one warms
    # up): as `rnnpipe explain` runs it (refined to a 1 % gap) and with the fixed rule alone
    ones = np.ones(len(timed) - 1, np.int64)
    rest = timed.take(np.arange(1, len(timed)))
    ig_s, runs = {}, {}
    for tol in (TOLERANCE, 0.0):
        attributions(model, timed.take(np.arange(1)), ones[:1], "ig", STEPS, tol)
        t0 = time.perf_counter()
        runs[tol] = attributions(model, rest, ones, "ig", STEPS, tol)
        ig_s[tol] = time.perf_counter() - t0
    ours = runs[0.0]  # Captum's rule: the same function to compare with
    # Captum explains the recurrent model(s): its embedding path carries nothing of the
    # n-gram head, whose exact shares rnnpipe adds (timed above, left out of the comparison)
    recurrent = ours.values.astype(np.float64)
    if model.config.ngrams:
        cfg = model.config
        recurrent -= ngrams.token_shares(rest, cfg.ngrams, cfg.ngram_bits, model.params["ngram.W"],
                                         ones[:, None] * 1.0, cfg.ngram_scale)  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"weights": str(model_dir / "weights.npz"), "threads": args.threads,
                   "members": model.config.members,
                   "sequences": [timed[i].tolist() for i in range(len(timed))]}, f)  # fmt: skip
    proc = subprocess.run([sys.executable, __file__, "--child", f.name], env=_env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    os.unlink(f.name)
    torch_res = json.loads(proc.stdout.strip().splitlines()[-1])
    corr = [np.corrcoef(recurrent[ours.offsets[i] : ours.offsets[i + 1]], a)[0, 1]
            for i, a in enumerate(torch_res["attributions"][1:]) if len(a) > 2]  # fmt: skip

    # grad over every review (median of 3), then faithfulness of ig (toward each predicted
    # class), and its completeness with twice the steps
    grad_runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        attributions(model, tokens, None, "grad")
        grad_runs.append(time.perf_counter() - t0)
    grad_s = statistics.median(grad_runs)
    exp = attributions(model, tokens, None, "ig", STEPS, TOLERANCE)
    gaps = {
        f"{STEPS} steps, refined to {TOLERANCE:.0%} (the default)": exp.gap,
        f"{STEPS} steps, fixed": attributions(model, tokens, None, "ig", STEPS, 0.0).gap,
        f"{2 * STEPS} steps, fixed": attributions(model, tokens, None, "ig", 2 * STEPS, 0.0).gap,
    }
    top, rand = comprehensiveness(model, tokens, exp, np.random.default_rng(0))
    size, load = page_check(model_dir, args.threads)

    n_timed = len(timed) - 1
    torch_rate = torch_res["reviews"] / torch_res["seconds"]
    print(f"rnnpipe explain, default classifier (bidirectional GRU E=H=128, max pooling, "
          f"word n-gram head of order {model.config.ngrams}), "
          f"{args.threads} threads; {torch_res['info']}, "
          "Captum LayerIntegratedGradients")  # fmt: skip
    print("| what | rnnpipe | Captum | ratio |")
    print("|---|---:|---:|---:|")
    for tol, name in ((TOLERANCE, f"refined to a {TOLERANCE:.0%} gap"), (0.0, "fixed")):
        rate = n_timed / ig_s[tol]
        print(f"| ig, {STEPS} steps {name}, reviews/s ({n_timed} reviews; "
              f"{runs[tol].evaluations.mean():.1f} alphas a review) | {rate:,.1f} | "
              f"{torch_rate:,.1f} | **{rate / torch_rate:.1f}x** |")  # fmt: skip
    print(f"| grad (gradient x input), reviews/s ({len(tokens)} reviews) | "
          f"{len(tokens) / grad_s:,.0f} | | |")  # fmt: skip
    ratio = top / max(rand, 1e-9)
    print(f"| comprehensiveness: drop deleting the top 10 % / 10 % at random ({len(tokens)} "
          f"reviews) | {top:.3f} / {rand:.3f} = **{ratio:.1f}x** | | |")  # fmt: skip
    for name, gap in gaps.items():
        print(f"| ig completeness gap, {name}: median / 90th percentile | "
              f"{np.median(gap):.2%} / {np.percentile(gap, 90):.2%} | | |")  # fmt: skip
    print(f"| correlation with Captum's attributions (fixed rule), median over reviews | "
          f"{np.median(corr):.4f} | | |")  # fmt: skip
    load_text = "not measured (no Chromium)"
    if load is not None:
        load_text = (f"{load[0]:.2f} s, of which {load[1]:.2f} s is Chromium starting and "
                     f"loading an empty page: {load[0] - load[1]:.2f} s for the page")  # fmt: skip
    print(f"| HTML page of 200 reviews: size; headless Chromium start, load, lay out and "
          f"exit (median of 5) | {size:.2f} MB; {load_text} | | |")  # fmt: skip


if __name__ == "__main__":
    main()
