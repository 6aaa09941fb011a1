"""Optimizers (Adam, SGD with momentum), gradient clipping and the learning-rate schedule.

Parameters live in a flat ``dict[str, np.ndarray]`` (see ``pipeline.model``); an optimizer
binds to that dict and updates its arrays in place, one fused Numba pass per array, so the
20,000-row embedding never costs a temporary. Adam follows ``torch.optim.Adam`` / ``AdamW``
exactly (bias correction, eps added after the square root); weight decay is decoupled and by
default skips biases and the embedding.

The optimizer state is a flat dict of arrays (``state_dict``), so a checkpoint stores it in an
``.npz`` and ``load_state_dict`` resumes bit for bit.

Example::

    opt = Adam(model.params, lr=1e-3)
    sched = LRSchedule(1e-3, warmup_steps=100, kind="cosine", total_steps=10_000)
    loss, grads = model.loss_and_grads(tokens, y)
    clip_global_norm(grads, 5.0)
    opt.step(grads, lr=sched(opt.step_count))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numba
import numpy as np

from pipeline.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "Adam",
    "LRSchedule",
    "Optimizer",
    "RowGrad",
    "SGD",
    "WeightAverage",
    "clip_global_norm",
    "default_decay_filter",
    "make_optimizer",
]

from pipeline.config import SCHEDULES


def default_decay_filter(name: str, param: np.ndarray) -> bool:
    """True for parameters that weight decay applies to: matrices, except the embedding.

    Biases and the embedding are left alone, as in the usual AdamW recipe (decaying rare
    words' embeddings toward zero only because they are rarely seen is unhelpful).
    """
    return param.ndim >= 2 and name != "embedding"


# --------------------------------------------------------------------------- kernels


# error_model="numpy" drops Python's division-by-zero check, which stops LLVM vectorising
# the loop; the arithmetic (and so every bit of the result) is unchanged.
@numba.njit(cache=True, parallel=True, error_model="numpy")
def _adam_kernel(p, g, m, v, beta1, beta2, step_size, bc2_sqrt, eps, decay):  # pragma: no cover
    # Elementwise, so splitting over threads cannot change the result. Arithmetic runs in the
    # parameters' dtype and in torch's order: decay, m lerp, v, then p -= step * m / denom.
    dt = p.dtype.type
    one_b1, b2, one_b2 = dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2)
    ss, bc, e, dc = dt(step_size), dt(bc2_sqrt), dt(eps), dt(decay)
    for k in numba.prange(p.size):
        gk = g[k]
        mk = m[k] + one_b1 * (gk - m[k])
        vk = v[k] * b2 + one_b2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] = p[k] * dc - ss * (mk / (np.sqrt(vk) / bc + e))


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _adam_rows_kernel(  # pragma: no cover
    p, where, values, m, v, beta1, beta2, step_size, bc2_sqrt, eps, decay
):
    # _adam_kernel on (R, C) arrays whose gradient is values[where[r]] for row r, or zero
    # where where[r] < 0: the same arithmetic on every element, so the same bits as the
    # dense update with a zero-filled gradient, without building or reading that gradient.
    dt = p.dtype.type
    one_b1, b2, one_b2 = dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2)
    ss, bc, e, dc = dt(step_size), dt(bc2_sqrt), dt(eps), dt(decay)
    zero = dt(0.0)
    for r in numba.prange(p.shape[0]):
        w = where[r]
        for c in range(p.shape[1]):
            gk = values[w, c] if w >= 0 else zero
            mk = m[r, c] + one_b1 * (gk - m[r, c])
            vk = v[r, c] * b2 + one_b2 * gk * gk
            m[r, c] = mk
            v[r, c] = vk
            p[r, c] = p[r, c] * dc - ss * (mk / (np.sqrt(vk) / bc + e))


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _sgd_rows_kernel(p, where, values, buf, momentum, lr, decay, first):  # pragma: no cover
    # _sgd_kernel on (R, C) arrays with a row-sparse gradient, as _adam_rows_kernel
    dt = p.dtype.type
    mu, step, dc = dt(momentum), dt(lr), dt(decay)
    zero = dt(0.0)
    for r in numba.prange(p.shape[0]):
        w = where[r]
        for c in range(p.shape[1]):
            gk = values[w, c] if w >= 0 else zero
            b = gk if first else mu * buf[r, c] + gk
            buf[r, c] = b
            p[r, c] = p[r, c] * dc - step * b


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _sgd_kernel(p, g, buf, momentum, lr, decay, first):  # pragma: no cover
    dt = p.dtype.type
    mu, step, dc = dt(momentum), dt(lr), dt(decay)
    for k in numba.prange(p.size):
        # torch initialises the momentum buffer with the first gradient itself
        bk = g[k] if first else buf[k] * mu + g[k]
        buf[k] = bk
        p[k] = p[k] * dc - step * bk


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view (never a copy) so kernels write through to the parameter."""
    if not a.flags.c_contiguous:
        raise ValueError("optimizer arrays must be C-contiguous")
    return a.reshape(-1)


# --------------------------------------------------------------------------- row gradients


@dataclass(frozen=True)
class RowGrad:
    """A gradient that is zero outside some rows, as the embedding's is: row ``rows[i]`` of
    the full ``shape`` gradient is ``values[i]``, every other row is zero.

    ``Model.loss_and_grads(..., sparse_embedding=True)`` returns the embedding's gradient
    this way, and ``clip_global_norm`` and the optimizers take it as they take a dense
    array, with the same result as ``dense()`` (bit for bit in the optimizers), without
    writing, reading and scaling a ``[V, E]`` array of mostly zeros every step.

    Example: ``RowGrad(np.array([3, 7]), values, (V, E)).dense()``.
    """

    rows: np.ndarray  # int64[U], distinct, each in [0, shape[0])
    values: np.ndarray  # [U, shape[1]]
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows = np.ascontiguousarray(self.rows, dtype=np.int64)
        values = np.ascontiguousarray(self.values)
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 2 or rows.ndim != 1 or values.shape != (rows.size, shape[1]):
            raise ValueError(
                f"RowGrad: rows [U], values [U, {shape[1:]}] and a 2-D shape, got "
                f"{rows.shape}, {values.shape}, {shape}"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
            raise ValueError(f"RowGrad: rows must lie in [0, {shape[0]})")
        ascending = rows.size < 2 or bool(np.all(rows[1:] > rows[:-1]))  # the model's case
        if not ascending and np.unique(rows).size != rows.size:
            raise ValueError("RowGrad: rows must be distinct")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "shape", shape)

    def dense(self) -> np.ndarray:
        """The full gradient, zeros outside ``rows``."""
        out = np.zeros(self.shape, self.values.dtype)
        out[self.rows] = self.values
        return out

    def where(self) -> np.ndarray:
        """int64[shape[0]]: for each row, its index in ``values``, or -1."""
        out = np.full(self.shape[0], -1, np.int64)
        out[self.rows] = np.arange(self.rows.size)
        return out


# --------------------------------------------------------------------------- optimizers


class Optimizer:
    """Common machinery: the bound parameters, per-parameter state arrays, the step count.

    Subclasses name their state arrays in ``_slots`` and implement ``_update``.
    """

    _slots: tuple[str, ...] = ()

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float,
        weight_decay: float = 0.0,
        decay_filter: Callable[[str, np.ndarray], bool] = default_decay_filter,
    ) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"learning rate must be a positive number, got {lr}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ConfigError(f"weight decay must be >= 0, got {weight_decay}")
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decays = {name: bool(decay_filter(name, p)) for name, p in params.items()}
        self.step_count = 0
        self.updates = dict.fromkeys(params, 0)  # steps each parameter took part in
        self.state: dict[str, dict[str, np.ndarray]] = {
            slot: {name: np.zeros_like(p) for name, p in params.items()} for slot in self._slots
        }
        for p in params.values():
            _flat(p)  # fail early on a non-contiguous parameter

    def step(
        self,
        grads: Mapping[str, np.ndarray | RowGrad],
        lr: float | None = None,
        scales: Mapping[str, float] | None = None,
    ) -> None:
        """Update every bound parameter in place from ``grads`` (same keys and shapes; a
        ``RowGrad`` for a 2-D parameter updates it as its ``dense()`` would).

        ``lr`` overrides the constructor's rate for this step (the schedule's value);
        ``scales`` multiplies it per parameter (discriminative learning rates), and a scale
        of 0 freezes a parameter for the step: neither it nor its state moves, and its
        bias correction counts only the steps it took part in.
        Raises ValueError when a gradient is missing or has the wrong shape.
        """
        lr = self.lr if lr is None else float(lr)
        for name, p in self.params.items():
            g = grads.get(name)
            if g is None or tuple(g.shape) != p.shape:
                got = None if g is None else tuple(g.shape)
                raise ValueError(f"gradient for {name!r} is missing or shaped {got}, not {p.shape}")
        self.step_count += 1
        for name, p in self.params.items():
            scale = 1.0 if scales is None else float(scales.get(name, 1.0))
            if scale == 0.0:
                continue
            self.updates[name] += 1
            g = grads[name]
            param_lr = lr * scale
            decay = 1.0 - param_lr * self.weight_decay if self.decays[name] else 1.0
            if isinstance(g, RowGrad):
                values = np.ascontiguousarray(g.values, dtype=p.dtype)
                _flat(p)  # contiguous, so the 2-D kernels write through
                self._update_rows(name, p, g.where(), values, param_lr, decay)
            else:
                g = np.ascontiguousarray(g, dtype=p.dtype)
                self._update(name, _flat(p), _flat(g), param_lr, decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float, decay: float) -> None:
        raise NotImplementedError

    def _update_rows(self, name, p, where, values, lr, decay) -> None:
        # p (R, C); row r's gradient is values[where[r]], or zero where where[r] < 0
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as flat arrays: ``step`` and ``<slot>/<param name>`` (copies)."""
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        out["updates"] = np.array([self.updates[n] for n in self.params], dtype=np.int64)
        for slot, arrays in self.state.items():
            for name, a in arrays.items():
                out[f"{slot}/{name}"] = a.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a ``state_dict`` from the same optimizer on the same parameters.

        Raises ConfigError when keys, shapes or dtypes do not match (an incompatible
        checkpoint), leaving the current state untouched.
        """
        expected = {"step", "updates"} | {f"{s}/{n}" for s in self._slots for n in self.params}
        if set(state) != expected:
            missing = sorted(expected - set(state))
            extra = sorted(set(state) - expected)
            raise ConfigError(
                f"optimizer state does not match {type(self).__name__} on these parameters "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
        for slot in self._slots:
            for name, p in self.params.items():
                a = state[f"{slot}/{name}"]
                if a.shape != p.shape or a.dtype != p.dtype:
                    raise ConfigError(
                        f"optimizer state {slot}/{name} is {a.dtype}{list(a.shape)}, "
                        f"expected {p.dtype}{list(p.shape)}"
                    )
        for slot in self._slots:
            for name in self.params:
                np.copyto(self.state[slot][name], state[f"{slot}/{name}"])
        self.step_count = int(state["step"])
        counts = np.asarray(state["updates"]).reshape(-1)
        if counts.size != len(self.params):
            raise ConfigError("optimizer state counts the updates of other parameters")
        self.updates = {n: int(c) for n, c in zip(self.params, counts, strict=True)}


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam``; ``weight_decay`` > 0 gives AdamW.

    Per step t, for each parameter p with gradient g::

        p *= 1 - lr*wd                       (decoupled decay, decayed parameters only)
        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
        p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

    Example::

        opt = Adam(params, lr=1e-3, weight_decay=0.01)
        opt.step(grads)
    """

    _slots = ("m", "v")

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_filter: Callable[[str, np.ndarray], bool] = default_decay_filter,
    ) -> None:
        if not all(0 <= b < 1 for b in betas) or not eps > 0:
            raise ConfigError(f"Adam needs 0 <= betas < 1 and eps > 0, got {betas}, {eps}")
        super().__init__(params, lr, weight_decay, decay_filter)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float, decay: float) -> None:
        t = self.updates[name]
        step_size = lr / (1.0 - self.beta1**t)
        bc2_sqrt = math.sqrt(1.0 - self.beta2**t)
        m, v = _flat(self.state["m"][name]), _flat(self.state["v"][name])
        _adam_kernel(p, g, m, v, self.beta1, self.beta2, step_size, bc2_sqrt, self.eps, decay)

    def _update_rows(self, name, p, where, values, lr, decay) -> None:
        t = self.updates[name]
        step_size = lr / (1.0 - self.beta1**t)
        bc2_sqrt = math.sqrt(1.0 - self.beta2**t)
        m, v = self.state["m"][name], self.state["v"][name]
        _adam_rows_kernel(
            p, where, values, m, v, self.beta1, self.beta2, step_size, bc2_sqrt, self.eps, decay
        )


class SGD(Optimizer):
    """SGD with (heavy-ball) momentum, as ``torch.optim.SGD`` with dampening 0.

    ``buf = momentum*buf + g`` (``buf = g`` on the first step), ``p -= lr*buf``; decoupled
    weight decay ``p *= 1 - lr*wd`` first.

    Example::

        opt = SGD(params, lr=0.05, momentum=0.9)
    """

    _slots = ("momentum",)

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        decay_filter: Callable[[str, np.ndarray], bool] = default_decay_filter,
    ) -> None:
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, lr, weight_decay, decay_filter)
        self.momentum = float(momentum)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float, decay: float) -> None:
        buf = _flat(self.state["momentum"][name])
        _sgd_kernel(p, g, buf, self.momentum, lr, decay, self.updates[name] == 1)

    def _update_rows(self, name, p, where, values, lr, decay) -> None:
        buf = self.state["momentum"][name]
        _sgd_rows_kernel(p, where, values, buf, self.momentum, lr, decay, self.updates[name] == 1)


def make_optimizer(
    name: str, params: Mapping[str, np.ndarray], lr: float, weight_decay: float = 0.0
) -> Optimizer:
    """``Adam`` (also ``adamw``) or ``SGD`` by name, with default hyper-parameters otherwise.

    Raises ConfigError for an unknown name.

    Example: ``make_optimizer("adam", model.params, 1e-3)``.
    """
    key = name.lower()
    if key in ("adam", "adamw"):
        return Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "sgd":
        return SGD(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}: expected adam, adamw or sgd")


# --------------------------------------------------------------------------- averaging


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _ema_kernel(avg, p, decay):  # pragma: no cover
    # elementwise, so the thread split cannot change a bit
    dt = avg.dtype.type
    d, one_d = dt(decay), dt(1.0 - decay)
    for k in numba.prange(avg.size):
        avg[k] = avg[k] * d + p[k] * one_d


class WeightAverage:
    """An exponential moving average of the parameters (Polyak averaging), kept beside
    training and used for validation and the saved model: the average of the last few
    hundred steps' weights generalises better than the last step's (Polyak & Juditsky 1992;
    the EMA of Kingma & Ba's Adam paper, section 7.2).

    After step t the average moves by ``decay_t = min(decay, (1 + t) / (10 + t))``, so the
    first steps do not drag a zero or random start along (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``). ``state_dict`` holds everything a
    checkpoint needs to resume bit for bit.

    Example::

        avg = WeightAverage(model.params, decay=0.998)
        opt.step(grads); avg.update(opt.step_count)
        with avg.swapped_in(): probs = model.predict_proba(valid)
    """

    def __init__(self, params: Mapping[str, np.ndarray], decay: float) -> None:
        if not 0 < decay < 1:
            raise ConfigError(f"averaging decay must be in (0, 1), got {decay}")
        self.params = params
        self.decay = float(decay)
        self.average = {name: p.copy() for name, p in params.items()}

    def update(self, step: int) -> None:
        """Move the average toward the parameters after optimizer step ``step`` (1-based)."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for name, p in self.params.items():
            _ema_kernel(_flat(self.average[name]), _flat(p), d)

    def swap(self) -> None:
        """Exchange the parameters' values and the average's, in place (twice undoes it)."""
        for name, p in self.params.items():
            tmp = p.copy()
            np.copyto(p, self.average[name])
            np.copyto(self.average[name], tmp)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: a.copy() for name, a in self.average.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Raises ConfigError when names, shapes or dtypes do not match."""
        if set(state) != set(self.average):
            raise ConfigError("weight average state does not match these parameters")
        for name, a in self.average.items():
            if state[name].shape != a.shape or state[name].dtype != a.dtype:
                raise ConfigError(f"weight average state {name} does not match its parameter")
        for name, a in self.average.items():
            np.copyto(a, state[name])


# --------------------------------------------------------------------------- clipping


def clip_global_norm(grads: Mapping[str, np.ndarray | RowGrad], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the factor is ``max_norm / (norm + 1e-6)``, applied
    only when below 1. Returns the norm before clipping (inf/NaN are returned untouched so the
    caller can stop on a diverged loss). ``max_norm`` <= 0 only measures.

    Example: ``norm = clip_global_norm(grads, 5.0)``.
    """
    arrays = [g.values if isinstance(g, RowGrad) else g for g in grads.values()]
    total = 0.0
    for g in arrays:
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))  # BLAS dot: no squared temporary
    norm = math.sqrt(total)
    if max_norm > 0 and math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in arrays:
                g *= g.dtype.type(coef)
    return norm


