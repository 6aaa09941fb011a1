"""Subnormal floats flushed to zero inside the CPU kernels' threads, and only there.

Long backward passes push gradients into float32's subnormal range (below 1.2e-38), which
x86 CPUs compute through slow microcode. Each kernel thread sets the SSE control word's
flush-to-zero and denormals-are-zero bits for the duration of its block and restores the
previous word after, so nothing outside the kernels (NumPy, the user's code, other Numba
functions on the same worker threads) sees the change. Values that small are far below
anything the model's outputs can show: results differ from the unflushed ones only in
those values, and stay bit-identical from run to run. On other CPUs both calls do nothing.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = llvm.get_process_triple().startswith(("x86_64", "i386", "i686"))
_FTZ_DAZ = 0x8040  # MXCSR bits 15 (flush to zero) and 6 (denormals are zero)


def _mxcsr(builder, name):
    i8p = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def flush_subnormals(typingctx):
    """Set FTZ and DAZ on this thread; returns the previous control word for ``restore``."""
    sig = types.int32()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        if not _X86:
            return i32(0)
        slot = cgutils.alloca_once(builder, i32)
        raw = builder.bitcast(slot, ir.IntType(8).as_pointer())
        builder.call(_mxcsr(builder, "llvm.x86.sse.stmxcsr"), [raw])
        old = builder.load(slot)
        builder.store(builder.or_(old, i32(_FTZ_DAZ)), slot)
        builder.call(_mxcsr(builder, "llvm.x86.sse.ldmxcsr"), [raw])
        return old

    return sig, codegen


@intrinsic
def restore(typingctx, word):
    """Put back the control word ``flush_subnormals`` returned."""
    sig = types.void(types.int32)

    def codegen(context, builder, signature, args):
        if _X86:
            i32 = ir.IntType(32)
            slot = cgutils.alloca_once(builder, i32)
            builder.store(args[0], slot)
            raw = builder.bitcast(slot, ir.IntType(8).as_pointer())
            builder.call(_mxcsr(builder, "llvm.x86.sse.ldmxcsr"), [raw])
        return context.get_dummy_value()

    return sig, codegen
