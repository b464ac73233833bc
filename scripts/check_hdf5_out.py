"""Checks, with h5py (libhdf5), a file written by elmo's `io::hdf5_out`.

Run by the Rust tests (src/io/hdf5_out/tests.rs) as
    python3 scripts/check_hdf5_out.py SPEC.json
where SPEC.json says what the file must hold:
    file       the HDF5 file
    count      datasets "0" .. str(count - 1), plus "sentence_to_index"
    lead, dim  shape (lead, n, dim), or (n, dim) when lead is null
    ns         n of every dataset
    check      keys whose shape, dtype and values are checked (null: all)
    absent     names that must not be found
    json_file  the file holding the expected sentence_to_index text
    json       whether that text must parse as JSON
and that libhdf5 can extend and shrink a copy of the file.
Dataset k's float32 values are, bit for bit, (k * 2654435761 + i * 40503)
mod 2^32 for element i in C order (the tests write the same), so NaN
payloads, signed zeros and subnormals are compared too.
"""

import json
import os
import shutil
import sys
import tempfile

import h5py
import numpy as np


def expected_bits(key, size):
    i = np.arange(size, dtype=np.uint64)
    return (np.uint64(key) * np.uint64(2654435761) + i * np.uint64(40503)) & np.uint64(0xFFFFFFFF)


def check_extend(path, count):
    """libhdf5 can change the file: a copy gets a new dataset (splitting
    the full B-tree and symbol table nodes) and loses one."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "copy.h5")
        shutil.copyfile(path, copy)
        with h5py.File(copy, "a") as f:
            f.create_dataset("extra", data=np.ones((2, 3), np.float32))
            if count > 0:
                del f["0"]
        with h5py.File(copy, "r") as f:
            assert f["extra"][()].sum() == 6
            # The datasets, sentence_to_index and "extra", less "0".
            assert "0" not in f and len(f) == count + 2 - min(count, 1), len(f)


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    count, lead, dim, ns = spec["count"], spec["lead"], spec["dim"], spec["ns"]
    with open(spec["json_file"], "rb") as f:
        want_json = f.read().decode("utf-8")
    with h5py.File(spec["file"], "r") as f:
        names = list(f.keys())
        # libhdf5 lists an old-style group in name (byte) order; for these
        # ASCII names Python's str order is the same.
        want = sorted([str(k) for k in range(count)] + ["sentence_to_index"])
        assert names == want, (len(names), len(want), names[:20], want[:20])
        keys = range(count) if spec["check"] is None else spec["check"]
        for k in keys:
            d = f[str(k)]
            shape = (ns[k], dim) if lead is None else (lead, ns[k], dim)
            assert d.shape == shape, (k, d.shape, shape)
            assert d.dtype == np.dtype("<f4"), (k, d.dtype)
            assert d.chunks is None and d.compression is None, k
            bits = d[()].reshape(-1).view("<u4").astype(np.uint64)
            assert np.array_equal(bits, expected_bits(k, bits.size)), k
            if ns[k] == 0:
                assert d.id.get_offset() is None, (k, d.id.get_offset())
        for name in spec["absent"]:
            assert name not in f, name
        s = f["sentence_to_index"]
        assert s.shape == (1,), s.shape
        info = h5py.check_string_dtype(s.dtype)
        assert info is not None and info.encoding == "utf-8" and info.length is None, info
        raw = s[0]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        assert text == want_json, (len(text), len(want_json))
        assert s.asstr()[0] == want_json
        if spec["json"]:
            # What allennlp's readers do with it.
            assert json.loads(s[0]) == json.loads(want_json)
    check_extend(spec["file"], count)
    print(f"h5py {h5py.__version__} (libhdf5 {h5py.version.hdf5_version}): {spec['file']} ok, {count} datasets")


if __name__ == "__main__":
    main(sys.argv[1])
