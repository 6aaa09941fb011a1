"""Scheduled batch jobs: a TOML spec, a manifest of processed inputs, a lock, incremental runs.

A job scores every input file matching its spec exactly once, and again only when the
input's content or the model changes. Run it from cron, a systemd timer or Airflow as often
as you like (``jobs/`` has an example of each)::

    rnnpipe job validate jobs/example.toml     # spec, model and inputs check out
    rnnpipe job run jobs/example.toml          # score what is new; exit code for the scheduler
    rnnpipe job status jobs/example.toml       # done / pending / failed, last run

How a run stays correct whatever happens to it:

* **Lock.** ``<state_dir>/lock`` is held with ``flock`` for the whole run; the kernel drops it
  when the process dies, however it dies. A second run meanwhile exits at once with code 3.
* **Atomic outputs.** ``score_file`` writes each output under a hidden temporary name and
  renames it into place when complete. Temporaries left by a killed run (``.*.tmp`` in the
  output tree) are deleted at the start of the next run, under the lock.
* **Manifest after the rename.** ``<state_dir>/manifest.json`` records, per input (keyed by
  absolute path): size, mtime_ns, sha256 of the content, output, rows, model fingerprint and
  finish time. An input is recorded only after its output is in place, and the manifest is
  replaced atomically (temp + fsync + rename). A run killed between the rename and the record
  scores that input again next time, overwriting the same output: each output exists once.
* **What is scored.** An input is scored when it has no record, its record failed, its
  output is missing, the model fingerprint differs, or its size/mtime differ *and* its
  sha256 differs (a touched but identical file is not rescored).

Exit codes: 0 all done (or nothing to do), 1 some inputs failed (the others are done and
recorded; the failed ones are retried next run), 2 bad spec or usage (or a model that does
not load), 3 another run holds the lock, 143 stopped by SIGTERM.

Every event is one JSON object per line on stderr and appended to ``<state_dir>/log.jsonl``.

The package, one role per module: ``spec`` (``JobSpec``, ``load_spec``, ``discover_inputs``),
``state`` (manifest, lock, JSON-lines log, stray temporaries), ``run`` (``run_job``),
``status`` (``job_status``, ``format_status``) and ``validate`` (``validate_spec``).
"""

from pipeline.jobs.run import (
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    RunReport,
    run_job,
)
from pipeline.jobs.spec import JobInput, JobSpec, discover_inputs, load_spec
from pipeline.jobs.status import format_status, job_status
from pipeline.jobs.validate import validate_spec

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "JobInput",
    "JobSpec",
    "RunReport",
    "discover_inputs",
    "format_status",
    "job_status",
    "load_spec",
    "run_job",
    "validate_spec",
]
