"""Model quality on held-out data, against TF-IDF + logistic regression on the same splits.

Run (IMDB and SST-2, rnnpipe's default and TF-IDF; about 10 minutes on 2 cores):

    python tests/benchmarks/bench_quality.py
    python tests/benchmarks/bench_quality.py --routes default,pretrained,tfidf --seeds 0,1,2
    python tests/benchmarks/bench_quality.py --datasets imdb-stars --seeds 0,1,2

What it measures. Held-out sets that rnnpipe never trains or calibrates on:

* **IMDB, movie-disjoint**: ``imdb_train.parquet`` split by film (``movie`` column) with
  ``pipeline.batching.group_split`` (seed 0): the reviews of about 20 % of the films are held
  out (5,000 reviews of 724 films), the rest (20,000) is the training file. A random split
  would put the same films on both sides and reward memorising them.
* **SST-2**: ``sst2_train.parquet`` to train, ``sst2_dev.parquet`` held out (the training
  phrases are cut from the same sentences, so a random split of them would leak).
* **SST-2 dev, trained on IMDB** (another domain): the IMDB models above judged on SST-2's
  dev sentences too (short, tokenized, lower-cased: ``shared/ANCHORS.md``'s row).
* **IMDB stars** (``imdb-stars``, multi-class): the same movie-disjoint split, the label the
  review's rating (8 classes: 1-4 and 7-10 stars; ``--label-col rating``). Not tuned on:
  it checks that the defaults chosen on the binary sets hold for many classes.

For each set and route it runs the real commands in fresh processes, as a user would, and
times them (wall clock):

* ``default``: ``rnnpipe train TRAIN --out M`` with the product's defaults (for IMDB also
  ``--valid-group movie``, so the calibration split is leak-free too), then
  ``rnnpipe evaluate HELD_OUT --model M``;
* ``ensemble``: the same with ``--ensemble`` (the refit and the first model, logits
  averaged);
* ``pretrained``: ``rnnpipe pretrain UNLABELED TRAIN --out ENC`` (IMDB: the 50,000
  unlabeled reviews of ``imdb_unsup.parquet`` and the training file's text; never the
  held-out text; SST-2: the same unlabeled IMDB reviews and the training phrases), then
  ``rnnpipe train TRAIN --init-from ENC`` and evaluate;
* ``tfidf``: scikit-learn's ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
  min_df=2, max_features=200000)`` on lower-cased text without ``<br />``, and
  ``LogisticRegression(C=4)`` (the baseline of ``shared/ANCHORS.md``), in this process.

It prints accuracy, macro F1, log loss, expected calibration error (15 bins, as
``rnnpipe evaluate``) and the wall time of each, per seed and as the mean over seeds.
Splits and models go under ``tests/benchmarks/_gen/quality/`` (git-ignored). Needs the
``bench`` extra (scikit-learn) and ``../shared/data`` (or ``$RNNPIPE_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GEN = HERE / "_gen" / "quality"
sys.path.insert(0, str(REPO))

from pipeline.batching import group_split  # noqa: E402
from pipeline.metrics import evaluate_probs  # noqa: E402


def data_dir() -> Path:
    env = os.environ.get("RNNPIPE_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def imdb_split() -> tuple[Path, Path]:
    """The fixed movie-disjoint split of imdb_train, written once under _gen/quality."""
    train, held = GEN / "imdb_train_split.parquet", GEN / "imdb_heldout_films.parquet"
    if not (train.is_file() and held.is_file()):
        GEN.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(data_dir() / "imdb_train.parquet")
        films = table["movie"].to_numpy(zero_copy_only=False).astype(str)
        labels = table["label"].to_numpy().astype(np.int64)
        tr, va = group_split(films, labels, 0.2, seed=0)
        pq.write_table(table.take(tr), train)
        pq.write_table(table.take(va), held)
    return train, held


def datasets(names: list[str]) -> dict[str, dict]:
    out = {}
    if "imdb" in names:
        train, held = imdb_split()
        out["imdb"] = {
            "train": train, "held": held, "train_args": ["--valid-group", "movie"],
            "unlabeled": [data_dir() / "imdb_unsup.parquet", train], "label": "label",
            # another domain: short sentences, tokenized and lower-cased (ANCHORS.md's row)
            "other": {"sst2-dev, trained on imdb": data_dir() / "sst2_dev.parquet"},
        }  # fmt: skip
    if "imdb-stars" in names:
        train, held = imdb_split()
        out["imdb-stars"] = {
            "train": train, "held": held, "label": "rating",
            "train_args": ["--valid-group", "movie", "--label-col", "rating"],
            "unlabeled": [data_dir() / "imdb_unsup.parquet", train],
        }  # fmt: skip
    if "sst2" in names:
        out["sst2"] = {
            "train": data_dir() / "sst2_train.parquet",
            "held": data_dir() / "sst2_dev.parquet",
            "train_args": [],
            "label": "label",
            # unlabeled movie reviews, and the training phrases' own text
            "unlabeled": [data_dir() / "imdb_unsup.parquet", data_dir() / "sst2_train.parquet"],
        }
    return out


def rnnpipe(*args: object) -> float:
    """Run ``python -m pipeline ARGS`` in a fresh process; returns its wall time."""
    cmd = [sys.executable, "-m", "pipeline", *[str(a) for a in args]]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return time.perf_counter() - t0


def evaluate(model: Path, held: Path, label: str) -> dict:
    out = GEN / "eval.json"
    cmd = [sys.executable, "-m", "pipeline", "evaluate", str(held), "--model", str(model)]
    cmd += ["--label-col", label]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([*cmd, "--json"], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluate failed: {proc.stderr.strip()}")
    out.write_text(proc.stdout)
    return json.loads(proc.stdout)


def held_sets(name: str, ds: dict) -> dict[str, Path]:
    """Where a dataset's models are judged: its held-out rows, and other domains'."""
    return {name: ds["held"], **ds.get("other", {})}


def run_rnnpipe(name: str, ds: dict, route: str, seed: int, threads: int) -> dict[str, dict]:
    work = GEN / f"{name}-{route}-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    common = ["--threads", threads, "--quiet", "--seed", seed]
    seconds = 0.0
    train_args = [ds["train"], "--out", work / "model", *ds["train_args"], *common]
    if route == "ensemble":  # the default with --ensemble: the refit and the first model
        train_args.append("--ensemble")
    if route == "pretrained":
        seconds += rnnpipe("pretrain", *ds["unlabeled"], "--out", work / "encoder", *common)
        train_args += ["--init-from", work / "encoder"]
    seconds += rnnpipe("train", *train_args)
    return {
        held: {**_summary(evaluate(work / "model", path, ds["label"])), "seconds": seconds}
        for held, path in held_sets(name, ds).items()
    }


def _summary(report: dict) -> dict:
    return {k: report[k] for k in ("n", "accuracy", "f1_macro", "log_loss", "ece")}


def run_tfidf(name: str, ds: dict) -> dict[str, dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def load(path: Path):
        table = pq.read_table(path, columns=["review", ds["label"]])
        texts = [t.replace("<br />", " ").lower() for t in table["review"].to_pylist()]
        return texts, table[ds["label"]].to_numpy().astype(np.int64)

    x_train, y_train = load(ds["train"])
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200000)
    clf = LogisticRegression(C=4, max_iter=2000).fit(vec.fit_transform(x_train), y_train)
    seconds = time.perf_counter() - t0
    out = {}
    for held, path in held_sets(name, ds).items():
        x_held, y_held = load(path)
        probs = clf.predict_proba(vec.transform(x_held))
        y_index, names = np.searchsorted(clf.classes_, y_held), [str(c) for c in clf.classes_]
        out[held] = {**_summary(evaluate_probs(y_index, probs, names)), "seconds": seconds}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="imdb,sst2", help="imdb, sst2, imdb-stars")
    ap.add_argument(
        "--routes", default="default,tfidf", help="default, ensemble, pretrained, tfidf"
    )
    ap.add_argument("--seeds", default="0", help="rnnpipe seeds, e.g. 0,1,2 (TF-IDF: one run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    routes = args.routes.split(",")
    rows = []
    for name, ds in datasets(args.datasets.split(",")).items():
        for route in routes:
            by_seed = [run_tfidf(name, ds)] if route == "tfidf" else [
                run_rnnpipe(name, ds, route, seed, args.threads) for seed in seeds
            ]  # fmt: skip
            for held in held_sets(name, ds):
                runs = [r[held] for r in by_seed]
                for seed, r in zip(seeds, runs, strict=False):
                    line = {"data": held, "route": route, "seed": seed, **r}
                    print(json.dumps(line), flush=True)
                rows.append((held, route, runs))
    print()
    print("| held-out set | route | runs | accuracy | macro F1 | log loss | ECE | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, route, runs in rows:
        means = {k: statistics.mean(r[k] for r in runs) for k in runs[0] if k != "n"}
        acc = [r["accuracy"] for r in runs]
        spread = f" ({min(acc):.2%}-{max(acc):.2%})" if len(acc) > 1 else ""
        print(
            f"| {name} ({runs[0]['n']:,}) | {route} | {len(runs)} | {means['accuracy']:.2%}"
            f"{spread} | {means['f1_macro']:.4f} | {means['log_loss']:.4f} | "
            f"{means['ece']:.4f} | {means['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
