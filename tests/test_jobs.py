"""Scheduled jobs: spec validation, incremental runs, the lock, and kill -9 at random moments.

The kill and lock tests run the job as a real process (the ``rnnpipe job`` CLI, slowed down
where a test must catch it half-way by a sleep in ``pipeline.jobs.run.step_hook``); the
incremental tests call ``run_job`` in this process.
A tiny random-weight model (E=4, H=4) is built once; a first in-process scoring call fills
Numba's cache so that every subprocess starts fast.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.jobs import (
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    JobSpec,
    discover_inputs,
    format_status,
    job_status,
    load_spec,
    run_job,
    validate_spec,
)
from pipeline.model import Model, ModelConfig
from pipeline.text import Tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = "good bad great awful film plot acting boring fun dull superb waste".split()


def _texts(n: int, seed: int) -> list[str | None]:
    rng = np.random.default_rng(seed)
    texts: list[str | None] = [" ".join(rng.choice(WORDS, rng.integers(1, 15))) for _ in range(n)]
    texts[0] = None  # a null text is scored too
    return texts


def write_input(path: Path, n: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": pa.array(np.arange(n) + 1000 * seed), "text": _texts(n, seed)})
    pq.write_table(table, path)
    return path


def _save_model(directory: Path, seed: int) -> Path:
    tok = Tokenizer(num_words=50).fit(_texts(200, 99)[1:])
    config = ModelConfig(
        cell="lstm", embed_dim=4, hidden_dim=4, vocab_size=tok.vocab_size, bidirectional=False,
        pooling="last", dropout=0.0,
    )  # fmt: skip
    Model(config, tokenizer=tok, seed=seed).save(directory)
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    directory = _save_model(tmp_path_factory.mktemp("jobmodel") / "model", seed=1)
    # compile (or load) the cached kernels here, once, instead of in every subprocess
    from pipeline.score import score_file

    warm = tmp_path_factory.mktemp("warm")
    score_file(write_input(warm / "w.parquet", 5, 0), Model.load(directory), warm / "o.parquet")
    return directory


def make_spec(tmp_path: Path, model: Path, **extra) -> Path:
    values = {
        "name": "test-job",
        "inputs": ["in/*.parquet"],
        "model": str(model),
        "output": "out",
        "threads": 1,
        **extra,
    }
    spec = tmp_path / "job.toml"
    spec.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return spec


# ``rnnpipe job ...`` in a fresh process, with ``pipeline.jobs.run.step_hook`` sleeping DELAY
# seconds before each input and after each scored batch (0: no hook), so that a run lasts
# long enough to be killed half-way through a file: python -c PACED_CLI DELAY job run SPEC
PACED_CLI = """
import sys, time
delay = float(sys.argv.pop(1))
from pipeline import cli
from pipeline.jobs import run
if delay:
    run.step_hook = lambda: time.sleep(delay)
