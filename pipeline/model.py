"""The recurrent classifier: its config, parameters, forward/backward over a kernel backend,
and the model artifact (a directory that ``Model.save`` writes and ``Model.load`` validates).

Architecture: embedding → ``num_layers`` recurrent layers (lstm, gru or rnn; optionally
bidirectional, the two directions' states concatenated) → pooling of the last layer (last
state, max and/or mean over the valid steps, per direction) → dropout → one dense layer
(a single logit with a sigmoid for two classes, softmax logits otherwise).

Parameters are a flat ``dict[str, np.ndarray]``, float32 (float64 works too, for gradient
checks on the reference backend)::

    embedding            [V, E]        row 0 (padding) stays zero
    l{l}.{fwd|bwd}.W_ih  [G*H, in]     in = E for layer 0, dirs*H above
    l{l}.{fwd|bwd}.W_hh  [G*H, H]
    l{l}.{fwd|bwd}.b_ih  [G*H]
    l{l}.{fwd|bwd}.b_hh  [G*H]
    out.W                [C', F]       C' = 1 (binary) or C; F = dirs * H * len(modes)
    out.b                [C']

Features are ordered direction first, then pooling mode: [fwd last, fwd max, bwd last, ...].

The artifact directory holds ``config.json`` (format version, model config, tokenizer
settings, training info, metrics), ``vocab.json`` and ``weights.npz`` (loaded with
``allow_pickle=False``).

Example::

    model = Model(ModelConfig(cell="gru", vocab_size=tok.vocab_size), tokenizer=tok)
    probs = model.predict_proba(model.encode(texts))   # float32 [n, C]
    model.save("model/")
    same = Model.load("model/")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numba
import numpy as np

from pipeline import ngrams
from pipeline.batching import sorted_batches
from pipeline.config import FORMAT_VERSION, POOLINGS, ModelConfig
from pipeline.encoder import (
    EncoderCache,
    dropout_mask,
    encoder_backward,
    encoder_forward,
    encoder_shapes,
    glorot,
    init_encoder_params,
    member_name,
)
from pipeline.errors import ConfigError, ModelFormatError, RnnpipeError, RunError
from pipeline.kernels import BACKENDS, get_backend
from pipeline.metrics import cross_entropy, log_softmax, sigmoid
from pipeline.text import TokenIds

__all__ = [
    "FORMAT_VERSION",
    "POOLINGS",
    "Model",
    "ModelConfig",
    "check_model_target",
    "ensemble",
    "expected_shapes",
    "init_params",
    "is_model_dir",
    "probabilities",
]

CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "weights.npz"


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name and the shape ``config`` implies, in a fixed order: the
    encoder's (``pipeline.encoder.encoder_shapes``), then the dense layer's.

    Example: ``expected_shapes(cfg)["l0.fwd.W_hh"] == (4 * cfg.hidden_dim, cfg.hidden_dim)``.
    """
    shapes = encoder_shapes(config)
    shapes["out.W"] = (config.num_outputs, config.feature_dim)
    shapes["out.b"] = (config.num_outputs,)
    one = dict(shapes)
    for k in range(1, config.members):  # an ensemble's other members: the same shapes
        shapes.update({member_name(k, name): shape for name, shape in one.items()})
    if config.ngrams:  # the word n-gram head (pipeline.ngrams)
        shapes["ngram.W"] = (1 << config.ngram_bits, config.num_outputs)
        shapes["ngram.b"] = (config.num_outputs,)
    return shapes


def ensemble(models: Sequence[Model]) -> Model:
    """One model whose logits are the mean of ``models``' (one config without an n-gram
    head, ``pipeline.ngrams.attach`` adds one after; the first one's temperature and
    tokenizer); ``models[0]``'s weights keep their names, the others' are prefixed ``m1.``,
    ``m2.``... Example: ``ensemble([refit, first]).predict_proba(tokens)``."""
    first = models[0]
    single = dataclasses.replace(first.config, members=1)
    params: dict[str, np.ndarray] = {}
    for k, m in enumerate(models):
        same = dataclasses.replace(m.config, temperature=first.config.temperature) == single
        if not same or single.ngrams:
            raise ConfigError("ensemble members must share one model config, without a head")
        params.update({member_name(k, n): v for n, v in m.params.items()})
    config = dataclasses.replace(single, members=len(models))
    return Model(config, params, tokenizer=first.tokenizer, backend=first.backend)


