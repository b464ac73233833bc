"""`elmo embed --out X.hdf5` read with h5py, as scripts written for
allennlp's `elmo` command read its files: the layout, the golden values
through the file, and that the numpy API gives the same bits."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo

from conftest import FIXTURES, assert_close, golden_batches, record

REPO = Path(__file__).resolve().parents[2]


def elmo_bin() -> Path:
    """The CLI that `cargo test --release` (scripts/test.sh's first step) built."""
    path = Path(os.environ.get("ELMO_BIN", REPO / "target" / "release" / "elmo"))
    assert path.exists(), f"{path} is missing: run `cargo build --release` first (or set ELMO_BIN)"
    return path


def embed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(elmo_bin()), "embed", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_golden_values_through_hdf5(tmp_path, name, small_model_path):
    model = [] if name == "tiny" else ["--model", str(small_model_path)]
    out = tmp_path / "e.hdf5"
    r = embed("--input", str(FIXTURES / name / "stateless.jsonl"), "--out", str(out), "--batch-size", "3", *model)
    assert r.returncode == 0, r.stderr
    goldens = golden_batches(name)
    with h5py.File(out, "r") as f:
        # allennlp's reading code: the index, then one dataset per sentence.
        index = json.loads(f["sentence_to_index"][0])
        keys = sorted((k for k in f.keys() if k != "sentence_to_index"), key=int)
        assert keys == [str(i) for i in range(len(keys))]
        key = 0
        for g in goldens:
            lm = g["lm_embeddings"]  # (B, L + 1, T, 2P)
            for b, tokens in enumerate(g.tokens()):
                ds = f[str(key)]
                assert ds.dtype == np.float32
                assert ds.shape == (lm.shape[1], len(tokens), lm.shape[3])
                record("hdf5 all (CLI, h5py)", name, assert_close(f"{name} {key}", ds[...], lm[b, :, : len(tokens)]))
                assert index[" ".join(tokens)] == str(key)
                key += 1
        assert key == len(keys)


def test_layout_top_average_and_text_keys(tmp_path):
    text = tmp_path / "c.txt"
    lines = ["The cat sat .", "", "  A dog ,  ran  ", "é ünïcode \"quoted\"", "The cat sat ."]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = elmo.Model()
    layers, lengths = model.embed([l.split() for l in lines], "all", return_lengths=True)
    for flag in ["--all", "--top", "--average"]:
        out = tmp_path / f"o{flag}.h5"
        r = embed("--input", str(text), "--out", str(out), flag, "--quiet")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        with h5py.File(out, "r") as f:
            assert sorted(f.keys()) == sorted([str(i) for i in range(5)] + ["sentence_to_index"])
            idx = f["sentence_to_index"]
            assert idx.shape == (1,) and h5py.check_string_dtype(idx.dtype) is not None
            index = json.loads(f["sentence_to_index"][0])
            # allennlp keys the stripped line; a repeated sentence keeps its last key.
            assert index == {"The cat sat .": "4", "": "1", "A dog ,  ran": "2", 'é ünïcode "quoted"': "3"}
            for i, n in enumerate(lengths):
                v = layers[i, :, :n]
                want = {"--all": v, "--top": v[-1], "--average": v.mean(axis=0, dtype=np.float32)}[flag]
                got = f[str(i)][...]
                assert got.shape == want.shape, (flag, i)
                # The numpy API and the corpus path: the same bits.
                assert np.array_equal(got, want), (flag, i)
    # The text of sentence_to_index: json.dumps's, one entry per line in
    # order (a repeated sentence twice; json.loads keeps its last key, as
    # allennlp's dict does).
    with h5py.File(tmp_path / "o--all.h5", "r") as f:
        raw = f["sentence_to_index"][0]
        raw = raw.decode() if isinstance(raw, bytes) else raw
        assert raw == "{" + ", ".join(f"{json.dumps(l.strip())}: {json.dumps(str(i))}" for i, l in enumerate(lines)) + "}"
        assert json.loads(raw) == {l.strip(): str(i) for i, l in enumerate(lines)}


def test_stdin_and_bad_input(tmp_path):
    out = tmp_path / "s.hdf5"
    r = subprocess.run(
        [str(elmo_bin()), "embed", "--input", "-", "--out", str(out), "--quiet"],
        input="one two\nthree\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert f["0"].shape[1] == 2 and f["1"].shape[1] == 1
    bad = tmp_path / "b.jsonl"
    bad.write_text('["a"]\n[1]\n')
    r = embed("--input", str(bad), "--out", str(tmp_path / "b.hdf5"))
    assert r.returncode != 0 and "line 2" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
