"""ELMoForManyLangs models (HIT-SCIR's multilingual ELMo) converted from the
package's folder format and computed exactly: the package's own outputs
(tests/fixtures/efml/*/golden_NN.npz, stateless) through elmo.Model and the
Keras layer, with the model's own tokenisation (no special case outside it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import elmo
from conftest import FIXTURES, assert_close, record

MODELS = ["chars", "words"]


@pytest.fixture(scope="module")
def efml_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("efml")
    return {n: elmo.Model(elmo.convert(d / f"{n}.safetensors", elmoformanylangs=FIXTURES / "efml" / n)) for n in MODELS}


def goldens(name):
    folder = FIXTURES / "efml" / name
    lines = (folder / "batches.jsonl").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        yield json.loads(line), np.load(folder / f"golden_{i:02d}.npz")


@pytest.mark.parametrize("name", MODELS)
def test_every_layer_matches_the_package(efml_models, name):
    m = efml_models[name]
    for batch, g in goldens(name):
        got = m.embed(batch)  # (B, K, T, 2P)
        for i, s in enumerate(batch):
            want = g[f"emb_{i}"]  # (K, n, 2P)
            record("python efml all layers", name, assert_close(f"{name} {s}", got[i, :, : len(s)], want))
            assert np.all(got[i, :, len(s) :] == 0)


@pytest.mark.parametrize("name", MODELS)
def test_the_keras_layer_runs_the_model_with_its_tokenisation(efml_models, name, tmp_path):
    keras = pytest.importorskip("keras")
    from keras import ops

    from elmo import ELMoEmbedding

    path = tmp_path / f"{name}.safetensors"
    elmo.convert(path, elmoformanylangs=FIXTURES / "efml" / name)
    for batch, g in goldens(name):
        idx: dict = {}
        for s in batch:
            for w in s:
                idx.setdefault(w, len(idx) + 1)
        ids = np.zeros((len(batch), max(len(s) for s in batch)), dtype=np.int64)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = [idx[w] for w in s]
        idx2word = {i: w for w, i in idx.items()}
        layer = ELMoEmbedding(idx2word, "lstm_outputs2", False, str(path))
        got = np.asarray(ops.convert_to_numpy(layer(ids)))
        for b, s in enumerate(batch):
            want = g[f"emb_{b}"][2]
            record(f"keras efml lstm_outputs2 ({keras.backend.backend()})", name, assert_close(name, got[b, : len(s)], want))


def test_bilm_tf_char_ids_are_refused_for_a_lexicon_model(efml_models):
    m = efml_models["chars"]
    ids = np.zeros((1, 2, m.max_characters_per_token), dtype=np.int64)
    ids[0, :, 0] = 259
    with pytest.raises(elmo.ElmoError, match="tokenizes itself"):
        m._layers_for_char_ids(ids)


def test_a_broken_folder_raises_elmo_error(tmp_path):
    import shutil

    d = tmp_path / "words"
    shutil.copytree(FIXTURES / "efml" / "words", d)
    (d / "encoder.pkl").write_bytes((d / "encoder.pkl").read_bytes()[:100])
    with pytest.raises(elmo.ElmoError, match="encoder.pkl"):
        elmo.convert(tmp_path / "x.safetensors", elmoformanylangs=d)
