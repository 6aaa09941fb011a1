"""The scanners: Numba kernels that tokenize, count and encode texts from Arrow buffers.

Encoding runs as Numba kernels over the Arrow ``large_string`` buffers (offsets + UTF-8 bytes),
with no per-row Python: one scan decodes UTF-8, classifies and lowercases code points through
tables built once from Python's own Unicode data (~0.1 s, on first use), skips tags, and keys
each token by its length and first 8 bytes packed in an integer (plus a hash of any further
bytes), then looks it up in an open-addressing table that also holds the word bytes, so a hash
collision never gives a wrong id. Rows are split into chunks of about equal bytes run in
parallel (``prange``); each chunk writes its ids to scratch space sized from its bytes, and
they are then copied to their final offsets (a chunk denser than the estimate counts its
tokens first instead). Inputs under 1 MB run on one thread.

The entry points, called by ``Tokenizer`` (``tokenizer.py``): ``count_words`` (fit),
``encode_serial`` and ``encode_parallel`` (encode), ``token_bytes`` (tokens), ``new_slots``
(a vocabulary's hash table); ``spans`` finds where tokens lie with the character helpers and
the clitic rule made public here; ``arrow`` turns any string input into the ``large_string``
buffers they read.
The character classes and normalisation tables come from ``rules.unicode_tables``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipeline.text.ids import OOV_ID
from pipeline.text.rules import APOS, EMOTE, SEP, SYMBOL, WORD

__all__ = [
    "APOSTROPHE",
    "TAIL",
    "ascii_class",
    "clitic_split",
    "count_words",
    "decode_utf8",
    "encode_parallel",
    "encode_serial",
    "new_slots",
    "ngram_hash",
    "tail_char",
    "token_bytes",
]

# The scanners work a whole text per call: a call per token costs more than the token itself.
# A token is keyed by its first 8 bytes packed in a uint64 (its "word", zero-padded; tokens
# never hold a NUL byte) and its length: most tokens are that short, so hashing is one mix
# and a lookup compares one integer, touching no byte arrays.

FNV_PRIME = np.uint64(0x100000001B3)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)


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


@njit(cache=True, inline="always")
def _is_mouth(c):
    # ) ( D P p O o / \ | ] [ 3 *
    return (c == 41 or c == 40 or c == 68 or c == 80 or c == 112 or c == 79 or c == 111
            or c == 47 or c == 92 or c == 124 or c == 93 or c == 91 or c == 51
            or c == 42)  # fmt: skip


@njit(cache=True)
def _emoticon(data, pos, end):
    """Length of the emoticon starting at ``data[pos]`` (a byte of class EMOTE), 0 if none:
    eyes ``: ; =``, an optional ``-`` nose and a mouth (``:)``, ``;-P``, ``=D``), or ``<3``;
    never followed by an ASCII letter or digit, ``/`` or ``_`` (``10:30``, ``http://``)."""
    j = pos + 1
    if data[pos] == 60:  # '<'
        if j >= end or data[j] != 51:  # '3'
            return 0
    else:
        if j < end and data[j] == 45:  # '-'
            j += 1
        if j >= end or not _is_mouth(data[j]):
            return 0
    j += 1
    if j < end:
        c = data[j]
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 47 or c == 95:
            return 0
    return j - pos


@njit(cache=True, inline="always")
def ascii_class(data, pos, end, cls):
    """(class, bytes) of the ASCII character ``data[pos]`` of class ``cls`` that is not a word
    character, with what follows it: a tag is one separator, an emoticon one EMOTE token,
    an EMOTE character starting none a separator."""
    if data[pos] == 60:  # '<'
        after = _tag_end(data, pos, end)
        if after > 0:
            return SEP, after - pos
    if cls == EMOTE:
        m = _emoticon(data, pos, end)
        return (EMOTE, m) if m > 0 else (SEP, 1)
    return cls, 1


@njit(cache=True)
def decode_utf8(data, pos, end):
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
    h = word + np.uint64(m) * GOLDEN
    for j in range(start + 8, start + m):  # the bytes past the first 8 (long words only)
        h = (h ^ np.uint64(buf[j])) * FNV_PRIME
    return mix64(h)


@njit(cache=True, inline="always")
def ngram_hash(ids, j, o):
    """64-bit hash of the ``o`` token ids ``ids[j:j+o]``, as a word's bytes are hashed (the
    length seeds it, FNV's prime per id, splitmix64's finaliser): the n-gram head's buckets
    (part of its model format) and the anchors of ``overlap``."""
    h = np.uint64(o) * GOLDEN
    for t in range(o):
        h = (h ^ np.uint64(ids[j + t])) * FNV_PRIME
    return mix64(h)


@njit(cache=True, inline="always")
def mix64(h):
    """splitmix64's finaliser of a uint64 (or, through ``mix64.py_func``, a uint64 array):
    every input bit reaches the low and the high bits alike."""
    h = (h ^ (h >> np.uint64(30))) * _MIX1
    h = (h ^ (h >> np.uint64(27))) * _MIX2
    return h ^ (h >> np.uint64(31))


@njit(cache=True)
def _own_token(buf, n, data, start, stop, cp, tok_end, tok_word, t):
    """Write ``data[start:stop]`` (a symbol, code point ``cp``, or an emoticon) at ``buf[n]``
    as token ``t``, as it is; returns where its bytes end."""
    if stop - start > 1 and data[start] < 128:  # an emoticon: ASCII bytes
        end = n + stop - start
        buf[n:end] = data[start:stop]
    else:
        end = _put_utf8(buf, n, cp)
    tok_end[t] = end
    tok_word[t] = _first8(buf, n, end - n)
    return end


def _packed(chars: str) -> int:
    """``chars`` (ASCII) packed as ``clitic_split`` reads a tail, the last in the low byte."""
    return int.from_bytes(chars.encode("ascii"), "big")


APOSTROPHE = 39
_CLITICS_1 = (_packed("'s"), _packed("'m"), _packed("'d"))  # one letter after the apostrophe
_CLITICS_2 = (_packed("'re"), _packed("'ll"), _packed("'ve"))  # two
_NT = _packed("n't")
TAIL = (1 << 40) - 1  # five characters


@njit(cache=True)
def clitic_split(tail):
    """How a token ending in ``tail`` splits by rule 5 (``rules.py``): ``(length, gap)``, its
    last ``length`` characters a token of their own without the ``gap`` (0 or 1) apostrophe
    before them; ``(0, 0)`` when it stays whole. ``tail`` packs the token's last five
    characters, the last in the low byte: ASCII letters lowercased, the apostrophe as 39,
    any other character as 128, none (before the token's start) as 0."""
    two = tail & 0xFFFF
    three = tail & 0xFFFFFF
    length, gap = 0, 1
    if two == _CLITICS_1[0] or two == _CLITICS_1[1] or two == _CLITICS_1[2]:
        length = 1
    elif three == _CLITICS_2[0] or three == _CLITICS_2[1] or three == _CLITICS_2[2]:
        length = 2
    elif three == _NT:
        length, gap = 3, 0
    before = (tail >> (8 * (length + gap))) & 0xFF
    if length == 0 or before == 0 or before == APOSTROPHE:
        return 0, 0
    return length, gap


@njit(cache=True, inline="always")
def tail_char(c):
    """A character's byte in ``clitic_split``'s tail, from a code point or a UTF-8 byte."""
    if 65 <= c <= 90:
        return c + 32
    return c if c < 128 else 128


@njit(cache=True)
def _end_token(buf, start, keep, w, tok_end, tok_word, t, clitics):
    """Close token ``t``, ``buf[start:keep]`` (its first 8 bytes ``w``), split in two when
    ``clitics`` (rule 5) and it ends in a clitic; returns ``(tokens, bytes)`` now written."""
    if (
        clitics
        and keep - start > 2
        and (buf[keep - 2] == APOSTROPHE or buf[keep - 3] == APOSTROPHE)
    ):
        tail = 0
        for j in range(max(start, keep - 5), keep):  # a character's bytes in buf are >= 128
            tail = (tail << 8) | tail_char(np.int64(buf[j]))
        length, gap = clitic_split(tail)
        if length > 0:
            cut = keep - length - gap
            tok_end[t] = cut
            tok_word[t] = w
            for j in range(length):  # the clitic moves over its apostrophe
                buf[cut + j] = buf[keep - length + j]
            tok_end[t + 1] = cut + length
            tok_word[t + 1] = _first8(buf, cut, length)
            return t + 2, cut + length
    tok_end[t] = keep
    tok_word[t] = w
    return t + 1, keep


@njit(cache=True)
def _tokenize_row(data, pos, end, tables, buf, tok_end, tok_word):
    """Tokenize ``data[pos:end]`` into scratch arrays; returns the number of tokens ``t``.
    Token ``i`` is ``buf[tok_end[i-1]:tok_end[i]]`` (from 0 for the first), its normalised
    UTF-8 bytes; ``tok_word[i]`` holds its first 8 bytes. ``buf`` needs 2 bytes per input
    byte and ``tok_end``/``tok_word`` two slots per 3 input bytes (plus two: "a©a©a")."""
    classes, norm, clitics = tables
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
            if cls == WORD:
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
                    if b >= 128 or classes[b] != WORD:
                        break
                keep = n
                continue
            # ascii_class inline: called here it costs this loop a fifth of its speed
            step, cp = 1, np.int64(b)
            if b == 60:
                after = _tag_end(data, pos, end)
                if after > 0:
                    cls = SEP
                    step = after - pos
            if cls == EMOTE:  # an emoticon, or else a separator
                step = max(_emoticon(data, pos, end), 1)
                cls = EMOTE if step > 1 else SEP
        else:
            cp, step = decode_utf8(data, pos, end)
            cls = classes[cp]
        pos += step
        if cls == SEP or cls == SYMBOL or cls == EMOTE:
            if started:  # keep drops trailing apostrophes
                started = False
                t, n = _end_token(buf, start, keep, w, tok_end, tok_word, t, clitics)
                keep = n
            if cls != SEP:  # a token of its own, written as it is
                n = keep = _own_token(buf, n, data, pos - step, pos, cp, tok_end, tok_word, t)
                t += 1
            continue
        if not started:
            if cls != WORD:  # marks and apostrophes before the first word character
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
        if cls != APOS:
            keep = n
    if started:
        t, _ = _end_token(buf, start, keep, w, tok_end, tok_word, t, clitics)
    _trim_words(tok_end, tok_word, t)
    return t


@njit(cache=True)
def _trim_words(tok_end, tok_word, t):
    """Clear the bytes past each token's end from its word: a dropped trailing apostrophe
    may sit in the first 8 bytes of its token's word."""
    s = 0
    for i in range(t):
        m = tok_end[i] - s
        if m < 8:
            tok_word[i] &= (np.uint64(1) << np.uint64(8 * m)) - np.uint64(1)
        s = tok_end[i]


@njit(cache=True)
def _scratch(offsets, valid, r0, r1):
    """Scratch arrays big enough for any row of ``r0:r1``."""
    m = 0
    for r in range(r0, r1):
        if valid[r]:
            m = max(m, offsets[r + 1] - offsets[r])
    buf = np.empty(2 * m + 8, dtype=np.uint8)
    tok_end = np.empty(m - m // 3 + 2, dtype=np.int64)
    tok_word = np.empty(m - m // 3 + 2, dtype=np.uint64)
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
def new_slots(key_off, key_bytes, nkeys, size):
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

    ``text`` is ``(offsets, data, valid)``, ``tables`` is ``(classes, norm, clitics)``, ``vocab`` is
    ``(slots, key_off, key_bytes)``. Returns the number of ids written, or -1 when they would
    not fit in ``cap``.
    """
    offsets, data, valid = text
    slots, key_off, key_bytes = vocab
    buf, tok_end, tok_word = _scratch(offsets, valid, r0, r1)
    used = 0
    for r in range(r0, r1):
        if not valid[r]:
            lengths[r] = 0
            continue
        t = _tokenize_row(data, offsets[r], offsets[r + 1], tables, buf, tok_end, tok_word)
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
def _count_rows(text, tables, r0, r1, lengths):
    """Token counts of rows ``r0:r1`` into ``lengths`` (tokenizing them: counting by other
    rules than the tokenizer's could only go wrong)."""
    offsets, data, valid = text
    buf, tok_end, tok_word = _scratch(offsets, valid, r0, r1)
    for r in range(r0, r1):
        lengths[r] = 0
        if valid[r]:
            lengths[r] = _tokenize_row(
                data, offsets[r], offsets[r + 1], tables, buf, tok_end, tok_word
            )


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
def encode_parallel(text, tables, vocab, bounds):
    """Token ids of every row: ``(out_offsets int64[n+1], ids int32[nnz], bad)``.

    ``bounds`` int64[chunks+1] splits the rows into chunks run in parallel. Each chunk writes
    its ids to its own stretch of a scratch array sized from its bytes; a chunk with more
    tokens than that counts them first and writes straight to the output in the second loop.
    ``bad`` is non-zero if a chunk's second pass wrote other than the ids it counted (a bug).
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
            _count_rows(text, tables, r0, r1, lengths)
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
def encode_serial(text, tables, vocab):
    """``encode_parallel`` on one thread, for small inputs: waking threads costs more."""
    offsets = text[0]
    n = offsets.size - 1
    lengths = np.zeros(n, dtype=np.int64)
    scratch = np.empty(_capacity(offsets, 0, n), dtype=np.int32)
    used = _encode_rows(text, tables, vocab, 0, n, lengths, scratch, 0, scratch.size)
    if used >= 0:
        return _exclusive_cumsum(lengths), scratch[:used].copy(), 0
    _count_rows(text, tables, 0, n, lengths)
    out_offsets = _exclusive_cumsum(lengths)
    ids = np.empty(out_offsets[n], dtype=np.int32)
    got = _encode_rows(text, tables, vocab, 0, n, lengths, ids, 0, ids.size)
    return out_offsets, ids, int(got != ids.size)


@njit(cache=True)
def count_words(text, tables, table, nkeys):
    """Add every token's occurrences to a growable table of (word bytes, count).

    ``table`` is ``(slots, key_off, key_bytes, counts)``; returns it, possibly reallocated,
    with the new number of keys.
    """
    offsets, data, valid = text
    slots, key_off, key_bytes, counts = table
    n = offsets.size - 1
    buf, tok_end, tok_word = _scratch(offsets, valid, 0, n)
    for r in range(n):
        if not valid[r]:
            continue
        t = _tokenize_row(data, offsets[r], offsets[r + 1], tables, buf, tok_end, tok_word)
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
                slots, _ = new_slots(key_off, key_bytes, nkeys, 2 * slots.shape[0])
            start = tok_end[j]
    return (slots, key_off, key_bytes, counts), nkeys


@njit(cache=True)
def _grow(a, size):
    out = np.zeros(size, dtype=a.dtype)
    out[: a.size] = a
    return out


@njit(cache=True)
def token_bytes(text, tables):
    """Every token's bytes: ``(row_offsets int64[n+1], token_offsets int64[t+1], bytes)``."""
    offsets, data, valid = text
    n = offsets.size - 1
    buf, tok_end, tok_word = _scratch(offsets, valid, 0, n)
    row_offsets = np.zeros(n + 1, dtype=np.int64)
    nbytes = 0
    for r in range(n):
        t = 0
        if valid[r]:
            t = _tokenize_row(data, offsets[r], offsets[r + 1], tables, buf, tok_end, tok_word)
            nbytes += tok_end[t - 1] if t else 0
        row_offsets[r + 1] = row_offsets[r] + t
    token_offsets = np.zeros(row_offsets[n] + 1, dtype=np.int64)
    out = np.empty(nbytes, dtype=np.uint8)
    for r in range(n):
        if not valid[r]:
            continue
        t = _tokenize_row(data, offsets[r], offsets[r + 1], tables, buf, tok_end, tok_word)
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
