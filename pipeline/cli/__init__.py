"""The ``rnnpipe`` command line: a thin Typer layer over the library.

Each command parses its options, builds a config, calls one library function and prints a
summary. Expected failures (``RnnpipeError``) become one line on stderr and a non-zero exit
code (2 bad input or usage, 1 failure at run time); anything else is a bug and keeps its
traceback. This module holds the app, the options the commands share and the error
handling; the commands live by theme: ``training.py`` (train, pretrain), ``scoring.py``
(explain, score, evaluate, predict), ``admin.py`` (info, bench, job run|status|validate).

    rnnpipe train data.parquet --out model/
    rnnpipe score reviews/ --model model/ --out scores/
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pipeline import runtime

# A program, not a library: its runtime defaults (thread hand-over, CPU tuning) go into the
# environment before the imports below load NumPy, which loads OpenBLAS, and Numba.
runtime.apply_defaults()

from pipeline.errors import RnnpipeError  # noqa: E402


def _is_a(exc: BaseException, name: str) -> bool:
    # by class name: Typer ships its own copy of Click, so Click's classes are not these
    return any(c.__name__ == name for c in type(exc).__mro__)


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing option, a bad value) as one line on stderr, exit code 2,
    instead of the framework's usage block: the same shape as every other expected error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as e:
            if _is_a(e, "NoArgsIsHelpError"):
                e.show()  # the help text itself
                sys.exit(e.exit_code)
            if _is_a(e, "ClickException"):
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                err(f"{e.format_message()}{hint}")
                sys.exit(e.exit_code)
            if _is_a(e, "Abort"):
                err("aborted")
                sys.exit(1)
            raise
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="rnnpipe",
    cls=_OneLineErrors,
    help="Train recurrent (LSTM/GRU/RNN) sentiment classifiers on Parquet and score huge "
    "Parquet datasets with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
job_app = typer.Typer(
    help="Scheduled batch jobs: incremental, exactly-once scoring.", no_args_is_help=True
)
app.add_typer(job_app, name="job")

TextCol = Annotated[str | None, typer.Option(help="Text column (default: 'text', else 'review').")]
LabelCol = Annotated[str, typer.Option(help="Label column.")]
Threads = Annotated[
    int, typer.Option(help="Threads for Numba and BLAS together (0: all cores).", min=0)
]
Device = Annotated[str, typer.Option(help="cpu, cuda or auto (cuda when a GPU is present).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object for machines.")]
ModelDir = Annotated[Path, typer.Option("--model", "-m", help="Model directory.")]


def err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def expected_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RnnpipeError into one line on stderr and its exit code: no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RnnpipeError as exc:
            err(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def resolve_backend(device: str) -> str:
    """Map --device to a kernel backend name (``pipeline.runtime.resolve_backend``)."""
    return runtime.resolve_backend(device)


def keep_columns(keep: str | None) -> tuple[str, ...] | None:
    """``--keep a, b`` as column names (None: the command's default)."""
    return tuple(c.strip() for c in keep.split(",") if c.strip()) if keep else None


def set_threads(n: int) -> None:
    runtime.set_threads(n or None)


def load_model(path: Path, device: str):
    return runtime.load_model(path, device)


def main() -> None:
    """Console entry point: run the app, then leave at once (``pipeline.runtime.leave``:
    atexit handlers and a flush, then ``os._exit``; ``RNNPIPE_FAST_EXIT=0`` exits the usual
    way)."""
    try:
        app()
    except SystemExit as exc:
        runtime.leave(exc.code)
        raise
    runtime.leave(0)


# the commands register themselves on ``app`` when imported, in the order --help lists them
import pipeline.cli.training  # noqa: E402, F401, I001
import pipeline.cli.scoring  # noqa: E402, F401, I001
import pipeline.cli.admin  # noqa: E402, F401, I001
