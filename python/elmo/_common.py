"""What the Keras layer and the PyTorch module share: the model a `model`
argument names, token ids checked before they reach the engine, and the
output modes."""

from __future__ import annotations

import os
import re
from typing import Any, Optional, Union

import numpy as np

from ._elmo import ElmoError, Model

ModelLike = Union[None, str, "os.PathLike[str]", Model]

_LSTM_MODE = re.compile(r"lstm_outputs([1-9][0-9]*)")


def resolve_model(model: ModelLike) -> Model:
    """The :class:`Model` a ``model`` argument names: None is the bundled
    tiny model; a path is loaded once per process (``Model`` shares its
    mapping); a ``Model`` is used as it is."""
    if model is None:
        return Model()
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return Model(os.fspath(model))
    raise ElmoError(f"model must be None, a path or an elmo.Model, got {type(model).__name__}")


def model_path(model: Model) -> Optional[str]:
    """What a saved config records for a model: its absolute path (a saved
    model is loaded from other working directories), None if bundled."""
    return None if model.path is None else os.path.abspath(os.fspath(model.path))


def check_mode(mode: Any, n_layers: int) -> str:
    """``mode`` if the model has it, else an :class:`ElmoError`."""
    if not isinstance(mode, str):
        raise ElmoError(f"output_mode must be a str, got {type(mode).__name__}")
    if mode in ("default", "word_emb", "elmo"):
        return mode
    m = _LSTM_MODE.fullmatch(mode)
    if m is None:
        raise ElmoError(
            f"unknown output mode {mode!r}: expected default, word_emb, lstm_outputs1, lstm_outputs2 or elmo"
        )
    if int(m.group(1)) >= n_layers:
        raise ElmoError(f"{mode}: the model has {n_layers - 1} LSTM layers")
    return mode


def lstm_layer(mode: str) -> Optional[int]:
    """K for ``lstm_outputsK``, else None."""
    m = _LSTM_MODE.fullmatch(mode)
    return int(m.group(1)) if m else None


def as_ids(ids: Any, ndim: int = 2, what: str = "token ids") -> np.ndarray:
    """``ids`` as a C-contiguous int64 array of ``ndim`` dimensions.

    Integer arrays pass; float arrays (Keras may feed ids as floats) must hold
    whole numbers; anything else (bool, str, object, NaN, 1.5, 2**63) is an
    :class:`ElmoError` that says where.
    """
    a = np.asarray(ids)
    if a.ndim != ndim:
        dims = "(batch, max_len)" if ndim == 2 else "(batch, max_len, chars)"
        raise ElmoError(f"input: {what} must be {ndim}-D {dims}, got shape {a.shape}")
    kind = a.dtype.kind
    if kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ElmoError(f"input: {what} must be whole numbers, got {a[at]} at {at}")
        if a.size and np.abs(a).max() >= 2.0**63:
            raise ElmoError(f"input: {what} must fit in int64")
    elif kind == "u":
        if a.size and a.max() > np.iinfo(np.int64).max:
            raise ElmoError(f"input: {what} must fit in int64")
    elif kind != "i":
        raise ElmoError(f"input: {what} must be integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)
