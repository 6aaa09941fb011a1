"""The CUDA backend against the NumPy reference: every cell, direction and pooling mode.

On a machine with an NVIDIA GPU the tests run directly on it. Without one they run in the
CUDA simulator: ``test_cuda_backend_under_simulator`` re-runs this file in a child process
with ``NUMBA_ENABLE_CUDASIM=1`` (it must be set before numba is first imported, and the
parent process has long imported it) and block sizes of 2 (4 tokens per part of a product
split over k), so the tiny inputs below span several blocks in every dimension: sequences
(5 rows, 2 a block), hidden units (H=3, 2 threads looping over them), matrix tiles (E=3,
H=3 and 11 tokens, none a multiple of the tile) and product parts (11 tokens in 3).
``test_simulated_blocks_span_several`` checks that they do. The simulator is slow, so shapes
stay that small; the child run takes about 25 s of CPU. Tests that need bigger shapes than the
simulator can afford run on a real GPU only, and ``test_kernels_compile_for_hopper_without_a_gpu``
compiles every kernel to PTX (what the simulator, running kernels as Python, cannot check)
on machines without one: the ``dev`` extra installs NVRTC and NVVM for it, and where they are
installed a failure to compile fails the test rather than skipping it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from kernel_cases import layer_params, ragged_batch

from pipeline.errors import ConfigError
from pipeline.kernels import cuda_available, reference

CELLS = ["lstm", "gru", "rnn"]
MODES = ["last", "max", "mean"]
LENGTHS = [0, 1, 5, 3, 2]  # empty, one token, and rows that end at different steps
E, H, V = 3, 3, 7  # none a multiple of the simulator's blocks of 2

CHILD_ENV = "RNNPIPE_CUDA_SIM_CHILD"  # set in the simulator child so it does not recurse
SIM_BLOCKS = {
    "RNNPIPE_CUDA_THREADS": "2",
    "RNNPIPE_CUDA_ROWS": "2",
    "RNNPIPE_CUDA_TILE": "2",
    "RNNPIPE_CUDA_SPLIT_K": "4",
}
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
ON_DEVICE = HAVE_NUMBA_CUDA and cuda_available()  # a GPU, or the simulator in this process

needs_cuda = pytest.mark.skipif(
    not ON_DEVICE, reason="no CUDA GPU here; test_cuda_backend_under_simulator runs these"
)
needs_gpu = pytest.mark.skipif(
    not ON_DEVICE or SIMULATED, reason="needs a real GPU: too big for the simulator"
)


@pytest.fixture(scope="module")
def K():
    """The CUDA backend module (imported only where it can run)."""
    from pipeline.kernels import cuda

    return cuda


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator_threads():
    # The simulator runs each CUDA thread as a Python thread and its block manager polls
    # them; with the default 5 ms GIL switch interval every syncthreads costs milliseconds.
    if not SIMULATED:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def _train_step(backend, cell, p, x, offsets, reverse, mode, dfeat):
    hs, cache = backend.layer_forward(cell, x, offsets, **p, reverse=reverse, training=True)
    feat = backend.pool_forward(hs, offsets, mode, reverse)
    dhs = backend.pool_backward(dfeat, hs, offsets, mode, reverse)
    return (hs, feat, dhs, *backend.layer_backward(cache, dhs))


NAMES = ["hs", "feat", "dhs", "dx", "dW_ih", "dW_hh", "db_ih", "db_hh"]


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_forward_and_gradients_match_reference(K, cell, reverse, mode):
    p = layer_params(cell, E, H, seed=1, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=2)
    x = emb[ids]
    dfeat = np.random.default_rng(3).normal(size=(len(LENGTHS), H)).astype(np.float32)
    got = _train_step(K, cell, p, x, offsets, reverse, mode, dfeat)
    want = _train_step(reference, cell, p, x, offsets, reverse, mode, dfeat)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert a.dtype == np.float32 and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=name)
    assert np.abs(got[4]).max() > 0  # the gradients are not trivially zero


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
def test_distinct_rows_input_matches_reference(K, cell):
    p = layer_params(cell, E, H, seed=31, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=32)
    dhs = np.random.default_rng(33).normal(size=(int(offsets[-1]), H)).astype(np.float32)
    out = {}
    for name, backend in (("cuda", K), ("reference", reference)):
        hs, cache = backend.layer_forward(cell, emb, offsets, **p, reverse=True, rows=ids)
        out[name] = (hs, *backend.layer_backward(cache, dhs))
    assert out["cuda"][1].shape == emb.shape
    for name, a, b in zip(["hs", *NAMES[3:]], out["cuda"], out["reference"], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=name)


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
def test_input_scale_matches_reference(K, cell):
    p = layer_params(cell, E, H, seed=34, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=35)
    nnz = int(offsets[-1])
    scale = np.random.default_rng(36).uniform(0.0, 1.0, nnz).astype(np.float32)
    dhs = np.random.default_rng(37).normal(size=(nnz, H)).astype(np.float32)
    out = {}
    for name, backend in (("cuda", K), ("reference", reference)):
        hs, cache = backend.layer_forward(
            cell, emb, offsets, **p, reverse=True, rows=ids, scale=scale
        )
        out[name] = (hs, *backend.layer_backward(cache, dhs))
    names = ["hs", *NAMES[3:], "dscale"]
    assert len(out["cuda"]) == len(names)
    for name, a, b in zip(names, out["cuda"], out["reference"], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=name)


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_infer_matches_reference(K, cell, reverse):
    p = layer_params(cell, E, H, seed=4, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=5)
    t_c = K.fold_table(cell, emb, p["W_ih"], p["b_ih"], p["b_hh"])
    t_r = reference.fold_table(cell, emb, p["W_ih"], p["b_ih"], p["b_hh"])
    np.testing.assert_allclose(t_c, t_r, atol=1e-5, rtol=1e-5)
    outs = {}
    for modes in [("last", "max", "mean"), ("mean", "last")]:
        out_c = K.layer_infer(cell, t_c, ids, offsets, p["W_hh"], p["b_hh"], reverse, modes)
        out_r = reference.layer_infer(cell, t_r, ids, offsets, p["W_hh"], p["b_hh"], reverse, modes)
        assert out_c.shape == (len(LENGTHS), len(modes) * H)
        np.testing.assert_allclose(out_c, out_r, atol=2e-5, rtol=1e-4, err_msg=str(modes))
        outs[modes] = out_c
    # a table kept on the device gives the same features as a host one
    from numba import cuda

    t_dev = cuda.to_device(t_c)
    on_dev = K.layer_infer(cell, t_dev, ids, offsets, p["W_hh"], p["b_hh"], reverse, ("max",))
    np.testing.assert_array_equal(on_dev, outs[("last", "max", "mean")][:, H : 2 * H])


@needs_cuda
@pytest.mark.parametrize("reverse", [False, True])
def test_pool_backward_adds_into_out(K, reverse):
    offsets, ids, emb = ragged_batch(np.array(LENGTHS), H, V, seed=31)
    hs = emb[ids]  # any float32 [nnz, H]
    rng = np.random.default_rng(32)
    d_max, d_mean = (rng.normal(size=(len(LENGTHS), H)).astype(np.float32) for _ in range(2))
    out = K.pool_backward(d_max, hs, offsets, "max", reverse)
    got = K.pool_backward(d_mean, hs, offsets, "mean", reverse, out=out)
    assert got is out
    want = reference.pool_backward(d_max, hs, offsets, "max", reverse)
    want += reference.pool_backward(d_mean, hs, offsets, "mean", reverse)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out must"):
        K.pool_backward(d_mean, hs, offsets, "mean", reverse, out=np.zeros((1, H), np.float32))


@needs_cuda
@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_and_max_gradients_equal_the_dense_ones(K, reverse):
    p = layer_params("lstm", E, H, seed=41)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=42)
    d_final = np.random.default_rng(43).normal(size=(len(LENGTHS), H)).astype(np.float32)
    hs, cache = K.layer_forward("lstm", emb[ids], offsets, **p, reverse=reverse)
    dense = K.layer_backward(cache, K.pool_backward(d_final, hs, offsets, "last", reverse))
    for a, b in zip(dense, K.layer_backward(cache, None, d_final), strict=True):
        np.testing.assert_array_equal(a, b)
    # and max pooling's, added at each unit's maximum
    dense = K.layer_backward(cache, K.pool_backward(d_final, hs, offsets, "max", reverse))
    for a, b in zip(dense, K.layer_backward(cache, None, d_max=d_final), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_cuda
@pytest.mark.parametrize("reverse", [False, True])
def test_max_pool_gradient_goes_to_first_maximum(K, reverse):
    # ties on purpose: the gradient goes to the lowest token index, in either direction
    hs = np.array([[1, 4], [3, 0], [3, 4], [2, 1], [5, 5]], np.float32)
    offsets = np.array([0, 4, 5], np.int64)
    dfeat = np.array([[1, 2], [3, 4]], np.float32)
    got = K.pool_backward(dfeat, hs, offsets, "max", reverse)
    want = np.array([[0, 2], [1, 0], [0, 0], [0, 0], [3, 4]], np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, reference.pool_backward(dfeat, hs, offsets, "max", reverse))
    np.testing.assert_array_equal(K.pool_forward(hs, offsets, "max"), [[3, 4], [5, 5]])


@needs_cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_runs_are_bit_identical(K, cell):
    p = layer_params(cell, E, H, seed=6, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=7)
    dfeat = np.ones((len(LENGTHS), H), np.float32)
    first = _train_step(K, cell, p, emb[ids], offsets, True, "max", dfeat)
    second = _train_step(K, cell, p, emb[ids], offsets, True, "max", dfeat)
    for name, a, b in zip(NAMES, first, second, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@needs_cuda
@pytest.mark.parametrize("lengths", [[], [0, 0]])
def test_empty_batches(K, lengths):
    p = layer_params("lstm", E, H, seed=8, scale=0.5)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    x = np.zeros((0, E), np.float32)
    hs, cache = K.layer_forward("lstm", x, offsets, **p)
    assert hs.shape == (0, H)
    dx, dW_ih, dW_hh, db_ih, db_hh = K.layer_backward(cache, np.zeros((0, H), np.float32))
    assert dx.shape == (0, E) and not dW_ih.any() and not dW_hh.any() and not db_hh.any()
    assert dW_ih.shape == p["W_ih"].shape and db_ih.shape == p["b_ih"].shape
    np.testing.assert_array_equal(K.pool_forward(hs, offsets, "max"), np.zeros((len(lengths), H)))
    table = np.ones((V, 4 * H), np.float32)
    ids = np.zeros(0, np.int32)
    out = K.layer_infer("lstm", table, ids, offsets, p["W_hh"], p["b_hh"], False, ("last", "mean"))
    np.testing.assert_array_equal(out, np.zeros((len(lengths), 2 * H)))


@needs_cuda
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_split_over_k_matches_numpy(K, trans_a, trans_b):
    from numba import cuda

    rng = np.random.default_rng(9)
    M, Kd, N = 3, 11, 5  # none a multiple of the tile
    A = rng.normal(size=(Kd, M) if trans_a else (M, Kd)).astype(np.float32)
    B = rng.normal(size=(N, Kd) if trans_b else (Kd, N)).astype(np.float32)
    bias = rng.normal(size=N).astype(np.float32)
    want = (A.T if trans_a else A) @ (B.T if trans_b else B) + bias
    for splits in (1, 3):
        got = K._matmul(
            cuda.to_device(A), cuda.to_device(B), trans_a, trans_b, cuda.to_device(bias), splits
        ).copy_to_host()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"splits={splits}")


@needs_cuda
def test_bad_inputs_raise_clear_errors(K):
    p = layer_params("gru", E, H, seed=10, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=11)
    x = emb[ids]
    table = np.zeros((V, 3 * H), np.float32)
    with pytest.raises(ConfigError, match="unknown cell"):
        K.layer_forward("lstmx", x, offsets, **p)
    with pytest.raises(ConfigError, match="unknown pool mode"):
        K.pool_forward(np.zeros((x.shape[0], H), np.float32), offsets, "sum")
    with pytest.raises(ValueError, match="offsets must end at nnz"):
        K.layer_forward("gru", x[:-1], offsets, **p)
    with pytest.raises(ValueError, match="outside the table"):
        K.layer_infer("gru", table, ids + V, offsets, p["W_hh"], p["b_hh"], False, ("last",))
    with pytest.raises(ValueError, match="W_ih must be"):
        K.layer_forward("gru", x[:, :2], offsets, **p)
    big = layer_params(
        "lstm", 2, 2048, seed=12, scale=0.5
    )  # 2*4*2048 floats of shared state per sequence
    with pytest.raises(ValueError, match="too large for the CUDA backend"):
        K.layer_forward("lstm", np.zeros((0, 2), np.float32), np.zeros(1, np.int64), **big)


class _PartsSpy:
    """Stands in for ``_sum_parts_kernel`` and records how many parts each launch sums."""

    def __init__(self, kernel):
        self.kernel, self.parts = kernel, []

    def __getitem__(self, launch_config):
        launch = self.kernel[launch_config]

        def run(parts, out):
            self.parts.append(parts.shape[0])
            return launch(parts, out)

        return run


@pytest.mark.skipif(not SIMULATED, reason="checks the simulator's block sizes")
def test_simulated_blocks_span_several(K, monkeypatch):
    # the point of running under the simulator with small blocks: tiny inputs cross blocks
    # in every dimension, and the last block of each is partial
    nnz = sum(LENGTHS)
    assert K.ROWS < len(LENGTHS) and len(LENGTHS) % K.ROWS  # sequences per block
    assert K.THREADS < H and H % K.THREADS  # hidden units per thread: a loop, uneven
    for size in (E, H, 3 * H, nnz):  # tiles of every product's dimensions
        assert K.TILE < size and size % K.TILE, size
    assert K.SPLIT_K < nnz  # weight products over the tokens split over k
    # ... and the layer's gradients really are sums of several parts
    spy = _PartsSpy(K._sum_parts_kernel)
    monkeypatch.setattr(K, "_sum_parts_kernel", spy)
    p = layer_params("gru", E, H, seed=61, scale=0.5)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=62)
    hs, cache = K.layer_forward("gru", emb[ids], offsets, **p)
    K.layer_backward(cache, np.ones_like(hs))
    assert spy.parts and max(spy.parts) >= 3, spy.parts


@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
def test_bigger_shapes_match_cpu_backend(K, cell):
    # Real block sizes: H not a multiple of the warp, H > THREADS (threads loop over
    # units), hundreds of sequences, and token counts that split the weight products.
    from pipeline.kernels import cpu

    for H_big in (40, 160):
        rng = np.random.default_rng(13)
        lengths = rng.integers(0, 90, 300)
        # W_hh at the usual 1/sqrt(H) scale. At a fixed 0.5 the recurrence is chaotic for
        # these H (gain 0.5*sqrt(H) > 1): over 90 steps float32 rounding alone grows to
        # O(1), and even the float32 reference and the float64 one disagree by up to 2.
        p = layer_params(cell, 24, H_big, seed=14, scale=float(H_big) ** -0.5)
        offsets, ids, emb = ragged_batch(lengths, 24, 500, seed=15)
        dfeat = rng.normal(size=(lengths.size, H_big)).astype(np.float32)
        got = _train_step(K, cell, p, emb[ids], offsets, False, "mean", dfeat)
        want = _train_step(cpu, cell, p, emb[ids], offsets, False, "mean", dfeat)
        for name, a, b in zip(NAMES, got, want, strict=True):
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, atol=5e-4 * scale, rtol=1e-3, err_msg=name)
        table = K.fold_table(cell, emb, p["W_ih"], p["b_ih"], p["b_hh"])
        modes = ("last", "max", "mean")
        out = K.layer_infer(cell, table, ids, offsets, p["W_hh"], p["b_hh"], True, modes)
        want = cpu.layer_infer(cell, table, ids, offsets, p["W_hh"], p["b_hh"], True, modes)
        np.testing.assert_allclose(out, want, atol=5e-5, rtol=1e-4)


PTX_WHEELS = ("nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvcc-cu12")  # what the dev extra adds


def _ptx_wheels_installed() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return all(version(name) for name in PTX_WHEELS)
    except PackageNotFoundError:
        return False


def _no_compiler(detail: str) -> None:
    """Skip where nothing can compile PTX; fail where the dev extra's toolkit is installed,
    so that CI never skips these checks without saying so."""
    if _ptx_wheels_installed():
        pytest.fail(f"{' and '.join(PTX_WHEELS)} are installed but PTX does not compile: {detail}")
    pytest.skip(f"cannot compile PTX here (pip install -e '.[dev]' adds NVRTC and NVVM): {detail}")


@pytest.mark.skipif(ON_DEVICE, reason="on a GPU (or simulator) the other tests cover this")
@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed (extra 'cuda')")
def test_kernels_compile_for_hopper_without_a_gpu(monkeypatch):
    # The simulator runs kernels as Python, so it cannot catch what Numba fails to type or
    # lower for a GPU. Compiling every kernel to PTX for sm_90 can, with no GPU at all (NVRTC
    # and NVVM come with the dev extra's cu12 wheels).
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba import float32 as f32
    from numba import int64 as i64

    from pipeline.kernels import cuda as K

    # a call to a device function asks the current GPU for its compute capability
    hopper = SimpleNamespace(compute_capability=(9, 0))
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: hopper)
    A1, A2, A3, I1, I2 = f32[::1], f32[:, ::1], f32[:, :, ::1], i64[::1], i64[:, ::1]
    signatures = {
        "_mm_kernel": (A2, A2, A1, i64, i64, i64, A3),
        "_sum_parts_kernel": (A3, A2),
        "_forward_kernel": (i64, i64, A2, I1, A2, A1, I2, A3, A2, A2, A2, I1, A2),
        "_backward_kernel": (i64, i64, A2, I2, A2, A2, A2, A2, A3, A2, A2),
        "_prev_states_kernel": (A2, I2, i64, A2),
        "_pool_fwd_kernel": (A2, I1, i64, i64, A2),
        "_pool_bwd_kernel": (A2, A2, I1, i64, i64, A2),
        "_fill_zero_kernel": (A1,),
        "_transpose_kernel": (A2, A2),
    }
    kernels = {k for k, v in vars(K).items() if k.endswith("_kernel") and hasattr(v, "py_func")}
    assert kernels == set(signatures)  # a new kernel needs its signature here
    try:
        cuda.compile_ptx(K._fill_zero_kernel.py_func, (A1,), cc=(9, 0))
    except Exception as e:  # no NVRTC or NVVM in this environment: nothing to compile with
        _no_compiler(f"{type(e).__name__}: {e}")
    for name, sig in signatures.items():
        ptx, _ = cuda.compile_ptx(getattr(K, name).py_func, sig, cc=(9, 0))
        assert ".entry" in ptx, name


@pytest.mark.skipif(ON_DEVICE, reason="on a GPU (or simulator) the other tests cover this")
@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed (extra 'cuda')")
def test_kernels_compile_without_numpy_row_stack():
    # NumPy 2.5 removed np.row_stack, and numba-cuda 0.30 registers an overload of it when
    # its CUDA target first loads: every kernel failed to compile (seen on a GPU machine with
    # NumPy 2.5.2). Without row_stack here (as on NumPy 2.5), the backend must still compile.
    code = """
