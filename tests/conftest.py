"""Shared fixtures: small seeded texts that carry the corner cases on purpose, and the real data.

Corner cases: an empty text, a null, a one-token review, non-ASCII (accents, Cyrillic, CJK,
emoji, combining marks, curly apostrophes), HTML line breaks, and a very long review.
The IMDB files live outside the repository (``../shared/data`` or ``$RNNPIPE_DATA_DIR``);
tests that need them skip when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import runtime

# The suite runs rnnpipe as its CLI does: the runtime defaults (thread hand-over, CPU tuning)
# are in the environment before NumPy and Numba load, here and in every child process.
runtime.apply_defaults()

# isort: split
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

SEED = 20240611

_WORDS = (
    "the a movie film great bad awful plot acting it's don't isn't 10 7/10 "
    "wonderful boring Café naïve Москва 東京 über señor"
).split()
_PUNCT = ("", "", "", ",", ".", "!", "?", "...", " -", ":", ";", ")")


def data_dir() -> Path | None:
    """The shared data folder, or None when this checkout has none."""
    env = os.environ.get("RNNPIPE_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


_POS = "great wonderful superb loved brilliant moving".split()
_NEG = "awful boring dull hated terrible waste".split()
_FILL = "the film a plot actors it was and story".split()


def toy_reviews(n: int, seed: int = 0, labels: bool = True) -> pa.Table:
    """``n`` short reviews a tiny model learns in one epoch: filler words and one positive
    (even rows) or negative (odd rows) word. Columns id, text and (with ``labels``) label
    (``positive``/``negative``)."""
    rng = np.random.default_rng(seed)
    texts, ys = [], []
    for i in range(n):
        pos = i % 2 == 0
        words = list(rng.choice(_FILL, rng.integers(3, 10)))
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(_POS if pos else _NEG)))
        texts.append(" ".join(words) + "!")
        ys.append("positive" if pos else "negative")
    cols = {"id": np.arange(n), "text": texts}
    if labels:
        cols["label"] = ys
    return pa.table(cols)


def _random_review(rng: np.random.Generator, n_words: int) -> str:
    parts = []
    for i in range(n_words):
        word = _WORDS[rng.integers(len(_WORDS))]
        if rng.random() < 0.1:
            word = word.upper()
        parts.append(word + _PUNCT[rng.integers(len(_PUNCT))])
        if i % 40 == 39:
            parts.append("<br /><br />")
    return " ".join(parts)


@pytest.fixture(scope="session")
def corner_texts() -> list[str | None]:
    """Seeded review texts, corner cases first (empty, null, one token, non-ASCII, long)."""
    rng = np.random.default_rng(SEED)
    texts: list[str | None] = [
        "",
        None,
        "Great!",
        "Ünïcode: Café, naïve, Москва, 東京タワー, ça va? Ĳssel Σίσυφος İstanbul",
        "e\u0301te\u0301 \u0301lone mark, हिन्दी, emoji 😀👍🏽",
        "don’t ’quoted’ 'single' '' rock 'n' roll",
        "Great movie!<br /><br />The <i>acting</i> was 10/10.<br>A must-see <3 a<b and c>d",
        "   \t\n  ",
        "!!! ... ???",
        _random_review(rng, 50_000),  # very long: ~300 kB
    ]
    texts += [_random_review(rng, int(rng.integers(1, 300))) for _ in range(40)]
    return texts


@pytest.fixture(scope="session")
def corner_labels(corner_texts: list[str | None]) -> np.ndarray:
    """Seeded 0/1 labels, one per ``corner_texts`` entry."""
    rng = np.random.default_rng(SEED + 1)
    return rng.integers(0, 2, size=len(corner_texts)).astype(np.int8)


@pytest.fixture
def corner_parquet(tmp_path: Path, corner_texts: list[str | None], corner_labels) -> Path:
    """``corner_texts`` as a Parquet file with columns id (int64), text, label (int8)."""
    table = pa.table(
        {
            "id": pa.array(np.arange(len(corner_texts)), pa.int64()),
            "text": pa.array(corner_texts, pa.string()),
            "label": pa.array(corner_labels, pa.int8()),
        }
    )
    path = tmp_path / "corner.parquet"
    pq.write_table(table, path, row_group_size=16)
    return path


@pytest.fixture(scope="session")
def imdb_train_path() -> Path:
    """The real IMDB training file; skips when the shared data folder is absent."""
    folder = data_dir()
    if folder is None or not (folder / "imdb_train.parquet").is_file():
        pytest.skip("shared data (../shared/data or $RNNPIPE_DATA_DIR) is not available")
    return folder / "imdb_train.parquet"


@pytest.fixture(scope="session")
def sample_reviews(tmp_path_factory) -> Path:
    """``sample_data/reviews.parquet`` as README's quick start builds it (from the IMDB
    data in ../shared/data); git never holds it, so the tests build their own copy."""
    import importlib.util

    src = data_dir()
    if src is None or not (src / "imdb_train.parquet").exists():
        pytest.skip("../shared/data is absent: the sample data is built from it")
    script = Path(__file__).resolve().parents[1] / "sample_data" / "make_sample.py"
    spec = importlib.util.spec_from_file_location("make_sample", script)
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    out = tmp_path_factory.mktemp("sample_data")
    make_sample.main(["--from", str(src / "imdb_train.parquet"), "--out", str(out)])
    return out / "reviews.parquet"
