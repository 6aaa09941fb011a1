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
    wide = np.zeros((K, Np), np.float32)
    wide[:, :N] = B
    return np.ascontiguousarray(wide.reshape(K, Np // NB, NB).transpose(1, 0, 2)).ravel()


def _tile(builder, fma, vt, arows, bbase, crows, n0, K, R):
    # One R x NB tile: accumulators are phi nodes of the k loop, so they live in registers.
    i64 = ir.IntType(64)
    pre = builder.block
    loop = builder.append_basic_block(f"tile{R}_loop")
    done = builder.append_basic_block(f"tile{R}_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    k.add_incoming(i64(0), pre)
    accs = []
    for _ in range(R * VECS):
        acc = builder.phi(vt)
        acc.add_incoming(ir.Constant(vt, None), pre)
        accs.append(acc)
    bk = builder.gep(bbase, [builder.mul(k, i64(NB))])
    bv = [
        builder.load(builder.bitcast(builder.gep(bk, [i64(v * LANES)]), vt.as_pointer()), align=4)
        for v in range(VECS)
    ]
    lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    new = []
    for r in range(R):
        a = builder.load(builder.gep(arows[r], [k]))
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
        row = builder.gep(crows[r], [n0])
        for v in range(VECS):
            ptr = builder.bitcast(builder.gep(row, [i64(v * LANES)]), vt.as_pointer())
            builder.store(new[r * VECS + v], ptr, align=4)


@intrinsic
def _microkernel(typingctx, A, m, rows, Bp, boff, C, n0, K):
    """C[m:m+rows, n0:n0+NB] = A[m:m+rows, :K] @ panel at Bp[boff:], for 1 <= rows <= ROWS
    and K >= 1; A and C C-contiguous float32 2-D arrays, Bp float32 1-D."""
    sig = types.void(A, m, rows, Bp, boff, C, n0, K)

    def codegen(context, builder, signature, args):
        A_, m_, rows_, Bp_, boff_, C_, n0_, K_ = args
        aA = context.make_array(signature.args[0])(context, builder, A_)
        aB = context.make_array(signature.args[3])(context, builder, Bp_)
        aC = context.make_array(signature.args[5])(context, builder, C_)
        i64, f32 = ir.IntType(64), ir.FloatType()
        vt = ir.VectorType(f32, LANES)
        name = f"llvm.fma.v{LANES}f32"
        fma = builder.module.globals.get(name)
        if fma is None:
            fma = ir.Function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)
        i8p = ir.IntType(8).as_pointer()
        lda = builder.extract_value(aA.strides, 0)  # bytes
        ldc = builder.extract_value(aC.strides, 0)
        abase = builder.bitcast(aA.data, i8p)
        cbase = builder.bitcast(aC.data, i8p)
        m_ = context.cast(builder, m_, signature.args[1], types.int64)
        rows_ = context.cast(builder, rows_, signature.args[2], types.int64)
        boff_ = context.cast(builder, boff_, signature.args[4], types.int64)
        n0_ = context.cast(builder, n0_, signature.args[6], types.int64)
        K_ = context.cast(builder, K_, signature.args[7], types.int64)
        bbase = builder.gep(aB.data, [boff_])

        def row_ptr(base, ld, r):
            p = builder.gep(base, [builder.mul(builder.add(m_, i64(r)), ld)])
            return builder.bitcast(p, f32.as_pointer())

        arows = [row_ptr(abase, lda, r) for r in range(ROWS)]
        crows = [row_ptr(cbase, ldc, r) for r in range(ROWS)]
        end = builder.append_basic_block("mk_end")
        cases = [builder.append_basic_block(f"mk_rows{R}") for R in range(1, ROWS + 1)]
        switch = builder.switch(rows_, cases[-1])
        for R, block in enumerate(cases, start=1):
            switch.add_case(i64(R), block)
            builder.position_at_end(block)
            _tile(builder, fma, vt, arows, bbase, crows, n0_, K_, R)
            builder.branch(end)
        builder.position_at_end(end)
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
