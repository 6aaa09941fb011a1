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


def _host(monkeypatch, flat: str) -> None:
    monkeypatch.setattr(ll, "get_host_cpu_features", lambda: _Features(flat))


def test_avx512_hosts_get_their_own_features_with_wide_vectors(clean_env):
    _host(clean_env, "+avx2,+avx512f,+fma")
    wide = "+avx2,+avx512f,+fma,-prefer-256-bit"
    assert pipeline._wide_vectors() == wide
    env: dict[str, str] = {}
    assert pipeline._tune_cpu(env) == ["NUMBA_CPU_FEATURES", pipeline.CPU_MARK]
    assert env == {"NUMBA_CPU_FEATURES": wide, pipeline.CPU_MARK: wide}


def test_hosts_without_avx512_keep_numbas_default(clean_env):
    _host(clean_env, "+avx2,-avx512f,+fma")
    assert pipeline._wide_vectors() is None
    env: dict[str, str] = {}
    assert pipeline._tune_cpu(env) == [] and env == {}


def test_a_users_own_cpu_setting_wins(clean_env):
    _host(clean_env, "+avx512f")
    for env in (
        {"NUMBA_CPU_NAME": "generic"},
        {"NUMBA_CPU_FEATURES": "+avx2"},
        {"NUMBA_CPU_FEATURES": "+avx2", pipeline.CPU_MARK: "+avx512f,-prefer-256-bit"},
    ):
        before = dict(env)
        assert pipeline._tune_cpu(env) == [] and env == before


def test_a_setting_inherited_from_rnnpipe_is_made_again_for_this_host(clean_env):
    # an environment passed on from a process on another CPU: its features are not this one's
    other = "+avx512f,+amx-tile,-prefer-256-bit"
    _host(clean_env, "+avx2,+avx512f")
    env = {"NUMBA_CPU_FEATURES": other, pipeline.CPU_MARK: other}
    pipeline._tune_cpu(env)
    assert env["NUMBA_CPU_FEATURES"] == env[pipeline.CPU_MARK] == "+avx2,+avx512f,-prefer-256-bit"
    _host(clean_env, "+avx2,-avx512f")
    env = {"NUMBA_CPU_FEATURES": other, pipeline.CPU_MARK: other, "PATH": "/bin"}
    assert pipeline._tune_cpu(env) == [] and env == {"PATH": "/bin"}


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


def test_import_sets_the_environment_and_each_part_opts_out():
    wide = pipeline._wide_vectors()  # this host's answer
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
