"""Shared fixtures: the golden sets of tests/fixtures (TensorFlow's outputs,
see tests/fixtures/README.md), the small model converted once per session,
and a record of the max abs error per golden set, printed at the end."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

import elmo

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
ATOL, RTOL = 1e-5, 1e-4

# (what, golden set) -> max abs error seen.
MAX_ERR: Dict[Tuple[str, str], float] = defaultdict(float)


def assert_close(what: str, got, want, atol: float = ATOL, rtol: float = RTOL) -> float:
    """atol + rtol * |want| elementwise; records and returns the max abs error."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    assert not bad.any(), f"{what}: max abs error {err.max():.3g} at {np.argwhere(bad)[0]}"
    m = float(err.max()) if err.size else 0.0
    return m


def record(what: str, gset: str, err: float) -> None:
    MAX_ERR[(what, gset)] = max(MAX_ERR[(what, gset)], err)


def pytest_terminal_summary(terminalreporter):
    if MAX_ERR:
        where = f" (KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')})" if "keras" in sys.modules else ""
        terminalreporter.write_line(f"max abs error against the goldens (TensorFlow's; ELMoForManyLangs' own for efml){where}:")
        for (what, gset), e in sorted(MAX_ERR.items()):
            terminalreporter.write_line(f"  {what:<40} {gset:<6} {e:.2e}")


class Golden:
    """One golden batch: its arrays and tokens."""

    def __init__(self, path: Path):
        self.name = path.name
        self.arrays = dict(np.load(path))

    def tokens(self) -> List[List[str]]:
        return json.loads(bytes(self.arrays["tokens_json"]).decode("utf-8"))

    def __getitem__(self, k: str) -> np.ndarray:
        return self.arrays[k]


def golden_batches(gset: str, prefix: str = "stateless_batch_") -> List[Golden]:
    return [Golden(p) for p in sorted((FIXTURES / gset).glob(prefix + "*.npz"))]


def vocab_and_ids(sentences: List[List[str]]):
    """idx2word over the batch's words (ids from 1) and right-padded (B, T) ids."""
    idx: Dict[str, int] = {}
    for s in sentences:
        for w in s:
            idx.setdefault(w, len(idx) + 1)
    t = max((len(s) for s in sentences), default=0)
    ids = np.zeros((len(sentences), t), dtype=np.int64)
    for b, s in enumerate(sentences):
        ids[b, : len(s)] = [idx[w] for w in s]
    return {i: w for w, i in idx.items()}, ids


VARIANTS = [
    # name, W, gamma, layer norm, top only
    ("elmo_default", [0.0, 0.0, 0.0], 1.0, False, False),
    ("elmo_default_ln", [0.0, 0.0, 0.0], 1.0, True, False),
    ("elmo_custom", [0.3, -0.7, 1.1], 0.8, False, False),
    ("elmo_custom_ln", [0.3, -0.7, 1.1], 0.8, True, False),
    ("elmo_top_only", [0.0, 0.0, 0.0], 0.8, False, True),
]


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "small.safetensors"
    elmo.convert(out, options=FIXTURES / "small" / "options.json", hdf5=FIXTURES / "small" / "lm_weights.hdf5")
    return out


@pytest.fixture(scope="session")
def models(small_model_path) -> Dict[str, "elmo.Model"]:
    return {"tiny": elmo.Model(), "small": elmo.Model(small_model_path)}
