"""Text: normalisation, the ``Tokenizer``, and ``TokenIds``, the one data shape between stages.

``TokenIds`` is Arrow's ``list<int32>`` layout: ``offsets int64[n+1]`` and ``ids int32[nnz]``.
Sequence ``i`` is ``ids[offsets[i]:offsets[i+1]]``; there is never any padding.
Id 0 is reserved (padding, for interop), id 1 is out-of-vocabulary.

The package, one role per module:

* ``ids``: ``TokenIds``, ``PAD_ID``, ``OOV_ID``.
* ``rules``: the normalisation rules (``NORMALISATION``), ``reference_tokens`` (the rules in
  plain Python, the oracle) and the Unicode tables the scanners read.
* ``arrow``: any string input as Arrow ``large_string`` buffers, in bounded batches.
* ``scan``: the Numba scanners over those buffers: tokenize, count, encode.
* ``spans``: the scanner that finds where each token lies in its text (for explanations).
* ``tokenizer``: the ``Tokenizer`` (fit, encode, tokens, decode, save, load).

Example::

    >>> tok = Tokenizer(num_words=100).fit(["Great movie!", "a great, GREAT cast<br />"])
    >>> tok.tokens(["Great!<br />Don't"])
    [['great', 'do', "n't"]]
    >>> tok.encode(["great cast", None]).to_arrow().to_pylist()
    [[2, 4], []]
"""

from pipeline.text.ids import OOV_ID, PAD_ID, TokenIds
from pipeline.text.rules import NORMALISATION, reference_tokens
from pipeline.text.tokenizer import (
    OOV_TOKEN,
    TOKENIZER_FORMAT,
    TOKENIZER_FORMAT_VERSION,
    Tokenizer,
)

__all__ = [
    "NORMALISATION",
    "OOV_ID",
    "OOV_TOKEN",
    "PAD_ID",
    "TOKENIZER_FORMAT",
    "TOKENIZER_FORMAT_VERSION",
    "TokenIds",
    "Tokenizer",
    "reference_tokens",
]
