"""Data helpers of the examples (the one part that is not the seed's code):
the shipped reviews (examples/data/reviews.tsv) as Keras-style padded id
sequences and the idx2word table the layer takes."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "reviews.tsv"


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--maxlen", type=int, default=100)
    p.add_argument("--model", default=None, help="a converted model file (default: the bundled tiny model)")
    return p.parse_args()


def load(maxlen: int):
    """(idx2word, x_train, y_train, x_test, y_test); ids by frequency from 1,
    sequences pre-padded with 0 to maxlen (keras.utils.pad_sequences' default)."""
    rows = [line.rstrip("\n").split("\t") for line in DATA.open(encoding="utf-8") if line.strip()]
    counts = Counter(w for split, _, text in rows if split == "train" for w in text.split())
    word2idx = {w: i + 1 for i, (w, _) in enumerate(counts.most_common())}
    idx2word = {i: w for w, i in word2idx.items()}

    def tensors(split: str):
        seqs = [[word2idx.get(w, 0) for w in text.split()] for s, _, text in rows if s == split]
        x = np.zeros((len(seqs), maxlen), dtype="int32")
        for i, s in enumerate(seqs):
            s = s[-maxlen:]
            x[i, maxlen - len(s):] = s
        y = np.array([int(label) for s, label, _ in rows if s == split], dtype="float32")
        return x, y

    x_train, y_train = tensors("train")
    x_test, y_test = tensors("val")
    return idx2word, x_train, y_train, x_test, y_test
