"""Arrow input for the scanners: any string-like input becomes ``large_string`` buffers.

``text_batches`` streams an Arrow array, chunked array, Polars Series or iterable of strings
as ``large_string`` arrays; ``buffers`` gives their zero-copy ``(offsets, data, valid)``, what
the scanners (``scan``) read; ``chunk_bounds`` splits rows into runs of about equal bytes for
the parallel encoder.

Example::

    offsets, data, valid = buffers(next(text_batches(["a b", None])))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import InputError

__all__ = ["PARALLEL_BYTES", "TEXT_BATCH", "buffers", "chunk_bounds", "text_batches"]

TEXT_BATCH = 65536  # rows per batch when texts come as Python strings
PARALLEL_BYTES = 1 << 20  # below ~10 ms of work, waking threads costs more than it saves


def _is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_null(t)
    )


def _to_large_string(arr: pa.Array) -> pa.LargeStringArray:
    if not _is_text_type(arr.type):
        raise InputError(f"texts are {arr.type}, expected strings")
    return arr if pa.types.is_large_string(arr.type) else arr.cast(pa.large_string())


def text_batches(texts: Any) -> Iterator[pa.LargeStringArray]:
    """Yield ``large_string`` arrays from an Arrow array, a chunked array, a Polars Series,
    an iterable of strings (None allowed), or an iterable of any of the array kinds."""
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be an array or a sequence of strings, not a single string")
    if hasattr(texts, "to_arrow") and not isinstance(texts, pa.Array | pa.ChunkedArray):
        texts = texts.to_arrow()  # a Polars Series
    if isinstance(texts, pa.ChunkedArray):
        for chunk in texts.chunks:
            yield _to_large_string(chunk)
        return
    if isinstance(texts, pa.Array):
        yield _to_large_string(texts)
        return
    pending: list[str | None] = []
    for item in texts:
        if item is None or isinstance(item, str):
            pending.append(item)
            if len(pending) >= TEXT_BATCH:
                yield pa.array(pending, type=pa.large_string())
                pending = []
        elif pending:
            raise TypeError("texts mixes strings and arrays")
        elif isinstance(item, pa.Array | pa.ChunkedArray) or hasattr(item, "to_arrow"):
            yield from text_batches(item)
        else:
            raise TypeError(f"texts must hold strings or string arrays, not {type(item).__name__}")
    if pending:
        yield pa.array(pending, type=pa.large_string())


def buffers(arr: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-copy ``(offsets int64[n+1], data uint8[], valid bool[n])`` of a large_string array."""
    n = len(arr)
    _, off_buf, data_buf = arr.buffers()
    if off_buf is None:  # an empty array may come without buffers
        offsets = np.zeros(n + 1, dtype=np.int64)
    else:
        offsets = np.frombuffer(off_buf, dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf else np.zeros(0, dtype=np.uint8)
    if arr.null_count:
        # a null's offsets may span bytes (Arrow allows it): the kernels skip invalid rows
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
    else:
        valid = np.ones(n, dtype=np.bool_)
    # Numba compiles one version per array type, and read-only is a type: make all three
    # read-only (as Arrow's buffers are) so every input shares one compiled kernel
    for a in (offsets, data, valid):
        a.flags.writeable = False
    return offsets, data, valid


def chunk_bounds(offsets: np.ndarray, chunks: int) -> np.ndarray:
    """Row boundaries splitting rows into ``chunks`` runs of about equal bytes."""
    n = offsets.size - 1
    chunks = max(1, min(chunks, n))
    targets = np.linspace(offsets[0], offsets[-1], chunks + 1)
    bounds = np.searchsorted(offsets, targets[1:-1]).astype(np.int64)
    return np.unique(np.concatenate(([0], np.clip(bounds, 0, n), [n]))).astype(np.int64)
