"""Airflow DAG running the rnnpipe "example" job every 10 minutes.

Copy this file into ``$AIRFLOW_HOME/dags/`` on a worker that has rnnpipe installed (in its
own virtual environment; it need not be Airflow's), and set ``RNNPIPE`` and ``SPEC`` below.

Exit codes map to task states: 0 success; 1 some inputs failed (task failed, so Airflow's
retries rerun the job, which retries only the failed inputs); 2 bad spec or model (failed);
3 another run holds the job's lock (skipped: the run started by cron, systemd or by hand
does the work). Needs Airflow >= 2.6 (``skip_on_exit_code``).
Not imported by rnnpipe's tests, and excluded from ruff.
"""

from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.6+
    from airflow import DAG
    from airflow.operators.bash import BashOperator

RNNPIPE = "/srv/rnnpipe/.venv/bin/rnnpipe"
SPEC = "/srv/rnnpipe/jobs/example.toml"

with DAG(
    dag_id="rnnpipe_example",
    description="Score new review files with rnnpipe, each exactly once",
    schedule=timedelta(minutes=10),
    start_date=datetime(2024, 1, 1),
    catchup=False,  # each run scores everything new: no backfill needed
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["rnnpipe"],
) as dag:
    BashOperator(
        task_id="score_new_inputs",
        bash_command=f"{RNNPIPE} job run {SPEC}",
        skip_on_exit_code=3,
        # Numba loads its compiled kernels from here instead of compiling on every run
        env={"NUMBA_CACHE_DIR": "/var/cache/rnnpipe/numba"},
        append_env=True,
        execution_timeout=timedelta(hours=2),
    )
