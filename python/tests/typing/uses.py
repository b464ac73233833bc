"""Uses of the numpy API as docs/python.md writes them, checked by
``mypy --strict`` and run (test_numpy.py::test_the_type_stubs_match_the_runtime),
so a stub that disagrees with the extension fails one or the other.

Arguments: OPTIONS.json WEIGHTS.hdf5 OUT.safetensors (a model to convert)."""

import pathlib
import sys
from typing import List, Optional

import numpy as np

import elmo

options, hdf5, out = sys.argv[1:4]
model = elmo.Model()
sents = [["The", "first", "sentence", "."], ["Second"]]
x = model.embed(sents)
e, lengths = model.embed(sents, "elmo", mix_weights=[0.3, -0.7, 1.1], gamma=0.8, return_lengths=True)
d = model.embed(sents, "default", mix_weights=np.array([0.3, -0.7, 1.1], dtype=np.float32))
flag = len(sys.argv) > 9
either = model.embed(sents, return_lengths=flag)
assert isinstance(either, np.ndarray)
assert x.shape == (2, 3, 4, 32) and e.shape == (2, 4, 32) and d.shape == (2, 32)
assert lengths.dtype == np.int32
assert model.path is None
written: pathlib.Path = elmo.convert(out, options=options, hdf5=hdf5)
assert isinstance(written, pathlib.Path), type(written)
named = elmo.Model(written, threads=1)
p: Optional[pathlib.Path] = named.path
assert isinstance(p, pathlib.Path), type(p)
lines: List[str] = elmo.devices()
print("ok", named.device, named.threads, len(lines))
