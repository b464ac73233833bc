"""The numpy API: every output against TensorFlow's goldens, conversion,
zero-copy results, threads, shared mappings and bad input."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import elmo
from conftest import FIXTURES, VARIANTS, Golden, assert_close, golden_batches, record


@pytest.mark.parametrize("gset", ["tiny", "small"])
def test_every_output_matches_tensorflow(models, gset):
    m = models[gset]
    p = m.projection_dim
    for g in golden_batches(gset):
        toks = g.tokens()
        lm, lengths = g["lm_embeddings"], g["lengths"]
        got, n = m.embed(toks, return_lengths=True)
        assert got.dtype == np.float32 and got.shape == lm.shape
        assert list(n) == list(lengths)
        real = np.arange(lm.shape[2])[None, :] < lengths[:, None]  # (B, T)
        for k in range(lm.shape[1]):
            record("all", gset, assert_close(f"{g.name} layer {k}", got[:, k][real], lm[:, k][real]))
            assert np.all(got[:, k][~real] == 0), "padding must be zero"
        record("word_emb", gset, assert_close("word_emb", m.embed(toks, "word_emb")[real], lm[:, 0, :, :p][real]))
        for k in (1, 2):
            got_k = m.embed(toks, f"lstm_outputs{k}")
            record(f"lstm_outputs{k}", gset, assert_close(f"lstm_outputs{k}", got_k[real], lm[:, k][real]))
        for name, w, gamma, ln, top in VARIANTS:
            kw = dict(mix_weights=w, gamma=gamma, layer_norm=ln, top_only=top)
            e = m.embed(toks, "elmo", **kw)
            record("elmo (" + name + ")", gset, assert_close(name, e[real], g[name][real]))
            assert np.all(e[~real] == 0)
            d = m.embed(toks, "default", **kw)
            record("default (" + name + "_mean)", gset, assert_close(name + "_mean", d, g[name + "_mean"]))


def test_tf_checkpoint_and_hdf5_convert_to_the_same_model(tmp_path, small_model_path):
    ck = elmo.convert(tmp_path / "ck.safetensors", tf_checkpoint=FIXTURES / "small" / "hub_checkpoint",
                      options=FIXTURES / "small" / "options.json")
    a, b = elmo.Model(ck), elmo.Model(small_model_path)
    s = [["A", "sentence", "."], ["Two"]]
    np.testing.assert_array_equal(a.embed(s), b.embed(s))
    bf = elmo.convert(tmp_path / "bf.safetensors", options=FIXTURES / "small" / "options.json",
                      hdf5=FIXTURES / "small" / "lm_weights.hdf5", dtype="bf16")
    assert np.abs(elmo.Model(bf).embed(s) - b.embed(s)).max() < 0.05
    with pytest.raises(elmo.ElmoError, match="bf16"):
        elmo.convert(tmp_path / "x.safetensors", tf_checkpoint=FIXTURES / "small" / "hub_checkpoint", dtype="f64")
    with pytest.raises(elmo.ElmoError, match="needs options and hdf5"):
        elmo.convert(tmp_path / "x.safetensors", hdf5=FIXTURES / "small" / "lm_weights.hdf5")


def test_results_are_numpy_arrays_without_a_copy():
    m = elmo.Model()
    x = m.embed([["a", "b"]])
    # The array views the engine's buffer (owned by a Rust object), not a copy.
    assert not x.flags["OWNDATA"] and x.base is not None
    assert x.flags["C_CONTIGUOUS"] and x.flags["WRITEABLE"]
    x[...] = 1.0  # the caller owns it: writing is fine and changes no later result
    assert not np.all(m.embed([["a", "b"]]) == 1.0)


def test_shapes_of_edge_cases():
    m = elmo.Model()
    assert m.embed([]).shape == (0, 3, 0, 32)
    assert m.embed([[]]).shape == (1, 3, 0, 32)
    assert m.embed([[], ["x"]], "default").shape == (2, 32)
    assert np.all(m.embed([[]], "default") == 0)
    assert m.embed((("a",), ("b", "c")), "word_emb").shape == (2, 2, 16)


def test_a_sentence_does_not_depend_on_its_batch():
    m = elmo.Model()
    alone = m.embed([["The", "cat", "sat"]])
    batched = m.embed([["x"] * 7, ["The", "cat", "sat"], []])
    np.testing.assert_array_equal(batched[1, :, :3], alone[0])


def test_threads_share_one_model_and_get_their_own_answers():
    m = elmo.Model(threads=2)
    assert m.threads == 2
    sents = [[f"w{i}", "x" * (i % 9 + 1)] * (i % 5 + 1) for i in range(24)]
    alone = [m.embed([s]) for s in sents]
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda s: m.embed([s]), sents * 3))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, alone[i % len(sents)])


def test_the_gil_is_released_while_the_engine_runs():
    # Another Python thread makes progress while a long embed runs.
    m = elmo.Model(threads=1)
    long = [["token%d" % i for i in range(400)]] * 8
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(1)
            done.wait(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    n0 = len(ticks)
    m.embed(long)
    n1 = len(ticks)
    done.set()
    t.join()
    assert n1 - n0 >= 3, f"the ticker ran {n1 - n0} times during embed"


def test_a_model_file_is_mapped_once_per_process(small_model_path):
    a, b = elmo.Model(small_model_path), elmo.Model(str(small_model_path), threads=1)
    assert a._weights_id == b._weights_id
    assert elmo.Model()._weights_id == elmo.Model()._weights_id
    assert a._weights_id != elmo.Model()._weights_id


def test_the_type_stubs_match_the_runtime(tmp_path):
    import subprocess
    import sys

    mypy = pytest.importorskip("mypy.api")
    uses = Path(__file__).parent / "typing" / "uses.py"
    report, errors, status = mypy.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(uses)])
    assert status == 0, report + errors
    small = FIXTURES / "small"
    args = [small / "options.json", small / "lm_weights.hdf5", tmp_path / "m.safetensors"]
    run = subprocess.run([sys.executable, uses, *args], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr


def test_a_model_pickles_and_deep_copies(tmp_path, small_model_path, monkeypatch):
    import copy
    import pickle
    import shutil

    shutil.copy(small_model_path, tmp_path / "m.safetensors")
    monkeypatch.chdir(tmp_path)
    sents = [["The", "cat"], ["sat"]]
    for m in [elmo.Model(), elmo.Model("m.safetensors", threads=1)]:
        back = pickle.loads(pickle.dumps(m))
        # Absolute: the copy is found from any working directory.
        assert back.path is None if m.path is None else back.path == tmp_path / "m.safetensors"
        assert (back.device, back.threads) == (m.device, m.threads)
        assert back._weights_id == m._weights_id  # one mapping per process
        np.testing.assert_array_equal(back.embed(sents), m.embed(sents))
        np.testing.assert_array_equal(copy.deepcopy(m).embed(sents), m.embed(sents))


def test_bad_input_raises_elmo_error(tmp_path):
    m = elmo.Model()
    assert issubclass(elmo.ElmoError, ValueError)
    cases = [
        (lambda: m.embed("a sentence"), "got a str"),
        (lambda: m.embed(["a sentence"]), "sentence 0 is a str"),
        (lambda: m.embed([["a", 3]]), "sentence 0, token 1: expected a str, got int"),
        (lambda: m.embed([["a", None]]), "expected a str"),
        (lambda: m.embed(5), "list of token lists"),
        (lambda: m.embed([5]), "sentence 0 is not a list"),
        (lambda: m.embed([["a"]], "sideways"), "unknown output mode"),
        (lambda: m.embed([["a"]], "lstm_outputs3"), "2 LSTM layers"),
        (lambda: m.embed([["a"]], "elmo", mix_weights=[1.0, 2.0]), "3 layers"),
        (lambda: m.embed([["a"]], "elmo", gamma=float("nan")), "finite"),
        (lambda: elmo.Model(tmp_path / "missing.safetensors"), "No such file"),
        (lambda: elmo.Model(threads=0), "between 1 and 4096, got 0"),
        (lambda: elmo.Model(threads=-1), "between 1 and 4096, got -1"),
        (lambda: m.embed([["ok", "\ud800"]]), "sentence 0, token 1 is not valid Unicode"),
        (lambda: elmo.Model(device="tpu"), "device"),
        (lambda: elmo.Model(device="cuda"), "CUDA|cuda"),
    ]
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    cases.append((lambda: elmo.Model(corrupt), "corrupt.safetensors"))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((FIXTURES / "format_v1" / "bilm-tf-test.safetensors").read_bytes()[:5000])
    cases.append((lambda: elmo.Model(trunc), "trunc.safetensors"))
    for f, msg in cases:
        with pytest.raises(elmo.ElmoError, match=msg):
            f()
    # The model still works after every error.
    assert m.embed([["fine"]]).shape == (1, 3, 1, 32)


@pytest.mark.skipif(not os.environ.get("ELMO_FULL_MODEL"), reason="set ELMO_FULL_MODEL to a converted full-size model")
def test_full_size_model_matches_tensorflow():
    # The random full-size weights (make_weights.py --config full); float32
    # drift over long sentences is larger here: atol 1e-4 (tests/fixtures/README.md).
    m = elmo.Model(os.environ["ELMO_FULL_MODEL"])
    for g in golden_batches("full"):
        lm, lengths = g["lm_embeddings"], g["lengths"]
        got = m.embed(g.tokens())
        real = np.arange(lm.shape[2])[None, :] < lengths[:, None]
        for k in range(lm.shape[1]):
            record("all (full size)", "full", assert_close(f"{g.name} layer {k}", got[:, k][real], lm[:, k][real], atol=1e-4))


def test_devices_names_the_simd_level_and_the_wheel_has_avx2():
    cpu = elmo.devices()[0]
    assert cpu.startswith("cpu (") and "SIMD " in cpu, cpu
    level = cpu.split("SIMD ")[1].split(";")[0]
    assert level in ("scalar", "avx2", "avx512", "avx512bf16", "amx"), cpu
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split()}
    if {"avx2", "fma"} <= flags:
        # The package was built for x86-64-v3 (the repository's .cargo/config.toml).
        assert level != "scalar" and "note:" not in cpu, cpu


def test_an_unknown_simd_level_raises_elmo_error():
    import subprocess
    import sys

    code = "import elmo\ntry:\n    elmo.devices()\nexcept elmo.ElmoError as e:\n    print('refused:', e)\n"
    env = dict(os.environ, ELMO_SIMD="no-such-level")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and "no-such-level" in out.stdout, out.stdout
