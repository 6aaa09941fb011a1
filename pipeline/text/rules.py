"""The text normalisation rules: what a token is, written once.

Normalisation (``NORMALISATION = "rnnpipe-text-v3"``), applied to each text in this order:

1. A null or empty text has no tokens.
2. HTML tags are separators: ``<`` then an optional ``/`` then an ASCII letter, up to the
   next ``>`` with no ``<`` in between (regex ``</?[A-Za-z][^<>]*>``). So ``<br />``, ``<br>``,
   ``<p>``, ``</i>`` go; ``<3`` and ``a < b`` stay (an emoticon, and punctuation).
3. Every character is one of:
   *word* (``str.isalnum()``: letters and digits of any script, so é, ü, ñ, Cyrillic, CJK),
   *mark* (Unicode category Mn or Mc, i.e. combining accents and Indic vowel signs),
   *apostrophe* (``'`` U+0027 or ``’`` U+2019, both written as ``'``), *symbol* (Unicode
   category So: emoji, ★, ♥, ©, ™; not the replacement characters U+FFFC and U+FFFD), or
   *separator* (everything else: spaces, punctuation, ``_``, math and currency signs, emoji
   skin tones and joiners, bytes that are not UTF-8).
4. A token is a maximal run of word, mark and apostrophe characters, with the marks and
   apostrophes before its first word character dropped and its trailing apostrophes
   dropped; a run with no word character gives no token. So ``"great!"`` -> ``great``,
   ``l'homme`` -> ``l'homme``, ``'quoted'`` -> ``quoted``, ``rock 'n' roll`` -> ``rock n roll``,
   ``well-made`` -> ``well made``, ``10/10`` -> ``10 10``. A symbol is a token of its own,
   written as it is, and ends any token before it: ``"loved it😍😍"`` -> ``loved it 😍 😍``,
   ``★★★☆☆`` -> five tokens (in reviews and posts they carry sentiment). So is an
   emoticon: eyes ``:``, ``;`` or ``=``, an optional ``-`` nose and a mouth out of
   ``) ( D P p O o / | ] [ 3 *`` or a backslash, or ``<3``, not followed by an ASCII
   letter or digit, ``/`` or ``_`` (regex ``_EMOTICON_RE``): ``"great:)"`` -> ``great :)``,
   ``;-P``, ``=D``; ``10:30``, ``http://`` and ``:Done`` hold none.
5. A token ending in a clitic splits in two, the clitic written apart: ``n't``, or an
   apostrophe then ``s``, ``m``, ``d``, ``re``, ``ll`` or ``ve`` (ASCII letters of either
   case), when the character before it is not an apostrophe. The apostrophe before
   s/m/d/re/ll/ve goes, as it goes when a text writes the clitic apart (``it 's``, Penn
   Treebank style, as SST-2 does), so both spellings give the same tokens: ``don't`` ->
   ``do n't``, ``can't`` -> ``ca n't``, ``it's`` -> ``it s``, ``we'll`` -> ``we ll``,
   ``film's`` -> ``film s``, ``it's'`` -> ``it s`` (trailing apostrophes go first); one
   split per token (``he'd've`` -> ``he'd ve``); ``o'clock``, ``l'homme``, ``rock'n'roll``
   and ``it''s`` stay whole.
6. With ``lowercase=True`` each character takes its one-character Unicode lowercase
   (``ch.lower()``, or its first character for U+0130 İ -> i). No other normalisation
   (no NFC, no accent stripping: ``café`` and ``cafe`` are different words).

``reference_tokens`` is these rules in plain Python, the oracle the fast path is tested
against; ``unicode_tables`` turns them into the tables the scanners (``scan``) read.
Models and encoders record the rules they were trained with, and ``NORMALISATIONS`` lists
every version this rnnpipe reads (a model keeps tokenizing as it was trained):
``rnnpipe-text-v2`` leaves clitics joined (rule 5 out), ``rnnpipe-text-v1`` also reads
symbols and emoticons as separators (rule 4's last two sentences out).

Example::

    >>> reference_tokens("Great!<br />It's a 10/10 'must-see' CAFÉ")
    ['great', 'it', 's', 'a', '10', '10', 'must', 'see', 'café']
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np

__all__ = ["APOS", "EMOTE", "MARK", "NORMALISATION", "NORMALISATIONS", "SEP", "SYMBOL", "WORD",
           "check_normalisation", "reference_tokens", "unicode_tables"]  # fmt: skip

NORMALISATION = "rnnpipe-text-v3"
NORMALISATIONS = ("rnnpipe-text-v1", "rnnpipe-text-v2", NORMALISATION)

_TAG_RE = re.compile(r"</?[A-Za-z][^<>]*>")
_APOSTROPHES = "'\u2019"
_MARK_CATEGORIES = ("Mn", "Mc")
_SYMBOL_CATEGORY = "So"
_REPLACEMENTS = "\ufffc\ufffd"  # So, but stand for text lost (invalid UTF-8 decodes to U+FFFD)

# character classes in the scanners' tables
SEP, WORD, MARK, APOS, SYMBOL, EMOTE = 0, 1, 2, 3, 4, 5  # EMOTE: may start an emoticon
_EMOTICON_RE = re.compile(r"(?:[:;=]-?[)(DPpOo/\\|\][3*]|<3)(?![A-Za-z0-9/_])")
# a clitic ending a token, after a character that is not an apostrophe (rule 5)
_CLITIC_RE = re.compile(r"(?<=[^'])(?:n't|'(?:s|m|d|re|ll|ve))\Z", re.ASCII | re.IGNORECASE)


def check_normalisation(normalisation: str) -> str:
    """``normalisation`` when this rnnpipe reads it; ValueError naming the versions if not."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(
            f"normalisation {normalisation!r}: this rnnpipe reads {', '.join(NORMALISATIONS)}"
        )
    return normalisation


