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

import numba
import numpy as np

from pipeline.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "Adam",
    "LRSchedule",
    "Optimizer",
    "SGD",
    "clip_global_norm",
    "default_decay_filter",
    "make_optimizer",
]

SCHEDULES = ("constant", "linear", "cosine")


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
        self.state: dict[str, dict[str, np.ndarray]] = {
            slot: {name: np.zeros_like(p) for name, p in params.items()} for slot in self._slots
        }
        for p in params.values():
            _flat(p)  # fail early on a non-contiguous parameter

    def step(self, grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """Update every bound parameter in place from ``grads`` (same keys and shapes).

        ``lr`` overrides the constructor's rate for this step (the schedule's value).
        Raises ValueError when a gradient is missing or has the wrong shape.
        """
        lr = self.lr if lr is None else float(lr)
        self.step_count += 1
        for name, p in self.params.items():
            g = grads.get(name)
            if g is None or g.shape != p.shape:
                got = None if g is None else g.shape
                raise ValueError(f"gradient for {name!r} is missing or shaped {got}, not {p.shape}")
            g = np.ascontiguousarray(g, dtype=p.dtype)
            decay = 1.0 - lr * self.weight_decay if self.decays[name] else 1.0
            self._update(name, _flat(p), _flat(g), lr, decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float, decay: float) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as flat arrays: ``step`` and ``<slot>/<param name>`` (copies)."""
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        for slot, arrays in self.state.items():
            for name, a in arrays.items():
                out[f"{slot}/{name}"] = a.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a ``state_dict`` from the same optimizer on the same parameters.

        Raises ConfigError when keys, shapes or dtypes do not match (an incompatible
        checkpoint), leaving the current state untouched.
        """
        expected = {"step"} | {f"{s}/{n}" for s in self._slots for n in self.params}
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
        t = self.step_count
        step_size = lr / (1.0 - self.beta1**t)
        bc2_sqrt = math.sqrt(1.0 - self.beta2**t)
        m, v = _flat(self.state["m"][name]), _flat(self.state["v"][name])
        _adam_kernel(p, g, m, v, self.beta1, self.beta2, step_size, bc2_sqrt, self.eps, decay)


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
        _sgd_kernel(p, g, buf, self.momentum, lr, decay, self.step_count == 1)


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


# --------------------------------------------------------------------------- clipping


def clip_global_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the factor is ``max_norm / (norm + 1e-6)``, applied
    only when below 1. Returns the norm before clipping (inf/NaN are returned untouched so the
    caller can stop on a diverged loss). ``max_norm`` <= 0 only measures.

    Example: ``norm = clip_global_norm(grads, 5.0)``.
    """
    total = 0.0
    for g in grads.values():
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))  # BLAS dot: no squared temporary
    norm = math.sqrt(total)
    if max_norm > 0 and math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads.values():
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
