"""The rnnpipe CLI driven for real (Typer's CliRunner): commands, help, bad input, exit codes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

POS = "great wonderful superb loved brilliant moving".split()
NEG = "awful boring dull hated terrible waste".split()
FILL = "the film a plot actors it was and story".split()


def _reviews(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        pos = i % 2 == 0
        words = list(rng.choice(FILL, rng.integers(3, 12)))
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(POS if pos else NEG)))
        texts.append(" ".join(words) + "!")
        labels.append("positive" if pos else "negative")
    return pa.table({"id": np.arange(n), "text": texts, "label": labels})


def run(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model trained through the CLI, and the data it was trained on."""
    d = tmp_path_factory.mktemp("cli")
    data = d / "train.parquet"
    pq.write_table(_reviews(400, seed=1), data)
    model = d / "model"
    res = run(
        "train",
        data,
        "--out",
        model,
        "--embed-dim",
        "8",
        "--hidden-dim",
        "8",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    return model, data


def test_train_score_evaluate_predict_info(trained, tmp_path):
    model, data = trained
    out = tmp_path / "scores.parquet"
    res = run("score", data, "--model", model, "--out", out, "--keep", "id", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["rows"] == 400 and summary["files"] == 1
    table = pq.read_table(out)
    assert table.column_names == ["id", "score", "label"]
    assert table["id"].to_pylist() == list(range(400))

    res = run("evaluate", data, "--model", model, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n"] == 400 and report["accuracy"] > 0.9
    for key in ("f1_macro", "log_loss", "roc_auc", "confusion_matrix"):
        assert key in report

    res = run("predict", "--model", model, "what a wonderful superb film", "boring awful waste")
    assert res.exit_code == 0, res.output
    labels = [line.split("\t")[0] for line in res.output.strip().splitlines()]
    assert labels == ["positive", "negative"]

    res = run("predict", "--model", model, "--json", input="loved it\nhated it\n")
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [x["label"] for x in lines] == ["positive", "negative"]

    res = run("info", model, "--json")
    assert res.exit_code == 0 and json.loads(res.output)["cell"] == "gru"


def _one_line_error(res, *needles: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    # CliRunner turns an uncaught exception into exit code 1 without printing it
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    err = [line for line in res.output.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1, res.output
    for needle in needles:
        assert needle in err[0], err[0]


def test_bad_ngrams_is_one_line_before_any_work(trained, tmp_path):
    _, data = trained
    for value, needle in (("9", "ngrams must be at most 5"), ("-1", "ngrams must be an integer")):
        _one_line_error(run("train", data, "--out", tmp_path / "m", "--ngrams", value), needle)
    assert not (tmp_path / "m").exists()


def test_missing_path(trained, tmp_path):
    model, _ = trained
    _one_line_error(
        run("score", tmp_path / "nope.parquet", "--model", model, "--out", tmp_path / "o"),
        "nope.parquet",
    )
    _one_line_error(run("train", tmp_path / "nope.parquet", "--out", tmp_path / "m"), "nope")


def test_not_parquet(trained, tmp_path):
    model, _ = trained
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,text\n1,hello\n")
    _one_line_error(run("score", bad, "--model", model, "--out", tmp_path / "o"), "bad.parquet")
    assert not (tmp_path / "o" / "bad.parquet").exists()


def test_missing_text_column_lists_columns(trained, tmp_path):
    model, _ = trained
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": [1], "body": ["hi"], "stars": [3]}), f)
    _one_line_error(run("score", f, "--model", model, "--out", tmp_path / "o"), "body", "x.parquet")
    res = run("score", f, "--model", model, "--out", tmp_path / "o", "--text-col", "nope")
    _one_line_error(res, "nope", "body")


def test_non_string_text_column(trained, tmp_path):
    model, _ = trained
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": [1], "text": [42]}), f)
    _one_line_error(run("score", f, "--model", model, "--out", tmp_path / "o"), "text", "int64")


def test_missing_label_column(tmp_path):
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"] * 50}), f)
    _one_line_error(run("train", f, "--out", tmp_path / "m"), "label", "x.parquet")
    assert not (tmp_path / "m").exists()


def test_labels_outside_declared_classes(tmp_path, trained):
    model, _ = trained
    t = _reviews(100, seed=2)
    labels = t["label"].to_pylist()
    labels[17] = "meh"
    f = tmp_path / "x.parquet"
    pq.write_table(t.set_column(2, "label", pa.array(labels)), f)
    res = run("train", f, "--out", tmp_path / "m", "--classes", "negative,positive")
    _one_line_error(res, "meh", "17")
    assert not (tmp_path / "m").exists()
    _one_line_error(run("evaluate", f, "--model", model), "meh")


def test_null_and_empty_texts_are_scored(trained, tmp_path):
    model, _ = trained
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["great film", None, ""]}), f)
    res = run("score", f, "--model", model, "--out", tmp_path / "o.parquet", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["null_texts"] == 2
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 3


def test_broken_model_dir(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"format_version": 999}')
    _one_line_error(run("info", tmp_path / "m"), "m")
    _one_line_error(run("predict", "--model", tmp_path / "missing", "x"), "missing")


def test_cuda_without_gpu_is_one_line(trained):
    model, _ = trained
    from pipeline.kernels import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    _one_line_error(run("predict", "--model", model, "--device", "cuda", "x"), "cuda")


def test_bad_usage_exits_2():
    assert run("score").exit_code == 2
    assert run("train", "x.parquet").exit_code == 2  # --out missing
    assert run("nonsense").exit_code == 2


def _commands(group=None, prefix=""):
    group = group or get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_command_has_help_with_example_and_is_in_readme():
    readme = (ROOT / "README.md").read_text()
    names = []
    for name, cmd in _commands():
        names.append(name)
        assert cmd.help and "Example" in cmd.help, f"{name} has no help with an example"
        res = run(*name.split(), "--help")
        assert res.exit_code == 0 and "Usage" in res.output
        assert re.search(rf"rnnpipe {re.escape(name)}\b", readme), f"README never shows {name}"
    assert {
        "train",
        "score",
        "evaluate",
        "predict",
        "info",
        "bench",
        "job run",
        "job status",
        "job validate",
    } <= set(names)


def test_python_dash_m_pipeline_works():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0 and "train" in res.stdout


@pytest.mark.parametrize("fast", ["1", "0"])
def test_console_exit_runs_atexit_and_keeps_output_and_codes(trained, tmp_path, fast):
    # main() leaves with os._exit after the command (RNNPIPE_FAST_EXIT=0: the usual way):
    # atexit handlers still run once, output is flushed whole and exit codes are kept
    import os
    import subprocess
    import sys

    model, data = trained
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "from pipeline.cli import main\n"
        "sys.argv = ['rnnpipe', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {**os.environ, "RNNPIPE_FAST_EXIT": fast}

    def cli(*args):
        cmd = [sys.executable, "-c", code, *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)

    out = tmp_path / "scores.parquet"
    texts = [f"review number {i} was great" for i in range(3000)]
    ok = cli("predict", "--model", model, "--json", *texts[:2])
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 2 and ok.stderr.count("atexit ran") == 1
    big = cli("predict", "--model", model, "--json", *texts)  # more than a pipe buffer
    assert big.returncode == 0 and len(big.stdout.splitlines()) == 3000
    scored = cli("score", data, "--model", model, "--out", out, "--json", "-q")
    assert scored.returncode == 0 and json.loads(scored.stdout)["rows"] == 400
    assert pq.read_table(out).num_rows == 400
    bad = cli("score", tmp_path / "missing.parquet", "--model", model, "--out", out)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert bad.stderr.count("atexit ran") == 1
    usage = cli("score", "--no-such-option")
    assert usage.returncode == 2 and usage.stderr.count("atexit ran") == 1


def test_unknown_engine_is_a_usage_error_before_any_work(trained, tmp_path):
    model, data = trained
    res = run("score", data, "--model", model, "--out", tmp_path / "o.parquet", "--engine", "spark")
    assert res.exit_code == 2 and "unknown engine 'spark'" in res.output
    assert not (tmp_path / "o.parquet").exists()


# ------------------------------------------------------------ exit 1: failures at run time


def test_score_exits_1_when_the_disk_fills(trained, tmp_path, monkeypatch):
    # a full disk as the Parquet writer meets it (test_reliability.py fills a real tmpfs
    # where the machine allows user namespaces; this runs everywhere)
    model, data = trained

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", no_space)
    monkeypatch.setattr(pq.ParquetWriter, "write_batch", no_space)
    out = tmp_path / "scores"
    res = run("score", data, "--model", model, "--out", out, "--quiet")
    _one_line_error(res, "no space left on device", code=1)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_train_exits_1_when_training_diverges(trained, tmp_path):
    _, data = trained
    out = tmp_path / "m"
    res = run(
        "train", data, "--out", out, "--embed-dim", "8", "--hidden-dim", "8", "--epochs", "1",
        "--optimizer", "sgd", "--lr", "1e30", "--clip-norm", "0", "--quiet",
    )  # fmt: skip
    _one_line_error(res, "training diverged at epoch 1", "--lr", code=1)
    assert not out.exists()


# ------------------------------------------------------------------------------ --threads


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_threads_holds_numba_and_blas_to_n_inside_the_run(trained, tmp_path, monkeypatch):
    import numba

    from pipeline.model import Model
    from pipeline.runtime import set_threads

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: --threads 1 would change nothing")
    model, data = trained
    seen: list[tuple[int, list[int]]] = []

    def spy(name):
        real = getattr(Model, name)

        def inside(self, *args, **kwargs):
            if not seen:
                seen.append((numba.get_num_threads(), _blas_threads()))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Model, name, inside)

    before = numba.get_num_threads()
    try:
        spy("predict_proba")
        spy("loss_and_grads")
        for args in (
            ("score", data, "--model", model, "--out", tmp_path / "s.parquet"),
            ("train", data, "--out", tmp_path / "m", "--embed-dim", "4", "--hidden-dim", "4",
             "--epochs", "1"),
        ):  # fmt: skip
            set_threads(None)  # all cores before the run, so that 1 is a change
            seen.clear()
            res = run(*args, "--threads", "1", "--quiet")
            assert res.exit_code == 0, res.output
            numba_threads, blas = seen[0]
            assert numba_threads == 1, args[0]
            assert blas and set(blas) == {1}, (args[0], blas)
    finally:
        set_threads(before)


# ------------------------------------------------- same bits: Numba's cache, kill -9, --resume

# ``rnnpipe train`` as a console run, optionally killed with SIGKILL as training step
# $RNNPIPE_TEST_KILL_AT_STEP begins; at a normal exit it reports how many steps it trained
_TRAIN_CHILD = """
import atexit, os, signal, sys
from pipeline.model import Model
kill_at = int(os.environ.get("RNNPIPE_TEST_KILL_AT_STEP", "0"))
real, steps = Model.loss_and_grads, [0]
def step(self, *args, **kwargs):
    steps[0] += 1
    if steps[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
Model.loss_and_grads = step
atexit.register(lambda: print(f"training steps: {steps[0]}", file=sys.stderr))
from pipeline.cli import main
sys.argv = ["rnnpipe", *sys.argv[1:]]
main()
"""
# 200 reviews, 20 held out: 180 in batches of 16 is 12 steps an epoch; then the refit's
# 2 epochs over all 200, 13 steps each
_TRAIN_ARGS = ("--embed-dim", "8", "--hidden-dim", "8", "--epochs", "2", "--batch-size", "16")
_TRAIN_ARGS += ("--max-len", "20", "--lr", "0.01", "--quiet")
_STEPS_PER_EPOCH = 12
_REFIT_STEPS = 2 * 13
_ALL_STEPS = 2 * _STEPS_PER_EPOCH + _REFIT_STEPS


def _cache_files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _assert_same_weights(a: Path, b: Path) -> None:
    with np.load(a / "weights.npz") as x, np.load(b / "weights.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), k


def _history(model_dir: Path) -> list[dict[str, str]]:
    import csv

    timing = ("seconds", "tokens_per_s")
    with (model_dir / "history.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_train_gives_the_same_bits_cold_or_warm_cache_and_after_kill_and_resume(tmp_path):
    data = tmp_path / "train.parquet"
    pq.write_table(_reviews(200, seed=3), data)
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}

    def train(out: Path, *extra: str, kill_at: int = 0) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", _TRAIN_CHILD, "train", str(data), "--out", str(out)]
        return subprocess.run(
            [*cmd, *_TRAIN_ARGS, *extra],
            env={**env, "RNNPIPE_TEST_KILL_AT_STEP": str(kill_at)},
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )

    def steps(proc: subprocess.CompletedProcess) -> int:
        assert proc.returncode == 0, proc.stderr[-3000:]
        return int(re.search(r"training steps: (\d+)", proc.stderr).group(1))

    # an empty cache: the run compiles every kernel and leaves them in the cache
    assert steps(train(tmp_path / "cold")) == _ALL_STEPS
    compiled = _cache_files(cache)
    assert compiled
    # the cache it left: the same command loads every kernel, compiles none, same bits
    assert steps(train(tmp_path / "warm")) == _ALL_STEPS
    assert _cache_files(cache) == compiled
    _assert_same_weights(tmp_path / "cold", tmp_path / "warm")

    # killed -9 three steps into epoch 2, then --resume: the straight run's bits
    out = tmp_path / "resumed"
    killed = train(out, kill_at=_STEPS_PER_EPOCH + 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists()
    checkpoint = json.loads((out.parent / "resumed.checkpoint" / "state.json").read_text())
    assert checkpoint["epoch"] == 1
    assert steps(train(out, "--resume")) == _STEPS_PER_EPOCH + _REFIT_STEPS  # epoch 2 on
    _assert_same_weights(tmp_path / "cold", out)
    assert _history(out) == _history(tmp_path / "cold")
    # killed -9 in the refit (not checkpointed): --resume runs the refit again, same bits
    out = tmp_path / "refit"
    killed = train(out, kill_at=2 * _STEPS_PER_EPOCH + 5)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    assert steps(train(out, "--resume")) == _REFIT_STEPS
    _assert_same_weights(tmp_path / "cold", out)
    assert _cache_files(cache) == compiled


def test_cli_and_library_defaults_are_the_same(tmp_path, monkeypatch):
    # one source of defaults: `rnnpipe train` with no options builds the model and training
    # configs that pipeline.train.train() builds when given none
    import pipeline.train as train_module
    from pipeline.config import ModelConfig, TrainConfig

    seen = {}

    def capture(data, out, overrides, tc, **kw):
        seen.update(overrides=overrides, tc=tc)
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train", capture)
    data = tmp_path / "d.parquet"
    pq.write_table(_reviews(40, seed=3), data)
    run("train", data, "--out", tmp_path / "m")
    assert ModelConfig(**seen["overrides"]) == ModelConfig()
    library = TrainConfig()
    cli_tc = seen["tc"]
    assert dataclasses.replace(cli_tc, threads=None) == library


def test_score_and_explain_options_default_to_the_librarys(trained, tmp_path, monkeypatch):
    # `rnnpipe score` and `rnnpipe explain` with no options build ScoreOptions() and
    # ExplainOptions(), read from pipeline.config rather than repeated in the CLI
    import pipeline.explain as explain_module
    import pipeline.score as score_module
    from pipeline.config import ExplainOptions, ScoreOptions

    seen = {}

    def capture(name):
        def fake(data, model, *args, **kw):
            seen[name] = next(a for a in (*args, *kw.values()) if isinstance(a, ScoreOptions))
            raise SystemExit(0)

        return fake

    monkeypatch.setattr(score_module, "score", capture("score"))
    monkeypatch.setattr(explain_module, "run_explain", capture("explain"))
    model, data = trained
    run("score", data, "--model", model, "--out", tmp_path / "s")
    run("explain", data, "--model", model, "--out", tmp_path / "e")
    assert seen["score"] == ScoreOptions()
    assert seen["explain"] == ExplainOptions()
