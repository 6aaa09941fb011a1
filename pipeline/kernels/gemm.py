"""The recurrent step's small matrix product, ``C[m0:m1, :Np] = A[m0:m1, :K] @ B``, on a
right-hand side packed once per call.

Each step of a recurrence multiplies the running states of one block (up to a few hundred
rows) by the same ``W_hh``: for LSTM H=128 a (128, 128) x (128, 512) product, 256 times a
batch. BLAS repacks ``W_hh`` at every such call and its kernels are tuned for big
matrices, and slower still on the few rows left at the end of a block. This file packs
``B`` once into column panels of ``NB`` floats and runs a register-tiled microkernel that
keeps an ``R x NB`` tile of ``C`` in vector registers for the whole ``K`` loop, with each
panel (``K x NB`` floats, 32 KB for K=128) read from L1 by every row tile: 1.3-2.1x
NumPy's OpenBLAS on one core for the kernels' step shapes (``python
tests/benchmarks/bench_gemm.py``, medians of three runs; the README has the table).

The microkernel is written in LLVM IR through a Numba intrinsic, because Numba's own loops
do not keep 24 accumulators in registers (plain and tiled loops reached 20-41 GFLOP/s).
The tile follows the host's vectors: with AVX-512, 16-float vectors, 6 rows by 4 vectors
(24 accumulators of 32 registers); otherwise 8-float vectors, 6 rows by 2 (12 of 16).
Either shape is correct on any CPU (LLVM splits wider vectors); only its speed differs.

Sums run over ``k`` in order with a fused multiply-add per term, so every output element is
the same float32 whatever the rows' grouping into tiles or threads: results do not depend
on the block size, the thread count or the batch composition.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from pipeline.kernels.memory import aligned


def _target_features() -> str:
    # The CPU Numba compiles for: the host's, unless NUMBA_CPU_NAME/FEATURES pick another
    # (portable caches), in which case the tile must fit that CPU's registers.
    if numba.config.CPU_NAME:
        return numba.config.CPU_FEATURES or ""
    return llvm.get_host_cpu_features().flatten()


_AVX512 = "+avx512f" in _target_features().split(",")
LANES = 16 if _AVX512 else 8  # floats per vector register
ROWS = 6  # rows of C per tile
VECS = 4 if _AVX512 else 2  # vectors per tile row
NB = LANES * VECS  # columns per packed panel and per tile


def padded_width(n: int) -> int:
    """``n`` rounded up to whole panels: the width of ``C`` for a product with ``n`` columns."""
    return -(-n // NB) * NB


def pack(B: np.ndarray) -> np.ndarray:
    """``B`` (K, N) as float32 panels ``[Np // NB, K, NB]`` (zero-padded to ``Np`` columns),
    flattened: the right-hand side of ``gemm``. Done once per call, not per step."""
    B = np.asarray(B, dtype=np.float32)
    K, N = B.shape
    Np = padded_width(N)
    out = aligned((Np // NB, K, NB), fill=0.0)
    for p in range(-(-N // NB)):
        n1 = min(N, (p + 1) * NB)
        out[p, :, : n1 - p * NB] = B[:, p * NB : n1]
    return out.reshape(-1)


def _tile(builder, fma, vt, a_scalar, b_row, c_ptr, K, R, accumulate):
    # One R x NB tile: accumulators are phi nodes of the k loop, so they live in registers.
    # a_scalar(k, r): pointer to A's float for row r of the tile at step k; b_row(k):
    # pointer to the NB floats of B at step k; c_ptr(r, v): pointer to vector v of the
    # tile's row r in C, loaded first when accumulating.
    i64 = ir.IntType(64)
    init = [
        builder.load(c_ptr(r, v), align=4) if accumulate else ir.Constant(vt, None)
        for r in range(R)
        for v in range(VECS)
    ]
    pre = builder.block
    loop = builder.append_basic_block(f"tile{R}_loop")
    done = builder.append_basic_block(f"tile{R}_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    k.add_incoming(i64(0), pre)
    accs = []
    for val in init:
        acc = builder.phi(vt)
        acc.add_incoming(val, pre)
        accs.append(acc)
    bk = b_row(k)
    bv = [
        builder.load(builder.bitcast(builder.gep(bk, [i64(v * LANES)]), vt.as_pointer()), align=4)
        for v in range(VECS)
    ]
    lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    new = []
    for r in range(R):
        a = builder.load(a_scalar(k, r))
        av = builder.insert_element(ir.Constant(vt, ir.Undefined), a, ir.IntType(32)(0))
        av = builder.shuffle_vector(av, ir.Constant(vt, ir.Undefined), lanes0)
        for v in range(VECS):
            new.append(builder.call(fma, [av, bv[v], accs[r * VECS + v]]))
    k1 = builder.add(k, i64(1))
    k.add_incoming(k1, loop)
    for acc, val in zip(accs, new, strict=True):
        acc.add_incoming(val, loop)
    builder.cbranch(builder.icmp_signed("<", k1, K), loop, done)
    builder.position_at_end(done)
    for r in range(R):
        for v in range(VECS):
            builder.store(new[r * VECS + v], c_ptr(r, v), align=4)


def _fma_decl(builder, vt):
    name = f"llvm.fma.v{LANES}f32"
    fma = builder.module.globals.get(name)
    if fma is None:
        fma = ir.Function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)
    return fma


def _switch_rows(builder, rows, emit):
    # One specialised tile per row count 1..ROWS (their accumulators stay in registers).
    i64 = ir.IntType(64)
    end = builder.append_basic_block("mk_end")
    cases = [builder.append_basic_block(f"mk_rows{R}") for R in range(1, ROWS + 1)]
    switch = builder.switch(rows, cases[-1])
    for R, block in enumerate(cases, start=1):
        switch.add_case(i64(R), block)
        builder.position_at_end(block)
        emit(R)
        builder.branch(end)
    builder.position_at_end(end)


def _operands(context, builder, signature, args):
    # Each array argument as (i8* to its data, bytes per row), each integer as an i64.
    out = []
    for ty, val in zip(signature.args, args, strict=True):
        if isinstance(ty, types.Array):
            arr = context.make_array(ty)(context, builder, val)
            data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
            out.append((data, builder.extract_value(arr.strides, 0)))
        else:
            out.append(context.cast(builder, val, ty, types.int64))
    return out


def _f32_at(builder, base, offset_bytes, index):
    # float* to element ``index`` of the row at ``base + offset_bytes``
    row = builder.gep(base, [offset_bytes])
    return builder.gep(builder.bitcast(row, ir.FloatType().as_pointer()), [index])


@intrinsic
def _microkernel(typingctx, A, m, rows, Bp, boff, C, n0, K):
    """C[m:m+rows, n0:n0+NB] = A[m:m+rows, :K] @ panel at Bp[boff:], for 1 <= rows <= ROWS
    and K >= 1; A and C C-contiguous float32 2-D arrays, Bp float32 1-D."""
    sig = types.void(A, m, rows, Bp, boff, C, n0, K)

    def codegen(context, builder, signature, args):
        (a, lda), m_, rows_, (bp, _), boff_, (c, ldc), n0_, K_ = _operands(
            context, builder, signature, args
        )
        i64 = ir.IntType(64)
        vt = ir.VectorType(ir.FloatType(), LANES)
        bbase = _f32_at(builder, bp, i64(0), boff_)

        rows = [builder.add(m_, i64(r)) for r in range(ROWS)]  # the tile's rows, m + r
        a_offs = [builder.mul(mr, lda) for mr in rows]  # their byte offsets in A and C
        c_offs = [builder.mul(mr, ldc) for mr in rows]

        def c_ptr(r, v):
            p = _f32_at(builder, c, c_offs[r], builder.add(n0_, i64(v * LANES)))
            return builder.bitcast(p, vt.as_pointer())

        _switch_rows(
            builder,
            rows_,
            lambda R: _tile(
                builder,
                _fma_decl(builder, vt),
                vt,
                lambda k, r: _f32_at(builder, a, a_offs[r], k),
                lambda k: builder.gep(bbase, [builder.mul(k, i64(NB))]),
                c_ptr,
                K_,
                R,
                accumulate=False,
            ),
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _microkernel_tn(typingctx, A, m, rows, k0, K, B, n0, C):
    """C[m:m+rows, n0:n0+NB] += A[k0:k0+K, m:m+rows].T @ B[k0:k0+K, n0:n0+NB], for
    1 <= rows <= ROWS and K >= 1; A, B, C C-contiguous float32 2-D arrays."""
    sig = types.void(A, m, rows, k0, K, B, n0, C)

    def codegen(context, builder, signature, args):
        (a, lda), m_, rows_, k0_, K_, (b, ldb), n0_, (c, ldc) = _operands(
            context, builder, signature, args
        )
        i64 = ir.IntType(64)
        vt = ir.VectorType(ir.FloatType(), LANES)

        def a_scalar(k, r):  # A[k0 + k, m + r]
            return _f32_at(
                builder, a, builder.mul(builder.add(k0_, k), lda), builder.add(m_, i64(r))
            )

        def b_row(k):  # B[k0 + k, n0:]
            return _f32_at(builder, b, builder.mul(builder.add(k0_, k), ldb), n0_)

        def c_ptr(r, v):  # C[m + r, n0 + v * LANES:]
            off = builder.mul(builder.add(m_, i64(r)), ldc)
            p = _f32_at(builder, c, off, builder.add(n0_, i64(v * LANES)))
            return builder.bitcast(p, vt.as_pointer())

        _switch_rows(
            builder,
            rows_,
            lambda R: _tile(
                builder, _fma_decl(builder, vt), vt, a_scalar, b_row, c_ptr, K_, R, accumulate=True
            ),
        )
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def gemm(A, m0, m1, Bp, K, Np, C):
    """C[m0:m1, :Np] = A[m0:m1, :K] @ B, with ``Bp = pack(B)`` and ``Np = padded_width(N)``.

    A (>= m1, >= K) and C (>= m1, >= Np): C-contiguous float32. Row ``r`` of C depends on
    row ``r`` of A only, in a fixed order of additions. Rows m0:m1 of C are written in
    full (columns past N get zeros); nothing else is touched. K must be >= 1.
    """
    for p in range(Np // NB):
        boff = p * K * NB
        n0 = p * NB
        m = m0
        while m < m1:
            rows = min(ROWS, m1 - m)
            _microkernel(A, m, rows, Bp, boff, C, n0, K)
            m += rows


@njit(cache=True)
def gemm_tn(A, k0, k1, M, B, Np, C):
    """C[:M, :Np] += A[k0:k1, :M].T @ B[k0:k1, :Np]: the weight gradient's product, rows of
    A and B being tokens.

    A (>= k1, >= M), B (>= k1, >= Np) and C (>= M, >= Np): C-contiguous float32; Np a
    multiple of NB. Each element of C adds its k1 - k0 terms in order of k, one fused
    multiply-add each, whatever M or the tiling. Does nothing when k1 <= k0.
    """
    K = k1 - k0
    if K <= 0:
        return
    for p in range(Np // NB):
        n0 = p * NB
        m = 0
        while m < M:
            rows = min(ROWS, M - m)
            _microkernel_tn(A, m, rows, k0, K, B, n0, C)
            m += rows
