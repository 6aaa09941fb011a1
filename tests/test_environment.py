"""What ``import pipeline`` sets in the environment before NumPy and Numba load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import llvmlite.binding as ll
import pytest

import pipeline
from pipeline import bench


class _Features:
    def __init__(self, flat: str):
        self.flat = flat

    def flatten(self) -> str:
        return self.flat


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    return monkeypatch


def test_avx512_hosts_get_their_own_features_with_wide_vectors(clean_env):
    clean_env.setattr(ll, "get_host_cpu_features", lambda: _Features("+avx2,+avx512f,+fma"))
    assert pipeline._wide_vectors() == "+avx2,+avx512f,+fma,-prefer-256-bit"


def test_hosts_without_avx512_keep_numbas_default(clean_env):
    clean_env.setattr(ll, "get_host_cpu_features", lambda: _Features("+avx2,-avx512f,+fma"))
    assert pipeline._wide_vectors() is None


def test_a_users_own_cpu_setting_wins(clean_env):
    clean_env.setattr(ll, "get_host_cpu_features", lambda: _Features("+avx512f"))
    clean_env.setenv("NUMBA_CPU_NAME", "generic")
    assert pipeline._wide_vectors() is None
    clean_env.delenv("NUMBA_CPU_NAME")
    clean_env.setenv("NUMBA_CPU_FEATURES", "+avx2")
    assert pipeline._wide_vectors() is None


def test_no_host_information_keeps_numbas_default(clean_env):
    def fail():
        raise RuntimeError("no host CPU information")

    clean_env.setattr(ll, "get_host_cpu_features", fail)
    assert pipeline._wide_vectors() is None


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "RNNPIPE_"))}
    for key in pipeline.THREAD_ENV:
        env.pop(key, None)
    env.update(extra)
    return env


def _environment_after_import(env: dict[str, str]) -> dict[str, str | None]:
    code = (
        "import json, os, pipeline; keys = ['NUMBA_CPU_FEATURES', *pipeline.THREAD_ENV]; "
        "print(json.dumps({k: os.environ.get(k) for k in keys}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_import_sets_the_environment_and_each_part_opts_out(clean_env):
    wide = pipeline._wide_vectors()  # this host's answer, with no CPU setting of the user's
    got = _environment_after_import(_child_env())
    assert got["OPENBLAS_THREAD_TIMEOUT"] == "4" and got["OMP_WAIT_POLICY"] == "PASSIVE"
    assert got["NUMBA_CPU_FEATURES"] == wide  # None on hosts without AVX-512

    got = _environment_after_import(_child_env(RNNPIPE_CPU_TUNING="0"))
    assert got["NUMBA_CPU_FEATURES"] is None and got["OMP_WAIT_POLICY"] == "PASSIVE"

    got = _environment_after_import(_child_env(RNNPIPE_THREAD_ENV="0", OMP_WAIT_POLICY="ACTIVE"))
    assert got["OPENBLAS_THREAD_TIMEOUT"] is None and got["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_peers_environment_has_none_of_what_the_import_set():
    set_here = {key: "x" for key in pipeline.THREAD_ENV_SET}
    env = bench.peer_env({"PATH": "/bin", **set_here})
    assert env["RNNPIPE_THREAD_ENV"] == "0"
    assert not set(set_here) & set(env)