# --------------------------------------------------------------------------- schedule


class LRSchedule:
    """Learning rate as a function of the number of steps already taken.

    Linear warm-up from ``lr/warmup_steps`` to ``lr`` over the first ``warmup_steps`` steps,
    then ``constant``, ``linear`` decay or ``cosine`` decay from ``lr`` down to
    ``floor * lr`` at ``total_steps`` (held there afterwards).

    Example::

        sched = LRSchedule(1e-3, warmup_steps=10, kind="linear", total_steps=100)
        sched(0)   # 1e-4
        sched(100) # 0.0
    """

    def __init__(
        self,
        lr: float,
        warmup_steps: int = 0,
        kind: str = "constant",
        total_steps: int = 0,
        floor: float = 0.0,
    ) -> None:
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown lr schedule {kind!r}: expected one of {SCHEDULES}")
        if warmup_steps < 0 or not 0 <= floor <= 1:
            raise ConfigError(
                f"need warmup_steps >= 0 and 0 <= floor <= 1, got {warmup_steps}, {floor}"
            )
        if kind != "constant" and total_steps <= warmup_steps:
            raise ConfigError(
                f"a {kind} schedule needs total_steps ({total_steps}) > "
                f"warmup_steps ({warmup_steps})"
            )
        self.lr, self.warmup_steps, self.kind = float(lr), int(warmup_steps), kind
        self.total_steps, self.floor = int(total_steps), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        low = self.floor * self.lr
        if self.kind == "linear":
            return low + (self.lr - low) * (1.0 - progress)
        return low + (self.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
