"""Rows that repeat or lie inside other rows (``pipeline/overlap.py``) and the split that
keeps them on one side (``dataset.load_split`` without ``--valid-group``)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import data_dir

from pipeline.batching import stratified_split
from pipeline.config import TrainConfig
from pipeline.dataset import MIN_WHOLE_ROWS, load_split
from pipeline.overlap import containment_groups, reference_containment_groups
from pipeline.text import Tokenizer


def _phrases(rng: np.random.Generator, words: list[str], n: int, longest: int) -> list[str]:
    """``n`` random sentences and, for most, a contiguous phrase cut from them, shuffled."""
    texts = []
    for _ in range(n):
        tokens = list(rng.choice(words, rng.integers(0, longest + 1)))
        texts.append(" ".join(tokens))
        if tokens and rng.random() < 0.7:
            i = int(rng.integers(0, len(tokens)))
            texts.append(" ".join(tokens[i : int(rng.integers(i, len(tokens) + 1))]))
    order = rng.permutation(len(texts))
    return [texts[k] for k in order]


def test_heads_follow_the_longest_container_then_the_lower_index():
    texts = [
        "a good film",  # 0: held by 3 (longer), which holds nothing longer
        "good film",  # 1: in 0 and 3; 3 ranks first (more tokens)
        "bad",  # 2: in no row
        "truly a good film",  # 3
        "a film",  # 4: "a" and "film" occur, never next to each other
        "Good   FILM!",  # 5: the same words as row 1 to the tokenizer
        "",  # 6: no token: its own group
        None,  # 7
        "good film",  # 8: a repeat: 3 still ranks first
        "bad",  # 9: a repeat of 2, which has the lower index
    ]
    expected = [3, 3, 2, 3, 4, 3, 6, 7, 3, 2]
    assert containment_groups(texts).tolist() == expected
    assert reference_containment_groups(texts).tolist() == expected


@pytest.mark.parametrize("vocab,longest", [(2, 6), (4, 9), (30, 40)])
def test_groups_equal_the_row_by_row_specification(vocab, longest):
    rng = np.random.default_rng(vocab)
    words = [f"w{k}" for k in range(vocab)]
    for _ in range(40):
        texts = _phrases(rng, words, int(rng.integers(1, 25)), longest)
        got = containment_groups(pa.array(texts))
        np.testing.assert_array_equal(got, reference_containment_groups(texts))


def test_a_validation_row_and_the_longest_row_holding_it_stay_on_one_side(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(50)]
    texts = _phrases(rng, words, 300, 25)
    labels = rng.integers(0, 2, len(texts)).astype(np.int8)
    path = tmp_path / "phrases.parquet"
    pq.write_table(pa.table({"review": texts, "label": labels}), path)
    split = load_split(path, None, None, "label", None, TrainConfig(valid_frac=0.2, seed=3))
    assert split.how["kind"] == "stratified" and split.how["contained_rows"] > 100
    assert set(np.unique(split.y_valid)) == {0, 1}
    tok = Tokenizer(num_words=None).fit(pa.array(texts))

    def rows(arr):
        t = tok.encode(arr)
        return [tuple(t.ids[a:b].tolist()) for a, b in pairwise(t.offsets)]

    train, valid = rows(split.train_texts), rows(split.valid_texts)
    held = 0
    for v in set(valid) - {()}:
        n = len(v)
        holders = [r for r in train + valid if len(r) > n and any(
            r[s : s + n] == v for s in range(len(r) - n + 1))]  # fmt: skip
        if holders:
            held += 1
            longest = max(len(r) for r in holders)
            assert any(r in valid for r in holders if len(r) == longest), v
    assert held > 20  # the property was tested on rows that have a holder
    assert not set(valid) & set(train) - {()}  # a repeated row is never on both sides


def test_whole_validation_rows_are_those_no_other_row_holds(tmp_path):
    rng = np.random.default_rng(1)
    texts = _phrases(rng, [f"w{k}" for k in range(40)], 1500, 20)
    labels = rng.integers(0, 2, len(texts)).astype(np.int8)
    path = tmp_path / "phrases.parquet"
    pq.write_table(pa.table({"review": texts, "label": labels}), path)
    split = load_split(path, None, None, "label", None, TrainConfig(valid_frac=0.2, seed=0))
    whole = split.valid_whole
    assert whole is not None and whole.sum() == split.how["whole_valid_rows"] >= MIN_WHOLE_ROWS
    tok = Tokenizer(num_words=None).fit(pa.array(texts))
    every = [tuple(r) for r in tok.encode(pa.array(texts)).to_arrow().to_pylist()]
    valid = [tuple(r) for r in tok.encode(split.valid_texts).to_arrow().to_pylist()]

    def held(v):  # some longer row holds v as a contiguous run
        n = len(v)
        return any(len(r) > n and any(r[s : s + n] == v for s in range(len(r) - n + 1))
                   for r in every)  # fmt: skip

    for v in set(valid):
        marks = [bool(w) for r, w in zip(valid, whole, strict=True) if r == v]
        if not v:  # an empty row heads itself, as the module says: each one counts
            assert all(marks)
        else:  # a repeated text counts once, a held one never
            assert sum(marks) == (0 if held(v) else 1), v
    # too few whole rows to calibrate on: every validation row
    few = load_split(path, None, None, "label", None, TrainConfig(valid_frac=0.02, seed=0))
    assert few.valid_whole is None and "whole_valid_rows" not in few.how


def test_rows_that_share_nothing_keep_the_plain_stratified_split(tmp_path):
    texts = [f"review number{k} says word{k % 7}" for k in range(200)]
    labels = np.arange(200) % 2
    path = tmp_path / "distinct.parquet"
    pq.write_table(pa.table({"review": texts, "label": labels.astype(np.int8)}), path)
    split = load_split(path, None, None, "label", None, TrainConfig(valid_frac=0.1, seed=5))
    assert split.how == {"kind": "stratified", "frac": 0.1, "seed": 5}
    _, valid_idx = stratified_split(labels, 0.1, 5)
    assert split.valid_texts.to_pylist() == [texts[k] for k in valid_idx]


def test_a_few_texts_repeated_many_times_fall_back_to_the_row_by_row_split(tmp_path):
    # three texts, each a third of the rows: holding out whole groups would take a class's
    # every row out of training
    texts = ["a fine film"] * 34 + ["a great film"] * 33 + ["a dull film"] * 33
    labels = np.array([1] * 67 + [0] * 33, np.int8)
    path = tmp_path / "repeats.parquet"
    pq.write_table(pa.table({"review": texts, "label": labels}), path)
    split = load_split(path, None, None, "label", None, TrainConfig(valid_frac=0.1, seed=0))
    assert split.how["groups"] == "too few" and split.valid_whole is None
    assert set(split.y_train.tolist()) == {0, 1} and split.y_valid.size == 10


def test_sst2_phrases_group_into_about_its_sentences():
    folder = data_dir()
    if folder is None or not (folder / "sst2_train.parquet").is_file():
        pytest.skip("shared data (../shared/data or $RNNPIPE_DATA_DIR) is not available")
    texts = pq.read_table(folder / "sst2_train.parquet", columns=["review"])["review"]
    heads = containment_groups(texts)
    # SST-2's 67,349 training phrases come from its 6,920 training sentences (GLUE); a few
    # sentences repeat, or hold one another, and join one group
    assert 6_500 <= np.unique(heads).size <= 6_920
    assert np.bincount(heads).max() < 100
