"""Text normalisation, the Tokenizer, and ``TokenIds``: the one data shape between stages.

``TokenIds`` is Arrow's ``list<int32>`` layout: ``offsets int64[n+1]`` and ``ids int32[nnz]``.
Sequence ``i`` is ``ids[offsets[i]:offsets[i+1]]``; there is never any padding.
Id 0 is reserved (padding, for interop), id 1 is out-of-vocabulary.

Normalisation (``NORMALISATION = "rnnpipe-text-v1"``), applied to each text in this order:

1. A null or empty text has no tokens.
2. HTML tags are separators: ``<`` then an optional ``/`` then an ASCII letter, up to the
   next ``>`` with no ``<`` in between (regex ``</?[A-Za-z][^<>]*>``). So ``<br />``, ``<br>``,
   ``<p>``, ``</i>`` go; ``<3`` and ``a < b`` stay (``<`` is then punctuation).
3. Every character is one of:
   *word* (``str.isalnum()``: letters and digits of any script, so é, ü, ñ, Cyrillic, CJK),
   *mark* (Unicode category Mn or Mc, i.e. combining accents and Indic vowel signs),
   *apostrophe* (``'`` U+0027 or ``’`` U+2019, both written as ``'``), or *separator*
   (everything else: spaces, punctuation, symbols, emoji, ``_``).
4. A token is a maximal run of word, mark and apostrophe characters, with the marks and
   apostrophes before its first word character dropped and its trailing apostrophes
   dropped; a run with no word character gives no token. So ``"great!"`` -> ``great``,
   ``don't`` -> ``don't``, ``'quoted'`` -> ``quoted``, ``rock 'n' roll`` -> ``rock n roll``,
   ``well-made`` -> ``well made``, ``10/10`` -> ``10 10``.
5. With ``lowercase=True`` each character takes its one-character Unicode lowercase
   (``ch.lower()``, or its first character for U+0130 İ -> i). No other normalisation
   (no NFC, no accent stripping: ``café`` and ``cafe`` are different words).

``reference_tokens`` is these rules in plain Python, the oracle the fast path is tested against.

The ``Tokenizer`` keeps the ``num_words`` most frequent words seen by ``fit`` (those seen at
least ``min_count`` times) with ids ``2 .. len(words)+1`` in order of decreasing count; ties
are broken by the word's code points (``sorted`` order of ``str``), so the vocabulary does not
depend on the order or batching of the fitting texts. Any other word encodes to ``OOV_ID``.

Encoding runs as Numba kernels over the Arrow ``large_string`` buffers (offsets + UTF-8 bytes),
with no per-row Python: one scan decodes UTF-8, classifies and lowercases code points through
tables built once from Python's own Unicode data (~0.1 s, on first use), skips tags, and keys
each token by its length and first 8 bytes packed in an integer (plus a hash of any further
bytes), then looks it up in an open-addressing table that also holds the word bytes, so a hash
collision never gives a wrong id. Rows are split into chunks of about equal bytes run in
parallel (``prange``); each chunk writes its ids to scratch space sized from its bytes, and
they are then copied to their final offsets (a chunk denser than the estimate counts its
tokens first instead). Inputs under 1 MB run on one thread.

Example::

    >>> tok = Tokenizer(num_words=100).fit(["Great movie!", "a great, GREAT cast<br />"])
    >>> tok.tokens(["Great!<br />Don't"])
    [['great', "don't"]]
    >>> tok.encode(["great cast", None]).to_arrow().to_pylist()
    [[2, 4], []]
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
from numba import njit, prange

from pipeline.errors import ConfigError, InputError, ModelFormatError
from pipeline.io import atomic_write_text

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


# ---------------------------------------------------------------------------------------------
# Normalisation: the reference (plain Python) and the tables the kernels use
# ---------------------------------------------------------------------------------------------

NORMALISATION = "rnnpipe-text-v1"
TOKENIZER_FORMAT = "rnnpipe-tokenizer"
TOKENIZER_FORMAT_VERSION = 1
OOV_TOKEN = "<oov>"  # what decode() writes for OOV_ID; a tag, so re-encoding drops it

_TAG_RE = re.compile(r"</?[A-Za-z][^<>]*>")
_APOSTROPHES = "'\u2019"
_MARK_CATEGORIES = ("Mn", "Mc")

# character classes in the kernel tables
_SEP, _WORD, _MARK, _APOS = 0, 1, 2, 3


def reference_tokens(text: str | None, lowercase: bool = True) -> list[str]:
    """The tokens of ``text`` by the module's rules, in plain Python (slow; the test oracle).

    Parameters: ``text`` a string or None; ``lowercase`` as in ``Tokenizer``.
    Returns the list of tokens (empty for None or "").

    >>> reference_tokens("Great!<br />It's a 10/10 'must-see' CAFÉ")
    ['great', "it's", 'a', '10', '10', 'must', 'see', 'café']
    """
    if not text:
        return []
    text = _TAG_RE.sub(" ", text)
    chars = []
    for ch in text:
        if ch.isalnum():
            chars.append(ch.lower()[0] if lowercase else ch)
        elif unicodedata.category(ch) in _MARK_CATEGORIES:
            chars.append(ch)
        elif ch in _APOSTROPHES:
            chars.append("'")
        else:
            chars.append(" ")
    tokens = []
    for run in "".join(chars).split(" "):
        # drop marks and apostrophes before the first word character, then trailing apostrophes
        start = next((i for i, ch in enumerate(run) if ch.isalnum()), len(run))
        token = run[start:].rstrip("'")
        if token:
            tokens.append(token)
    return tokens


# Planes with letters, digits or marks: 0-3 (BMP, SMP, SIP, TIP) and 14 (variation selectors).
# Unicode allocates scripts only there; planes 4-13 are unassigned and 15-16 private use.
_TABLE_RANGES = ((0, 0xD800), (0xE000, 0x40000), (0xE0000, 0xE1000))


@functools.cache
def _unicode_tables(lowercase: bool) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` uint8[0x110000] and ``norm`` int32[0x20000] for the kernels (~70 ms, once).

    ``norm[cp]`` is the code point written for ``cp`` (lowercase, apostrophe folding);
    code points past ``norm`` map to themselves (no cased letters lie beyond plane 1).
    """
    cps = np.concatenate([np.arange(a, b, dtype=np.uint32) for a, b in _TABLE_RANGES])
    chars = cps.tobytes().decode("utf-32-le")
    # re's \w is str.isalnum() plus "_": one C-speed pass instead of a million method calls
    flagged = re.sub(r"[^\W_]", "\x01", chars).encode("utf-32-le")
    word = (np.frombuffer(flagged, dtype=np.uint32) == 1) & (cps != 1)
    classes = np.zeros(0x110000, dtype=np.uint8)
    classes[cps[word]] = _WORD
    other = cps[~word].tobytes().decode("utf-32-le")
    marks = [ord(ch) for ch in other if unicodedata.category(ch) in _MARK_CATEGORIES]
    classes[np.array(marks, dtype=np.int64)] = _MARK
    for ch in _APOSTROPHES:
        classes[ord(ch)] = _APOS

    norm = np.arange(0x20000, dtype=np.int32)
    norm[0x2019] = ord("'")
    if lowercase:
        letters = cps[word].tobytes().decode("utf-32-le")
        # joined by NUL so Final_Sigma never applies; [0] takes U+0130's simple mapping "i"
        lowered = "\0".join(letters).lower().split("\0")
        low = np.array([ord(s[0]) for s in lowered], dtype=np.int64)
        src = cps[word].astype(np.int64)
        changed = low != src
        if np.any(src[changed] >= norm.size):
            raise RuntimeError("Unicode data has cased letters beyond plane 1: widen the table")
        norm[src[changed]] = low[changed]
        # the kernels size token buffers at 2 bytes out per byte in
        if np.any(_utf8_len(low[changed]) > 2 * _utf8_len(src[changed])):
            raise RuntimeError("a lowercase mapping more than doubles a character's UTF-8 size")
    return classes, norm