sys.argv[0] = "rnnpipe"
cli.main()
"""


def job_process(command: str, spec: Path, delay: float = 0.0, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", PACED_CLI, str(delay), "job", command, str(spec)],
        cwd=spec.parent.parent,  # not the spec's folder: relative paths follow the spec
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_process(command: str, spec: Path, delay: float = 0.0) -> subprocess.CompletedProcess:
    p = job_process(command, spec, delay)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def manifest(spec: JobSpec) -> dict:
    return json.loads((spec.state_dir / "manifest.json").read_text())["inputs"]


def events(spec: JobSpec) -> list[dict]:
    path = spec.state_dir / "log.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now by a running job
    return out


def outputs(spec: JobSpec) -> list[Path]:
    """Every file in the output tree outside the state folder (temporaries included)."""
    return sorted(
        p for p in spec.output.rglob("*") if p.is_file() and not p.is_relative_to(spec.state_dir)
    )


def temporaries(spec: JobSpec) -> list[Path]:
    return [p for p in spec.output.rglob(".*.tmp")]


def run(spec: JobSpec):
    # in this process, keep the default thread count for the test files that run after this one
    return run_job(dataclasses.replace(spec, threads=0), echo=False)


# --------------------------------------------------------------------------------------- spec


def test_spec_defaults_and_paths_relative_to_the_spec(tmp_path, model_dir):
    spec = load_spec(make_spec(tmp_path, model_dir))
    assert spec.inputs == (str(tmp_path / "in" / "*.parquet"),)
    assert spec.output == tmp_path / "out"
    assert spec.state_dir == tmp_path / "out" / ".rnnpipe-job"
    assert (spec.batch_rows, spec.threads, spec.device, spec.engine) == (8192, 1, "cpu", "local")
    assert (spec.min_age_seconds, spec.retries, spec.keep, spec.text_col) == (0.0, 0, None, None)
    spec = load_spec(make_spec(tmp_path, model_dir, state_dir="/var/tmp/x", keep=["id"]))
    assert spec.state_dir == Path("/var/tmp/x") and spec.keep == ("id",)


@pytest.mark.parametrize(
    ("extra", "drop", "words"),
    [
        ({"bath_rows": 10}, None, ["unknown key 'bath_rows'"]),
        ({}, "model", ["missing required key 'model'"]),
        ({}, "inputs", ["missing required key 'inputs'"]),
        ({"batch_rows": "big"}, None, ["batch_rows", "'big'"]),
        ({"batch_rows": 0}, None, ["batch_rows", ">= 1"]),
        ({"threads": True}, None, ["threads"]),
        ({"retries": -1}, None, ["retries"]),
        ({"min_age_seconds": "1h"}, None, ["min_age_seconds"]),
        ({"device": "tpu"}, None, ["device", "cpu, cuda, auto"]),
        ({"engine": "spark"}, None, ["engine", "local, ray"]),
        ({"keep": "id"}, None, ["keep"]),
    ],
)
def test_bad_spec_is_one_line_config_error(tmp_path, model_dir, extra, drop, words):
    path = make_spec(tmp_path, model_dir, **extra)
    if drop:
        path.write_text("".join(x for x in path.read_text().splitlines(True) if drop not in x))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_inputs_must_be_a_list_and_toml_must_parse(tmp_path, model_dir):
    path = make_spec(tmp_path, model_dir)
    path.write_text(path.read_text().replace('["in/*.parquet"]', '"in/*.parquet"'))
    with pytest.raises(ConfigError, match="inputs must be a non-empty list"):
        load_spec(path)
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(path)
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.toml")


def test_validate_checks_model_and_accepts_zero_inputs(tmp_path, model_dir):
    spec = load_spec(make_spec(tmp_path, model_dir))
    info = validate_spec(spec)
    assert info["inputs"] == 0 and info["fingerprint"] == Model.load(model_dir).fingerprint()
    write_input(tmp_path / "in" / "a.parquet", 5, 1)
    assert validate_spec(spec)["inputs"] == 1
    broken = load_spec(make_spec(tmp_path, tmp_path / "no-model"))
    with pytest.raises(Exception, match="no-model"):
        validate_spec(broken)


def test_output_paths_mirror_the_input_root(tmp_path):
    for rel in ("a.parquet", "2024/b.parquet", "2024/05/c.pq", "scored/old.parquet"):
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).write_bytes(b"x")
    spec = JobSpec(
        name="j",
        inputs=(str(tmp_path / "data" / "**" / "*.p*"), str(tmp_path / "data" / "a.parquet")),
        model=tmp_path / "m",
        output=tmp_path / "data" / "scored",  # inside the inputs: its files are not inputs
    )
    inputs, conflicts = discover_inputs(spec)
    assert conflicts == []
    assert {str(i.output.relative_to(spec.output)) for i in inputs} == {
        "a.parquet",
        "2024/b.parquet",
        "2024/05/c.parquet",
    }
    spec = JobSpec(name="j", inputs=(str(tmp_path / "data"),), model="m", output=tmp_path / "o")
    assert {str(i.output.relative_to(spec.output)) for i in discover_inputs(spec)[0]} == {
        "a.parquet",
        "2024/b.parquet",
        "scored/old.parquet",
    }
    # an output equal to the input is refused, per input
    spec = JobSpec(name="j", inputs=(str(tmp_path / "data" / "*.parquet"),), model="m",
                   output=tmp_path / "data")  # fmt: skip
    inputs, conflicts = discover_inputs(spec)
    assert inputs == [] and "overwrite" in conflicts[0][1]


def test_shipped_examples_point_at_the_example_job():
    jobs = REPO / "jobs"
    spec = load_spec(jobs / "example.toml")
    assert spec.inputs == (str(REPO / "sample_data" / "incoming" / "*.parquet"),)
    assert spec.model == REPO / "models" / "sample"
    assert spec.output == REPO / "scores" / "example"

    def settings(name: str) -> list[str]:
        lines = (jobs / name).read_text().splitlines()
        return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]

    cron = settings("rnnpipe-example.cron")
    assert any(x.startswith("PATH=") and ".venv/bin" in x for x in cron)
    assert any("rnnpipe job run" in x and "example.toml" in x for x in cron)
    service = settings("rnnpipe-example.service")
    assert "Type=oneshot" in service
    success = [x.split("=", 1)[1].split() for x in service if x.startswith("SuccessExitStatus=")]
    assert success and "3" in success[0]
    assert any(x.startswith("ExecStart=") and "job run" in x for x in service)
    assert "Persistent=true" in settings("rnnpipe-example.timer")
    dag = (jobs / "airflow_dag.py").read_text()
    compile(dag, "airflow_dag.py", "exec")  # syntax only: Airflow is not imported here
    assert "skip_on_exit_code=3" in dag and "job run" in dag
    readme = (jobs / "README.md").read_text()
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |"):
        assert code in readme


def test_ray_engine_without_ray_is_a_clear_run_error(tmp_path, model_dir, monkeypatch):
    # CI always installs Ray, so hide it here rather than skip: the path must still run
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    spec = load_spec(make_spec(tmp_path, model_dir, engine="ray"))
    write_input(tmp_path / "in" / "a.parquet", 5, seed=1)
    report = run(spec)
    assert report.exit_code == 2 and "ray" in report.message
    assert events(spec)[-2]["event"] == "error" and outputs(spec) == []


# --------------------------------------------------------------------------------------- runs


def test_incremental_changed_corrupt_and_fixed_inputs(tmp_path, model_dir):
    spec = load_spec(make_spec(tmp_path, model_dir, batch_rows=7))
    report = run(spec)
    assert report.exit_code == EXIT_OK and report.scored == []  # nothing to do is success
    for i in range(3):
        write_input(tmp_path / "in" / f"f{i}.parquet", 20 + i, seed=i)
    (tmp_path / "in" / "sub").mkdir()  # a glob without ** does not descend
    write_input(tmp_path / "in" / "sub" / "deep.parquet", 5, seed=9)

    report = run(spec)
    assert report.exit_code == EXIT_OK and len(report.scored) == 3 and report.rows == 63
    m = manifest(spec)
    assert sorted(m) == [str(tmp_path / "in" / f"f{i}.parquet") for i in range(3)]
    for i in range(3):
        entry = m[str(tmp_path / "in" / f"f{i}.parquet")]
        assert entry["status"] == "done" and entry["rows"] == 20 + i
        assert entry["model"] == Model.load(model_dir).fingerprint()
        out = pq.read_table(entry["output"])
        assert out.num_rows == 20 + i and out.column_names == ["id", "score", "label"]
    first_done = {k: v["finished"] for k, v in m.items()}

    # nothing changed: nothing scored
    report = run(spec)
    assert report.exit_code == EXIT_OK and report.scored == [] and report.up_to_date == 3

    # a new file: only it; a touched but identical file: not rescored (same sha256)
    write_input(tmp_path / "in" / "f3.parquet", 11, seed=3)
    f0 = tmp_path / "in" / "f0.parquet"
    os.utime(f0, ns=(time.time_ns(), time.time_ns() - 5_000_000_000))
    report = run(spec)
    assert report.scored == [str(tmp_path / "in" / "f3.parquet")] and report.up_to_date == 3
    assert manifest(spec)[str(f0)]["mtime_ns"] == f0.stat().st_mtime_ns  # stat refreshed

    # a modified file: scored again, its output replaced
    write_input(tmp_path / "in" / "f1.parquet", 33, seed=11)
    report = run(spec)
    assert report.scored == [str(tmp_path / "in" / "f1.parquet")]
    assert pq.read_table(tmp_path / "out" / "f1.parquet").num_rows == 33
    assert manifest(spec)[str(tmp_path / "in" / "f1.parquet")]["rows"] == 33

    # corrupt inputs fail alone, logged with their path; the others are scored
    bad = tmp_path / "in" / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    notext = tmp_path / "in" / "notext.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), notext)
    write_input(tmp_path / "in" / "f4.parquet", 9, seed=4)
    (tmp_path / "out" / ".f9.parquet.ab12.tmp").write_bytes(b"left by a killed run")
    report = run(spec)
    assert report.exit_code == EXIT_FAILED
    assert report.scored == [str(tmp_path / "in" / "f4.parquet")]
    assert set(report.failed) == {str(bad), str(notext)}
    assert report.temp_files_removed == 1 and temporaries(spec) == []
    failed = [e for e in events(spec) if e["event"] == "file_failed"]
    assert {e["input"] for e in failed} == {str(bad), str(notext)}
    assert all(e["level"] == "error" and e["job"] == "test-job" for e in failed)
    assert "not a Parquet file" in next(e["error"] for e in failed if e["input"] == str(bad))
    assert "text" in next(e["error"] for e in failed if e["input"] == str(notext))
    m = manifest(spec)
    assert m[str(bad)]["status"] == "failed" and "Parquet" in m[str(bad)]["error"]
    assert not (tmp_path / "out" / "bad.parquet").exists()
    end = events(spec)[-1]
    assert end["event"] == "end" and end["exit_code"] == 1 and end["failed"] == 2

    status = job_status(spec)
    assert status["counts"] == {"done": 5, "pending": 0, "failed": 2, "gone": 0}
    assert status["last_run"]["exit_code"] == 1 and not status["running"]
    assert "Parquet" in format_status(status) and json.dumps(status)

    # failed inputs are retried on the next run (still failing: exit 1 again), then fixed
    assert run(spec).exit_code == EXIT_FAILED
    write_input(bad, 4, seed=5)
    write_input(notext, 6, seed=6)
    report = run(spec)
    assert report.exit_code == EXIT_OK and set(report.scored) == {str(bad), str(notext)}
    m = manifest(spec)
    assert len(m) == 7 and all(e["status"] == "done" for e in m.values())
    # records of earlier runs were kept (merged), not rebuilt
    assert (
        m[str(tmp_path / "in" / "f2.parquet")]["finished"]
        == first_done[str(tmp_path / "in" / "f2.parquet")]
    )
    assert job_status(spec)["counts"] == {"done": 7, "pending": 0, "failed": 0, "gone": 0}

    # a deleted output is scored again; a removed input stays recorded, shown as gone
    (tmp_path / "out" / "f2.parquet").unlink()
    (tmp_path / "in" / "f3.parquet").unlink()
    report = run(spec)
    assert report.scored == [str(tmp_path / "in" / "f2.parquet")]
    assert job_status(spec)["gone"] == [str(tmp_path / "in" / "f3.parquet")]
    assert str(tmp_path / "in" / "f3.parquet") in manifest(spec)


def test_new_model_rescores_everything(tmp_path):
    model = _save_model(tmp_path / "model", seed=1)
    spec = load_spec(make_spec(tmp_path, model))
    for i in range(2):
        write_input(tmp_path / "in" / f"f{i}.parquet", 10, seed=i)
    assert len(run(spec).scored) == 2
    before = pq.read_table(tmp_path / "out" / "f0.parquet")["score"]
    _save_model(model, seed=2)  # same directory, new weights
    report = run(spec)
    assert len(report.scored) == 2
    assert pq.read_table(tmp_path / "out" / "f0.parquet")["score"] != before
    assert run(spec).scored == []


def test_min_age_and_retries(tmp_path, model_dir):
    spec = load_spec(make_spec(tmp_path, model_dir, min_age_seconds=3600, retries=1))
    fresh = write_input(tmp_path / "in" / "fresh.parquet", 5, seed=1)
    report = run(spec)
    assert report.exit_code == EXIT_OK and report.pending == [str(fresh)]
    assert not (tmp_path / "out" / "fresh.parquet").exists()
    assert [e["event"] for e in events(spec)][-2] == "file_skipped"
    assert job_status(spec)["counts"]["pending"] == 1
    hour_ago = time.time_ns() - 3601 * 10**9
    os.utime(fresh, ns=(hour_ago, hour_ago))
    bad = tmp_path / "in" / "bad.parquet"
    bad.write_bytes(b"junk")
    os.utime(bad, ns=(hour_ago, hour_ago))
    report = run(spec)
    assert report.exit_code == EXIT_FAILED and report.scored == [str(fresh)]
    tries = [e for e in events(spec) if e["event"] == "file_failed"]
    assert [e.get("retrying", False) for e in tries] == [True, False]
    assert manifest(spec)[str(bad)]["attempts"] == 2


def test_lock_held_in_process_gives_exit_3(tmp_path, model_dir):
    spec = load_spec(make_spec(tmp_path, model_dir))
    write_input(tmp_path / "in" / "a.parquet", 5, seed=1)
    spec.state_dir.mkdir(parents=True)
    with open(spec.state_dir / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        report = run(spec)
        assert report.exit_code == EXIT_LOCKED and "lock" in report.message
        assert job_status(spec)["running"] is True
    assert outputs(spec) == [] and not (spec.state_dir / "manifest.json").exists()
    assert events(spec)[-1]["exit_code"] == EXIT_LOCKED
    assert run(spec).exit_code == EXIT_OK


# --------------------------------------------------------------------------------------- processes


def test_cli_exit_codes_and_json_log(tmp_path, model_dir):
    spec_path = make_spec(tmp_path, model_dir)
    write_input(tmp_path / "in" / "good.parquet", 8, seed=1)
    (tmp_path / "in" / "bad.parquet").write_bytes(b"not parquet")
    assert run_process("validate", spec_path).returncode == 0

    done = run_process("run", spec_path)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    assert [x["event"] for x in lines] == ["start", "file_failed", "file_done", "end"]
    assert lines[1]["input"] == str(tmp_path / "in" / "bad.parquet")
    assert lines == events(load_spec(spec_path))  # stderr and log.jsonl carry the same lines

    spec_path.write_text(spec_path.read_text() + "colour = 'blue'\n")
    usage = run_process("run", spec_path)
    assert usage.returncode == 2
    assert "unknown key 'colour'" in usage.stderr and len(usage.stderr.strip().splitlines()) == 1


def test_second_run_exits_3_while_another_holds_the_lock(tmp_path, model_dir):
    spec_path = make_spec(tmp_path, model_dir)
    spec = load_spec(spec_path)
    for i in range(3):
        write_input(tmp_path / "in" / f"f{i}.parquet", 10, seed=i)
    spec.state_dir.mkdir(parents=True)

    # deterministic: this process holds the lock
    with open(spec.state_dir / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run_process("run", spec_path)
    assert busy.returncode == EXIT_LOCKED, busy.stderr
    assert "lock" in busy.stderr and outputs(spec) == []

    # a real race: two runs started together; one scores, the other exits 3 at once
    a, b = job_process("run", spec_path, delay=0.25), job_process("run", spec_path, delay=0.25)
    codes = sorted(p.wait(timeout=120) for p in (a, b))
    assert codes == [EXIT_OK, EXIT_LOCKED], (a.stderr.read(), b.stderr.read())
    for p in (a, b):
        p.stdout.close()
        p.stderr.close()
    starts = [e for e in events(spec) if e["event"] == "start"]
    assert len(starts) == 1  # the loser never started
    assert [p.name for p in outputs(spec)] == ["f0.parquet", "f1.parquet", "f2.parquet"]


def test_kill_9_at_random_moments_then_every_output_exactly_once(tmp_path, model_dir):
    rows = {f"part-{i}.parquet": 40 + 7 * i for i in range(7)}
    for i, (name, n) in enumerate(rows.items()):
        sub = "a" if i % 2 else "b"
        write_input(tmp_path / "in" / sub / name, n, seed=i)
    spec_path = make_spec(tmp_path, model_dir, batch_rows=5)
    spec_path.write_text(spec_path.read_text().replace("in/*.parquet", "in/**/*.parquet"))
    spec = load_spec(spec_path)
    rng = np.random.default_rng(7)
    killed_mid_run = 0
    temps_seen = 0
    for _ in range(4):
        starts_before = sum(e["event"] == "start" for e in events(spec))
        p = job_process("run", spec_path, delay=0.03, start_new_session=True)
        deadline = time.monotonic() + 60
        # wait until this run holds the lock (its start event), then kill it at a random moment
        while (
            sum(e["event"] == "start" for e in events(spec)) == starts_before
            and p.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.05, 1.2)))
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=60)
        if p.returncode == -signal.SIGKILL:
            killed_mid_run += 1
            temps_seen += len(temporaries(spec))
            if sum(e["event"] == "start" for e in events(spec)) > starts_before:
                status = job_status(spec)
                assert status["last_run"]["interrupted"] and not status["running"]
    assert killed_mid_run >= 2, "the runs ended before they could be killed: slow them down"

    final = run_process("run", spec_path)
    assert final.returncode == 0, final.stderr
    end = events(spec)[-1]
    assert end["event"] == "end" and end["exit_code"] == 0
    # every temporary a killed run left was removed by the next run, under its lock
    starts = [e for e in events(spec) if e["event"] == "start"]
    assert sum(e["temp_files_removed"] for e in starts) == temps_seen

    found = outputs(spec)
    assert sorted(p.name for p in found) == sorted(rows)  # exactly one output per input
    assert temporaries(spec) == [] and not list(spec.state_dir.glob(".*.tmp"))
    m = manifest(spec)
    assert len(m) == len(rows)
    for path in found:
        table = pq.read_table(path)
        assert table.num_rows == rows[path.name]
        assert (
            table["id"].to_pylist()
            == pq.read_table(tmp_path / "in" / path.parent.name / path.name)["id"].to_pylist()
        )
        entry = m[str(tmp_path / "in" / path.parent.name / path.name)]
        assert entry["status"] == "done" and entry["rows"] == rows[path.name]
        assert entry["output"] == str(path)
    status = job_status(spec)
    assert status["counts"]["done"] == len(rows) and status["last_run"]["exit_code"] == 0


def test_sigterm_stops_cleanly_with_exit_143(tmp_path, model_dir):
    for i in range(3):
        write_input(tmp_path / "in" / f"f{i}.parquet", 40, seed=i)
    spec_path = make_spec(tmp_path, model_dir, batch_rows=5)
    spec = load_spec(spec_path)
    p = job_process("run", spec_path, delay=0.05)
    deadline = time.monotonic() + 60
    while not temporaries(spec) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert temporaries(spec), "the run never got to write an output"
    p.send_signal(signal.SIGTERM)  # while an output is half written
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert temporaries(spec) == []  # the half-written output was removed on the way out
    assert [e["event"] for e in events(spec)][-2:] == ["error", "end"]
    assert "SIGTERM" in events(spec)[-2]["error"]
    assert run(spec).exit_code == EXIT_OK
    assert [p.name for p in outputs(spec)] == ["f0.parquet", "f1.parquet", "f2.parquet"]
