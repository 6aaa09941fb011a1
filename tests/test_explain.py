"""Explanations (``pipeline/explain.py``, ``pipeline/report.py``): integrated gradients'
completeness, the cpu kernels against the reference, tokens' places in the text, the
streamed Parquet output, the HTML page (in a real browser where Chromium is installed) and
bad input."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import toy_reviews
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ModelConfig
from pipeline.explain import attributions, explain_texts
from pipeline.model import Model, ensemble, init_params
from pipeline.text import TokenIds, Tokenizer, reference_tokens

runner = CliRunner()
CELLS = ["lstm", "gru", "rnn"]


def _model(cell="gru", backend="reference", dtype=np.float64, classes=("a", "b"), **kw):
    cfg = ModelConfig(cell=cell, embed_dim=6, hidden_dim=5, vocab_size=20, classes=classes,
                      max_len=50, **kw)  # fmt: skip
    p = init_params(cfg, 1)
    p["embedding"] *= 20  # far from the linear regime, so the path matters
    p["out.W"] *= 3
    return Model(cfg, {k: v.astype(dtype) for k, v in p.items()}, backend=backend)


def _tokens(seed=0, lens=(5, 0, 1, 12, 3)) -> TokenIds:
    rng = np.random.default_rng(seed)
    return TokenIds(np.r_[0, np.cumsum(lens)], rng.integers(1, 20, sum(lens)))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("classes", [("a", "b"), ("a", "b", "c")])
def test_integrated_gradients_are_complete(cell, classes):
    model = _model(cell, classes=classes, bidirectional=True, pooling="last+mean")
    exp = attributions(model, _tokens(), method="ig", steps=32)
    sums = np.add.reduceat(exp.values.astype(np.float64), exp.offsets[:-1])
    sums[exp.offsets[:-1] == exp.offsets[1:]] = 0.0
    np.testing.assert_allclose(sums, exp.f_x - exp.f_base, atol=2e-3 * np.abs(exp.f_x).max())
    assert np.all(exp.gap < 0.01)
    # f is the explained class's logit: the review's equals the model's own
    z = model.predict_logits(_tokens()).astype(np.float64)
    f = z[:, 0] * np.where(exp.target == 1, 1, -1) if len(classes) == 2 else (
        z[np.arange(len(exp.target)), exp.target]
    )  # fmt: skip
    np.testing.assert_allclose(exp.f_x, f, rtol=1e-6, atol=1e-9)
    # no target given: each row's predicted class (read from the path's own last copy)
    predicted = model.predict_proba(_tokens()).argmax(axis=1)
    assert np.array_equal(exp.target, predicted) and len(set(predicted.tolist())) > 1
    for method in ("grad", "occlusion"):
        assert np.array_equal(attributions(model, _tokens(), method=method).target, predicted)


@pytest.mark.parametrize("method", ["ig", "grad", "occlusion"])
def test_cpu_kernels_match_the_reference(method):
    ref = _model(bidirectional=True, pooling="max")
    cpu = Model(ref.config, {k: v.astype(np.float32) for k, v in ref.params.items()})
    # one rule on both sides (refinement may pick other alphas for a float32 gap)
    a = attributions(ref, _tokens(3), method=method, tolerance=0)
    b = attributions(cpu, _tokens(3), targets=a.target, method=method, tolerance=0)
    np.testing.assert_allclose(b.values, a.values, atol=2e-5 * np.abs(a.values).max())
    again = attributions(cpu, _tokens(3), targets=a.target, method=method, tolerance=0)
    assert np.array_equal(again.values, b.values)  # deterministic


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_refinement_brings_each_gap_within_the_tolerance(backend):
    # max pooling over a far-from-linear toy model, 4 nodes: Gauss-Legendre misses
    model = _model(bidirectional=True, pooling="max")
    if backend == "cpu":
        model = Model(model.config, {k: v.astype(np.float32) for k, v in model.params.items()})
    tokens = _tokens(7, lens=(9, 0, 14, 3, 20, 6, 11))
    tol = 0.001
    fixed = attributions(model, tokens, steps=4, tolerance=0)
    assert np.all(fixed.evaluations == 6) and np.sum(fixed.gap > tol) >= 2
    exp = attributions(model, tokens, steps=4, tolerance=tol)
    ran = tokens.lengths > 0
    capped = exp.evaluations >= 8 * 4
    assert np.all(exp.gap <= tol) and not capped.any()
    assert np.all(exp.evaluations[fixed.gap > tol] > 6)
    # the reported gap is the attributions' own
    sums = np.array([exp.values[a:b].astype(np.float64).sum()
                     for a, b in zip(exp.offsets[:-1], exp.offsets[1:], strict=True)])  # fmt: skip
    diff = exp.f_x - exp.f_base
    np.testing.assert_allclose(exp.gap[ran], np.abs(sums - diff)[ran] / np.abs(diff[ran]),
                               rtol=1e-3, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(exp.f_x, fixed.f_x)
    # rows Gauss-Legendre already got right keep its answer, bit for bit
    good = fixed.gap <= tol
    for a, b in zip(exp.offsets[:-1][good], exp.offsets[1:][good], strict=True):
        np.testing.assert_array_equal(exp.values[a:b], fixed.values[a:b])
    # a row's explanation does not depend on the batch around it
    for i in np.flatnonzero(~good):
        alone = attributions(model, tokens.take(np.array([i])), steps=4, tolerance=tol)
        a, b = exp.offsets[i], exp.offsets[i + 1]
        np.testing.assert_array_equal(alone.values, exp.values[a:b])
        assert alone.gap[0] == exp.gap[i] and alone.evaluations[0] == exp.evaluations[i]


@pytest.mark.parametrize("method", ["ig", "grad"])
def test_an_ensembles_attributions_are_its_members_mean(method):
    a = _model(bidirectional=True, pooling="max")
    b = Model(a.config, {k: v.astype(np.float64) for k, v in init_params(a.config, 5).items()},
              backend="reference")  # fmt: skip
    b.params["embedding"] *= 20
    both = ensemble([a, b])
    tokens = _tokens(4)
    exp = attributions(both, tokens, method=method, tolerance=0)
    # toward the ensemble's own class
    assert np.array_equal(exp.target, both.predict_proba(tokens).argmax(axis=1))
    parts = [attributions(m, tokens, exp.target, method, tolerance=0) for m in (a, b)]
    mean = (parts[0].values.astype(np.float64) + parts[1].values) / 2
    np.testing.assert_allclose(exp.values, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(exp.f_x, (parts[0].f_x + parts[1].f_x) / 2)
    if method == "ig":  # complete against the ensemble's own f
        assert np.all(exp.gap < 0.02)
        assert np.array_equal(exp.evaluations, parts[0].evaluations + parts[1].evaluations)


def test_a_token_that_cannot_change_the_output_gets_nothing():
    model = _model(pooling="mean")
    model.params["embedding"][7] = 0.0  # word 7 reads a zero input, like padding
    tokens = TokenIds(np.array([0, 6]), np.array([3, 7, 4, 0, 7, 5]))
    for method in ("ig", "grad"):
        exp = attributions(model, tokens, method=method)
        assert exp.values[[1, 3, 4]].tolist() == [0.0, 0.0, 0.0]
        assert np.all(exp.values[[0, 2, 5]] != 0.0)


def test_gradient_times_input_by_finite_differences():
    model = _model(pooling="last")
    tokens = _tokens(5, lens=(4,))
    exp = attributions(model, tokens, targets=np.array([1]), method="grad")
    emb, eps = model.params["embedding"], 1e-6
    for t, word in enumerate(tokens.ids.tolist()):
        # scaling token t's input by (1 + eps) moves f by eps * (x . grad)
        dup = Model(dataclasses.replace(model.config, vocab_size=21),
                    {**model.params, "embedding": np.vstack([emb, emb[word]])},
                    backend="reference")  # fmt: skip
        ids = tokens.ids.copy()
        ids[t] = 20

        def f(scale, ids=ids, dup=dup, row=emb[word]):
            dup.params["embedding"][20] = row * scale
            return dup.forward(TokenIds(tokens.offsets, ids), training=False)[0][0, 0]

        numeric = (f(1 + eps) - f(1 - eps)) / (2 * eps)
        assert exp.values[t] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


TEXTS = [
    "Great movie!<br /><br />The <i>acting</i> was 10/10.",
    "Ünïcode: Café, naïve, Москва, 東京タワー, ça va? İstanbul",
    "e\u0301te\u0301 \u0301lone mark, हिन्दी, emoji 😀👍🏽 don’t stop",
    None,
    "",
    " ".join(f"word{k % 13}" for k in range(300)),  # longer than max_len: the last tokens
    "loved it:) ;-P <3 so much:D, at 10:30 http://x.y \u2605\u2605\u2606 =3",  # emoticons
]


def test_spans_map_each_token_back_to_its_text():
    tok = Tokenizer().fit([t for t in TEXTS if t])
    rows, starts, ends = tok.spans(TEXTS)
    for i, text in enumerate(TEXTS):
        expected = reference_tokens(text)
        span = slice(rows[i], rows[i + 1])
        got = [text[a:b] for a, b in zip(starts[span], ends[span], strict=True)]
        assert len(got) == len(expected), text
        for raw, norm in zip(got, expected, strict=True):
            assert reference_tokens(raw) == [norm], (raw, norm)


def test_explain_texts_keeps_the_last_tokens_and_their_places():
    tok = Tokenizer().fit([t for t in TEXTS if t])
    cfg = ModelConfig(vocab_size=tok.vocab_size, embed_dim=6, hidden_dim=5, max_len=50)
    model = Model(cfg, tokenizer=tok)
    out = explain_texts(model, TEXTS, method="grad")
    for e, text in zip(out, TEXTS, strict=True):
        assert len(e.tokens) == len(e.spans) == len(e.attributions) <= 50
        assert [reference_tokens(text[a:b]) for a, b in e.spans] == [[w] for w in e.tokens]
        assert e.target in ("negative", "positive")
    assert out[5].tokens == reference_tokens(TEXTS[5])[-50:]


# --------------------------------------------------------------------- the command, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("explain")
    data = d / "reviews.parquet"
    pq.write_table(toy_reviews(200, seed=2), data)
    res = runner.invoke(app, ["train", str(data), "--out", str(d / "m"), "--embed-dim", "8",
                              "--hidden-dim", "8", "--epochs", "3", "--batch-size", "16",
                              "--lr", "0.01", "--word-vectors", "0", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return d / "m", data


def test_explain_writes_scores_tokens_offsets_and_attributions(trained, tmp_path):
    model_dir, data = trained
    out, html = tmp_path / "explained.parquet", tmp_path / "report.html"
    res = runner.invoke(app, ["explain", str(data), "-m", str(model_dir), "-o", str(out),
                              "--html", str(html), "--rows", "20", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "score", "label", "target", "tokens", "token_start",
                                  "token_end", "attributions", "ig_gap"]  # fmt: skip
    assert table.num_rows == 200
    texts = pq.read_table(data)["text"].to_pylist()
    for row, text in zip(table.to_pylist()[:20], texts, strict=False):
        assert len(row["tokens"]) == len(row["attributions"]) == len(row["token_start"])
        places = zip(row["token_start"], row["token_end"], strict=True)
        assert [text[a:b].lower() for a, b in places] == (
            row["tokens"]
        )  # fmt: skip
        assert row["target"] == row["label"]
    assert np.median(table["ig_gap"].to_numpy()) < 0.01
    # the words that carry the label are the ones that push toward it
    pos = {"great", "wonderful", "superb", "loved", "brilliant", "moving"}
    hits = 0
    for row in table.to_pylist():
        top = row["tokens"][int(np.argmax(row["attributions"]))]
        hits += top in pos or top in {"awful", "boring", "dull", "hated", "terrible", "waste"}
    assert hits > 0.8 * table.num_rows
    page = html.read_text()
    assert page.count('<div class="review">') == 20 and "toward positive" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_evaluate_html_and_predict_explain(trained, tmp_path):
    model_dir, data = trained
    html = tmp_path / "eval.html"
    res = runner.invoke(app, ["evaluate", str(data), "-m", str(model_dir), "--html", str(html)])
    assert res.exit_code == 0, res.output
    page = html.read_text()
    for chart in ("ROC curve", "Reliability (calibration)", "Training curves"):
        assert chart in page
    assert page.count("<svg") >= 4 and "Confusion matrix" in page
    res = runner.invoke(app, ["predict", "-m", str(model_dir), "--explain",
                              "the film was superb and moving"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "[+superb]" in res.stdout and res.stdout.startswith("positive\t")
    res = runner.invoke(app, ["predict", "-m", str(model_dir), "--explain", "--json",
                              "the plot was dull"])  # fmt: skip
    import json

    record = json.loads(res.stdout)
    assert record["tokens"] == ["the", "plot", "was", "dull"] and len(record["attributions"]) == 4


def test_explain_resume_and_bad_input(trained, tmp_path):
    model_dir, data = trained
    out = tmp_path / "e.parquet"
    args = ["explain", str(data), "-m", str(model_dir), "-o", str(out), "-q", "--method", "grad"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--resume", "--json"])
    assert res.exit_code == 0 and '"skipped_files": 1' in res.stdout
    for bad, needle in (
        (["--target", "neutral"], "not a class"),
        (["--method", "lime"], "unknown method"),
        (["--html", str(data)], "would overwrite"),
    ):
        res = runner.invoke(app, ["explain", str(data), "-m", str(model_dir), "-o",
                                  str(tmp_path / "x.parquet"), "-q", *bad])  # fmt: skip
        assert res.exit_code == 2, (bad, res.output)
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and needle in lines[0], res.stderr
        assert not (tmp_path / "x.parquet").exists()
    no_text = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), no_text)
    res = runner.invoke(app, ["explain", str(no_text), "-m", str(model_dir), "-o",
                              str(tmp_path / "y.parquet")])  # fmt: skip
    assert res.exit_code == 2 and "--text-col" in res.stderr


def test_explain_runs_on_the_device_asked_for(trained, tmp_path, monkeypatch):
    # --device reaches the options: explain once re-bound every model to the default cpu
    import pipeline.cli.scoring as cli_scoring
    import pipeline.explain as explain_mod

    seen = {}
    real = explain_mod.run_explain

    def spy(data, model, *args):
        seen["backend"] = args[2].backend
        return real(data, model, *args)

    monkeypatch.setattr(explain_mod, "run_explain", spy)
    monkeypatch.setattr(cli_scoring, "resolve_backend", lambda device: "reference")
    model_dir, data = trained
    res = runner.invoke(app, ["explain", str(data), "-m", str(model_dir), "-o",
                              str(tmp_path / "e.parquet"), "-q", "--method", "grad"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["backend"] == "reference"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: chromium)")
def test_the_report_renders_in_a_real_browser(trained, tmp_path):
    model_dir, data = trained
    html = tmp_path / "r.html"
    runner.invoke(
        app,
        [
            "explain",
            str(data),
            "-m",
            str(model_dir),
            "-o",
            str(tmp_path / "e.parquet"),
            "--html",
            str(html),
            "--rows",
            "30",
            "-q",
        ],
    )
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         html.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    dom = proc.stdout
    assert dom.count('class="review"') == 30
    # shaded tokens: at least the word that decides each toy review (the n-gram head gives
    # it nearly all of the logit, so it may be the only one)
    assert dom.count('<b class="p') + dom.count('<b class="n') >= 30
    assert "<svg" in dom
