"""Where tokens lie: the scanner that finds each token's span in its text, in code points.

``token_spans`` walks the Arrow ``large_string`` buffers by the tokenizer's rules
(``rules.py``; the character helpers and the clitic rule come from ``scan``), token for token
as ``scan.token_bytes`` and the encoders find them, so an explanation can point back into
the text a user wrote. Called by ``Tokenizer.spans``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.text.rules import APOS, EMOTE, SEP, SYMBOL, WORD
from pipeline.text.scan import APOSTROPHE, TAIL, ascii_class, clitic_split, decode_utf8, tail_char

__all__ = ["token_spans"]


@njit(cache=True)
def _code_points(data, pos, end):
    """How many code points the UTF-8 bytes ``data[pos:end]`` hold."""
    n = 0
    for i in range(pos, end):
        if (data[i] & 0xC0) != 0x80:  # every byte but a continuation byte starts one
            n += 1
    return n


@njit(cache=True)
def _close_span(starts, ends, t, first, keep, tail, clitics):
    """Close token ``t``, characters ``first:keep`` ending in ``tail`` (as ``clitic_split`` reads
    it), split in two when ``clitics`` (rule 5) and it ends in a clitic; returns tokens now."""
    length, gap = 0, 0
    if clitics:
        length, gap = clitic_split(tail)
    starts[t] = first
    if length > 0:
        ends[t] = keep - length - gap
        t += 1
        starts[t] = keep - length
    ends[t] = keep
    return t + 1


@njit(cache=True)
def token_spans(text, tables):
    """Where every token lies in its text, in code points (Python ``str`` indices):
    ``(row_offsets int64[n+1], starts int32[t], ends int32[t])``, token for token as
    ``token_bytes`` and the encoders find them: a token starts at its first word character
    and ends after its last character that is not an apostrophe; a clitic split off (rule 5)
    spans its letters, the word before it ends before its apostrophe; a symbol spans itself."""
    offsets, data, valid = text
    classes, _, clitics = tables
    n = offsets.size - 1
    cap = 0
    for r in range(n):
        if valid[r]:
            cap += offsets[r + 1] - offsets[r]
    starts = np.empty(cap, dtype=np.int32)
    ends = np.empty(cap, dtype=np.int32)
    row_offsets = np.zeros(n + 1, dtype=np.int64)
    t = 0
    for r in range(n):
        if valid[r]:
            pos, end = offsets[r], offsets[r + 1]
            ci = 0  # code point index within the row
            started = False
            first = 0
            keep = 0
            tail = kept = 0  # the token's last characters for clitic_split, and up to keep
            while pos < end:
                b = data[pos]
                chars = 1
                if b < 128:
                    cls, step = ascii_class(data, pos, end, classes[b])
                    if step > 1:  # a tag (any characters) or an emoticon
                        chars = _code_points(data, pos, pos + step)
                else:
                    cp, step = decode_utf8(data, pos, end)
                    cls = classes[cp]
                if cls == SEP or cls == SYMBOL or cls == EMOTE:
                    if started:
                        t = _close_span(starts, ends, t, first, keep, kept, clitics)
                        started = False
                    if cls != SEP:
                        starts[t] = ci
                        ends[t] = ci + chars
                        t += 1
                elif started or cls == WORD:
                    if not started:
                        started = True
                        first = ci
                        tail = 0
                    c = APOSTROPHE if cls == APOS else tail_char(np.int64(b))
                    tail = ((tail << 8) | c) & TAIL
                    if cls != APOS:
                        keep = ci + 1
                        kept = tail
                pos += step
                ci += chars
            if started:
                t = _close_span(starts, ends, t, first, keep, kept, clitics)
        row_offsets[r + 1] = t
    return row_offsets, starts[:t].copy(), ends[:t].copy()