def _utf8_len(cp: np.ndarray) -> np.ndarray:
    return 1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000)


# ---------------------------------------------------------------------------------------------
# Kernels: scan tokens straight from Arrow buffers
# ---------------------------------------------------------------------------------------------
# The scanners work a whole text per call: a call per token costs more than the token itself.
# A token is keyed by its first 8 bytes packed in a uint64 (its "word", zero-padded; tokens
# never hold a NUL byte) and its length: most tokens are that short, so hashing is one mix
# and a lookup compares one integer, touching no byte arrays.

_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(parallel=True, cache=True)
def _copy_runs(src, first, offsets, out):  # pragma: no cover
    # out[offsets[i]:offsets[i+1]] = src[first[i]:first[i] + that length], per sequence
    for i in prange(offsets.size - 1):
        o = offsets[i]
        f = first[i]
        for k in range(offsets[i + 1] - o):
            out[o + k] = src[f + k]


@njit(cache=True)
def _tag_end(data, pos, end):
    """Position just after the HTML tag opening at ``data[pos] == '<'``, or 0 if none."""
    j = pos + 1
    if j < end and data[j] == 47:  # '/'
        j += 1
    if j >= end:
        return 0
    c = data[j]
    if not ((65 <= c <= 90) or (97 <= c <= 122)):
        return 0
    j += 1
    while j < end:
        c = data[j]
        if c == 62:  # '>'
            return j + 1
        if c == 60:  # '<': the first '<' was punctuation; this one may open a tag
            return 0
        j += 1
    return 0


