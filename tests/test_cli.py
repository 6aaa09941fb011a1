"""The rnnpipe CLI driven for real (Typer's CliRunner): commands, help, bad input, exit codes."""

from __future__ import annotations

import json
import re
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
    assert "Traceback" not in res.output
    err = [line for line in res.output.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1, res.output
    for needle in needles:
        assert needle in err[0], err[0]


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
