"""Runtime defaults (``pipeline.runtime``): what the CLI sets in the environment before NumPy
and Numba load, what importing the library leaves alone, and how each part opts out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import llvmlite.binding as ll
import pytest

from pipeline import runtime


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
    assert runtime.wide_vectors() == wide
    env: dict[str, str] = {}
    assert runtime.tune_cpu(env) == ["NUMBA_CPU_FEATURES", runtime.CPU_MARK]
    assert env == {"NUMBA_CPU_FEATURES": wide, runtime.CPU_MARK: wide}


def test_hosts_without_avx512_keep_numbas_default(clean_env):
    _host(clean_env, "+avx2,-avx512f,+fma")
    assert runtime.wide_vectors() is None
    env: dict[str, str] = {}
    assert runtime.tune_cpu(env) == [] and env == {}


def test_a_users_own_cpu_setting_wins(clean_env):
    _host(clean_env, "+avx512f")
    for env in (
        {"NUMBA_CPU_NAME": "generic"},
        {"NUMBA_CPU_FEATURES": "+avx2"},
        {"NUMBA_CPU_FEATURES": "+avx2", runtime.CPU_MARK: "+avx512f,-prefer-256-bit"},
    ):
        before = dict(env)
        assert runtime.tune_cpu(env) == [] and env == before


def test_a_setting_inherited_from_rnnpipe_is_made_again_for_this_host(clean_env):
    # an environment passed on from a process on another CPU: its features are not this one's
    other = "+avx512f,+amx-tile,-prefer-256-bit"
    _host(clean_env, "+avx2,+avx512f")
    env = {"NUMBA_CPU_FEATURES": other, runtime.CPU_MARK: other}
    runtime.tune_cpu(env)
    assert env["NUMBA_CPU_FEATURES"] == env[runtime.CPU_MARK] == "+avx2,+avx512f,-prefer-256-bit"
    _host(clean_env, "+avx2,-avx512f")
    env = {"NUMBA_CPU_FEATURES": other, runtime.CPU_MARK: other, "PATH": "/bin"}
    assert runtime.tune_cpu(env) == [] and env == {"PATH": "/bin"}


def test_no_host_information_keeps_numbas_default(clean_env):
    def fail():
        raise RuntimeError("no host CPU information")

    clean_env.setattr(ll, "get_host_cpu_features", fail)
    assert runtime.wide_vectors() is None


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "RNNPIPE_"))}
    for key in runtime.THREAD_ENV:
        env.pop(key, None)
    env.update(extra)
    return env


KEYS = ["NUMBA_CPU_FEATURES", *runtime.THREAD_ENV]

# The environment in force when NumPy and then Numba are first imported: what they read.
_PROBE = f"""
import json, os, sys
seen = {{}}
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "numba") and name not in seen:
            seen[name] = {{k: os.environ.get(k) for k in {KEYS!r}}}
sys.meta_path.insert(0, Probe())
"""


def _environment_at_load(env: dict[str, str], imports: str) -> dict[str, dict]:
    """``{"numpy": env, "numba": env, "after": env}`` in a child that runs ``imports``."""
    code = (
        _PROBE
        + imports
        + f"\nseen['after'] = {{k: os.environ.get(k) for k in {KEYS!r}}}\nprint(json.dumps(seen))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


CLI = "import pipeline.cli\nimport numba"  # what `rnnpipe` and `python -m pipeline` import first


def test_the_cli_sets_the_environment_before_numpy_and_numba_load():
    wide = runtime.wide_vectors()  # this host's answer
    got = _environment_at_load(_child_env(), CLI)
    for lib in ("numpy", "numba"):
        assert got[lib]["OPENBLAS_THREAD_TIMEOUT"] == "4", lib
        assert got[lib]["OMP_WAIT_POLICY"] == "PASSIVE", lib
        assert got[lib]["NUMBA_CPU_FEATURES"] == wide, lib  # None on hosts without AVX-512


def test_each_part_of_the_defaults_opts_out():
    got = _environment_at_load(_child_env(RNNPIPE_CPU_TUNING="0"), CLI)["numba"]
    assert got["NUMBA_CPU_FEATURES"] is None and got["OMP_WAIT_POLICY"] == "PASSIVE"

    env = _child_env(RNNPIPE_THREAD_ENV="0", OMP_WAIT_POLICY="ACTIVE")
    got = _environment_at_load(env, CLI)["numpy"]
    assert got["OPENBLAS_THREAD_TIMEOUT"] is None and got["OMP_WAIT_POLICY"] == "ACTIVE"


def test_importing_the_library_changes_no_environment():
    library = "import pipeline, pipeline.model, pipeline.score, pipeline.jobs, pipeline.train"
    got = _environment_at_load(_child_env(), library)
    assert got["after"] == dict.fromkeys(KEYS)
    # a library user opts in, before NumPy loads
    got = _environment_at_load(
        _child_env(), "from pipeline import runtime\nruntime.apply_defaults()\n" + library
    )
    assert got["numpy"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert got["numba"]["NUMBA_CPU_FEATURES"] == runtime.wide_vectors()


def test_a_peers_environment_has_none_of_what_the_defaults_set(monkeypatch):
    for key in ("RNNPIPE_THREAD_ENV", "RNNPIPE_CPU_TUNING", runtime.CPU_MARK, *KEYS):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    with pytest.warns(RuntimeWarning, match="after NumPy was imported"):  # it is, here
        set_here = runtime.apply_defaults()
    assert set(runtime.THREAD_ENV) <= set(set_here)
    env = runtime.peer_environment({"PATH": "/bin", **{k: os.environ[k] for k in set_here}})
    assert env == {"PATH": "/bin", "RNNPIPE_THREAD_ENV": "0"}


def test_applying_the_defaults_after_numpy_loaded_warns():
    # OpenBLAS read its thread hand-over when NumPy loaded: too late, and the user is told
    code = "from pipeline import runtime\nruntime.apply_defaults()\n"
    for before, warned in (("", False), ("import numpy\n", True)):
        out = subprocess.run(
            [sys.executable, "-W", "always", "-c", before + code + "import numpy"],
            env=_child_env(), capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert ("after NumPy was imported" in out.stderr) is warned, out.stderr
    # nothing to warn about when the user set the variable before NumPy loaded
    env = _child_env(OPENBLAS_THREAD_TIMEOUT="4")
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import numpy\n" + code],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "after NumPy" not in out.stderr, out.stderr