@njit(cache=True)
def _decode_utf8(data, pos, end):
    """(code point, byte length) at ``pos``; malformed bytes decode as U+FFFD, one at a time."""
    b0 = np.int64(data[pos])
    if b0 >= 0xC2 and b0 < 0xE0:
        if pos + 1 < end:
            b1 = np.int64(data[pos + 1])
            if b1 & 0xC0 == 0x80:
                return ((b0 & 0x1F) << 6) | (b1 & 0x3F), 2
    elif b0 >= 0xE0 and b0 < 0xF0:
        if pos + 2 < end:
            b1 = np.int64(data[pos + 1])
            b2 = np.int64(data[pos + 2])
            if b1 & 0xC0 == 0x80 and b2 & 0xC0 == 0x80:
                cp = ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
                if cp >= 0x800 and not (0xD800 <= cp < 0xE000):
                    return cp, 3
    elif b0 >= 0xF0 and b0 < 0xF5:
        if pos + 3 < end:
            b1 = np.int64(data[pos + 1])
            b2 = np.int64(data[pos + 2])
            b3 = np.int64(data[pos + 3])
            if b1 & 0xC0 == 0x80 and b2 & 0xC0 == 0x80 and b3 & 0xC0 == 0x80:
                cp = ((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F)
                if 0x10000 <= cp < 0x110000:
                    return cp, 4
    return 0xFFFD, 1


@njit(cache=True)
def _put_utf8(buf, n, cp):
    """Write ``cp`` as UTF-8 at ``buf[n]``; returns the new end."""
    if cp < 0x80:
        buf[n] = cp
        return n + 1
    if cp < 0x800:
        buf[n] = 0xC0 | (cp >> 6)
        buf[n + 1] = 0x80 | (cp & 0x3F)
        return n + 2
    if cp < 0x10000:
        buf[n] = 0xE0 | (cp >> 12)
        buf[n + 1] = 0x80 | ((cp >> 6) & 0x3F)
        buf[n + 2] = 0x80 | (cp & 0x3F)
        return n + 3
    buf[n] = 0xF0 | (cp >> 18)
    buf[n + 1] = 0x80 | ((cp >> 12) & 0x3F)
    buf[n + 2] = 0x80 | ((cp >> 6) & 0x3F)
    buf[n + 3] = 0x80 | (cp & 0x3F)
    return n + 4


@njit(cache=True)
def _first8(buf, start, m):
    """The token ``buf[start:start+m]``'s first 8 bytes as a little-endian uint64."""
    w = np.uint64(0)
    for j in range(min(m, 8)):
        w |= np.uint64(buf[start + j]) << np.uint64(8 * j)
    return w


@njit(cache=True)
def _token_hash(buf, start, m, word):
    """64-bit hash of the token ``buf[start:start+m]`` whose first 8 bytes are ``word``."""
    h = word + np.uint64(m) * _GOLDEN
    for j in range(start + 8, start + m):  # the bytes past the first 8 (long words only)
        h = (h ^ np.uint64(buf[j])) * _FNV_PRIME
    h = (h ^ (h >> np.uint64(30))) * _MIX1  # splitmix64's finaliser: good low bits
    h = (h ^ (h >> np.uint64(27))) * _MIX2
    return h ^ (h >> np.uint64(31))


@njit(cache=True)
def _count_row(data, pos, end, classes):
    """Number of tokens in ``data[pos:end]`` (the same rules as ``_tokenize_row``, no output)."""
    count = 0
    started = False  # a word character has been seen in the current run
    while pos < end:
        b = data[pos]
        if b < 128:
            cls = classes[b]
            if cls == _WORD:
                started = True
            elif b == 60 and _tag_end(data, pos, end) > 0:
                count += started
                started = False
                pos = _tag_end(data, pos, end)
                continue
            elif cls == _SEP:
                count += started
                started = False
            pos += 1
            continue
        cp, step = _decode_utf8(data, pos, end)
        pos += step
        cls = classes[cp]
        if cls == _WORD:
            started = True
        elif cls == _SEP:
            count += started
            started = False
    return count + started


@njit(cache=True)
def _tokenize_row(data, pos, end, classes, norm, buf, tok_end, tok_word):
    """Tokenize ``data[pos:end]`` into scratch arrays; returns the number of tokens ``t``.

    Token ``i`` is ``buf[tok_end[i-1]:tok_end[i]]`` (from 0 for the first), its normalised
    UTF-8 bytes; ``tok_word[i]`` holds its first 8 bytes. ``buf`` needs 2 bytes per input
    byte and ``tok_end``/``tok_word`` one slot per 2 input bytes (plus one).
    """
    t = 0
    n = 0  # bytes written to buf
    start = 0  # where the current token starts in buf
    keep = 0  # buf length up to the current token's last non-apostrophe
    w = np.uint64(0)
    started = False
    while pos < end:
        b = data[pos]
        if b < 128:
            cls = classes[b]
            if cls == _WORD:
                if not started:
                    started = True
                    start = n
                    w = np.uint64(0)
                # the common case: a stretch of ASCII letters and digits
                while True:
                    x = norm[b]
                    buf[n] = x
                    k = n - start
                    if k < 8:
                        w |= np.uint64(x) << np.uint64(8 * k)
                    n += 1
                    pos += 1
                    if pos >= end:
                        break
                    b = data[pos]
                    if b >= 128 or classes[b] != _WORD:
                        break
                keep = n
                continue
            step = 1
            cp = np.int64(b)
            if b == 60:
                after = _tag_end(data, pos, end)
                if after > 0:
                    cls = _SEP
                    step = after - pos
        else:
            cp, step = _decode_utf8(data, pos, end)
            cls = classes[cp]
        pos += step
        if cls == _SEP:
            if started:
                started = False
                tok_end[t] = keep
                tok_word[t] = w
                t += 1
                n = keep  # drops trailing apostrophes
            continue
        if not started:
            if cls != _WORD:  # marks and apostrophes before the first word character
                continue
            started = True
            start = n
            w = np.uint64(0)
        if cp < norm.size:
            cp = np.int64(norm[cp])
        n0 = n
        n = _put_utf8(buf, n, cp)
        for j in range(n0, min(n, start + 8)):
            w |= np.uint64(buf[j]) << np.uint64(8 * (j - start))
        if cls != _APOS:
            keep = n
    if started:
        tok_end[t] = keep
        tok_word[t] = w
        t += 1
    # a dropped trailing apostrophe may sit in the first 8 bytes of its token's word
    s = 0
    for i in range(t):
        m = tok_end[i] - s
        if m < 8:
            tok_word[i] &= (np.uint64(1) << np.uint64(8 * m)) - np.uint64(1)
        s = tok_end[i]
    return t


@njit(cache=True)
def _scratch(offsets, valid, r0, r1):
    """Scratch arrays big enough for any row of ``r0:r1``."""
    m = 0
    for r in range(r0, r1):
        if valid[r]:
            m = max(m, offsets[r + 1] - offsets[r])
    buf = np.empty(2 * m + 8, dtype=np.uint8)
    tok_end = np.empty(m // 2 + 2, dtype=np.int64)
    tok_word = np.empty(m // 2 + 2, dtype=np.uint64)
    return buf, tok_end, tok_word


# The hash tables: ``slots`` uint64[size, 2], size a power of two; slot = (word, meta) with
# meta = (key index + 1) | (length << 32), 0 when empty. Key ``k``'s bytes are
# ``key_bytes[key_off[k]:key_off[k+1]]``.


@njit(cache=True)
def _find(buf, start, m, word, h, slots, key_off, key_bytes):
    """Slot holding the token ``buf[start:start+m]``, or the empty slot where it would go."""
    mask = slots.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    want = np.uint64(m)
    while True:
        meta = slots[i, 1]
        if meta == 0:
            return i
        if slots[i, 0] == word and (meta >> np.uint64(32)) == want:
            if m <= 8:
                return i
            s = key_off[np.int64(meta & _LOW32) - 1]
            same = True
            for j in range(8, m):
                if key_bytes[s + j] != buf[start + j]:
                    same = False
                    break
            if same:
                return i
        i = (i + 1) & mask


@njit(cache=True)
def _new_slots(key_off, key_bytes, nkeys, size):
    """A table of ``size`` slots with keys ``0..nkeys-1``: (slots, first repeated key or -1)."""
    slots = np.zeros((size, 2), dtype=np.uint64)
    dup = -1
    for k in range(nkeys):
        s = key_off[k]
        m = key_off[k + 1] - s
        w = _first8(key_bytes, s, m)
        i = _find(key_bytes, s, m, w, _token_hash(key_bytes, s, m, w), slots, key_off, key_bytes)
        if slots[i, 1] != 0:
            if dup < 0:
                dup = k
            continue
        slots[i, 0] = w
        slots[i, 1] = np.uint64(k + 1) | (np.uint64(m) << np.uint64(32))
    return slots, dup


@njit(cache=True)
def _encode_rows(text, tables, vocab, r0, r1, lengths, out, o, cap):
    """Encode rows ``r0:r1`` into ``out[o:o+cap]`` back to back, their lengths into ``lengths``.

    ``text`` is ``(offsets, data, valid)``, ``tables`` is ``(classes, norm)``, ``vocab`` is
    ``(slots, key_off, key_bytes)``. Returns the number of ids written, or -1 when they would
    not fit in ``cap``.
    """
    offsets, data, valid = text
    classes, norm = tables
    slots, key_off, key_bytes = vocab
    buf, tok_end, tok_word = _scratch(offsets, valid, r0, r1)
    used = 0
    for r in range(r0, r1):
        if not valid[r]:
            lengths[r] = 0
            continue
        t = _tokenize_row(data, offsets[r], offsets[r + 1], classes, norm, buf, tok_end, tok_word)
        if used + t > cap:
            return -1
        lengths[r] = t
        start = 0
        for i in range(t):
            m = tok_end[i] - start
            w = tok_word[i]
            h = _token_hash(buf, start, m, w)
            meta = slots[_find(buf, start, m, w, h, slots, key_off, key_bytes), 1]
            # meta's low half is key index + 1, and id = key index + 2
            out[o + used + i] = OOV_ID if meta == 0 else np.int64(meta & _LOW32) + 1
            start = tok_end[i]
        used += t
    return used


@njit(cache=True)
def _count_rows(text, classes, r0, r1, lengths):
    """Token counts of rows ``r0:r1`` into ``lengths``."""
    offsets, data, valid = text
    for r in range(r0, r1):
        lengths[r] = _count_row(data, offsets[r], offsets[r + 1], classes) if valid[r] else 0


@njit(cache=True)
def _exclusive_cumsum(lengths):
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    for r in range(lengths.size):
        out[r + 1] = out[r] + lengths[r]
    return out


@njit(cache=True)
def _capacity(offsets, r0, r1):
    # about one token per 5.7 bytes in English: 1 per 4 leaves room; denser text falls back
    return (offsets[r1] - offsets[r0]) // 4 + 16


@njit(cache=True, parallel=True)
def _encode_parallel(text, tables, vocab, bounds):
    """Token ids of every row: ``(out_offsets int64[n+1], ids int32[nnz], bad)``.

    ``bounds`` int64[chunks+1] splits the rows into chunks run in parallel. Each chunk writes
    its ids to its own stretch of a scratch array sized from its bytes; a chunk with more
    tokens than that counts them first and writes straight to the output in the second loop.
    ``bad`` is non-zero if the counting and the tokenizing scanners disagreed (a bug).
    """
    offsets = text[0]
    n = offsets.size - 1
    nchunks = bounds.size - 1
    cap_start = np.zeros(nchunks + 1, dtype=np.int64)
    for c in range(nchunks):
        cap_start[c + 1] = cap_start[c] + _capacity(offsets, bounds[c], bounds[c + 1])
    scratch = np.empty(cap_start[nchunks], dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int64)
    used = np.zeros(nchunks, dtype=np.int64)
    for c in prange(nchunks):
        r0 = bounds[c]
        r1 = bounds[c + 1]
        cap = cap_start[c + 1] - cap_start[c]
        used[c] = _encode_rows(text, tables, vocab, r0, r1, lengths, scratch, cap_start[c], cap)
        if used[c] < 0:
            _count_rows(text, tables[0], r0, r1, lengths)
    out_offsets = _exclusive_cumsum(lengths)
    ids = np.empty(out_offsets[n], dtype=np.int32)
    bad = np.zeros(nchunks, dtype=np.int64)
    for c in prange(nchunks):
        r0 = bounds[c]
        r1 = bounds[c + 1]
        o = out_offsets[r0]
        if used[c] >= 0:
            ids[o : o + used[c]] = scratch[cap_start[c] : cap_start[c] + used[c]]
        else:
            want = out_offsets[r1] - o
            bad[c] = _encode_rows(text, tables, vocab, r0, r1, lengths, ids, o, want) != want
    return out_offsets, ids, bad.sum()


@njit(cache=True)
def _encode_serial(text, tables, vocab):
    """``_encode_parallel`` on one thread, for small inputs: waking threads costs more."""
    offsets = text[0]
    n = offsets.size - 1
    lengths = np.zeros(n, dtype=np.int64)
    scratch = np.empty(_capacity(offsets, 0, n), dtype=np.int32)
    used = _encode_rows(text, tables, vocab, 0, n, lengths, scratch, 0, scratch.size)
    if used >= 0:
        return _exclusive_cumsum(lengths), scratch[:used].copy(), 0
    _count_rows(text, tables[0], 0, n, lengths)
    out_offsets = _exclusive_cumsum(lengths)
    ids = np.empty(out_offsets[n], dtype=np.int32)
    got = _encode_rows(text, tables, vocab, 0, n, lengths, ids, 0, ids.size)
    return out_offsets, ids, int(got != ids.size)


@njit(cache=True)
def _count_kernel(text, tables, table, nkeys):
    """Add every token's occurrences to a growable table of (word bytes, count).

    ``table`` is ``(slots, key_off, key_bytes, counts)``; returns it, possibly reallocated,
    with the new number of keys.
    """
    offsets, data, valid = text
    classes, norm = tables
    slots, key_off, key_bytes, counts = table
    n = offsets.size - 1
    buf, tok_end, tok_word = _scratch(offsets, valid, 0, n)
    for r in range(n):
        if not valid[r]:
            continue
        t = _tokenize_row(data, offsets[r], offsets[r + 1], classes, norm, buf, tok_end, tok_word)
        start = 0
        for j in range(t):
            m = tok_end[j] - start
            w = tok_word[j]
            i = _find(buf, start, m, w, _token_hash(buf, start, m, w), slots, key_off, key_bytes)
            meta = slots[i, 1]
            if meta != 0:
                counts[np.int64(meta & _LOW32) - 1] += 1
                start = tok_end[j]
                continue
            # a new word: append its bytes, then claim the slot (growing first if needed)
            if nkeys + 1 >= counts.size:
                counts = _grow(counts, 2 * counts.size)
                key_off = _grow(key_off, 2 * key_off.size)
            s = key_off[nkeys]
            if s + m > key_bytes.size:
                key_bytes = _grow(key_bytes, max(2 * key_bytes.size, s + m))
            key_bytes[s : s + m] = buf[start : start + m]
            key_off[nkeys + 1] = s + m
            counts[nkeys] = 1
            slots[i, 0] = w
            slots[i, 1] = np.uint64(nkeys + 1) | (np.uint64(m) << np.uint64(32))
            nkeys += 1
            if 2 * nkeys > slots.shape[0]:  # keep the load factor under 1/2
                slots, _ = _new_slots(key_off, key_bytes, nkeys, 2 * slots.shape[0])
            start = tok_end[j]
    return (slots, key_off, key_bytes, counts), nkeys


@njit(cache=True)
def _grow(a, size):
    out = np.zeros(size, dtype=a.dtype)
    out[: a.size] = a
    return out


@njit(cache=True)
def _tokens_kernel(text, tables):
    """Every token's bytes: ``(row_offsets int64[n+1], token_offsets int64[t+1], bytes)``."""
    offsets, data, valid = text
    classes, norm = tables
    n = offsets.size - 1
    buf, tok_end, tok_word = _scratch(offsets, valid, 0, n)
    row_offsets = np.zeros(n + 1, dtype=np.int64)
    nbytes = 0
    for r in range(n):
        t = 0
        if valid[r]:
            t = _tokenize_row(
                data, offsets[r], offsets[r + 1], classes, norm, buf, tok_end, tok_word
            )
            nbytes += tok_end[t - 1] if t else 0
        row_offsets[r + 1] = row_offsets[r] + t
    token_offsets = np.zeros(row_offsets[n] + 1, dtype=np.int64)
    out = np.empty(nbytes, dtype=np.uint8)
    for r in range(n):
        if not valid[r]:
            continue
        t = _tokenize_row(data, offsets[r], offsets[r + 1], classes, norm, buf, tok_end, tok_word)
        o = row_offsets[r]
        s = token_offsets[o]
        start = 0
        for i in range(t):
            m = tok_end[i] - start
            out[s : s + m] = buf[start : start + m]
            s += m
            token_offsets[o + i + 1] = s
            start = tok_end[i]
    return row_offsets, token_offsets, out


# ---------------------------------------------------------------------------------------------
# Arrow input: any string-like array becomes large_string buffers
# ---------------------------------------------------------------------------------------------

_TEXT_BATCH = 65536  # rows per batch when texts come as Python strings
_PARALLEL_BYTES = 1 << 20  # below ~10 ms of work, waking threads costs more than it saves


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


def _text_batches(texts: Any) -> Iterator[pa.LargeStringArray]:
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
            if len(pending) >= _TEXT_BATCH:
                yield pa.array(pending, type=pa.large_string())
                pending = []
        elif pending:
            raise TypeError("texts mixes strings and arrays")
        elif isinstance(item, pa.Array | pa.ChunkedArray) or hasattr(item, "to_arrow"):
            yield from _text_batches(item)
        else:
            raise TypeError(f"texts must hold strings or string arrays, not {type(item).__name__}")
    if pending:
        yield pa.array(pending, type=pa.large_string())


def _buffers(arr: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _chunk_bounds(offsets: np.ndarray, chunks: int) -> np.ndarray:
    """Row boundaries splitting rows into ``chunks`` runs of about equal bytes."""
    n = offsets.size - 1
    chunks = max(1, min(chunks, n))
    targets = np.linspace(offsets[0], offsets[-1], chunks + 1)
    bounds = np.searchsorted(offsets, targets[1:-1]).astype(np.int64)
    return np.unique(np.concatenate(([0], np.clip(bounds, 0, n), [n]))).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The Tokenizer
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """Words to ids with a frequency-ordered vocabulary (Keras-like; rules in the module doc).

    Parameters: ``num_words`` the most words kept (None keeps all), ``lowercase``,
    ``min_count`` the fewest occurrences for a word to be kept.
    Raises ``ConfigError`` on bad settings.

    >>> tok = Tokenizer(num_words=2).fit(["b a a", "c b a"])
    >>> tok.words, tok.vocab_size
    (['a', 'b'], 4)
    >>> tok.encode(["a b c"])[0].tolist()
    [2, 3, 1]
    """

    def __init__(self, num_words: int | None = 20000, lowercase: bool = True, min_count: int = 1):
        if num_words is not None and (
            isinstance(num_words, bool) or not isinstance(num_words, int) or num_words < 1
        ):
            raise ConfigError(f"num_words must be a positive integer or None, got {num_words!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"min_count must be a positive integer, got {min_count!r}")
        if not isinstance(lowercase, bool):
            raise ConfigError(f"lowercase must be true or false, got {lowercase!r}")
        self.num_words = num_words
        self.lowercase = lowercase
        self.min_count = min_count
        self._words: list[str] | None = None
        self._counts: list[int] = []
        self._table: tuple[np.ndarray, ...] | None = None
        self._word_index: dict[str, int] | None = None

    # -- vocabulary --------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self._words is not None

    @property
    def words(self) -> list[str]:
        """The vocabulary in id order: ``words[i]`` has id ``i + 2``."""
        return list(self._require_fitted())

    @property
    def counts(self) -> list[int]:
        """How often each word of ``words`` was seen by ``fit``."""
        self._require_fitted()
        return list(self._counts)

    @property
    def vocab_size(self) -> int:
        """Size of the embedding table: the words kept plus pad (0) and OOV (1)."""
        return len(self._require_fitted()) + 2

    @property
    def word_index(self) -> dict[str, int]:
        """``{word: id}``."""
        if self._word_index is None:
            self._word_index = {w: i + 2 for i, w in enumerate(self._require_fitted())}
        return dict(self._word_index)

    def _require_fitted(self) -> list[str]:
        if self._words is None:
            raise RuntimeError("the tokenizer has no vocabulary: call fit() or load() first")
        return self._words

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        return _unicode_tables(self.lowercase)

    def fit(self, texts: Any) -> Tokenizer:
        """Count the words of ``texts`` and keep the vocabulary (replacing any previous one).

        ``texts``: an Arrow string array (string, large_string, string_view, dictionary),
        a ChunkedArray, a Polars Series, a sequence of str/None, or an iterable of any of
        these arrays (streamed batches; counts add up across them). Returns ``self``.
        Raises ``InputError`` for a non-string array.

        >>> Tokenizer().fit(pa.chunked_array([["x y"], ["y"]])).words
        ['y', 'x']
        """
        tables = self._tables()
        table = (
            np.zeros((1 << 12, 2), dtype=np.uint64),  # slots
            np.zeros(1 << 11, dtype=np.int64),  # key_off
            np.zeros(1 << 14, dtype=np.uint8),  # key_bytes
            np.zeros(1 << 11, dtype=np.int64),  # counts
        )
        nkeys = 0
        for arr in _text_batches(texts):
            table, nkeys = _count_kernel(_buffers(arr), tables, table, nkeys)
        _, key_off, key_bytes, counts = table
        counts = counts[:nkeys]
        keep = np.flatnonzero(counts >= self.min_count)
        if self.num_words is not None and keep.size > self.num_words:
            # only words at or above the num_words-th count can make the cut: sort just those
            cutoff = np.partition(counts[keep], keep.size - self.num_words)[
                keep.size - self.num_words
            ]
            keep = keep[counts[keep] >= cutoff]
        raw = key_bytes.tobytes()
        words = [raw[key_off[k] : key_off[k + 1]].decode("utf-8") for k in keep]
        order = sorted(range(keep.size), key=lambda i: (-counts[keep[i]], words[i]))
        if self.num_words is not None:
            order = order[: self.num_words]
        self._set_vocabulary([words[i] for i in order], [int(counts[keep[i]]) for i in order])
        return self

    def _set_vocabulary(self, words: list[str], counts: list[int]) -> None:
        encoded = [w.encode("utf-8") for w in words]
        key_off = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=key_off[1:])
        key_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        size = 16
        while size < 2 * len(words):
            size *= 2
        slots, dup = _new_slots(key_off, key_bytes, len(words), size)
        if dup >= 0:
            raise ValueError(f"word {words[dup]!r} appears twice in the vocabulary")
        self._words = list(words)
        self._counts = list(counts)
        self._table = (slots, key_off, key_bytes)
        self._word_index = None

    # -- encoding ----------------------------------------------------------------------------

    def encode(self, texts: Any) -> TokenIds:
        """Token ids of every text, in order; null and empty texts give empty sequences.

        ``texts``: as for ``fit``. Returns ``TokenIds``; ids lie in ``[1, vocab_size)``.
        The result does not depend on how the texts are batched.
        Raises ``InputError`` for a non-string array, ``RuntimeError`` before ``fit``.

        >>> tok = Tokenizer().fit(["good film", "bad film"])
        >>> tok.encode(["Film: good!", None, "awful film"]).to_arrow().to_pylist()
        [[2, 4], [], [1, 2]]
        """
        self._require_fitted()
        tables = self._tables()
        threads = numba.get_num_threads()
        parts = []
        for arr in _text_batches(texts):
            text = _buffers(arr)
            offsets = text[0]
            if threads == 1 or offsets[-1] - offsets[0] < _PARALLEL_BYTES:
                out_offsets, ids, bad = _encode_serial(text, tables, self._table)
            else:
                bounds = _chunk_bounds(offsets, 8 * threads)
                out_offsets, ids, bad = _encode_parallel(text, tables, self._table, bounds)
            if bad:
                raise RuntimeError("tokenizer kernels disagree on token counts: a bug, report it")
            parts.append(TokenIds(out_offsets, ids))
        return parts[0] if len(parts) == 1 else TokenIds.concat(parts)

    def tokens(self, texts: Any) -> list[list[str]]:
        """The normalised tokens of every text (for debugging; same kernel as ``encode``).

        >>> Tokenizer().tokens(["<p>Ünïcode, ça va?</p>", None])
        [['ünïcode', 'ça', 'va'], []]
        """
        tables = self._tables()
        out: list[list[str]] = []
        for arr in _text_batches(texts):
            row_off, tok_off, raw_arr = _tokens_kernel(_buffers(arr), tables)
            raw = raw_arr.tobytes()
            toks = [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(tok_off)]
            out.extend(toks[a:b] for a, b in itertools.pairwise(row_off))
        return out

    def decode(self, token_ids: TokenIds) -> list[str]:
        """Each sequence's words joined by spaces; OOV becomes ``<oov>``, padding is skipped.

        Raises ``ValueError`` for ids outside ``[0, vocab_size)``.

        >>> tok = Tokenizer().fit(["good film"])
        >>> tok.decode(tok.encode(["a good film"]))
        ['<oov> good film']
        """
        names = np.array([OOV_TOKEN, OOV_TOKEN, *self._require_fitted()], dtype=object)
        names[PAD_ID] = ""
        ids = token_ids.ids
        if ids.size and (ids.min() < 0 or ids.max() >= names.size):
            raise ValueError(
                f"token ids must lie in [0, {names.size}), got {ids.min()}..{ids.max()}"
            )
        words = names[ids]
        out = []
        for a, b in itertools.pairwise(token_ids.offsets):
            out.append(" ".join(w for w in words[a:b] if w))
        return out

    # -- persistence -------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The settings (no words), for a model's config.json."""
        config: dict[str, Any] = {
            "normalisation": NORMALISATION,
            "num_words": self.num_words,
            "lowercase": self.lowercase,
            "min_count": self.min_count,
        }
        if self.fitted:
            config["vocab_size"] = self.vocab_size
        return config

    def save(self, path: str | Path) -> None:
        """Write the settings and the ordered words as JSON, atomically.

        >>> import tempfile; d = tempfile.mkdtemp()
        >>> Tokenizer().fit(["a b b"]).save(f"{d}/vocab.json")
        >>> Tokenizer.load(f"{d}/vocab.json").words
        ['b', 'a']
        """
        doc = {
            "format": TOKENIZER_FORMAT,
            "version": TOKENIZER_FORMAT_VERSION,
            **{k: v for k, v in self.to_config().items() if k != "vocab_size"},
            "words": self.words,
            "counts": self._counts,
        }
        atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by ``save``.

        Raises ``ModelFormatError`` naming the file for anything missing, of another format
        or version, or inconsistent (a word that is not one normalised token, repeats).
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFormatError(f"{path}: tokenizer file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path}: not a tokenizer JSON file ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != TOKENIZER_FORMAT:
            raise ModelFormatError(f"{path}: not an rnnpipe tokenizer file")
        if doc.get("version") != TOKENIZER_FORMAT_VERSION:
            raise ModelFormatError(
                f"{path}: tokenizer format version {doc.get('version')!r}, this rnnpipe reads "
                f"{TOKENIZER_FORMAT_VERSION}"
            )
        if doc.get("normalisation") != NORMALISATION:
            raise ModelFormatError(
                f"{path}: normalisation {doc.get('normalisation')!r}, expected {NORMALISATION}"
            )
        try:
            tok = cls(doc.get("num_words"), doc.get("lowercase"), doc.get("min_count"))
        except ConfigError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None
        words, counts = doc.get("words"), doc.get("counts")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ModelFormatError(f"{path}: 'words' must be a list of strings")
        if not isinstance(counts, list) or len(counts) != len(words):
            raise ModelFormatError(f"{path}: 'counts' must be a list as long as 'words'")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ModelFormatError(f"{path}: 'counts' must hold non-negative integers")
        if tok.num_words is not None and len(words) > tok.num_words:
            raise ModelFormatError(f"{path}: {len(words)} words, more than num_words")
        try:
            tok._set_vocabulary(words, counts)
        except ValueError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None
        # Every word must encode to exactly itself: one normalised token with its own id.
        # One vectorised encode of the vocabulary checks that (a per-word tokens() call took
        # a second per model load). The array is built on the vocabulary's own UTF-8 buffers
        # (pa.array on a list would make pyarrow import pandas, when installed: 0.3 s).
        _, key_off, key_bytes = tok._table
        arr = pa.LargeStringArray.from_buffers(
            len(words), pa.py_buffer(key_off), pa.py_buffer(key_bytes)
        )
        got = tok.encode(arr)
        expected = np.arange(2, 2 + len(words), dtype=np.int32)
        if not (np.all(got.lengths == 1) and np.array_equal(got.ids, expected)):
            lens = got.lengths
            bad = np.flatnonzero(lens != 1)
            if bad.size == 0:
                bad = np.flatnonzero(got.ids != expected)
            i = int(bad[0])
            raise ModelFormatError(f"{path}: word {i} ({words[i]!r}) is not one normalised token")
        return tok

    def __repr__(self) -> str:
        size = f", vocab_size={self.vocab_size}" if self.fitted else ", unfitted"
        return (
            f"Tokenizer(num_words={self.num_words}, lowercase={self.lowercase}, "
            f"min_count={self.min_count}{size})"
        )
