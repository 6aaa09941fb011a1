"""Word vectors from the training text itself: skip-gram with negative sampling (word2vec).

A classifier trained from a random embedding learns a vector only for the words its labels
happen to separate, and on reviews of films it has never seen it meets many words it saw a
handful of times. Word vectors learned first from the same text, without its labels
(Mikolov et al. 2013, "Distributed Representations of Words and Phrases"), give every word
of the vocabulary a vector that places it among the words it is used like. On a
movie-disjoint split of the IMDB training reviews this took the default classifier from
87.3 % to about 90 % (see docs/performance.md for the runs), for about a minute of
training on 2 cores.

The algorithm is word2vec's: each kept token predicts the tokens around it within a window
of random size (1 to ``window`` on each side), against ``negative`` words drawn from the
unigram distribution to the power 0.75; frequent words are subsampled (``sample``); the
learning rate decays linearly from ``lr`` to ``lr * 1e-4`` over the run. With several
threads each trains its own copy on its share of the sentences and the copies are averaged
eight times an epoch (local SGD), instead of word2vec's racing updates of one shared copy:
each thread is a seeded stream of its own, so the same tokens, seed and thread count give
the same vectors, bit for bit.

Example::

    vectors = word_vectors(tokens, vocab_size, dim=128, epochs=5, seed=0)  # float32 [V, dim]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.text import OOV_ID, PAD_ID, TokenIds

__all__ = ["load_embeddings", "word_vectors"]

_TABLE_SIZE = 1 << 22  # entries of the negative-sampling table (words by unigram^0.75)
_MAX_SENTENCE = 10_000
_ROUNDS = 8  # times per epoch the threads' copies are averaged


@numba.njit(cache=True, inline="always")
def _next(state):  # pragma: no cover
    # word2vec's linear congruential generator, on uint64 (wraps)
    return state * np.uint64(25214903917) + np.uint64(11)


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _sgns(
    ids, offsets, skip, first, last, keep, table, syn0, syn1, window, negative, lr0, done0,
    stride, total, state,
):  # pragma: no cover  # fmt: skip
    # One thread's pass over sentences first..last-1 on its own copy (syn0, syn1). done0 is
    # the run's progress when the pass starts and stride the number of threads, so the
    # learning rate decays as if the threads' words were one stream. Returns the new state.
    dim = syn0.shape[1]
    sentence = np.empty(_MAX_SENTENCE, np.int64)
    neu = np.empty(dim, np.float32)
    done = 0
    lr = lr0
    for s in range(first, last):
        if skip[s]:
            continue
        # the sentence, subsampled: frequent words are kept with probability keep[w]
        m = 0
        for k in range(offsets[s], offsets[s + 1]):
            w = ids[k]
            done += 1
            if w <= 1:  # padding and out-of-vocabulary tokens carry no word
                continue
            state = _next(state)
            if keep[w] < (state >> np.uint64(16) & np.uint64(0xFFFF)) / 65536.0:
                continue
            if m < _MAX_SENTENCE:
                sentence[m] = w
                m += 1
        lr = lr0 * max(1.0 - (done0 + done * stride) / (total + 1.0), 1e-4)
        for i in range(m):
            state = _next(state)
            b = int(state % np.uint64(window))
            lo, hi = max(0, i - window + b), min(m, i + window - b + 1)
            for j in range(lo, hi):
                if j == i:
                    continue
                c = sentence[j]  # the context word's input vector predicts the centre
                for d in range(dim):
                    neu[d] = 0.0
                for t in range(negative + 1):
                    if t == 0:
                        target, label = sentence[i], 1.0
                    else:
                        state = _next(state)
                        target = table[(state >> np.uint64(16)) % np.uint64(table.size)]
                        if target == sentence[i]:
                            continue
                        label = 0.0
                    f = 0.0
                    for d in range(dim):
                        f += syn0[c, d] * syn1[target, d]
                    if f > 6.0:
                        g = (label - 1.0) * lr
                    elif f < -6.0:
                        g = label * lr
                    else:
                        g = (label - 1.0 / (1.0 + np.exp(-f))) * lr
                    for d in range(dim):
                        neu[d] += g * syn1[target, d]
                        syn1[target, d] += g * syn0[c, d]
                for d in range(dim):
                    syn0[c, d] += neu[d]
    return state


@numba.njit(cache=True, parallel=True)
def _round(
    ids, offsets, skip, bounds, keep, table, syn0s, syn1s, window, negative, lr0, done0, total,
    states,
):  # pragma: no cover  # fmt: skip
    # every thread trains its own copy on its own slice of the round's sentences
    n_threads = syn0s.shape[0]
    for t in numba.prange(n_threads):
        states[t] = _sgns(
            ids, offsets, skip, bounds[t], bounds[t + 1], keep, table, syn0s[t], syn1s[t],
            window, negative, lr0, done0, n_threads, total, states[t],
        )  # fmt: skip


@numba.njit(cache=True, parallel=True)
def _average(copies):  # pragma: no cover
    # copies [T, V, dim]: each row set to the mean over T, in a fixed order
    n_threads, rows, dim = copies.shape
    for r in numba.prange(rows):
        for d in range(dim):
            acc = np.float32(0.0)
            for t in range(n_threads):
                acc += copies[t, r, d]
            acc /= n_threads
            for t in range(n_threads):
                copies[t, r, d] = acc


def word_vectors(
    tokens: TokenIds,
    vocab_size: int,
    dim: int,
    epochs: int = 5,
    seed: int = 0,
    window: int = 5,
    negative: int = 5,
    sample: float = 1e-3,
    lr: float = 0.025,
    threads: int | None = None,
    skip: np.ndarray | None = None,
) -> np.ndarray:
    """Skip-gram word vectors float32 [``vocab_size``, ``dim``] learned from ``tokens``.

    Parameters: ``tokens`` the text as token ids (untruncated: every token is context);
    ``vocab_size`` V; ``dim`` the vectors' size (the embedding's E); ``epochs`` passes over
    the text; ``seed``; ``window``, ``negative``, ``sample``, ``lr`` as in word2vec;
    ``threads`` the copies trained side by side (None: Numba's thread count); ``skip``
    bool per sequence, True for those to leave out (held-out text). ``tokens.ids`` may be a
    memory map: it is read in place, never copied.

    Returns the input vectors. Rows of ids that never occur (padding, OOV, unseen words)
    keep word2vec's small uniform initialisation; the padding row is zero.

    Example: ``emb = word_vectors(tok.encode(texts), tok.vocab_size, 128)``.
    """
    ids, offsets = tokens.ids, tokens.offsets  # int32 (perhaps a memory map), int64
    n = offsets.size - 1
    skip = np.zeros(n, dtype=np.bool_) if skip is None else np.asarray(skip, dtype=np.bool_)
    counts = np.zeros(vocab_size, dtype=np.float64)
    for a in range(0, ids.size, 1 << 24):  # in chunks: a memory map is never read whole
        counts += np.bincount(np.asarray(ids[a : a + (1 << 24)]), minlength=vocab_size)
    for r in np.flatnonzero(skip):
        counts -= np.bincount(np.asarray(ids[offsets[r] : offsets[r + 1]]), minlength=vocab_size)
    counts[[PAD_ID, OOV_ID]] = 0.0
    total_words = counts.sum()
    rng = np.random.default_rng(seed)
    syn0 = ((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32)
    syn0[PAD_ID] = 0.0
    syn1 = np.zeros((vocab_size, dim), dtype=np.float32)
    if total_words == 0 or epochs == 0:
        return syn0
    # word2vec's subsampling: keep a word with probability (sqrt(f/t) + 1) * t/f
    threshold = sample * total_words
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(counts > 0, (np.sqrt(counts / threshold) + 1) * threshold / counts, 1.0)
    keep = np.minimum(keep, 1.0)
    power = counts**0.75
    table = np.repeat(
        np.arange(vocab_size), np.floor(power / power.sum() * _TABLE_SIZE).astype(int)
    )
    if table.size == 0:
        return syn0
    # Local SGD: each thread trains a copy of the vectors on its slice of the sentences, and
    # the copies are averaged ``_ROUNDS`` times an epoch. Each copy is one deterministic
    # stream, so the result depends on the seed and the thread count, never on timing.
    n_threads = max(1, min(threads or numba.get_num_threads(), offsets.size - 1))
    syn0s = np.repeat(syn0[None], n_threads, axis=0)
    syn1s = np.repeat(syn1[None], n_threads, axis=0)
    states = (np.uint64(seed) * np.uint64(2654435761) + np.arange(1, n_threads + 1)).astype(
        np.uint64
    )
    skipped = int((offsets[1:] - offsets[:-1])[skip].sum())
    total = float(ids.size - skipped) * epochs
    done = 0
    table = table.astype(np.int64)
    for _ in range(epochs):
        for r in range(_ROUNDS):
            first, last = n * r // _ROUNDS, n * (r + 1) // _ROUNDS
            bounds = np.linspace(first, last, n_threads + 1).astype(np.int64)
            _round(ids, offsets, skip, bounds, keep, table, syn0s, syn1s, window, negative,
                   lr, float(done), total, states)  # fmt: skip
            if n_threads > 1:
                _average(syn0s)
                _average(syn1s)
            done += int(offsets[last] - offsets[first]) - int(
                (offsets[first + 1 : last + 1] - offsets[first:last])[skip[first:last]].sum()
            )
    syn0 = syn0s[0]
    syn0[PAD_ID] = 0.0
    return syn0


def load_embeddings(
    path: str | Path, tokenizer: Any, embedding: np.ndarray, chunk_lines: int = 50_000
) -> float:
    """Copy pretrained word vectors (word2vec/GloVe text format) into ``embedding`` in place.

    Each line is a word and its vector; an optional first line ``N D`` is skipped. A word
    whose tokenizer encoding is a single in-vocabulary id gets its vector (first occurrence
    wins); all other rows keep their random values, the pad row stays zero.

    Returns the coverage: the share of the vocabulary's words (ids >= 2) that received a vector.

    Raises InputError for a missing file or a vector whose dimension is not the embedding's.

    Example: ``coverage = load_embeddings("glove.6B.100d.txt", tok, model.params["embedding"])``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: embeddings file not found")
    V, E = embedding.shape
    filled = np.zeros(V, dtype=bool)
    filled[:2] = True  # pad and OOV never come from the file

    def flush(words: list[str], rests: list[str], first_line: int) -> None:
        enc = tokenizer.encode(pa.array(words, type=pa.large_string()))
        lens = enc.lengths
        single = np.flatnonzero(lens == 1)
        ids = enc.ids[enc.offsets[single]]
        for k, v in zip(single.tolist(), ids.tolist(), strict=True):
            if v < 2 or v >= V or filled[v]:
                continue
            vec = np.array(rests[k].split(), dtype=np.float64)
            if vec.size != E:
                raise InputError(
                    f"{path}: line {first_line + k + 1} has a {vec.size}-dimensional vector but "
                    f"the model's embed_dim is {E}: use {E}-dimensional vectors or set "
                    f"embed_dim={vec.size}"
                )
            embedding[v] = vec
            filled[v] = True

    words: list[str] = []
    rests: list[str] = []
    first_line = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f):
            parts = line.rstrip("\n").split(" ", 1)
            if len(parts) < 2:
                continue
            if lineno == 0 and parts[0].isdigit() and parts[1].strip().isdigit():
                continue  # word2vec's "N D" header
            if not words:
                first_line = lineno
            words.append(parts[0])
            rests.append(parts[1])
            if len(words) >= chunk_lines:
                flush(words, rests, first_line)
                words, rests = [], []
    if words:
        flush(words, rests, first_line)
    return float(filled[2:].mean()) if V > 2 else 0.0