import numpy
if hasattr(numpy, "row_stack"):
    del numpy.row_stack
from numba import cuda, float32
from pipeline.kernels import cuda as K
try:
    cuda.compile_ptx(K._fill_zero_kernel.py_func, (float32[::1],), cc=(9, 0))
except Exception as e:
    if "row_stack" in str(e):
        raise
    print("no NVVM:", type(e).__name__)
else:
    print("compiled")
"""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "no NVVM" in proc.stdout:
        _no_compiler(proc.stdout.strip())
    assert "compiled" in proc.stdout


@pytest.mark.skipif(ON_DEVICE, reason="the CUDA tests run directly in this process")
@pytest.mark.skipif(bool(os.environ.get(CHILD_ENV)), reason="already the simulator child")
@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed (extra 'cuda')")
def test_cuda_backend_under_simulator():
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", CHILD_ENV: "1", **SIM_BLOCKS}
    # -o addopts= : the project adds -q, and -qq would hide the "N passed" summary
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider"]
    cmd.append(__file__)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", tail)
    skipped = re.search(r"(\d+) skipped", tail)
    # everything but the GPU-only tests (3), the two PTX checks and this launcher ran in the child
    assert passed and int(passed.group(1)) >= 36, tail
    assert skipped is None or int(skipped.group(1)) <= 6, tail