def _splits_clitics(normalisation: str) -> bool:
    return normalisation not in ("rnnpipe-text-v1", "rnnpipe-text-v2")


def _is_symbol(ch: str) -> bool:
    return unicodedata.category(ch) == _SYMBOL_CATEGORY and ch not in _REPLACEMENTS


def reference_tokens(
    text: str | None, lowercase: bool = True, normalisation: str = NORMALISATION
) -> list[str]:
    """The tokens of ``text`` by the module's rules, in plain Python (slow; the test oracle).

    Parameters: ``text`` a string or None; ``lowercase`` as in ``Tokenizer``;
    ``normalisation`` the rules' version (``NORMALISATIONS``).
    Returns the list of tokens (empty for None or "").

    >>> reference_tokens("Great!<br />It's a 10/10 'must-see' CAFÉ")
    ['great', 'it', 's', 'a', '10', '10', 'must', 'see', 'café']
    >>> reference_tokens("loved it😍😍")
    ['loved', 'it', '😍', '😍']
    """
    symbols = check_normalisation(normalisation) != "rnnpipe-text-v1"
    clitics = _splits_clitics(normalisation)
    if not text:
        return []
    text = _TAG_RE.sub(" ", text)
    pieces = []  # runs of word, mark and apostrophe characters; symbols, each on its own
    run: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        emoticon = _EMOTICON_RE.match(text, i - 1) if symbols and ch in ":;=<" else None
        if emoticon:
            pieces += [(False, "".join(run)), (True, emoticon.group())]
            run = []
            i = emoticon.end()
        elif ch.isalnum():
            run.append(ch.lower()[0] if lowercase else ch)
        elif unicodedata.category(ch) in _MARK_CATEGORIES:
            run.append(ch)
        elif ch in _APOSTROPHES:
            run.append("'")
        else:
            pieces.append((False, "".join(run)))
            run = []
            if symbols and _is_symbol(ch):
                pieces.append((True, ch))
    pieces.append((False, "".join(run)))
    tokens = []
    for symbol, piece in pieces:
        if symbol:
            tokens.append(piece)
            continue
        # drop marks and apostrophes before the first word character, then trailing apostrophes
        start = next((i for i, ch in enumerate(piece) if ch.isalnum()), len(piece))
        token = piece[start:].rstrip("'")
        clitic = _CLITIC_RE.search(token) if clitics else None
        if clitic:
            tokens += [token[: clitic.start()], clitic.group().lstrip("'")]
        elif token:
            tokens.append(token)
    return tokens


# Planes with letters, digits or marks: 0-3 (BMP, SMP, SIP, TIP) and 14 (variation selectors).
# Unicode allocates scripts only there; planes 4-13 are unassigned and 15-16 private use.
_TABLE_RANGES = ((0, 0xD800), (0xE000, 0x40000), (0xE0000, 0xE1000))


@functools.cache
def unicode_tables(
    lowercase: bool, normalisation: str = NORMALISATION
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(classes uint8[0x110000], norm int32[0x20000], clitics)`` for the kernels (~70 ms,
    once per setting), by the rules of version ``normalisation``.

    ``norm[cp]`` is the code point written for ``cp`` (lowercase, apostrophe folding);
    code points past ``norm`` map to themselves (no cased letters lie beyond plane 1).
    ``clitics``: whether tokens ending in a clitic split (rule 5).
    """
    cps = np.concatenate([np.arange(a, b, dtype=np.uint32) for a, b in _TABLE_RANGES])
    chars = cps.tobytes().decode("utf-32-le")
    # re's \w is str.isalnum() plus "_": one C-speed pass instead of a million method calls
    flagged = re.sub(r"[^\W_]", "\x01", chars).encode("utf-32-le")
    word = (np.frombuffer(flagged, dtype=np.uint32) == 1) & (cps != 1)
    classes = np.zeros(0x110000, dtype=np.uint8)
    classes[cps[word]] = WORD
    other = cps[~word].tobytes().decode("utf-32-le")
    categories = [unicodedata.category(ch) for ch in other]
    marks = [ord(ch) for ch, c in zip(other, categories, strict=True) if c in _MARK_CATEGORIES]
    classes[np.array(marks, dtype=np.int64)] = MARK
    if check_normalisation(normalisation) != "rnnpipe-text-v1":
        classes[[ord(ch) for ch in ":;=<"]] = EMOTE
        pairs = zip(other, categories, strict=True)
        symbols = [ord(ch) for ch, c in pairs if c == _SYMBOL_CATEGORY]
        symbols = [cp for cp in symbols if chr(cp) not in _REPLACEMENTS]
        classes[np.array(symbols, dtype=np.int64)] = SYMBOL
    for ch in _APOSTROPHES:
        classes[ord(ch)] = APOS

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
    return classes, norm, _splits_clitics(normalisation)


def _utf8_len(cp: np.ndarray) -> np.ndarray:
    return 1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000)
