"""``TokenIds``: the one data shape between stages, ragged token ids without padding.

Arrow's ``list<int32>`` layout: ``offsets int64[n+1]`` and ``ids int32[nnz]``. Sequence ``i``
is ``ids[offsets[i]:offsets[i+1]]``; there is never any padding. Id 0 is reserved
(``PAD_ID``, padding, for interop), id 1 is out-of-vocabulary (``OOV_ID``).

Example::

    >>> t = TokenIds(np.array([0, 2, 2, 3]), np.array([5, 6, 7]))
    >>> len(t), t.lengths.tolist(), t[0].tolist()
    (3, [2, 0, 1], [5, 6])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit, prange

__all__ = ["OOV_ID", "PAD_ID", "TokenIds"]

PAD_ID = 0
OOV_ID = 1


@dataclass(frozen=True)
class TokenIds:
    """Ragged token ids: ``offsets`` int64[n+1] (starting at 0), ``ids`` int32[nnz]."""

    offsets: np.ndarray  # (n+1,) int64
    ids: np.ndarray  # (nnz,) int32

    def __post_init__(self) -> None:
        offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        ids = np.ascontiguousarray(self.ids, dtype=np.int32)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0:
            raise ValueError("TokenIds.offsets must be 1-D, non-empty and start at 0")
        if offsets[-1] != ids.size or (offsets.size > 1 and np.any(np.diff(offsets) < 0)):
            raise ValueError("TokenIds.offsets must be non-decreasing and end at len(ids)")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        """Length of every sequence, int64[n]."""
        return np.diff(self.offsets)

    @property
    def nnz(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def take(self, index: np.ndarray) -> TokenIds:
        """The sequences at ``index`` (any order, repeats allowed), as a new compact TokenIds."""
        index = np.asarray(index, dtype=np.int64)
        starts = self.offsets[index]
        lens = self.offsets[index + 1] - starts
        new_offsets = np.zeros(index.size + 1, dtype=np.int64)
        np.cumsum(lens, out=new_offsets[1:])
        # position of each output token in the source: start of its sequence + rank within it
        seq_of = np.repeat(np.arange(index.size), lens)
        src = starts[seq_of] + (np.arange(new_offsets[-1]) - new_offsets[:-1][seq_of])
        return TokenIds(new_offsets, self.ids[src])

    def truncate(self, max_len: int, keep: str = "last") -> TokenIds:
        """Cap every sequence at ``max_len`` tokens, keeping the ``last`` (default) or ``first``."""
        if max_len <= 0:
            raise ValueError("max_len must be positive")
        lens = self.lengths
        if lens.size == 0 or lens.max(initial=0) <= max_len:
            return self
        if keep not in ("last", "first"):
            raise ValueError(f"keep must be 'last' or 'first', got {keep!r}")
        new_lens = np.minimum(lens, max_len)
        new_offsets = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(new_lens, out=new_offsets[1:])
        first = self.offsets[:-1] + (lens - new_lens if keep == "last" else 0)
        ids = np.empty(int(new_offsets[-1]), dtype=self.ids.dtype)
        _copy_runs(self.ids, first, new_offsets, ids)
        return TokenIds(new_offsets, ids)

    @staticmethod
    def concat(parts: list[TokenIds]) -> TokenIds:
        """Join several TokenIds end to end."""
        if not parts:
            return TokenIds(np.zeros(1, np.int64), np.zeros(0, np.int32))
        offs = [parts[0].offsets]
        base = parts[0].offsets[-1]
        for p in parts[1:]:
            offs.append(p.offsets[1:] + base)
            base += p.offsets[-1]
        return TokenIds(np.concatenate(offs), np.concatenate([p.ids for p in parts]))

    def to_arrow(self) -> pa.LargeListArray:
        """Zero-copy view as an Arrow ``large_list<int32>`` array."""
        return pa.LargeListArray.from_arrays(pa.array(self.offsets), pa.array(self.ids))

    @staticmethod
    def from_arrow(arr: pa.Array | pa.ChunkedArray) -> TokenIds:
        """From an Arrow ``list<int32>`` / ``large_list<int32>`` array (nulls become empty)."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        arr = arr.cast(pa.large_list(pa.int32()))
        if arr.null_count:
            arr = arr.fill_null(pa.scalar([], pa.large_list(pa.int32())))
        offsets = np.asarray(arr.offsets, dtype=np.int64)
        values = np.asarray(arr.values, dtype=np.int32)
        return TokenIds(offsets - offsets[0], values[offsets[0] : offsets[-1]])


@njit(parallel=True, cache=True)
def _copy_runs(src, first, offsets, out):  # pragma: no cover
    # out[offsets[i]:offsets[i+1]] = src[first[i]:first[i] + that length], per sequence
    for i in prange(offsets.size - 1):
        o = offsets[i]
        f = first[i]
        for k in range(offsets[i + 1] - o):
            out[o + k] = src[f + k]
