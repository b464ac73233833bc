"""The Ray Data recipe (elmo.ray.Embedder) on a local Ray cluster with two
worker actors, writing one Parquet file per block: every sentence's vectors
bitwise those of `elmo embed --out X.hdf5` on the same corpus."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import ray  # required (python/requirements-test.txt): the test must not skip

import elmo.ray
from test_corpus import embed


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def corpus(n: int):
    words = "the of and to in a is that for it as was with be by on not he this are or".split()
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        k = int(rng.integers(0, 40)) if i % 50 else 0
        lines.append(" ".join(words[j] for j in rng.integers(0, len(words), k)))
    return lines


@pytest.mark.parametrize("layers", ["all", "average"])
def test_ray_blocks_match_elmo_embed(tmp_path, cluster, layers):
    lines = corpus(600)
    text = tmp_path / "c.txt"
    text.write_text("\n".join(lines) + "\n")
    ref = tmp_path / "ref.hdf5"
    r = embed("--input", str(text), "--out", str(ref), f"--{layers}", "--quiet")
    assert r.returncode == 0, r.stderr

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(lines)], override_num_blocks=6)
    ds = ds.map_batches(
        elmo.ray.Embedder,
        fn_constructor_kwargs={"layers": layers},
        concurrency=2,  # two actors, each loading the model once
        num_cpus=1,
        batch_size=64,
    )
    out = tmp_path / "parquet"
    ds.write_parquet(str(out))
    files = sorted(out.glob("*.parquet"))
    assert len(files) >= 2, files  # per-block outputs

    back = ray.data.read_parquet(str(out)).take_all()
    assert sorted(row["id"] for row in back) == list(range(len(lines)))
    with h5py.File(ref, "r") as f:
        index = json.loads(f["sentence_to_index"][0])
        for row in back:
            want = f[str(row["id"])][...]
            got = np.asarray(row["embedding"], dtype=np.float32)
            assert row["n"] == len(lines[row["id"]].split())
            assert got.shape == want.shape, (row["id"], got.shape, want.shape)
            assert np.array_equal(got, want), row["id"]
            assert index[row["text"].strip()] in {str(i) for i, l in enumerate(lines) if l.strip() == row["text"].strip()}


def test_embedder_errors():
    with pytest.raises(elmo.ElmoError):
        elmo.ray.Embedder(layers="elmo")
    e = elmo.ray.Embedder()
    with pytest.raises(elmo.ElmoError):
        e({"sentence": np.array(["a b"])})
    out = e({"text": np.array([], dtype=object)})
    assert out["n"].shape == (0,)
