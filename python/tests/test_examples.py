"""The seed's two examples run on this backend and print Keras' per-epoch
metrics (one epoch each, on the shipped reviews)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["sentiment_sentence.py", "sentiment_word.py"])
def test_example_trains_one_epoch(name):
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--epochs", "1", "--maxlen", "40"],
        cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    last = [line for line in r.stdout.splitlines() if "val_accuracy" in line]
    assert len(last) == 1 and "160/160" in last[0] and "loss:" in last[0], r.stdout[-2000:]