def init_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh float32 parameters with Keras' initialisation (worth points of accuracy on IMDB).

    The encoder's as ``pipeline.encoder.init_encoder_params`` draws them; the dense layer
    Glorot-uniform, bias zero. Same seed, same parameters.

    Example: ``params = init_params(ModelConfig(vocab_size=100), seed=1)``.
    """
    rng = np.random.default_rng(seed)
    params = init_encoder_params(config, rng)
    shapes = expected_shapes(config)
    params["out.W"] = glorot(rng, *shapes["out.W"])
    params["out.b"] = np.zeros(shapes["out.b"])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


# --------------------------------------------------------------------------- numerics


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities float32 [n, C] from logits [n, C'] divided by ``temperature``: the
    sigmoid of the single logit as column 1 (and its complement as column 0) for a binary
    model, the softmax otherwise.

    Example: ``probabilities(np.array([[0.0]]))`` is ``[[0.5, 0.5]]``.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.shape[1] == 1:
        p1 = sigmoid(z[:, 0])
        return np.stack([1.0 - p1, p1], axis=1).astype(np.float32)
    return np.exp(log_softmax(z)).astype(np.float32)


@numba.njit(cache=True)
def _dense_kernel(feats, W, b, out):  # pragma: no cover
    # One row at a time in a fixed order: a row's logits never depend on the batch around
    # it (a BLAS product may round differently with the number of rows).
    for i in range(feats.shape[0]):
        for c in range(W.shape[0]):
            acc = 0.0
            for f in range(W.shape[1]):
                acc += feats[i, f] * W[c, f]
            out[i, c] = acc + b[c]


def _dense(feats: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``feats @ W.T + b``, row-independent (see ``_dense_kernel``)."""
    out = np.empty((feats.shape[0], W.shape[0]), dtype=np.result_type(feats, W))
    _dense_kernel(np.ascontiguousarray(feats), np.ascontiguousarray(W), b, out)
    return out


@dataclass
class _ForwardCache:
    """What ``Model.backward`` needs from one training forward pass."""

    encoder: EncoderCache  # the embedding and recurrent layers'
    feats: np.ndarray  # (n, F) pooled features after dropout
    feat_mask: np.ndarray | None  # (n, F) dropout mask on the features


# --------------------------------------------------------------------------- model


