"""The Keras 3 layer on the backend KERAS_BACKEND names (the test script
runs this file under tensorflow, jax and torch): every mode against
TensorFlow's goldens, the mix gradients against TF's, compiled fit/predict,
trainable or frozen, masks, shapes, save/load and bad input."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

import elmo  # noqa: E402
from conftest import VARIANTS, assert_close, golden_batches, record, vocab_and_ids  # noqa: E402
from elmo import ELMoEmbedding  # noqa: E402

BACKEND = keras.backend.backend()


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def grads_of(layer, ids, probe):
    """d sum(layer(ids) * probe) / d (mix weights, gamma) on this backend."""
    if not layer.built:
        layer(ids)
    params = list(layer._mix_weights[:1]) + [layer._gammas[0]]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * probe)
        return [np_(g) for g in tape.gradient(loss, [p.value for p in params])]
    if BACKEND == "jax":
        import jax

        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        def loss(tv):
            out, _ = layer.stateless_call(tv, ntv, ids)
            return (out * probe).sum()

        g = jax.grad(loss)(tv)
        by_id = {id(v): gi for v, gi in zip(layer.trainable_variables, g)}
        return [np.asarray(by_id[id(p)]) for p in params]
    if BACKEND == "torch":
        import torch

        for p in params:
            p.value.grad = None
        loss = (layer(ids) * torch.as_tensor(probe)).sum()
        loss.backward()
        return [p.value.grad.detach().cpu().numpy() for p in params]
    pytest.skip(f"no gradients on backend {BACKEND}")


def make(idx2word, mode, model, v=VARIANTS[0], **kw):
    name, w, gamma, ln, top = v
    return ELMoEmbedding(idx2word, mode, True, model, mix_weights=w, gamma=gamma, layer_norm=ln, top_only=top, **kw)


@pytest.mark.parametrize("gset", ["tiny", "small"])
def test_every_mode_and_the_mix_gradients_match_tensorflow(models, gset):
    m = models[gset]
    p = m.projection_dim
    grads = golden_batches(gset, "grad_batch_")
    for g, gr in zip(golden_batches(gset), grads):
        idx2word, ids = vocab_and_ids(g.tokens())
        lm, lengths = g["lm_embeddings"], g["lengths"]
        real = np.arange(ids.shape[1])[None, :] < lengths[:, None]
        for mode, want in [("word_emb", lm[:, 0, :, :p]), ("lstm_outputs1", lm[:, 1]), ("lstm_outputs2", lm[:, 2])]:
            got = np_(make(idx2word, mode, m)(ids))
            assert got.shape == want.shape
            record(f"keras {mode}", gset, assert_close(f"{g.name} {mode}", got[real], want[real]))
            assert np.all(got[~real] == 0)
        for v in VARIANTS:
            name, top = v[0], v[4]
            got = np_(make(idx2word, "elmo", m, v)(ids))
            record(f"keras elmo ({name})", gset, assert_close(name, got[real], g[name][real]))
            assert np.all(got[~real] == 0)
            layer = make(idx2word, "default", m, v)
            got = np_(layer(ids))
            record(f"keras default ({name}_mean)", gset, assert_close(name, got, g[name + "_mean"]))
            gs = grads_of(layer, ids, gr[f"grad_probe_{name}_mean"])
            if top:
                gw, gg = None, gs[0]
            else:
                gw, gg = gs
                record("keras grad W", gset, assert_close(f"grad W {name}", gw, gr[f"grad_W_{name}_mean"]))
            record("keras grad gamma", gset, assert_close(f"grad gamma {name}", gg, gr[f"grad_gamma_{name}_mean"]))


def test_padding_anywhere_and_lookup_by_key():
    idx2word = {7: "the", 3: "cat", 12: "sat"}
    a = ELMoEmbedding(idx2word, "elmo")
    post = np_(a(np.array([[7, 3, 12, 0, 0]])))
    pre = np_(a(np.array([[0, 0, 7, 3, 12]])))
    mid = np_(a(np.array([[7, 0, 3, 0, 12]])))
    np.testing.assert_allclose(pre[0, 2:], post[0, :3], atol=1e-7)
    np.testing.assert_allclose(mid[0, [0, 2, 4]], post[0, :3], atol=1e-7)
    assert np.all(pre[0, :2] == 0) and np.all(mid[0, [1, 3]] == 0)
    # Same words through the numpy API: ids are looked up by key.
    want = elmo.Model().embed([["the", "cat", "sat"]], "elmo")
    np.testing.assert_allclose(post[0, :3], want[0], atol=1e-6)
    # An id missing from idx2word below the largest key is the unknown word.
    unk = np_(a(np.array([[5]])))
    np.testing.assert_allclose(unk[0], elmo.Model().embed([["<UNK>"]], "elmo")[0], atol=1e-6)
    # Whole-number floats are ids too (Keras may feed floats).
    np.testing.assert_array_equal(np_(a(np.array([[7.0, 3.0, 12.0, 0.0, 0.0]], dtype="float32"))), post)


def test_compiled_fit_moves_the_mix_only_when_trainable():
    idx2word = {i + 1: w for i, w in enumerate("good bad film plot was very".split())}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=(16, 6))
    y = (x == 1).any(axis=1).astype("float32")
    for trainable in (True, False):
        model = keras.Sequential(
            [
                keras.Input(shape=(6,), dtype="int32"),
                ELMoEmbedding(idx2word, "default", trainable),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.05), metrics=["accuracy"])
        before = [np_(w) for w in model.layers[0].weights]
        assert len(before) == 2
        assert len(model.layers[0].trainable_weights) == (2 if trainable else 0)
        hist = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        assert len(hist.history["loss"]) == 2
        after = [np_(w) for w in model.layers[0].weights]
        moved = max(float(np.abs(a - b).max()) for a, b in zip(after, before))
        assert (moved > 1e-4) if trainable else (moved == 0.0), (trainable, moved)
        # Compiled predict gives the eager answer.
        np.testing.assert_allclose(model.predict(x, batch_size=8, verbose=0), np_(model(x)), atol=1e-5)


def test_l2_coef_adds_a_loss():
    layer = ELMoEmbedding({1: "a"}, "elmo", mix_weights=[0.3, -0.7, 1.1], l2_coef=0.01)
    layer(np.array([[1]]))
    assert len(layer.losses) == 1
    np.testing.assert_allclose(np_(layer.losses[0]), 0.01 * (0.09 + 0.49 + 1.21), rtol=1e-5)


def test_mask_zero_makes_downstream_rnns_skip_padding():
    idx2word = {1: "the", 2: "cat", 3: "sat"}
    emb = ELMoEmbedding(idx2word, "elmo", mask_zero=True)
    rnn = keras.layers.LSTM(4, seed=1)
    padded = np_(rnn(emb(np.array([[1, 2, 3, 0, 0]]))))
    short = np_(rnn(emb(np.array([[1, 2, 3]]))))
    np.testing.assert_allclose(padded, short, atol=1e-5)
    m = emb.compute_mask(np.array([[1, 0, 2]]))
    assert np_(m).tolist() == [[True, False, True]]
    assert ELMoEmbedding(idx2word, "elmo").compute_mask(np.array([[1, 0]])) is None
    assert ELMoEmbedding(idx2word, "default", mask_zero=True).compute_mask(np.array([[1, 0]])) is None


def test_output_shapes_without_running():
    layer = ELMoEmbedding({1: "a"}, "default")
    assert layer.compute_output_shape((None, 9)) == (None, 32)
    assert ELMoEmbedding({1: "a"}, "word_emb").compute_output_shape((4, 9)) == (4, 9, 16)
    assert ELMoEmbedding({1: "a"}, "lstm_outputs2").compute_output_shape((4, 9)) == (4, 9, 32)
    two = ELMoEmbedding({1: "a"}, "elmo", num_output_representations=2)
    assert two.compute_output_shape((4, 9)) == [(4, 9, 32), (4, 9, 32)]
    sym = ELMoEmbedding({1: "a"}, "elmo")(keras.Input(shape=(7,), dtype="int32"))
    assert tuple(sym.shape) == (None, 7, 32)
    outs = two(np.array([[1, 0]]))
    assert len(outs) == 2 and tuple(outs[1].shape) == (1, 2, 32)


def test_save_and_load_round_trip(tmp_path, small_model_path):
    idx2word = {3: "the", 1: "cat", 20: "sat"}
    layer = ELMoEmbedding(idx2word, "elmo", True, small_model_path, layer_norm=True, mask_zero=True)
    model = keras.Sequential([keras.Input(shape=(4,), dtype="int32"), layer, keras.layers.GlobalAveragePooling1D()])
    layer._mix_weights[0].assign(np.array([0.5, -0.2, 0.1], dtype="float32"))
    layer._gammas[0].assign(np.array([1.5], dtype="float32"))
    x = np.array([[3, 1, 20, 0], [20, 0, 0, 0]])
    want = np_(model(x))
    path = tmp_path / "m.keras"
    model.save(path)
    back = keras.models.load_model(path)
    np.testing.assert_array_equal(np_(back(x)), want)
    l2 = back.layers[0]
    assert l2.idx2word == idx2word and all(isinstance(k, int) for k in l2.idx2word)
    assert l2.layer_norm and l2.mask_zero and l2.output_mode == "elmo"
    cfg = layer.get_config()
    again = ELMoEmbedding.from_config(cfg)
    assert again.idx2word == idx2word and again.elmo_model._weights_id == layer.elmo_model._weights_id
    # The saved mix fits only a model of the same shape.
    cfg["model"] = None
    with pytest.raises(elmo.ElmoError, match="saved for a model with 3 layers of size 32"):
        ELMoEmbedding.from_config(cfg)


def test_a_saved_model_loads_from_another_directory(tmp_path, small_model_path, monkeypatch):
    import shutil

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(small_model_path, tmp_path / "a" / "m.safetensors")
    monkeypatch.chdir(tmp_path / "a")
    model = keras.Sequential(
        [keras.Input(shape=(3,), dtype="int32"), ELMoEmbedding({1: "a", 2: "b"}, "default", model="m.safetensors")]
    )
    x = np.array([[1, 2, 0]])
    want = np_(model(x))
    model.save(tmp_path / "a" / "m.keras")
    monkeypatch.chdir(tmp_path / "b")
    np.testing.assert_array_equal(np_(keras.models.load_model(tmp_path / "a" / "m.keras")(x)), want)


def test_xla_is_not_picked_for_the_layer_and_dtype_policies_work(monkeypatch):
    layer = ELMoEmbedding({1: "a", 2: "b"}, "elmo")
    model = keras.Sequential([keras.Input(shape=(3,), dtype="int32"), layer, keras.layers.Dense(1)])
    if BACKEND == "tensorflow":
        import types

        import tensorflow as tf

        # jit_compile="auto" picks XLA when TF sees a GPU: pretend it does.
        real = tf.config.list_physical_devices
        gpu = types.SimpleNamespace(name="/physical_device:GPU:0", device_type="GPU")
        monkeypatch.setattr(
            tf.config, "list_physical_devices", lambda kind=None: real(kind) + ([gpu] if kind in (None, "GPU") else [])
        )
        assert layer.supports_jit is False
        model.compile("adam", "mse")
        assert model.jit_compile is False
        monkeypatch.undo()
    else:
        model.compile("adam", "mse")  # jax: XLA with the callback; torch: eager
    x = np.array([[1, 2, 0], [2, 0, 0]])
    model.fit(x, np.zeros((2, 3, 1)), epochs=1, verbose=0)
    assert model.predict(x, verbose=0).shape == (2, 3, 1)
    # A layer under a float16 policy computes and answers in float16.
    want = np_(ELMoEmbedding({1: "a", 2: "b"}, "elmo")(x))
    for policy in ("mixed_float16", "float16"):
        half = ELMoEmbedding({1: "a", 2: "b"}, "elmo", dtype=policy)
        got = half(x)
        assert str(ops.convert_to_numpy(got).dtype) == "float16", policy
        np.testing.assert_allclose(np_(got).astype("float32"), want, atol=1e-2, rtol=1e-2)


def test_bad_input_raises_elmo_error(tmp_path):
    layer = ELMoEmbedding({1: "a", 2: "b"}, "elmo")
    for ids, msg in [
        (np.array([[1, -4]]), "token id -4 at \\(0, 1\\) is negative"),
        (np.array([[1.5, 2.0]]), "whole numbers"),
        (np.array([[np.nan, 2.0]]), "whole numbers"),
        (np.array([[1, 3]]), "token id 3 at \\(0, 1\\) is out of range"),
        (np.array([1, 2]), "2-D"),
        (np.zeros((1, 2, 3), dtype="int64"), "2-D"),
        (np.array([["a", "b"]]), "integers"),
    ]:
        with pytest.raises(elmo.ElmoError, match=msg):
            layer(ids)
    assert np_(ELMoEmbedding({1: "a"}, "elmo", out_of_range="unk")(np.array([[1, 3]]))).shape == (1, 2, 32)
    for kwargs, msg in [
        (dict(idx2word={1: "a"}, output_mode="sideways"), "unknown output mode"),
        (dict(idx2word={1: "a"}, output_mode="lstm_outputs3"), "2 LSTM layers"),
        (dict(idx2word={}, output_mode="elmo"), "no entries"),
        (dict(idx2word={"1": "a"}), "keys must be int"),
        (dict(idx2word={1: 5}), "must be a str"),
        (dict(idx2word=[1, 2]), "pairs"),
        (dict(idx2word={1: "a"}, model=tmp_path / "nope.safetensors"), "No such file"),
        (dict(idx2word={1: "a"}, model=3), "model must be"),
        (dict(idx2word={1: "a"}, mix_weights=[1.0]), "3 layers"),
        (dict(idx2word={1: "a"}, num_output_representations=0), "at least 1"),
        (dict(idx2word={1: "a"}, out_of_range="maybe"), "out_of_range"),
    ]:
        with pytest.raises(elmo.ElmoError, match=msg):
            ELMoEmbedding(**kwargs)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(elmo.ElmoError, match="bad.safetensors"):
        ELMoEmbedding({1: "a"}, model=bad)
    # Still usable afterwards.
    assert np_(layer(np.array([[1, 2]]))).shape == (1, 2, 32)
