"""Embedding a corpus on a Ray cluster with Ray Data.

`Embedder` is a callable class for `ray.data.Dataset.map_batches`: each
actor loads the model once (memory-mapped, so actors on one machine share
its pages) and embeds the batches it is given. Each sentence's vectors are
bitwise those `elmo embed --out X.hdf5` writes for it: results do not depend
on the batch a sentence is in, nor on the thread count.

    import ray, elmo.ray

    ray.init()
    ds = ray.data.read_text("corpus.txt")             # a column "text"
    ds = ds.map_batches(
        elmo.ray.Embedder,
        fn_constructor_kwargs={"model": "model.safetensors", "layers": "all"},
        concurrency=4,                                 # actors
        num_cpus=2,                                    # threads per actor
        batch_size=256,
    )
    ds.write_parquet("embeddings/")                    # one file per block

Rows keep every input column (an `id` column, say) and gain `n` (tokens)
and `embedding`: float32 `(L + 1, n, 2P)` for `layers="all"`, `(n, 2P)` for
`"top"` and `"average"` (the layout of allennlp's `elmo` command and of
`elmo embed`'s HDF5 output). Sentences are split on whitespace, as there.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ._common import ElmoError

_LAYERS = ("all", "top", "average")


class Embedder:
    """A Ray Data callable class: `ds.map_batches(Embedder, fn_constructor_kwargs=...)`.

    Args:
        model: a converted model file; `None` for the bundled tiny model.
        layers: `"all"`, `"top"` or `"average"`.
        column: the column holding the sentences (text, split on whitespace).
        threads: worker threads of this actor's model (default: the cores
            Ray gives the actor, else all).
        device: `"cpu"` or `"cuda[:N]"`.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        layers: str = "all",
        column: str = "text",
        threads: Optional[int] = None,
        device: str = "cpu",
    ) -> None:
        from . import Model

        if layers not in _LAYERS:
            raise ElmoError(f"layers must be one of {_LAYERS}, got {layers!r}")
        if threads is None:
            threads = _ray_cpus()
        self.model = Model(model, device=device, threads=threads)
        self.layers = layers
        self.column = column

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        if self.column not in batch:
            raise ElmoError(f"the batch has no column {self.column!r} (columns: {sorted(batch)})")
        texts = [str(t) for t in batch[self.column]]
        sentences = [t.split() for t in texts]
        out = dict(batch)
        if not sentences:
            out["n"] = np.zeros(0, np.int32)
            out["embedding"] = np.empty(0, dtype=object)
            return out
        layers, lengths = self.model.embed(sentences, "all", return_lengths=True)  # (B, K, T, 2P)
        vectors = []
        for b, n in enumerate(lengths):
            v = layers[b, :, :n]  # (K, n, 2P)
            if self.layers == "top":
                v = v[-1]
            elif self.layers == "average":
                # As numpy's mean over the layer axis, and `elmo embed --average`.
                v = v.mean(axis=0, dtype=np.float32)
            vectors.append(np.ascontiguousarray(v, dtype=np.float32))
        out["n"] = np.asarray(lengths, dtype=np.int32)
        embedding = np.empty(len(vectors), dtype=object)
        embedding[:] = vectors
        out["embedding"] = embedding
        return out


def _ray_cpus() -> Optional[int]:
    """The CPUs Ray assigned to this actor, when running in one."""
    try:
        import ray

        ids = ray.get_runtime_context().get_assigned_resources()
        cpus = int(ids.get("CPU", 0))
        return cpus if cpus > 0 else None
    except Exception:  # not in a Ray worker, or an older Ray
        return None
