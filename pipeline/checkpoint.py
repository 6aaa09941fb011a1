"""Training checkpoints: a whole directory per epoch, swapped in atomically, that
``train(..., resume=True)`` continues from bit for bit.

The checkpoint of a run writing ``MODEL`` is ``MODEL.checkpoint/`` beside it (so the model
can be replaced atomically): ``arrays.npz`` (parameters, the best epoch's, optimizer and
weight-average state), ``vocab.json`` and ``state.json`` (the loop's state, the random
generator's state, and what identifies the run: configs and data fingerprints).

Example::

    write_checkpoint(checkpoint_dir_for("model"), state, arrays, tokenizer)
    state, arrays, tokenizer = read_checkpoint(checkpoint_dir_for("model"))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import io
from pipeline.errors import ConfigError
from pipeline.text import Tokenizer

__all__ = ["CHECKPOINT_VERSION", "LoopState", "check_resumable", "checkpoint_dir_for",
           "read_checkpoint", "read_state_dir", "write_checkpoint"]  # fmt: skip

CHECKPOINT_VERSION = 1
# options that may change between a run and its resumption without changing the result
# of the epochs already done
_RESUMABLE_CHANGES = {"epochs", "patience", "threads"}


def checkpoint_dir_for(out_dir: str | Path) -> Path:
    """Where ``train`` keeps the checkpoint of a run writing ``out_dir``: ``<out_dir>.checkpoint``.

    It sits beside the model directory (not inside) so the model can be replaced atomically.
    """
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoint")


def write_checkpoint(
    ckpt: Path, state: dict[str, Any], arrays: Mapping[str, np.ndarray], tokenizer: Any
) -> None:
    """Write a whole new checkpoint directory, swapped in atomically (never half-written)."""
    with io.atomic_dir(ckpt) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        tokenizer.save(tmp / "vocab.json")
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def read_state_dir(
    path: Path, where: Path | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """``(state, arrays, tokenizer)`` from a directory ``write_checkpoint`` wrote (no pickle);
    ConfigError naming ``where`` (default: ``path``) when any part cannot be read."""
    try:
        state = json.loads((path / "state.json").read_text())
        with np.load(path / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tokenizer = Tokenizer.load(path / "vocab.json")
    except Exception as e:
        raise ConfigError(
            f"{where or path}: unreadable checkpoint ({e}): run without --resume"
        ) from None
    return state, arrays, tokenizer


def read_checkpoint(ckpt: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    if not (ckpt / "state.json").is_file():
        raise ConfigError(f"no checkpoint to resume at {ckpt}: run without --resume")
    state, arrays, tokenizer = read_state_dir(ckpt)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{ckpt}: checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}: "
            f"run without --resume"
        )
    return state, arrays, tokenizer


def check_resumable(ckpt: Path, state: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """ConfigError when the checkpoint was made by a different run than the one asked for."""
    for key, value in now.items():
        saved = state.get(key)
        if key == "train_config":
            saved = {k: v for k, v in (saved or {}).items() if k not in _RESUMABLE_CHANGES}
            value = {k: v for k, v in value.items() if k not in _RESUMABLE_CHANGES}
        if saved != value:
            raise ConfigError(
                f"{ckpt}: the checkpoint was made with a different {key.replace('_', ' ')} "
                f"than this run: run without --resume to start over"
            )


@dataclass
class LoopState:
    """Everything besides parameters and optimizer that a checkpoint must carry."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["best_loss"] = self.best_loss if math.isfinite(self.best_loss) else None
        d["history"] = [
            {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
            for r in self.history
        ]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LoopState:
        names = [f.name for f in dataclasses.fields(cls)]
        state = cls(**{n: d[n] for n in names})
        state.best_loss = math.inf if state.best_loss is None else float(state.best_loss)
        state.history = [
            {k: (math.nan if v is None else v) for k, v in r.items()} for r in state.history
        ]
        return state


def check_outputs(out_dir: Path, ckpt: Path, inputs: Iterable[Path], marker: str) -> None:
    """Before any work: the directory a run writes (``out_dir``, a model or an encoder) and
    its checkpoint ``ckpt`` (recognised by its file ``marker``) may only replace what
    rnnpipe wrote there, must not hold any of ``inputs``, and must be writable.

    Raises ConfigError naming the path and what to do; OutputError when not writable.
    Example: ``check_outputs(out, checkpoint_dir_for(out), files, "state.json")``.
    """
    from pipeline.model import check_model_target

    check_model_target(out_dir)
    if os.path.lexists(ckpt) and not (ckpt.is_dir() and (ckpt / marker).is_file()):
        raise ConfigError(
            f"{ckpt} exists and is not an rnnpipe checkpoint (no {marker}): it is where the "
            f"checkpoint of --out {out_dir.name} goes; move it away or choose another --out"
        )
    for f in inputs:
        for target in (out_dir, ckpt):
            if io.is_inside(f, target):
                raise ConfigError(
                    f"input {f} lies inside {target}, which this run replaces: choose another --out"
                )
    io.check_writable(out_dir)
