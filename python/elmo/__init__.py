"""ELMo embeddings from a Rust engine that computes bilm-tf's biLM to float32
rounding of TensorFlow.

* :class:`Model`: the numpy API (``Model().embed([["Hello", "world"]])``).
* :class:`ELMoEmbedding`: the Keras 3 layer (TensorFlow, JAX and PyTorch
  backends), imported on first use so that numpy users need no Keras.
* :mod:`elmo.torch`: ``Elmo``, a PyTorch module in allennlp's shape.
* :mod:`elmo.ray`: ``Embedder``, a Ray Data callable class for corpora.
* :func:`convert`: bilm-tf HDF5 weights or TensorFlow checkpoints to a model file.

Every error of the engine raises :class:`ElmoError`, a ``ValueError``.
"""

from ._elmo import ElmoError, Model, Vocab, __version__, convert, devices

__all__ = ["ELMoEmbedding", "ElmoError", "Model", "Vocab", "__version__", "convert", "devices"]


def __getattr__(name: str):
    # The Keras layer imports Keras (and its backend) only when asked for.
    if name == "ELMoEmbedding":
        from .keras import ELMoEmbedding

        return ELMoEmbedding
    raise AttributeError(f"module 'elmo' has no attribute {name!r}")
