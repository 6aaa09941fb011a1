"""The ``Tokenizer``: a frequency-ordered vocabulary, fitted, saved, loaded, and encoding.

The ``Tokenizer`` keeps the ``num_words`` most frequent words seen by ``fit`` (those seen at
least ``min_count`` times) with ids ``2 .. len(words)+1`` in order of decreasing count; ties
are broken by the word's code points (``sorted`` order of ``str``), so the vocabulary does not
depend on the order or batching of the fitting texts. Any other word encodes to ``OOV_ID``.

Tokens follow the normalisation rules (``rules``); the scanning is done by the Numba kernels
of ``scan``, with no per-row Python.

Example::

    >>> tok = Tokenizer(num_words=100).fit(["Great movie!", "a great, GREAT cast<br />"])
    >>> tok.tokens(["Great!<br />Don't"])
    [['great', 'do', "n't"]]
    >>> tok.encode(["great cast", None]).to_arrow().to_pylist()
    [[2, 4], []]
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa

from pipeline.errors import ConfigError, ModelFormatError
from pipeline.io import atomic_write_text
from pipeline.text import arrow, scan, spans
from pipeline.text.ids import PAD_ID, TokenIds
from pipeline.text.rules import NORMALISATION, check_normalisation, unicode_tables

__all__ = ["OOV_TOKEN", "TOKENIZER_FORMAT", "TOKENIZER_FORMAT_VERSION", "Tokenizer"]

TOKENIZER_FORMAT = "rnnpipe-tokenizer"
TOKENIZER_FORMAT_VERSION = 1
OOV_TOKEN = "<oov>"  # what decode() writes for OOV_ID; a tag, so re-encoding drops it


class Tokenizer:
    """Words to ids with a frequency-ordered vocabulary (Keras-like; rules in the module doc).

    Parameters: ``num_words`` the most words kept (None keeps all), ``lowercase``,
    ``min_count`` the fewest occurrences for a word to be kept, ``normalisation`` the rules'
    version (``rules.NORMALISATIONS``; a loaded tokenizer keeps the one it was saved with).
    Raises ``ConfigError`` on bad settings.

    >>> tok = Tokenizer(num_words=2).fit(["b a a", "c b a"])
    >>> tok.words, tok.vocab_size
    (['a', 'b'], 4)
    >>> tok.encode(["a b c"])[0].tolist()
    [2, 3, 1]
    """

    def __init__(
        self,
        num_words: int | None = 20000,
        lowercase: bool = True,
        min_count: int = 1,
        normalisation: str = NORMALISATION,
    ):
        if num_words is not None and (
            isinstance(num_words, bool) or not isinstance(num_words, int) or num_words < 1
        ):
            raise ConfigError(f"num_words must be a positive integer or None, got {num_words!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"min_count must be a positive integer, got {min_count!r}")
        if not isinstance(lowercase, bool):
            raise ConfigError(f"lowercase must be true or false, got {lowercase!r}")
        try:
            self.normalisation = check_normalisation(normalisation)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
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

    def _tables(self) -> tuple[np.ndarray, np.ndarray, bool]:
        return unicode_tables(self.lowercase, self.normalisation)

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
        for arr in arrow.text_batches(texts):
            table, nkeys = scan.count_words(arrow.buffers(arr), tables, table, nkeys)
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
        slots, dup = scan.new_slots(key_off, key_bytes, len(words), size)
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
        for arr in arrow.text_batches(texts):
            text = arrow.buffers(arr)
            offsets = text[0]
            if threads == 1 or offsets[-1] - offsets[0] < arrow.PARALLEL_BYTES:
                out_offsets, ids, bad = scan.encode_serial(text, tables, self._table)
            else:
                bounds = arrow.chunk_bounds(offsets, 8 * threads)
                out_offsets, ids, bad = scan.encode_parallel(text, tables, self._table, bounds)
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
        for arr in arrow.text_batches(texts):
            row_off, tok_off, raw_arr = scan.token_bytes(arrow.buffers(arr), tables)
            raw = raw_arr.tobytes()
            toks = [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(tok_off)]
            out.extend(toks[a:b] for a, b in itertools.pairwise(row_off))
        return out

    def spans(self, texts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where every token of ``tokens(texts)`` lies in its original text, as code-point
        (Python ``str``) offsets: ``(row_offsets int64[n+1], starts int32[t], ends int32[t])``,
        token ``k`` of text ``i`` being ``text[starts[j]:ends[j]]`` for ``j = row_offsets[i]
        + k``. Null texts have no tokens.

        >>> Tokenizer().spans(["<b>Great</b> film!"])
        (array([0, 2]), array([ 3, 13], dtype=int32), array([ 8, 17], dtype=int32))
        """
        tables = self._tables()
        rows, starts, ends = [np.zeros(1, np.int64)], [], []
        for arr in arrow.text_batches(texts):
            r, s, e = spans.token_spans(arrow.buffers(arr), tables)
            rows.append(r[1:] + rows[-1][-1])
            starts.append(s)
            ends.append(e)
        empty = np.zeros(0, np.int32)
        return (
            np.concatenate(rows),
            np.concatenate(starts) if starts else empty,
            np.concatenate(ends) if ends else empty,
        )

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
            "normalisation": self.normalisation,
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
        try:
            tok = cls(
                doc.get("num_words"), doc.get("lowercase"), doc.get("min_count"),
                doc.get("normalisation"),
            )  # fmt: skip
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
