"""Where a job stands, read without changing anything: ``job_status`` and its table.

Nothing is locked for long and nothing is hashed: an input whose size or mtime changed shows
as pending (a run hashes it and may find the content unchanged).

Example::

    print(format_status(job_status(load_spec("jobs/example.toml"))))
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pipeline.errors import RnnpipeError
from pipeline.jobs import state
from pipeline.jobs.run import model_fingerprint
from pipeline.jobs.spec import JobInput, JobSpec, discover_inputs

__all__ = ["format_status", "job_status"]


def job_status(spec: JobSpec) -> dict[str, Any]:
    """Where the job stands, without changing anything (no lock taken for long, no hashing).

    Returns a JSON-ready dict: ``job``, ``spec``, ``output``, ``state_dir``, ``running``
    (whether a run holds the lock now), ``model`` (path, fingerprint or error), ``last_run``
    (start, end, exit_code, ``interrupted`` when a run started and never ended),
    ``counts`` (done, pending, failed, gone), ``rows_done``, and ``inputs``: one dict per
    input now found (input, state done|pending|failed, reason, rows, output, finished, error),
    and ``gone``: recorded inputs no longer found. A changed size or mtime shows as pending
    (a run hashes it and may find the content unchanged).

    Raises RunError for an unreadable manifest.

    Example: ``print(format_status(job_status(load_spec("jobs/example.toml"))))``.
    """
    manifest = (
        state.read_manifest(spec.state_dir)
        if spec.state_dir.is_dir()
        else {"format_version": state.MANIFEST_VERSION, "inputs": {}}
    )
    entries: dict[str, dict[str, Any]] = manifest["inputs"]
    model: dict[str, Any] = {"path": str(spec.model), "fingerprint": None, "error": None}
    try:
        model["fingerprint"] = model_fingerprint(spec)
    except RnnpipeError as e:
        model["error"] = state.error_text(e)

    inputs, conflicts = discover_inputs(spec)
    rows: list[dict[str, Any]] = []
    now = time.time()
    for item in inputs:
        row = _input_row(spec, item, entries.get(str(item.path)), model["fingerprint"], now)
        if row is not None:
            rows.append(row)
    for path, message in conflicts:
        rows.append(
            {"input": str(path), "output": None, "state": "failed", "reason": None,
             "rows": None, "finished": None, "error": message}
        )  # fmt: skip
    rows.sort(key=lambda r: r["input"])
    found = {r["input"] for r in rows}
    gone = sorted(k for k in entries if k not in found)

    running = spec.state_dir.is_dir() and state.lock_held(spec.state_dir)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "pending", "failed")}
    counts["gone"] = len(gone)
    return {
        "job": spec.name,
        "spec": str(spec.source) if spec.source else None,
        "output": str(spec.output),
        "state_dir": str(spec.state_dir),
        "running": running,
        "model": model,
        "last_run": _last_run(spec, manifest, running),
        "counts": counts,
        "rows_done": sum(r["rows"] or 0 for r in rows if r["state"] == "done"),
        "inputs": rows,
        "gone": gone,
    }


def _input_row(
    spec: JobSpec,
    item: JobInput,
    entry: Mapping[str, Any] | None,
    fingerprint: str | None,
    now: float,
) -> dict[str, Any] | None:
    """One input's line of the status, from its manifest entry; None when it is gone."""
    row: dict[str, Any] = {
        "input": str(item.path),
        "output": str(item.output),
        "state": "pending",
        "reason": None,
        "rows": None,
        "finished": None,
        "error": None,
    }
    try:
        size, mtime_ns = state.file_stat(item.path)
    except OSError:
        return None
    if entry is None:
        row["reason"] = "new"
    elif entry.get("status") == "failed":
        row.update(state="failed", error=entry.get("error"), reason="retried next run")
    elif (entry.get("size"), entry.get("mtime_ns")) != (size, mtime_ns):
        row["reason"] = "changed"
    elif fingerprint is not None and entry.get("model") != fingerprint:
        row["reason"] = "model changed"
    elif entry.get("output") != str(item.output) or not item.output.is_file():
        row["reason"] = "output missing"
    else:
        row.update(state="done", rows=entry.get("rows"), finished=entry.get("finished"))
    if row["state"] == "pending" and now - mtime_ns / 1e9 < spec.min_age_seconds:
        row["reason"] = f"{row['reason']}; too recent (min_age_seconds)"
    return row


def _last_run(spec: JobSpec, manifest: Mapping[str, Any], running: bool) -> dict[str, Any] | None:
    """The last run, from the log's last start and end events (the manifest's record when
    the log is gone); ``interrupted`` when it started, never ended and holds no lock."""
    start, end = state.last_runs(spec.state_dir)
    if end is not None and (start is None or end["ts"] >= start["ts"]):
        return {
            "start": end.get("started", start["ts"] if start else None),
            "end": end["ts"],
            "exit_code": end.get("exit_code"),
            "interrupted": False,
        }
    if start is not None:
        # started and not (yet) ended: still running, or killed if the lock is free
        return {"start": start["ts"], "end": None, "exit_code": None,
                "interrupted": not running}  # fmt: skip
    if manifest.get("last_run"):  # log.jsonl deleted or rotated away
        recorded = manifest["last_run"]
        return {
            "start": recorded.get("start"),
            "end": recorded.get("end"),
            "exit_code": recorded.get("exit_code"),
            "interrupted": False,
        }
    return None


def format_status(status: Mapping[str, Any]) -> str:
    """A human-readable table of ``job_status``'s result (one line per input).

    Example: ``print(format_status(job_status(spec)))``.
    """
    c = status["counts"]
    lines = [
        f"job {status['job']}: {c['done']} done, {c['pending']} pending, {c['failed']} failed"
        + (f", {c['gone']} recorded inputs gone" if c["gone"] else "")
        + f"; {status['rows_done']} rows scored"
        + ("; RUNNING now" if status["running"] else ""),
    ]
    model = status["model"]
    if model["error"]:
        lines.append(f"model: {model['error']}")
    else:
        lines.append(f"model: {model['path']} (fingerprint {model['fingerprint'][:12]})")
    last = status["last_run"]
    if last is None:
        lines.append("last run: never")
    elif last["interrupted"]:
        lines.append(f"last run: started {last['start']}, never ended (killed)")
    elif last["end"] is None:
        lines.append(f"last run: started {last['start']}, still running")
    else:
        lines.append(f"last run: {last['start']} -> {last['end']}, exit code {last['exit_code']}")
    lines.append(f"output: {status['output']}")
    if status["inputs"]:
        header = ("STATE", "ROWS", "FINISHED / WHY", "INPUT")
        table = [
            (
                r["state"],
                "" if r["rows"] is None else str(r["rows"]),
                r["finished"] or r["reason"] or "",
                r["input"] + (f"\n    error: {r['error']}" if r["error"] else ""),
            )
            for r in status["inputs"]
        ]
        widths = [max(len(header[i]), *(len(t[i]) for t in table)) for i in range(3)]
        lines.append("")
        for t in (header, *table):
            lines.append("  ".join(t[i].ljust(widths[i]) for i in range(3)) + "  " + t[3])
    else:
        lines.append("no inputs match the spec yet")
    return "\n".join(lines)
