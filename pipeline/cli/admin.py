"""``rnnpipe info``, ``bench`` and ``job run|status|validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli import (
    Device,
    Json,
    Threads,
    app,
    expected_errors,
    job_app,
    resolve_backend,
    set_threads,
)

# ------------------------------------------------------------------------------------ info


@app.command()
@expected_errors
def info(
    model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
    json_out: Json = False,
) -> None:
    """Show a model's configuration, size, training data and metrics.

    Example: rnnpipe info model/
    """
    from pipeline.model import Model

    m = Model.load(model_dir)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    n_params = int(sum(v.size for v in m.params.values()))
    report = {
        "model_dir": str(model_dir),
        "parameters": n_params,
        "fingerprint": m.fingerprint(),
        **config,
    }
    if json_out:
        typer.echo(json.dumps(report))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_short(v)}" for k, v in value.items())
        typer.echo(f"{key:>16}: {_short(value)}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, ... {len(value)} items]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


# ----------------------------------------------------------------------------------- bench


@app.command()
@expected_errors
def bench(
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn.")] = "lstm",
    embed_dim: Annotated[int, typer.Option(help="Embedding size E.")] = 128,
    hidden_dim: Annotated[int, typer.Option(help="Hidden size H.")] = 128,
    rows: Annotated[int, typer.Option(help="Generated reviews to score.", min=1)] = 4096,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).", min=1)] = 3,
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Json = False,
) -> None:
    """Measure this machine: score generated reviews with a random model of the given size.

    Prints reviews/s, tokens/s and GFLOP/s of the recurrent product, and the machine's
    matrix-product rate for comparison. Example: rnnpipe bench --cell gru --threads 2
    """
    from pipeline.bench import run_machine_bench

    set_threads(threads)
    report = run_machine_bench(cell, embed_dim, hidden_dim, rows, repeats, resolve_backend(device))
    if json_out:
        typer.echo(json.dumps(report))
        return
    for key, value in report.items():
        typer.echo(
            f"{key:>22}: {value:,.1f}" if isinstance(value, float) else f"{key:>22}: {value}"
        )


# ------------------------------------------------------------------------------------ jobs


JobSpecArg = Annotated[Path, typer.Argument(help="Job spec (TOML).")]


@job_app.command("run")
@expected_errors
def job_run(
    spec: JobSpecArg,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log events to the job's log.jsonl only.")
    ] = False,
) -> None:
    """Score the job's new or changed inputs; safe to kill and rerun.

    Exit codes: 0 all done (or nothing to do), 1 some inputs failed, 2 bad spec,
    3 another run holds the lock. Example: rnnpipe job run jobs/example.toml
    """
    from pipeline.jobs import load_spec, run_job

    report = run_job(load_spec(spec), echo=not quiet)
    raise typer.Exit(report.exit_code)


@job_app.command("status")
@expected_errors
def job_status(spec: JobSpecArg, json_out: Json = False) -> None:
    """What a job has done, what is pending or failed, and its last run.

    Example: rnnpipe job status jobs/example.toml --json
    """
    from pipeline.jobs import format_status, job_status, load_spec

    status = job_status(load_spec(spec))
    typer.echo(json.dumps(status) if json_out else format_status(status))


@job_app.command("validate")
@expected_errors
def job_validate(spec: JobSpecArg) -> None:
    """Check a job spec (keys, types, model, inputs) without running it.

    Example: rnnpipe job validate jobs/example.toml
    """
    from pipeline.jobs import load_spec, validate_spec

    info = validate_spec(load_spec(spec))
    inputs = info.get("inputs", [])
    n = len(inputs) if isinstance(inputs, list | tuple) else inputs
    typer.echo(
        f"{spec}: ok (job {info.get('job')}, model {info.get('model')} "
        f"{str(info.get('fingerprint', ''))[:12]}, {n} input file(s))"
    )
