"""``ELMoEmbedding``: the Keras 3 layer of the TF Hub ``google/elmo/2`` era,
on the Rust engine, for the TensorFlow, JAX and PyTorch backends.

The biLM is a constant: the engine computes every layer for the token ids
(outside the framework's autodiff: ``tf.numpy_function`` inside a
``tf.function``, ``jax.pure_callback`` under ``jax.jit``, a direct call
otherwise), and the trainable scalar mix is written in ``keras.ops``, so
gradients reach the mix weights and gamma on every backend and any Keras
optimizer trains them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
from keras import ops

from ._common import ModelLike, as_ids, check_mode, lstm_layer, model_path, resolve_model
from ._elmo import ElmoError, Model, Vocab

__all__ = ["ELMoEmbedding"]


def _idx2word_dict(idx2word: Any) -> Dict[int, str]:
    """A dict from int ids to words, from a mapping or (after a config
    round-trip) a list of ``[id, word]`` pairs."""
    if isinstance(idx2word, Mapping):
        items = list(idx2word.items())
    elif isinstance(idx2word, (list, tuple)):
        items = []
        for e in idx2word:
            if not (isinstance(e, (list, tuple)) and len(e) == 2):
                raise ElmoError("idx2word must be a dict of id -> word or a list of [id, word] pairs")
            items.append((e[0], e[1]))
    else:
        raise ElmoError(f"idx2word must be a dict of id -> word, got {type(idx2word).__name__}")
    out: Dict[int, str] = {}
    for k, v in items:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise ElmoError(f"input: idx2word keys must be int ids, got {k!r}")
        out[int(k)] = v
    return out


@keras.saving.register_keras_serializable(package="elmo", name="ELMoEmbedding")
class ELMoEmbedding(keras.layers.Layer):
    """ELMo embeddings of (batch, max_len) token ids; 0 is padding wherever
    it stands, and padded positions are zero in every mode.

    Args:
        idx2word: dict from token id (>= 1) to word. Ids are looked up by key.
            An id missing from it becomes ``unk_token`` when it is not above
            the largest key; a larger id is an error (``out_of_range="unk"``
            maps it to ``unk_token`` too).
        output_mode: ``"default"`` (batch, 2P): the mean of the ``elmo``
            vectors over each row's tokens; ``"word_emb"`` (batch, max_len, P);
            ``"lstm_outputs1"``, ``"lstm_outputs2"`` (batch, max_len, 2P);
            ``"elmo"`` (batch, max_len, 2P): ``gamma * sum_k softmax(w)_k * layer_k``.
        trainable: whether ``fit`` trains the mix weights and gamma (the biLM
            is always frozen).
        model: a model file path, an :class:`elmo.Model`, or None for the
            bundled tiny model. A path is mapped once per process.
        mask_zero: as in ``keras.layers.Embedding``: the layer emits a mask
            (ids != 0) so downstream RNNs skip the padding (not for ``default``).
        layer_norm: normalise each layer before mixing (bilm-tf's ``do_layer_norm``).
        top_only: ``gamma * top layer`` (bilm-tf's ``use_top_only``; no mix weights).
        num_output_representations: independent mixes from one biLM pass; above
            1 the ``elmo`` and ``default`` modes return a list.
        l2_coef: adds ``l2_coef * sum(w ** 2)`` to the model's losses when trainable.
        mix_weights, gamma: initial values (default: the model file's
            ``aggregation/*`` tensors when present, else zeros and 1).
        unk_token: the word for ids missing from ``idx2word``.
        out_of_range: ``"error"`` (default) or ``"unk"`` for ids above the
            largest key.

    Example::

        model = keras.Sequential([
            ELMoEmbedding(idx2word=idx2word, output_mode="default", trainable=True),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(50, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
    """

    def __init__(
        self,
        idx2word: Union[Mapping[int, str], Sequence[Tuple[int, str]]],
        output_mode: str = "default",
        trainable: bool = True,
        model: ModelLike = None,
        *,
        mask_zero: bool = False,
        layer_norm: bool = False,
        top_only: bool = False,
        num_output_representations: int = 1,
        l2_coef: float = 0.0,
        mix_weights: Optional[Sequence[float]] = None,
        gamma: Optional[float] = None,
        unk_token: str = "<UNK>",
        out_of_range: str = "error",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(trainable=trainable, **kwargs)
        if keras.backend.backend() == "tensorflow":
            # `tf.numpy_function` has no XLA kernel: without this, the
            # default `compile(jit_compile="auto")` picks XLA on a GPU host
            # and `fit`/`predict` fail on PyFuncStateless.
            self.supports_jit = False
        self.elmo_model: Model = resolve_model(model)
        self.idx2word: Dict[int, str] = _idx2word_dict(idx2word)
        if out_of_range not in ("error", "unk"):
            raise ElmoError(f"out_of_range must be 'error' or 'unk', got {out_of_range!r}")
        self._vocab = Vocab(self.idx2word, unk_token, out_of_range == "unk")
        self._k = self.elmo_model.n_layers
        self._p = self.elmo_model.projection_dim
        self.output_mode = check_mode(output_mode, self._k)
        if not isinstance(num_output_representations, int) or num_output_representations < 1:
            raise ElmoError("num_output_representations must be an int of at least 1")
        self.num_output_representations = num_output_representations
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.layer_norm = bool(layer_norm)
        self.top_only = bool(top_only)
        self.l2_coef = float(l2_coef)
        self.unk_token = unk_token
        self.out_of_range = out_of_range
        w0, g0 = self.elmo_model.default_mix
        w = np.asarray(w0 if mix_weights is None else mix_weights, dtype=np.float32)
        g = float(g0 if gamma is None else gamma)
        if w.shape != (self._k,):
            raise ElmoError(f"mix_weights have {w.size} values, the model has {self._k} layers")
        if not (np.all(np.isfinite(w)) and np.isfinite(g) and np.isfinite(self.l2_coef)):
            raise ElmoError("mix_weights, gamma and l2_coef must be finite")
        self._w0, self._g0 = [float(x) for x in w], g
        self._mix_weights: List[Any] = []
        self._gammas: List[Any] = []

    # ---- Keras API -------------------------------------------------------

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        # Host data of a dtype no id can have (str, object) would otherwise
        # fail inside the backend's conversion with a message about floats.
        if isinstance(inputs, (np.ndarray, list, tuple)):
            kind = np.asarray(inputs).dtype.kind
            if kind not in "iuf":
                raise ElmoError(f"input: token ids must be integers, got dtype {np.asarray(inputs).dtype}")
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape: Any = None) -> None:
        n = self.num_output_representations
        for i in range(n):
            sfx = "" if n == 1 else f"_{i}"
            if not self.top_only:
                self._mix_weights.append(
                    self.add_weight(
                        name="mix_weights" + sfx,
                        shape=(self._k,),
                        initializer=keras.initializers.Constant(self._w0),
                        trainable=True,
                    )
                )
            self._gammas.append(
                self.add_weight(
                    name="gamma" + sfx,
                    shape=(1,),
                    initializer=keras.initializers.Constant(self._g0),
                    trainable=True,
                )
            )
        self.built = True

    def _shape_of(self, input_shape: Any) -> Tuple[Any, ...]:
        shape = tuple(input_shape)
        if len(shape) != 2:
            raise ElmoError(f"input: token ids must be 2-D (batch, max_len), got shape {shape}")
        b, t = shape
        d = 2 * self._p
        if self.output_mode == "default":
            return (b, d)
        if self.output_mode == "word_emb":
            return (b, t, self._p)
        return (b, t, d)

    def _multi(self) -> bool:
        return self.num_output_representations > 1 and self.output_mode in ("elmo", "default")

    def compute_output_shape(self, input_shape: Any) -> Any:
        s = self._shape_of(input_shape)
        return [s] * self.num_output_representations if self._multi() else s

    def compute_output_spec(self, inputs: Any, mask: Any = None) -> Any:
        # Without running the model (and on torch's meta tensors, which the
        # engine cannot read).
        s = self._shape_of(inputs.shape)
        dt = self.compute_dtype
        if self._multi():
            return [keras.KerasTensor(s, dtype=dt) for _ in range(self.num_output_representations)]
        return keras.KerasTensor(s, dtype=dt)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if not self.mask_zero or self.output_mode == "default":
            return None
        m = ops.not_equal(inputs, 0)
        return [m] * self.num_output_representations if self._multi() else m

    def call(self, inputs: Any) -> Any:
        # (B, K, T, 2P), constant; in the layer's compute dtype (float32
        # unless a dtype policy such as "mixed_float16" is given), as the
        # mix's variables are read in it.
        layers = ops.cast(self._bilm(inputs), self.compute_dtype)
        mode = self.output_mode
        if mode == "word_emb":
            return layers[:, 0, :, : self._p]
        k = lstm_layer(mode)
        if k is not None:
            return layers[:, k]
        mask = ops.cast(ops.not_equal(inputs, 0), self.compute_dtype)  # (B, T)
        outs = []
        for i in range(self.num_output_representations):
            e = self._mix(layers, mask, i)  # (B, T, 2P)
            if mode == "default":
                n = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
                e = ops.sum(e, axis=1) / n  # (B, 2P)
            outs.append(e)
        if self.l2_coef and self.trainable and not self.top_only:
            self.add_loss(self.l2_coef * sum(ops.sum(ops.square(w)) for w in self._mix_weights))
        return outs if self._multi() else outs[0]

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                # Pairs, so the int keys survive JSON.
                "idx2word": [[int(k), v] for k, v in sorted(self.idx2word.items())],
                "output_mode": self.output_mode,
                "model": model_path(self.elmo_model),
                # Checked on load: the saved mix only fits a model of this shape.
                "model_shape": {"n_layers": self._k, "projection_dim": self._p},
                "mask_zero": self.mask_zero,
                "layer_norm": self.layer_norm,
                "top_only": self.top_only,
                "num_output_representations": self.num_output_representations,
                "l2_coef": self.l2_coef,
                "mix_weights": self._w0,
                "gamma": self._g0,
                "unk_token": self.unk_token,
                "out_of_range": self.out_of_range,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "ELMoEmbedding":
        config = dict(config)
        config["idx2word"] = _idx2word_dict(config["idx2word"])
        want = config.pop("model_shape", None)
        layer = cls(**config)
        if want is not None and (want.get("n_layers"), want.get("projection_dim")) != (layer._k, layer._p):
            raise ElmoError(
                f"this layer was saved for a model with {want.get('n_layers')} layers of size "
                f"{want.get('projection_dim')}, but {layer.elmo_model!r} has {layer._k} layers of size {layer._p}"
            )
        return layer

    # ---- the mix ---------------------------------------------------------

    def normalized_weights(self, i: int = 0) -> np.ndarray:
        """``softmax(w)`` of mix ``i``, as numpy."""
        if self.top_only:
            raise ElmoError("a top_only layer has no mix weights")
        return np.asarray(ops.convert_to_numpy(ops.softmax(self._mix_weights[i] + 1.0 / self._k)))

    def _mix(self, layers: Any, mask: Any, i: int) -> Any:
        k = self._k
        gamma = self._gammas[i]
        if self.top_only:
            mixed = layers[:, k - 1]
        else:
            # bilm-tf adds 1/K before the softmax: it cancels, rounding stays TF's.
            s = ops.softmax(self._mix_weights[i] + 1.0 / k)  # (K,)
            x = layers
            if self.layer_norm:
                x = ops.stack([self._norm(layers[:, j], mask) for j in range(k)], axis=1)
            mixed = ops.einsum("k,bktd->btd", s, x)
        return gamma * mixed * mask[:, :, None]

    def _norm(self, x: Any, mask: Any) -> Any:
        """bilm-tf's ``_do_ln``: one mean and variance over the real
        positions of the batch and all dims. x (B, T, D), mask (B, T)."""
        m = mask[:, :, None]
        n = ops.maximum(ops.sum(mask) * (2 * self._p), 1.0)
        mean = ops.sum(x * m) / n
        var = ops.sum(ops.square((x * m - mean) * m)) / n
        return (x - mean) / ops.sqrt(var + 1e-12)

    # ---- the biLM, outside autodiff --------------------------------------

    def _host(self, ids: Any) -> np.ndarray:
        """(B, T) ids -> (B, K, T, 2P) float32 from the engine."""
        return self.elmo_model._layers_for_ids(as_ids(ids), self._vocab)

    def _bilm(self, inputs: Any) -> Any:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.executing_eagerly():
                return tf.convert_to_tensor(self._host(np.asarray(inputs)))
            out = tf.numpy_function(self._host, [inputs], tf.float32, stateful=False, name="elmo_bilm")
            out.set_shape((inputs.shape[0], self._k, inputs.shape[1], 2 * self._p))
            return tf.stop_gradient(out)
        if backend == "jax":
            import jax

            if isinstance(inputs, jax.core.Tracer):
                spec = jax.ShapeDtypeStruct((inputs.shape[0], self._k, inputs.shape[1], 2 * self._p), np.float32)
                out = jax.pure_callback(self._host, spec, inputs, vmap_method="sequential")
                return jax.lax.stop_gradient(out)
            return jax.numpy.asarray(self._host(np.asarray(inputs)))
        if backend == "torch":
            import torch

            if isinstance(inputs, torch.Tensor):
                host = self._host(inputs.detach().cpu().numpy())
                return torch.from_numpy(host).to(inputs.device)
            return torch.from_numpy(self._host(np.asarray(inputs)))
        return self._host(np.asarray(inputs))