class Model:
    """A recurrent classifier: config, parameters, fitted tokenizer and a kernel backend.

    Parameters: ``config``; ``params`` (default: ``init_params(config, seed)``), checked against
    the shapes the config implies; ``tokenizer`` the fitted ``pipeline.text.Tokenizer`` (needed
    by ``encode`` and ``save``); ``backend`` ``cpu`` (default), ``reference`` or ``cuda``,
    resolved on first use; nothing falls back to another backend silently.

    Raises ConfigError for an unknown backend or parameters that do not fit the config.

    Example::

        model = Model(ModelConfig(vocab_size=50), backend="reference", seed=0)
        logits, cache = model.forward(tokens, training=True, rng=np.random.default_rng(0))
    """

    def __init__(
        self,
        config: ModelConfig,
        params: Mapping[str, np.ndarray] | None = None,
        tokenizer: Any = None,
        backend: str = "cpu",
        seed: int = 0,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.config = config
        self.tokenizer = tokenizer
        self.backend = backend
        self._kernels: ModuleType | None = None
        self._tables: dict[str, np.ndarray] | None = None
        self._members: list[Model] | None = None
        if params is None:
            params = init_params(config, seed)
        problem = _params_problem(config, params, float32_only=False)
        if problem:
            raise ConfigError(f"parameters do not fit the model config: {problem}")
        self.params: dict[str, np.ndarray] = dict(params)

    # ------------------------------------------------------------------ plumbing

    @property
    def kernels(self) -> ModuleType:
        """The backend's kernel module (imported on first use)."""
        if self._kernels is None:
            self._kernels = get_backend(self.backend)
        return self._kernels

    def clear_cache(self) -> None:
        """Forget the folded inference tables; call after changing ``params`` in place."""
        self._tables = None
        self._members = None

    def members(self) -> list[Model]:
        """The recurrent models whose logits are averaged, each over its own weights (the
        arrays are shared, not copied), without the n-gram head; ``[self]`` for a single
        model without one."""
        if self.config.members == 1 and not self.config.ngrams:
            return [self]
        if self._members is None:
            cfg = dataclasses.replace(self.config, members=1, ngrams=0)
            self._members = [
                Model(
                    cfg,
                    {n: self.params[member_name(k, n)] for n in expected_shapes(cfg)},
                    tokenizer=self.tokenizer,
                    backend=self.backend,
                )  # fmt: skip
                for k in range(self.config.members)
            ]
        return self._members

    @property
    def dtype(self) -> np.dtype:
        return self.params["embedding"].dtype

    def encode(self, texts: Any) -> TokenIds:
        """Tokenize ``texts`` (an Arrow string array) and keep the last ``max_len`` tokens.

        Raises ConfigError when the model has no tokenizer.

        Example: ``tokens = model.encode(pa.array(["great film", "dull"]))``.
        """
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer: cannot encode text")
        return self.tokenizer.encode(texts).truncate(self.config.max_len)

    # ------------------------------------------------------------------ training path

    def forward(
        self,
        tokens: TokenIds,
        training: bool,
        rng: np.random.Generator | None = None,
        input_scale: np.ndarray | None = None,
    ) -> tuple[np.ndarray, _ForwardCache | None]:
        """Logits for every sequence, and (when ``training``) what ``backward`` needs.

        Parameters: ``tokens`` already truncated to ``max_len``; ``training`` enables dropout and
        the cache; ``rng`` draws the dropout masks (required when training with dropout > 0);
        ``input_scale`` float32[nnz] multiplies each token's embedding (``backward`` then
        returns its gradient as ``"input_scale"``: ``pipeline.explain``).

        Returns ``(logits [n, C'], cache)``; ``cache`` is None unless ``training``.

        Example: ``logits, _ = model.forward(tokens, training=False)``.
        """
        cfg, k, p = self.config, self.kernels, self.params
        if cfg.members > 1 or cfg.ngrams:
            raise ConfigError("only a recurrent model has a training pass: use members()")
        hs, enc = encoder_forward(cfg, p, k, tokens, training, rng, input_scale)
        offsets = tokens.offsets
        feats = np.concatenate(
            [
                k.pool_forward(hs[d], offsets, mode, reverse=d == "bwd")
                for d in cfg.directions
                for mode in cfg.modes
            ],
            axis=1,
        )  # (n, F)
        feat_mask = None
        if training and cfg.dropout > 0:
            feat_mask = dropout_mask(rng, feats.shape, cfg.dropout, feats.dtype)
            feats = feats * feat_mask
        logits = _dense(feats, p["out.W"], p["out.b"])  # (n, C'), row by row
        if not training:
            return logits, None
        return logits, _ForwardCache(enc, feats, feat_mask)

    def backward(
        self,
        cache: _ForwardCache,
        dlogits: np.ndarray,
        sparse_embedding: bool = False,
        weights: bool = True,
    ) -> dict[str, Any]:
        """Gradients of every parameter (same keys and shapes) given dL/dlogits [n, C'].

        With ``sparse_embedding`` the embedding's gradient is a ``pipeline.optim.RowGrad``
        (the batch's distinct ids but padding, and their rows), which the optimizers and
        ``clip_global_norm`` take as they take the dense array, for less memory traffic.
        ``weights`` False returns the embedding's gradient only, or with an ``input_scale``
        in forward only that scale's (``pipeline.explain``): the recurrent weights'
        products are skipped where the backend can.

        Example::

            logits, cache = model.forward(tokens, training=True, rng=rng)
            grads = model.backward(cache, dlogits)
        """
        cfg, k, p, enc = self.config, self.kernels, self.params, cache.encoder
        H, dirs = cfg.hidden_dim, cfg.directions
        dlogits = np.asarray(dlogits, dtype=self.dtype)
        grads: dict[str, np.ndarray] = {}
        if weights:
            grads["out.W"], grads["out.b"] = dlogits.T @ cache.feats, dlogits.sum(axis=0)
        dfeats = dlogits @ p["out.W"]  # (n, F)
        if cache.feat_mask is not None:
            dfeats *= cache.feat_mask
        # split the features back per direction and mode, in forward's order
        dhs: dict[str, np.ndarray | None] = {d: None for d in dirs}
        # the final state's and the maxima's gradients go to the kernels as they are, [n, H]
        # each: no dense [nnz, H] array (and its zero fill) for them
        picked: dict[str, dict[str, np.ndarray]] = {"last": {}, "max": {}}
        for di, d in enumerate(dirs):
            for m, mode in enumerate(cfg.modes):
                col = (di * len(cfg.modes) + m) * H
                part = np.ascontiguousarray(dfeats[:, col : col + H])
                if mode in picked:
                    picked[mode][d] = part
                else:  # mean: every token's row
                    dhs[d] = k.pool_backward(part, enc.hs[d], enc.offsets, mode, reverse=d == "bwd")
        grads.update(encoder_backward(cfg, p, k, enc, dhs, picked["last"], sparse_embedding,
                                      weights, maxes=picked["max"]))  # fmt: skip
        as_rows = {"embedding"} if sparse_embedding else set()  # already a RowGrad
        out = {
            name: grads[name] if name in as_rows else np.ascontiguousarray(grads[name], self.dtype)
            for name in p
            if name in grads
        }
        if "input_scale" in grads:
            out["input_scale"] = grads["input_scale"]
        return out

    def loss_and_grads(
        self,
        tokens: TokenIds,
        y: np.ndarray,
        class_weights: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        sparse_embedding: bool = False,
    ) -> tuple[float, dict[str, Any]]:
        """Mean cross-entropy over the batch and the gradient of every parameter.

        Binary models use binary cross-entropy with logits (computed stably), others softmax
        cross-entropy. With ``class_weights`` (float[C]) each row counts ``w[y_i]`` and the loss
        is the weighted mean sum(w_i * l_i) / sum(w_i), as in PyTorch.

        Parameters: ``tokens`` the batch; ``y`` int class indices [n]; ``rng`` for dropout;
        ``sparse_embedding`` as in ``backward`` (the trainer's choice).

        Example: ``loss, grads = model.loss_and_grads(batch, y, rng=rng)``.
        """
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (len(tokens),):
            raise ValueError(f"y must have one label per sequence ({len(tokens)}), got {y.shape}")
        logits, cache = self.forward(tokens, training=True, rng=rng)
        per_row, dz = cross_entropy(logits, y)
        w = np.ones(y.size) if class_weights is None else np.asarray(class_weights, np.float64)[y]
        total = w.sum()
        loss = float((w * per_row).sum() / total)
        dlogits = dz * (w / total)[:, None]
        return loss, self.backward(cache, dlogits, sparse_embedding)

    # ------------------------------------------------------------------ inference

    def _folded_tables(self) -> dict[str, np.ndarray]:
        if self._tables is None:
            p, cfg = self.params, self.config
            self._tables = {
                d: self.kernels.fold_table(
                    cfg.cell,
                    p["embedding"],
                    p[f"l0.{d}.W_ih"],
                    p[f"l0.{d}.b_ih"],
                    p[f"l0.{d}.b_hh"],
                )
                for d in cfg.directions
            }
            if self.backend == "cuda":
                # keep the tables on the GPU: copying a [V, G*H] table for every scoring
                # batch (41 MB for an LSTM with V=20002, H=128) would dominate the batch
                from numba import cuda

                self._tables = {d: cuda.to_device(t) for d, t in self._tables.items()}
        return self._tables

    def logits(self, tokens: TokenIds) -> np.ndarray:
        """Inference logits [n, C'] (folded-table fast path for one-layer models); an
        ensemble's, the mean of its members'; plus the n-gram head's, if any."""
        cfg, p = self.config, self.params
        if cfg.members > 1 or cfg.ngrams:
            parts = [m.logits(tokens).astype(np.float64) for m in self.members()]
            z = sum(parts) / len(parts)
            if cfg.ngrams:
                feats = ngrams.features(tokens, cfg.ngrams, cfg.ngram_bits)
                z += ngrams.head_logits(feats, p["ngram.W"], p["ngram.b"], cfg.ngram_scale)
            return z.astype(self.dtype)
        if cfg.num_layers != 1:
            return self.forward(tokens, training=False)[0]
        tables = self._folded_tables()
        feats = np.concatenate(
            [
                self.kernels.layer_infer(
                    cfg.cell,
                    tables[d],
                    tokens.ids,
                    tokens.offsets,
                    p[f"l0.{d}.W_hh"],
                    p[f"l0.{d}.b_hh"],
                    d == "bwd",
                    cfg.modes,
                )
                for d in cfg.directions
            ],
            axis=1,
        )
        return _dense(feats, p["out.W"], p["out.b"])

    def predict_proba(self, tokens: TokenIds, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities float32 [n, C], rows in input order.

        Sequences are processed in batches of similar length. For two classes column 1 is the
        positive class (the sigmoid of the single logit). ``tokens`` should already be
        truncated (``model.encode`` does it).

        Raises RunError if the result is not finite (weights that overflow).

        Example: ``probs = model.predict_proba(model.encode(texts))``.
        """
        n = len(tokens)
        out = np.zeros((n, len(self.config.classes)), dtype=np.float32)
        for idx in sorted_batches(tokens.lengths, batch_size):
            out[idx] = probabilities(self.logits(tokens.take(idx)), self.config.temperature)
        if not np.all(np.isfinite(out)):
            raise RunError(
                "the model produced probabilities that are not finite: its weights are broken "
                "(retrain it, or check where the model directory came from)"
            )
        return out

    def predict_logits(self, tokens: TokenIds, batch_size: int = 1024) -> np.ndarray:
        """Raw logits float32 [n, C'] in input order, before the temperature (C' = 1 for a
        binary model). ``probabilities(logits, T)`` turns them into ``predict_proba``'s.

        Example: ``z = model.predict_logits(model.encode(texts))``.
        """
        out = np.zeros((len(tokens), self.config.num_outputs), dtype=np.float32)
        for idx in sorted_batches(tokens.lengths, batch_size):
            out[idx] = self.logits(tokens.take(idx))
        return out

    # ------------------------------------------------------------------ artifact

    def fingerprint(self) -> str:
        """sha256 hex digest of the config, the vocabulary and every weight's bytes."""
        h = hashlib.sha256()
        h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        if self.tokenizer is not None:
            h.update(json.dumps(self.tokenizer.to_config(), sort_keys=True).encode())
            # the words themselves: a changed vocabulary changes every prediction
            h.update("\n".join(self.tokenizer.words).encode())
        for name in sorted(self.params):
            a = np.ascontiguousarray(self.params[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def save(
        self,
        directory: str | Path,
        training: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, bytes | str] | None = None,
    ) -> Path:
        """Write the model directory atomically: a failed save leaves nothing behind.

        Parameters: ``directory`` the final path; ``training`` and ``metrics`` JSON-ready dicts
        recorded in ``config.json``; ``extra_files`` more files (name -> content) written into
        the same directory, e.g. ``metrics.json``, ``history.csv``.

        Returns the directory. Raises ConfigError when ``directory`` exists and is not an
        rnnpipe model directory (only a model is ever replaced), when the model has no
        tokenizer or the parameters are not float32; OutputError when it cannot be written.

        Example: ``model.save("runs/imdb", metrics={"accuracy": 0.88})``.
        """
        from pipeline import io

        check_model_target(directory)
        if self.tokenizer is None:
            raise ConfigError("cannot save a model without its tokenizer")
        problem = _params_problem(self.config, self.params, float32_only=True)
        if problem:
            raise ConfigError(f"cannot save: {problem}")
        config = {
            "format_version": FORMAT_VERSION,
            **self.config.to_dict(),
            "tokenizer": self.tokenizer.to_config(),
            "training": dict(training or {}),
            "metrics": dict(metrics or {}),
        }
        directory = Path(directory)
        with io.atomic_dir(directory) as tmp:
            tmp = Path(tmp)
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
            self.tokenizer.save(tmp / VOCAB_FILE)
            np.savez(
                tmp / WEIGHTS_FILE, **{k: np.ascontiguousarray(v) for k, v in self.params.items()}
            )
            for name, content in (extra_files or {}).items():
                target = tmp / name
                if isinstance(content, str):
                    target.write_text(content)
                else:
                    target.write_bytes(content)
        return directory

    @classmethod
    def load(cls, directory: str | Path, backend: str = "cpu") -> Model:
        """Load and validate a model directory written by ``save``.

        Checks the format version, the config, the vocabulary size, and that the weights hold
        exactly the expected names, each float32, of the expected shape, all finite.

        Raises ModelFormatError (one line naming the directory and the problem) for anything
        wrong or missing.

        Example: ``model = Model.load("model/", backend="cpu")``.
        """
        from pipeline.text import Tokenizer

        directory = Path(directory)

        def fail(what: str) -> ModelFormatError:
            return ModelFormatError(f"{directory}: {what}")

        if not directory.is_dir():
            raise fail("not a model directory (it does not exist or is not a directory)")
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise fail(f"not a model directory (no {CONFIG_FILE})")
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(f"{CONFIG_FILE} is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise fail(f"{CONFIG_FILE} must hold a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise fail(
                f"model format_version {version!r} is not supported (this rnnpipe reads version "
                f"{FORMAT_VERSION}): retrain or convert the model"
            )
        names = [f.name for f in dataclasses.fields(ModelConfig)]
        try:
            config = ModelConfig.from_dict({n: raw[n] for n in names if n in raw})
        except ConfigError as e:
            raise fail(f"bad model config in {CONFIG_FILE}: {e}") from None

        vocab_path = directory / VOCAB_FILE
        if not vocab_path.is_file():
            raise fail(f"missing {VOCAB_FILE}")
        try:
            tokenizer = Tokenizer.load(vocab_path)
        except (RnnpipeError, OSError, ValueError, KeyError, TypeError) as e:
            raise fail(f"cannot read {VOCAB_FILE}: {e}") from None
        if tokenizer.vocab_size != config.vocab_size:
            raise fail(
                f"{VOCAB_FILE} has {tokenizer.vocab_size} ids but the config says vocab_size "
                f"{config.vocab_size}"
            )

        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise fail(f"missing {WEIGHTS_FILE}")
        try:
            with np.load(weights_path, allow_pickle=False) as npz:
                params = {name: npz[name] for name in npz.files}
        except Exception as e:  # zip, header and pickle errors all mean a broken file
            raise fail(f"cannot read {WEIGHTS_FILE}: {e}") from None
        problem = _params_problem(config, params, float32_only=True)
        if problem:
            raise fail(f"{WEIGHTS_FILE}: {problem}")
        params = {k: np.ascontiguousarray(params[k]) for k in expected_shapes(config)}
        return cls(config, params, tokenizer=tokenizer, backend=backend)


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding an rnnpipe ``config.json`` (a JSON object
    with a ``format_version``), whatever version it is."""
    config = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "format_version" in raw


def check_model_target(directory: str | Path) -> None:
    """ConfigError unless writing a model to ``directory`` destroys nothing but a model: it
    must not exist yet, or be an rnnpipe model directory. Anything else (a folder of notes,
    the training data, a file) is refused; delete it yourself if it should go.

    Example: ``check_model_target("models/imdb")``.
    """
    path = Path(os.path.abspath(os.path.expanduser(str(directory))))
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory: choose another --out")
    if not is_model_dir(path):
        raise ConfigError(
            f"{directory} exists and is not an rnnpipe model directory (no {CONFIG_FILE} with a "
            f"format_version): choose a new --out, or remove it yourself if it should go"
        )


def _params_problem(
    config: ModelConfig, params: Mapping[str, np.ndarray], float32_only: bool
) -> str | None:
    """A one-line description of the first way ``params`` fail to fit ``config``, or None."""
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in params]
    if missing:
        return f"weight {missing[0]!r} is missing"
    extra = sorted(set(params) - set(shapes))
    if extra:
        return f"unexpected weight {extra[0]!r} (not part of this model config)"
    dtype = None
    for name, shape in shapes.items():
        a = params[name]
        if not isinstance(a, np.ndarray):
            return f"weight {name!r} is not an array"
        if a.shape != shape:
            return f"weight {name!r} has shape {list(a.shape)}, expected {list(shape)}"
        allowed = (np.float32,) if float32_only else (np.float32, np.float64)
        if a.dtype not in allowed:
            return f"weight {name!r} is {a.dtype}, expected float32"
        if dtype is not None and a.dtype != dtype:
            return f"weight {name!r} is {a.dtype} while others are {dtype}"
        dtype = a.dtype
        if not np.all(np.isfinite(a)):
            return f"weight {name!r} holds NaN or infinite values"
    return None
