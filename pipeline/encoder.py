"""The encoder: embedding and recurrent layers, forward and backward over a kernel backend.

Both the classifier (``pipeline.model``) and the language model that pretrains it
(``pipeline.pretrain``) are this encoder with a head on top: the classifier pools the last
layer's states into one dense layer, the language model predicts each next (and, backward,
each previous) token from every state. Keeping the encoder here means the two train the
very same parameters, which is what lets a pretrained encoder warm-start a classifier.

Parameters (float32, or float64 on the reference backend for gradient checks)::

    embedding            [V, E]        row 0 (padding) stays zero
    l{l}.{fwd|bwd}.W_ih  [G*H, in]     in = E for layer 0, dirs*H above
    l{l}.{fwd|bwd}.W_hh  [G*H, H]
    l{l}.{fwd|bwd}.b_ih  [G*H]
    l{l}.{fwd|bwd}.b_hh  [G*H]

A config is anything with the attributes ``cell``, ``embed_dim``, ``hidden_dim``,
``num_layers``, ``directions``, ``vocab_size`` and the training-only regularisers
``dropout`` (between layers), ``word_dropout``, ``embed_dropout`` and ``weight_drop``
(``ModelConfig`` and ``pretrain.EncoderConfig`` both are).

Example::

    hs, cache = encoder_forward(cfg, params, kernels, tokens, training=True, rng=rng)
    grads = encoder_backward(cfg, params, kernels, cache, dhs, finals)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.kernels import gates
from pipeline.text import PAD_ID, TokenIds

__all__ = [
    "EncoderCache",
    "distinct_ids",
    "dropout_mask",
    "encoder_backward",
    "encoder_forward",
    "encoder_shapes",
    "glorot",
    "init_encoder_params",
    "layer_names",
    "member_name",
    "skip_padding",
]


def layer_names(config: Any) -> Iterator[tuple[int, str, str]]:
    """(layer, direction, name prefix) for every recurrent layer and direction."""
    for layer in range(config.num_layers):
        for direction in config.directions:
            yield layer, direction, f"l{layer}.{direction}"


def member_name(k: int, name: str) -> str:
    """Parameter ``name`` of member ``k`` of an ensemble (of models or of pretrained
    encoders): member 0 keeps the name, member k >= 1 is prefixed ``m<k>.``."""
    return name if k == 0 else f"m{k}.{name}"


def encoder_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """The encoder's parameter names and shapes, in a fixed order.

    Example: ``encoder_shapes(cfg)["l0.fwd.W_hh"] == (4 * cfg.hidden_dim, cfg.hidden_dim)``.
    """
    G, H, E = gates(config.cell), config.hidden_dim, config.embed_dim
    dirs = len(config.directions)
    shapes: dict[str, tuple[int, ...]] = {"embedding": (config.vocab_size, E)}
    for layer, _, prefix in layer_names(config):
        in_dim = E if layer == 0 else dirs * H
        shapes[f"{prefix}.W_ih"] = (G * H, in_dim)
        shapes[f"{prefix}.W_hh"] = (G * H, H)
        shapes[f"{prefix}.b_ih"] = (G * H,)
        shapes[f"{prefix}.b_hh"] = (G * H,)
    return shapes


def glorot(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    """Glorot-uniform float64 [fan_out, fan_in]."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_out, fan_in))


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    # QR of a Gaussian, signs fixed by diag(R) so the result is uniform over orthogonal matrices
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def init_encoder_params(config: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh float64 encoder parameters with Keras' initialisation, drawn from ``rng``.

    Embedding U(-0.05, 0.05) with the pad row zero; ``W_ih`` Glorot-uniform per gate block;
    ``W_hh`` orthogonal per gate block; biases zero except the LSTM forget gate's ``b_ih``
    block, which is 1 (worth points of accuracy on IMDB against PyTorch's defaults).
    """
    G, H = gates(config.cell), config.hidden_dim
    shapes = encoder_shapes(config)
    params: dict[str, np.ndarray] = {}
    emb = rng.uniform(-0.05, 0.05, size=shapes["embedding"])
    emb[PAD_ID] = 0.0
    params["embedding"] = emb
    for _, _, prefix in layer_names(config):
        in_dim = shapes[f"{prefix}.W_ih"][1]
        params[f"{prefix}.W_ih"] = np.concatenate([glorot(rng, H, in_dim) for _ in range(G)])
        params[f"{prefix}.W_hh"] = np.concatenate([_orthogonal(rng, H) for _ in range(G)])
        params[f"{prefix}.b_ih"] = np.zeros(G * H)
        params[f"{prefix}.b_hh"] = np.zeros(G * H)
        if config.cell == "lstm":
            params[f"{prefix}.b_ih"][H : 2 * H] = 1.0  # forget gate: remember by default
    return params


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype) -> np.ndarray:
    """Inverted dropout: kept units are scaled by 1/(1-p) so inference needs no rescaling."""
    return ((rng.random(shape) >= p) / (1.0 - p)).astype(dtype)


def distinct_ids(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct, rows)``: the distinct ids in ascending order, and for each token the
    index of its id in ``distinct`` (``distinct[rows] == ids``). O(V + nnz), no sort."""
    seen = np.zeros(vocab_size, dtype=bool)
    seen[ids] = True
    distinct = np.flatnonzero(seen)
    index = np.empty(vocab_size, dtype=np.int64)
    index[distinct] = np.arange(distinct.size)
    return distinct, index[ids]


def skip_padding(distinct: np.ndarray) -> int:
    """1 when the ascending ``distinct`` ids start with the padding id, else 0."""
    return int(distinct.size > 0 and distinct[0] == PAD_ID)


@dataclass
class EncoderCache:
    """What ``encoder_backward`` needs from one training forward pass."""

    distinct: np.ndarray  # (U,) the batch's distinct ids, ascending: the first layer's rows
    offsets: np.ndarray  # (n+1,) int64
    layer_caches: list[dict[str, Any]]  # per layer: direction -> kernel cache
    input_masks: list[np.ndarray | None]  # per layer > 0: dropout mask on its input
    hs: dict[str, np.ndarray]  # direction -> (nnz, H) states of the last layer
    embed_mask: np.ndarray | None  # (U,) embedding dropout's scale per distinct id
    hh_masks: dict[str, np.ndarray] | None  # "l{l}.{dir}" -> DropConnect mask on W_hh
    scaled: bool = False  # the first layer's inputs had a per-token scale


def encoder_forward(
    config: Any,
    params: dict[str, np.ndarray],
    kernels: ModuleType,
    tokens: TokenIds,
    training: bool,
    rng: np.random.Generator | None = None,
    input_scale: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], EncoderCache | None]:
    """The last layer's state after every token, per direction, and (when ``training``)
    what ``encoder_backward`` needs.

    Parameters: ``tokens`` already truncated; ``training`` turns the regularisers and the
    cache on; ``rng`` draws their masks (required when any of them is > 0);
    ``input_scale`` float32[nnz] multiplies each token's embedding (explanations: a
    review's copies along the integration path), and ``encoder_backward`` then returns
    its gradient as ``"input_scale"``.

    Returns ``(hs, cache)``: ``hs[d]`` float[nnz, H] in token order; cache None unless training.
    """
    cfg, k, p = config, kernels, params
    p_drop = cfg.dropout if training else 0.0
    p_word = cfg.word_dropout if training else 0.0
    p_embed = cfg.embed_dropout if training else 0.0
    p_weight = cfg.weight_drop if training else 0.0
    if max(p_drop, p_word, p_embed, p_weight) > 0 and rng is None:
        raise ValueError("forward(training=True) with dropout needs an rng")
    ids, offsets = tokens.ids, tokens.offsets
    if p_word > 0:  # a dropped occurrence reads the padding row: a zero input
        ids = np.where(rng.random(ids.size) < p_word, PAD_ID, ids).astype(np.int32)
    # The first layer reads each distinct id's embedding row once: its input projection
    # (and, in backward, its two input-side gradient products) then costs one row per
    # distinct id instead of one per token (a batch of 64 IMDB reviews, 30,000 words,
    # last 400 tokens, has 3.9-4.6x as many tokens as distinct ids).
    distinct, rows = distinct_ids(ids, cfg.vocab_size)
    x = p["embedding"][distinct]  # (U, E)
    embed_mask = None
    if p_embed > 0:  # whole words: one scale per distinct id, shared by its occurrences
        embed_mask = dropout_mask(rng, distinct.shape, p_embed, x.dtype)
        x = x * embed_mask[:, None]
    hh_masks: dict[str, np.ndarray] = {}
    layer_caches: list[dict[str, Any]] = []
    input_masks: list[np.ndarray | None] = []
    hs: dict[str, np.ndarray] = {}
    for layer in range(cfg.num_layers):
        if layer > 0:
            mask = dropout_mask(rng, x.shape, p_drop, x.dtype) if p_drop > 0 else None
            if mask is not None:
                x = x * mask
            input_masks.append(mask)
        caches: dict[str, Any] = {}
        hs = {}
        for d in cfg.directions:
            pre = f"l{layer}.{d}"
            W_hh = p[f"{pre}.W_hh"]
            if p_weight > 0:  # DropConnect: this batch runs on a thinned W_hh
                hh_masks[pre] = dropout_mask(rng, W_hh.shape, p_weight, W_hh.dtype)
                W_hh = W_hh * hh_masks[pre]
            hs[d], caches[d] = k.layer_forward(
                cfg.cell,
                x,
                offsets,
                p[f"{pre}.W_ih"],
                W_hh,
                p[f"{pre}.b_ih"],
                p[f"{pre}.b_hh"],
                reverse=d == "bwd",
                training=training,
                rows=rows if layer == 0 else None,
                scale=input_scale if layer == 0 else None,
            )
        layer_caches.append(caches)
        if layer + 1 < cfg.num_layers:  # the next layer's input (nnz, dirs*H)
            x = np.concatenate([hs[d] for d in cfg.directions], axis=1)
    if not training:
        return hs, None
    cache = EncoderCache(
        distinct, offsets, layer_caches, input_masks, hs, embed_mask, hh_masks or None,
        input_scale is not None,
    )  # fmt: skip
    return hs, cache


def encoder_backward(
    config: Any,
    params: dict[str, np.ndarray],
    kernels: ModuleType,
    cache: EncoderCache,
    dhs: dict[str, np.ndarray | None],
    finals: dict[str, np.ndarray | None],
    sparse_embedding: bool = False,
    weights: bool = True,
    maxes: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Gradients of every encoder parameter given, per direction, ``dhs[d]`` = dL/dhs
    float[nnz, H] (or None), ``finals[d]`` = dL/d(final state) float[n, H] and
    ``maxes[d]`` = dL/d(max over the steps) float[n, H] (either missing or None: zero).

    With ``sparse_embedding`` the embedding's gradient is a ``pipeline.optim.RowGrad`` (the
    batch's distinct ids but padding, and their rows), which the optimizers and
    ``clip_global_norm`` take as they take the dense array, for less memory traffic.
    ``weights`` False: the embedding's gradient only (what explanations need), and the
    backend may skip the recurrent weights' products. When forward had an
    ``input_scale``, ``"input_scale"`` holds its gradient, float32[nnz] (and with
    ``weights`` False it is the only gradient returned).
    """
    cfg, k, p = config, kernels, params
    H, dirs = cfg.hidden_dim, cfg.directions
    grads: dict[str, Any] = {}
    for layer in reversed(range(cfg.num_layers)):
        # an explanation's input scales need no embedding gradient
        inputs = layer > 0 or weights or not cache.scaled
        dx = None
        for d in dirs:
            pre = f"l{layer}.{d}"
            out = k.layer_backward(
                cache.layer_caches[layer][d], dhs[d], finals.get(d), weights=weights,
                inputs=inputs, d_max=(maxes or {}).get(d),
            )  # fmt: skip
            dx_d, dW_ih, dW_hh, db_ih, db_hh = out[:5]
            dx = dx_d if dx is None else dx + dx_d  # both directions read the same input
            if layer == 0 and cache.scaled:  # so do their scales
                ds = grads.get("input_scale")
                grads["input_scale"] = out[5] if ds is None else ds + out[5]
            if not weights:
                continue
            if cache.hh_masks is not None:
                dW_hh = dW_hh * cache.hh_masks[pre]
            grads[f"{pre}.W_ih"], grads[f"{pre}.W_hh"] = dW_ih, dW_hh
            grads[f"{pre}.b_ih"], grads[f"{pre}.b_hh"] = db_ih, db_hh
        if layer > 0:
            mask = cache.input_masks[layer - 1]
            if mask is not None:
                dx *= mask
            dhs = {d: np.ascontiguousarray(dx[:, j * H : (j + 1) * H]) for j, d in enumerate(dirs)}
            finals, maxes = {}, None
            continue
        if not inputs:
            break
        if cache.embed_mask is not None:
            dx *= cache.embed_mask[:, None]
        dtype = p["embedding"].dtype
        if sparse_embedding:  # dx (U, E): already summed over each distinct id's tokens
            from pipeline.optim import RowGrad

            # padding never learns; ids ascend, so it can only be the first row, and
            # slicing it off keeps dx's rows in place (a mask copied 1.4 MB a batch)
            skip = skip_padding(cache.distinct)
            values = np.ascontiguousarray(dx[skip:], dtype=dtype)
            grads["embedding"] = RowGrad(cache.distinct[skip:], values, p["embedding"].shape)
        else:
            demb = np.zeros_like(p["embedding"])
            demb[cache.distinct] = dx
            demb[PAD_ID] = 0.0  # padding never learns
            grads["embedding"] = demb
    return grads
