#!/usr/bin/env python3
"""Max abs and relative error between HIT-SCIR's ELMoForManyLangs package and our CLI on the same
model folder and workloads (the full-size check the fixtures' miniature models cannot give).

  /tmp/efml-venv/bin/python benches/efml/agree.py --efml /tmp/bench/efml_full \
      --model /tmp/bench/efml_full.safetensors --elmo target/release/elmo \
      --inputs /tmp/bench/workloads --workloads W1,W3

The package (PyPI `elmoformanylangs`, imported and called unmodified) runs `sents2elmo(batch,
output_layer=-2)` per line from a reset state; ours `elmo embed --input W.jsonl --out X.npz`.
Prints one line per workload: max |ours - package|, max |package|, and the largest
|d| / (1e-5 + 1e-4 |package|) (<= 1: within the project's tolerance).
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--efml", default="/tmp/bench/efml_full")
    ap.add_argument("--model", default="/tmp/bench/efml_full.safetensors")
    ap.add_argument("--elmo", default="target/release/elmo")
    ap.add_argument("--inputs", default="/tmp/bench/workloads")
    ap.add_argument("--workloads", default="W1,W3")
    a = ap.parse_args()
    import torch
    from elmoformanylangs import Embedder

    torch.set_num_threads(2)
    e = Embedder(a.efml, batch_size=64)
    for w in a.workloads.split(","):
        path = os.path.join(a.inputs, f"{w}.jsonl")
        batches = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
        want = []
        for b in batches:
            e.model.encoder.reset_states()
            with torch.no_grad():
                want.extend(np.asarray(x, np.float32) for x in e.sents2elmo(b, output_layer=-2))
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "o.npz")
            subprocess.run([a.elmo, "embed", "--model", a.model, "--input", path, "--out", out], check=True,
                           stderr=subprocess.DEVNULL)
            lm = np.load(out)["lm_embeddings"]  # (N, L + 1, T, 2P)
        for k in range(lm.shape[1]):
            worst, top, ratio = 0.0, 0.0, 0.0
            for i, x in enumerate(want):  # (L + 1, n, 2P)
                got = lm[i, k, : x.shape[1]]
                d = np.abs(got.astype(np.float64) - x[k])
                worst, top = max(worst, float(d.max())), max(top, float(np.abs(x[k]).max()))
                ratio = max(ratio, float((d / (1e-5 + 1e-4 * np.abs(x[k]))).max()))
            print(f"{w} layer {k}: {len(want)} sentences, max abs error {worst:.3g} (values up to {top:.3g}), "
                  f"worst error / tolerance {ratio:.3g}")


if __name__ == "__main__":
    main()
