"""Word vectors (``pipeline/word2vec.py``): the Numba kernel against a plain-Python word2vec
with the same random stream, determinism, and that the vectors learn co-occurrence."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import word2vec
from pipeline.text import TokenIds
from pipeline.word2vec import word_vectors

M64 = (1 << 64) - 1


def _reference(tokens, vocab_size, dim, epochs, seed, window=5, negative=5, sample=1e-3,
               lr0=0.025):  # fmt: skip
    """word2vec's skip-gram with negative sampling, one thread, in plain Python with
    float32 vectors: the same steps and random stream as the kernel."""
    ids, offsets = tokens.ids.astype(np.int64), tokens.offsets
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    counts[[0, 1]] = 0
    rng = np.random.default_rng(seed)
    syn0 = ((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32)
    syn0[0] = 0
    syn1 = np.zeros((vocab_size, dim), np.float32)
    threshold = sample * counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.minimum(
            np.where(counts > 0, (np.sqrt(counts / threshold) + 1) * threshold / counts, 1.0), 1
        )
    power = counts**0.75
    table = np.repeat(
        np.arange(vocab_size), np.floor(power / power.sum() * word2vec._TABLE_SIZE).astype(int)
    )
    state = (seed * 2654435761 + 1) & M64
    total = float(ids.size) * epochs
    done = 0
    n = offsets.size - 1
    for _ in range(epochs):
        for r in range(word2vec._ROUNDS):  # one thread: the rounds only cut the stream
            for s in range(n * r // word2vec._ROUNDS, n * (r + 1) // word2vec._ROUNDS):
                sentence = []
                for k in range(offsets[s], offsets[s + 1]):
                    w = int(ids[k])
                    done += 1
                    if w <= 1:
                        continue
                    state = (state * 25214903917 + 11) & M64
                    if keep[w] < ((state >> 16) & 0xFFFF) / 65536.0:
                        continue
                    sentence.append(w)
                lr = lr0 * max(1.0 - done / (total + 1.0), 1e-4)
                for i, centre in enumerate(sentence):
                    state = (state * 25214903917 + 11) & M64
                    b = state % window
                    for j in range(max(0, i - window + b), min(len(sentence), i + window - b + 1)):
                        if j == i:
                            continue
                        c = sentence[j]
                        neu = np.zeros(dim, np.float32)
                        for t in range(negative + 1):
                            if t == 0:
                                target, label = centre, 1.0
                            else:
                                state = (state * 25214903917 + 11) & M64
                                target = int(table[(state >> 16) % table.size])
                                if target == centre:
                                    continue
                                label = 0.0
                            f = float(np.dot(syn0[c], syn1[target]))
                            if f > 6:
                                g = (label - 1.0) * lr
                            elif f < -6:
                                g = label * lr
                            else:
                                g = (label - 1.0 / (1.0 + np.exp(-f))) * lr
                            neu += np.float32(g) * syn1[target]
                            syn1[target] += np.float32(g) * syn0[c]
                        syn0[c] += neu
    syn0[0] = 0
    return syn0


def _corpus(n=120, seed=0) -> TokenIds:
    """Sentences from two topics: words 2-5 appear together, and 6-9 together."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        topic = rng.integers(0, 2)
        words = rng.integers(2, 6, rng.integers(3, 12)) + 4 * topic
        if rng.random() < 0.2:
            words[0] = 1  # an out-of-vocabulary token here and there
        seqs.append(words)
    lens = [len(s) for s in seqs]
    return TokenIds(np.r_[0, np.cumsum(lens)], np.concatenate(seqs))


def test_kernel_matches_the_plain_python_word2vec():
    tokens = _corpus(30)
    ours = word_vectors(tokens, 10, 8, epochs=2, seed=3, threads=1)
    ref = _reference(tokens, 10, 8, epochs=2, seed=3)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_and_threads_give_the_same_bits(threads):
    tokens = _corpus()
    a = word_vectors(tokens, 10, 8, epochs=3, seed=1, threads=threads)
    b = word_vectors(tokens, 10, 8, epochs=3, seed=1, threads=threads)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, word_vectors(tokens, 10, 8, epochs=3, seed=2, threads=threads))
    assert a.dtype == np.float32 and a.shape == (10, 8) and not a[0].any()


@pytest.mark.parametrize("threads", [1, 2])
def test_words_used_alike_get_similar_vectors(threads):
    # no subsampling: in a ten-word vocabulary every word is "frequent"
    v = word_vectors(_corpus(400), 10, 16, epochs=5, seed=0, threads=threads, sample=1.0)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-9)
    sim = unit @ unit.T
    within = np.mean([sim[a, b] for a in range(2, 6) for b in range(2, 6) if a != b])
    across = np.mean([sim[a, b] for a in range(2, 6) for b in range(6, 10)])
    assert within > across + 0.3


def test_no_words_leaves_the_initialisation():
    tokens = TokenIds(np.array([0, 3]), np.array([1, 1, 0]))  # only OOV and padding
    v = word_vectors(tokens, 5, 4, epochs=2, seed=0)
    rng = np.random.default_rng(0)
    init = ((rng.random((5, 4)) - 0.5) / 4).astype(np.float32)
    init[0] = 0
    assert np.array_equal(v, init)


def test_skipped_sequences_teach_nothing():
    base = _corpus(60)
    extra = np.array([10, 11, 10, 11, 10])  # words only the skipped sequence holds
    tokens = TokenIds(np.r_[base.offsets, base.offsets[-1] + extra.size],
                      np.r_[base.ids, extra])  # fmt: skip
    skip = np.zeros(len(tokens), dtype=bool)
    skip[-1] = True
    v = word_vectors(tokens, 12, 8, epochs=2, seed=0, threads=1, skip=skip)
    untrained = word_vectors(TokenIds(np.zeros(1, np.int64), np.zeros(0, np.int32)), 12, 8, 2, 0)
    np.testing.assert_array_equal(v[10:], untrained[10:])
    assert not np.array_equal(v[2:10], untrained[2:10])
