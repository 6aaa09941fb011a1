"""Bad and unusual input, end to end through the CLI: never lose data, never a traceback.

Every case in ``CASES`` runs the real ``rnnpipe`` command (in this process through Typer's
``CliRunner``) and asserts the exit code, that a failure says one line on stderr starting
with ``error:`` that names what went wrong, that no traceback is printed, that no input
byte changed (every file the case marks as protected is hashed before and after), and that
no temporary file is left behind. The cases that need a read-only or full file system, or
an unprivileged user, run ``python -m pipeline`` in a user namespace of their own
(``unshare``), where a tmpfs can be mounted without root; they skip with the reason where
the machine does not allow user namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import toy_reviews as reviews
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


TINY = ("--embed-dim", "4", "--hidden-dim", "4", "--epochs", "1", "--batch-size", "16")
TINY += ("--max-len", "16", "--num-words", "100", "--threads", "1", "--quiet")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reliability-model")
    data = write(reviews(64), d / "train.parquet")
    res = runner.invoke(app, ["train", str(data), "--out", str(d / "model"), *TINY])
    assert res.exit_code == 0, res.output
    return d / "model"


# ------------------------------------------------------------------------------ the checks


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (links not followed), by path."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            if not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def cli(*args: object, input: bytes | None = None, cwd: Path | None = None) -> Run:
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        res = runner.invoke(app, [str(a) for a in args], input=input)
    finally:
        os.chdir(old)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a traceback: the case fails with it
    return Run(res.exit_code, res.stdout, res.stderr)


@dataclass
class Case:
    """One row of the table: ``make(tmp, model)`` prepares files and returns the command's
    arguments and the paths whose bytes must not change."""

    name: str
    make: Callable[[Path, Path], tuple[list[object], list[Path]]]
    code: int
    needles: tuple[str, ...] = ()
    stdin: bytes | None = None
    check: Callable[[Path, Run], None] | None = None
    cwd: bool = False  # run with tmp as the current directory
    tags: set[str] = field(default_factory=set)


def _assert_case(case: Case, tmp: Path, run: Run) -> None:
    assert run.code == case.code, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    if case.code != 0:
        assert len(errors) == 1 and errors[0].startswith("error: "), run.stderr
        for needle in case.needles:
            assert needle in errors[0], (needle, errors[0])
    assert not temp_files(tmp), temp_files(tmp)


# ------------------------------------------------------------------------------ score cases


def score_into_link_of_input_dir(tmp, model):
    d = tmp / "d"
    write(reviews(8), d / "a.parquet")
    (tmp / "dlink").symlink_to(d)
    return ["score", d, "-m", model, "-o", tmp / "dlink", "-q"], [d]


def score_single_file_through_link(tmp, model):
    d = tmp / "d"
    write(reviews(8), d / "a.parquet")
    (tmp / "dlink").symlink_to(d)
    return ["score", d / "a.parquet", "-m", model, "-o", tmp / "dlink" / "a.parquet", "-q"], [d]


def score_onto_itself(tmp, model):
    a = write(reviews(8), tmp / "a.parquet")
    return ["score", a, "-m", model, "-o", a, "-q"], [a]


def score_onto_link_to_input(tmp, model):
    a = write(reviews(8), tmp / "d" / "a.parquet")
    (tmp / "alias.parquet").symlink_to(a)
    return ["score", a, "-m", model, "-o", tmp / "alias.parquet", "-q"], [a]


def score_onto_hard_link(tmp, model):
    a = write(reviews(8), tmp / "d" / "a.parquet")
    os.link(a, tmp / "hard.parquet")
    return ["score", a, "-m", model, "-o", tmp / "hard.parquet", "-q"], [a]


def score_input_dir_through_link_of_output(tmp, model):
    d = tmp / "out"
    write(reviews(8), d / "in" / "a.parquet")
    (tmp / "inlink").symlink_to(d / "in")
    return ["score", tmp / "inlink", "-m", model, "-o", d, "-q"], [d]


def score_two_dirs_one_real(tmp, model):
    # e/a.parquet goes to o/e/a.parquet, and o/e is a link to f: the real file of input f/a
    write(reviews(8), tmp / "e" / "a.parquet")
    write(reviews(8, 1), tmp / "f" / "a.parquet")
    (tmp / "o").mkdir()
    (tmp / "o" / "e").symlink_to(tmp / "f")
    return ["score", tmp / "e", tmp / "f", "-m", model, "-o", tmp / "o", "-q"], [
        tmp / "e",
        tmp / "f",
    ]


def score_parent_is_file(tmp, model):
    a = write(reviews(8), tmp / "a.parquet")
    (tmp / "notes.txt").write_text("x")
    return ["score", a, "-m", model, "-o", tmp / "notes.txt" / "out.parquet", "-q"], [a]


def score_dir_into_file(tmp, model):
    write(reviews(8), tmp / "d" / "a.parquet")
    write(reviews(8), tmp / "d" / "b.parquet")
    (tmp / "out.txt").write_text("keep me")
    return ["score", tmp / "d", "-m", model, "-o", tmp / "out.txt", "-q"], [tmp]


def score_link_loop(tmp, model):
    (tmp / "x.parquet").symlink_to(tmp / "y.parquet")
    (tmp / "y.parquet").symlink_to(tmp / "x.parquet")
    return ["score", tmp / "x.parquet", "-m", model, "-o", tmp / "o", "-q"], []


def score_broken_link(tmp, model):
    (tmp / "gone.parquet").symlink_to(tmp / "nowhere.parquet")
    return ["score", tmp / "gone.parquet", "-m", model, "-o", tmp / "o", "-q"], []


def score_not_parquet(tmp, model):
    (tmp / "a.parquet").write_text("id,text\n1,hello\n")
    return ["score", tmp / "a.parquet", "-m", model, "-o", tmp / "o", "-q"], [tmp / "a.parquet"]


def score_no_text_column(tmp, model):
    a = write(pa.table({"id": [1, 2], "body": ["a", "b"]}), tmp / "a.parquet")
    return ["score", a, "-m", model, "-o", tmp / "o", "-q"], [a]


def score_missing_model(tmp, model):
    a = write(reviews(4), tmp / "a.parquet")
    return ["score", a, "-m", tmp / "nomodel", "-o", tmp / "o", "-q"], [a]


def score_empty_dir(tmp, model):
    (tmp / "empty").mkdir()
    return ["score", tmp / "empty", "-m", model, "-o", tmp / "o", "-q"], []


def score_bad_batch_rows(tmp, model):
    a = write(reviews(4), tmp / "a.parquet")
    return ["score", a, "-m", model, "-o", tmp / "o", "--batch-rows", "0"], [a]


def score_unknown_option(tmp, model):
    a = write(reviews(4), tmp / "a.parquet")
    return ["score", a, "-m", model, "-o", tmp / "o", "--fast"], [a]


def score_keep_missing(tmp, model):
    a = write(reviews(4), tmp / "a.parquet")
    return ["score", a, "-m", model, "-o", tmp / "o", "--keep", "date", "-q"], [a]


def score_ok(tmp, model):
    a = write(reviews(20), tmp / "d" / "a.parquet")
    return ["score", tmp / "d", "-m", model, "-o", tmp / "o", "-q"], [a]


def _scored(tmp, run):
    assert pq.read_table(tmp / "o" / "a.parquet").num_rows == 20


# ------------------------------------------------------------------------------ train cases


def train_over_notes(tmp, model):
    data = write(reviews(64), tmp / "reviews.parquet")
    (tmp / "important").mkdir()
    (tmp / "important" / "notes.txt").write_text("notes")
    return ["train", data, "--out", tmp / "important", *TINY], [data, tmp / "important"]


def train_over_its_data(tmp, model):
    write(reviews(64), tmp / "data" / "a.parquet")
    return ["train", tmp / "data", "--out", tmp / "data", *TINY], [tmp / "data"]


def train_out_dot(tmp, model):
    data = write(reviews(64), tmp / "reviews.parquet")
    (tmp / "keep.txt").write_text("x")
    return ["train", data, "--out", ".", *TINY], [data, tmp / "keep.txt"]


def train_out_file(tmp, model):
    data = write(reviews(64), tmp / "reviews.parquet")
    (tmp / "m.txt").write_text("x")
    return ["train", data, "--out", tmp / "m.txt", *TINY], [data, tmp / "m.txt"]


def _no_checkpoint(tmp, run):
    assert not (tmp / "m.txt.checkpoint").exists()


def train_checkpoint_taken(tmp, model):
    data = write(reviews(64), tmp / "reviews.parquet")
    (tmp / "m.checkpoint").mkdir()
    (tmp / "m.checkpoint" / "mine.txt").write_text("x")
    return ["train", data, "--out", tmp / "m", *TINY], [data, tmp / "m.checkpoint"]


def train_data_inside_model(tmp, model):
    m = tmp / "m"
    shutil.copytree(model, m)
    data = write(reviews(64), m / "extra" / "reviews.parquet")
    return ["train", data, "--out", m, *TINY], [data]


def train_parent_is_file(tmp, model):
    data = write(reviews(64), tmp / "reviews.parquet")
    (tmp / "f").write_text("x")
    return ["train", data, "--out", tmp / "f" / "m", *TINY], [data, tmp / "f"]


def train_over_model(tmp, model):
    m = tmp / "m"
    shutil.copytree(model, m)
    data = write(reviews(64, 3), tmp / "reviews.parquet")
    return ["train", data, "--out", m, *TINY], [data]


def _replaced(tmp, run):
    cfg = json.loads((tmp / "m" / "config.json").read_text())
    assert cfg["training"]["data"] == [str(tmp / "reviews.parquet")]


def train_mixed_case(tmp, model):
    t = reviews(64)
    labels = [("Negative" if i % 4 == 1 else v) for i, v in enumerate(t["label"].to_pylist())]
    labels = [("NEGATIVE" if i % 4 == 3 else v) for i, v in enumerate(labels)]
    data = write(t.set_column(2, "label", pa.array(labels)), tmp / "r.parquet")
    return ["train", data, "--out", tmp / "m", *TINY], [data]


def train_all_null_text(tmp, model):
    t = reviews(64)
    data = write(t.set_column(1, "text", pa.nulls(64, pa.string())), tmp / "r.parquet")
    return ["train", data, "--out", tmp / "m", *TINY], [data]


def train_float_label(tmp, model):
    t = reviews(64)
    y = pa.array([0.0, 1.0, 0.7] + [float(i % 2) for i in range(61)])
    data = write(t.set_column(2, "label", y), tmp / "r.parquet")
    return ["train", data, "--out", tmp / "m", *TINY], [data]


def train_single_class(tmp, model):
    t = reviews(64)
    data = write(t.set_column(2, "label", pa.array(["positive"] * 64)), tmp / "r.parquet")
    return ["train", data, "--out", tmp / "m", *TINY], [data]


def train_missing_out(tmp, model):
    data = write(reviews(64), tmp / "r.parquet")
    return ["train", data], [data]


# -------------------------------------------------------------------- predict and evaluate


def predict_bad_utf8_stdin(tmp, model):
    return ["predict", "-m", model], []


def _both_answered(tmp, run):
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("\tgood film"), lines
    assert "\ufffd" in lines[1]
    assert "line 2" in run.stderr and run.stderr.startswith("warning: ")


def predict_bad_utf8_argv(tmp, model):
    return ["predict", "-m", model, "good film", "bad \udcc3( film"], []


def _argv_answered(tmp, run):
    assert len(run.stdout.strip().splitlines()) == 2
    assert "argument 2" in run.stderr


def predict_missing_model(tmp, model):
    return ["predict", "-m", tmp / "none", "hello"], []


def evaluate_null_label(tmp, model):
    t = reviews(8)
    y = pa.array(["positive", None] + ["negative"] * 6)
    data = write(t.set_column(2, "label", y), tmp / "r.parquet")
    return ["evaluate", data, "-m", model], [data]


def evaluate_unknown_label(tmp, model):
    t = reviews(8)
    data = write(t.set_column(2, "label", pa.array(["meh"] * 8)), tmp / "r.parquet")
    return ["evaluate", data, "-m", model], [data]


# ------------------------------------------------------------------------------ job cases


def _job(tmp: Path, model: Path, inputs: list[str], output: str) -> Path:
    spec = tmp / "job.toml"
    spec.write_text(
        f'name = "t"\ninputs = {json.dumps(inputs)}\nmodel = "{model}"\noutput = "{output}"\n'
        "threads = 1\n"
    )
    return spec


def job_inputs_through_link_to_output(tmp, model):
    write(reviews(8), tmp / "data4" / "a.parquet")
    (tmp / "data4link").symlink_to(tmp / "data4")
    spec = _job(tmp, model, [str(tmp / "data4link" / "*.parquet")], str(tmp / "data4"))
    return ["job", "run", spec], [tmp / "data4" / "a.parquet"]


def job_validate_overlap(tmp, model):
    args, protected = job_inputs_through_link_to_output(tmp, model)
    return ["job", "validate", args[2]], protected


CASES = [
    Case("score into a link to its input folder", score_into_link_of_input_dir, 2,
         ("lies inside the output directory",)),
    Case("score one file through a link to its folder", score_single_file_through_link, 2,
         ("would overwrite its input",)),
    Case("score a file onto itself", score_onto_itself, 2, ("would overwrite its input",)),
    Case("score onto a symlink to the input", score_onto_link_to_input, 2, ("overwrite",)),
    Case("score onto a hard link of the input", score_onto_hard_link, 2, ("overwrite",)),
    Case("score inputs reached through a link inside --out",
         score_input_dir_through_link_of_output, 2, ("lies inside the output directory",)),
    Case("score onto another input through a link", score_two_dirs_one_real, 2,
         ("would overwrite the input",)),
    Case("score --out under a regular file", score_parent_is_file, 2, ("not a directory",)),
    Case("score a folder into a regular file", score_dir_into_file, 2, ("is a file",)),
    Case("score a symlink loop", score_link_loop, 2, ("link loop",)),
    Case("score a broken symlink", score_broken_link, 2, ("broken symbolic link",)),
    Case("score a CSV named .parquet", score_not_parquet, 2, ("not a Parquet file",)),
    Case("score without a text column", score_no_text_column, 2, ("--text-col",)),
    Case("score with a missing model", score_missing_model, 2, ("nomodel",)),
    Case("score an empty folder", score_empty_dir, 2, ("no .parquet files",)),
    Case("score --batch-rows 0", score_bad_batch_rows, 2, ("--batch-rows",)),
    Case("score an unknown option", score_unknown_option, 2, ("--fast",)),
    Case("score --keep a missing column", score_keep_missing, 2, ("date",)),
    Case("score a folder (works)", score_ok, 0, check=_scored),
    Case("train --out a folder of notes", train_over_notes, 2,
         ("not an rnnpipe model directory",)),
    Case("train --out its own data folder", train_over_its_data, 2,
         ("not an rnnpipe model directory",)),
    Case("train --out .", train_out_dot, 2, ("not an rnnpipe model directory",), cwd=True),
    Case("train --out a file", train_out_file, 2, ("not a directory",), check=_no_checkpoint),
    Case("train where the checkpoint folder is someone's", train_checkpoint_taken, 2,
         ("not an rnnpipe checkpoint",)),
    Case("train on data inside --out", train_data_inside_model, 2, ("lies inside",)),
    Case("train --out under a regular file", train_parent_is_file, 2, ("not a directory",)),
    Case("train --out an existing model (replaced)", train_over_model, 0, check=_replaced),
    Case("train on labels differing only in case", train_mixed_case, 2,
         ("differ only in case", "'Negative'")),
    Case("train on an all-null text column", train_all_null_text, 2, ("null or empty",)),
    Case("train on a float label 0.7", train_float_label, 2, ("label 0.7 at row 2",)),
    Case("train on a single class", train_single_class, 2, ("single class",)),
    Case("train without --out", train_missing_out, 2, ("--out",)),
    Case("predict invalid UTF-8 on stdin", predict_bad_utf8_stdin, 0,
         stdin=b"good film\nbad \xc3\x28 film\n", check=_both_answered),
    Case("predict invalid UTF-8 in an argument", predict_bad_utf8_argv, 0, check=_argv_answered),
    Case("predict with a missing model", predict_missing_model, 2, ("none",)),
    Case("evaluate a null label", evaluate_null_label, 2, ("every row needs a label",)),
    Case("evaluate an unknown label", evaluate_unknown_label, 2, ("'meh'",)),
    Case("job inputs through a link to its output", job_inputs_through_link_to_output, 1),
    Case("job validate inputs through a link to its output", job_validate_overlap, 2,
         ("would overwrite",)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case, model: Path, tmp_path: Path) -> None:
    args, protected = case.make(tmp_path, model)
    before = tree_hashes(*protected)
    run = cli(*args, input=case.stdin, cwd=tmp_path if case.cwd else None)
    if case.code == 1 and args[:2] == ["job", "run"]:
        # a job reports per-input failures as JSON lines (its log), not one error line
        assert "Traceback" not in run.stderr and run.code == 1, run.stderr
        assert "would overwrite" in run.stderr
    else:
        _assert_case(case, tmp_path, run)
    assert tree_hashes(*protected) == before, "an input changed"
    if case.check is not None:
        case.check(tmp_path, run)


def test_job_output_through_link_into_inputs_never_nests(model, tmp_path):
    data = tmp_path / "data3"
    write(reviews(8), data / "a.parquet")
    write(reviews(8, 1), data / "sub" / "b.parquet")
    (tmp_path / "data3link").symlink_to(data)
    spec = _job(
        tmp_path, model, [str(data / "**" / "*.parquet")], str(tmp_path / "data3link" / "scored")
    )
    before = tree_hashes(data / "a.parquet", data / "sub")
    for _ in range(3):
        run = cli("job", "run", spec)
        assert run.code == 0, run.stderr
    outputs = sorted(p.relative_to(data / "scored") for p in (data / "scored").rglob("*.parquet"))
    assert outputs == [Path("a.parquet"), Path("sub/b.parquet")]
    assert tree_hashes(data / "a.parquet", data / "sub") == before


def test_outputs_honour_the_umask(model, tmp_path):
    a = write(reviews(8), tmp_path / "a.parquet")
    old = os.umask(0o027)
    try:
        assert cli("score", a, "-m", model, "-o", tmp_path / "o.parquet", "-q").code == 0
        data = write(reviews(64), tmp_path / "r.parquet")
        assert cli("train", data, "--out", tmp_path / "m", *TINY).code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.parquet").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "m" / "weights.npz").stat().st_mode & 0o777 == 0o640
    assert cli("score", a, "-m", model, "-o", tmp_path / "p.parquet", "-q").code == 0
    assert (tmp_path / "p.parquet").stat().st_mode & 0o777 == 0o666 & ~old


# ------------------------------------------------- subprocess cases: kill -9, file systems


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _rnnpipe(*args: object) -> list[str]:
    return [sys.executable, "-m", "pipeline", *[str(a) for a in args]]


def test_killed_score_leaves_temp_that_resume_removes(model, tmp_path):
    big = pa.concat_tables([reviews(500, s) for s in range(40)])  # 20,000 rows
    a = write(big, tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _rnnpipe("score", a, "-m", model, "-o", out / "a.parquet", "--batch-rows", "16", "-q"),
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not temp_files(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the score run ended before a temporary file was seen")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert temp_files(out) and not (out / "a.parquet").exists()
    # a live writer's temporary is never taken: one held by this process stays
    done = subprocess.run(
        _rnnpipe("score", a, "-m", model, "-o", out / "a.parquet", "--resume", "-q"),
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not temp_files(out)
    assert pq.read_table(out / "a.parquet").num_rows == 20_000


def test_a_live_writers_temporary_is_kept(tmp_path):
    from pipeline import io

    final = tmp_path / "a.parquet"
    with io.ParquetSink(final, pa.schema([("x", pa.int64())])) as sink:
        sink.write(pa.table({"x": [1]}))
        (live,) = temp_files(tmp_path)
        dead = tmp_path / ".a.parquet.dead.tmp"
        dead.write_text("left by a killed run")
        assert io.remove_stale_temps([final]) == [dead]
        assert live.exists()
    assert final.exists() and not temp_files(tmp_path)


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"user namespaces are not allowed here: {probe.stderr.decode().strip()}"
    return None


needs_unshare = pytest.mark.skipif(_can_unshare() is not None, reason=str(_can_unshare()))


def _in_namespace(mount: Path, options: str, args: list[str], user: str = "root"):
    """``args`` run after a tmpfs with ``options`` is mounted at ``mount``, in a user and
    mount namespace of their own (the mount vanishes with it)."""
    script = f'mount -t tmpfs -o {options} tmpfs {mount} && exec "$@"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _one_line(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@needs_unshare
def test_score_on_a_full_disk(model, tmp_path):
    big = pa.concat_tables([reviews(500, s) for s in range(40)])
    a = write(big, tmp_path / "a.parquet")
    (tmp_path / "full").mkdir()
    before = tree_hashes(a)
    proc = _in_namespace(tmp_path / "full", "size=64k", _rnnpipe("score", a, "-m", model, "-o",
                         tmp_path / "full" / "s.parquet", "-q"))  # fmt: skip
    _one_line(proc, 1, "s.parquet", "no space left on device")
    assert tree_hashes(a) == before


@needs_unshare
def test_score_on_a_read_only_file_system(model, tmp_path):
    a = write(reviews(8), tmp_path / "a.parquet")
    (tmp_path / "ro").mkdir()
    proc = _in_namespace(tmp_path / "ro", "ro", _rnnpipe("score", a, "-m", model, "-o",
                         tmp_path / "ro" / "out", "-q"))  # fmt: skip
    _one_line(proc, 2, "read-only file system")


@needs_unshare
def test_train_on_a_read_only_file_system_fails_before_training(tmp_path):
    data = write(reviews(64), tmp_path / "r.parquet")
    (tmp_path / "ro").mkdir()
    proc = _in_namespace(tmp_path / "ro", "ro", _rnnpipe("train", data, "--out",
                         tmp_path / "ro" / "m", *TINY))  # fmt: skip
    _one_line(proc, 2, "read-only file system")


@needs_unshare
def test_train_on_a_full_disk(tmp_path):
    data = write(reviews(64), tmp_path / "r.parquet")
    (tmp_path / "full").mkdir()
    # a 100 x 256 embedding alone (100 kB) does not fit in 16 kB
    wide = [a if a != "4" or i != 1 else "256" for i, a in enumerate(TINY)]
    args = _rnnpipe("train", data, "--out", tmp_path / "full" / "m", *wide)
    proc = _in_namespace(tmp_path / "full", "size=16k", args)
    _one_line(proc, 1, "no space left on device")


@needs_unshare
def test_unreadable_input_and_unwritable_output(model):
    # an unprivileged user (nobody) in a user namespace of its own, on world-readable files
    base = Path(tempfile.mkdtemp(prefix="rnnpipe-perm-"))
    try:
        base.chmod(0o755)
        a = write(reviews(8), base / "a.parquet")
        a.chmod(0o644)
        secret = write(reviews(8), base / "secret.parquet")
        secret.chmod(0o600)
        (base / "locked").mkdir(mode=0o555)
        m = base / "model"
        shutil.copytree(model, m)
        for p in [m, *m.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)

        def nobody(*args):
            cmd = ["unshare", "--user", *_rnnpipe(*args)]
            return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)

        _one_line(nobody("score", secret, "-m", m, "-o", base / "locked" / "o", "-q"), 2,
                  "permission denied")  # fmt: skip
        _one_line(nobody("score", a, "-m", m, "-o", base / "locked" / "o", "-q"), 2,
                  "permission denied")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_usage_errors_are_one_line():
    for args in (["train"], ["bogus"], ["score", "x.parquet"], ["train", "x", "--out"]):
        run = cli(*args)
        assert run.code == 2, run
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
