"""Speed of the Python entry points against the CLI, in one command.

    python python/benches/bench_python.py --model FULL.safetensors --workloads DIR \
        [--elmo target/release/elmo] [--runs 9] [--threads 2] [--backends tensorflow,jax,torch]

1. ``Model.embed`` over each workload (W1, W3: the anchors' files,
   ``shared/anchors/workloads.py``) against ``elmo bench`` on the same file,
   threads and model: medians of whole passes, and their ratio.
2. The Keras layer (``output_mode="elmo"``) at batch 32 x 20 tokens on each
   backend, eager and through a compiled ``predict_on_batch``, against
   ``Model.embed(..., "elmo")`` on the same sentences; calls alternate within
   one process, medians and the overhead.

Not a test: timings depend on the machine; name the CPU beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

KERAS_CHILD = r"""
import json, os, statistics, sys, time
import numpy as np
import keras
import elmo
from elmo import ELMoEmbedding
model_path, threads, runs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
m = elmo.Model(model_path, threads=threads)
words = sorted({w for s in batch for w in s})
w2i = {w: i + 1 for i, w in enumerate(words)}
ids = np.array([[w2i[w] for w in s] for s in batch], dtype="int32")
layer = ELMoEmbedding({i: w for w, i in w2i.items()}, "elmo", False, m)
seq = keras.Sequential([keras.Input(shape=(ids.shape[1],), dtype="int32"), layer])
def t(f):
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0
calls = {
    "Model.embed": lambda: m.embed(batch, "elmo"),
    "layer (eager)": lambda: keras.ops.convert_to_numpy(layer(ids)),
    "predict_on_batch (compiled)": lambda: seq.predict_on_batch(ids),
}
for f in calls.values():
    f(); f()
times = {k: [] for k in calls}
for _ in range(runs):
    for k, f in calls.items():
        times[k].append(t(f))
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""


def median_pass(f, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--workloads", required=True, type=Path)
    ap.add_argument("--elmo", default=str(Path(__file__).resolve().parents[2] / "target" / "release" / "elmo"))
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default="tensorflow,jax,torch")
    a = ap.parse_args()

    import elmo

    m = elmo.Model(a.model, threads=a.threads)
    print(f"model {a.model}, {a.threads} threads, {a.runs} runs (medians)")
    print("1. Model.embed against elmo bench (same file, whole passes)")
    for w in ("W1", "W3"):
        path = a.workloads / f"{w}.jsonl"
        batches = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        py = median_pass(lambda: [m.embed(b) for b in batches], a.runs)
        out = subprocess.run(
            [a.elmo, "bench", "--model", a.model, "--input", str(path), "--runs", str(a.runs),
             "--threads", str(a.threads)], capture_output=True, text=True, check=True,
        ).stdout
        cli = json.loads(out.strip().splitlines()[-1])["median_s"]
        py2 = median_pass(lambda: [m.embed(b) for b in batches], a.runs)  # after, for drift
        pym = min(py, py2)
        print(f"   {w}: Model.embed {pym * 1e3:8.2f} ms (before/after {py * 1e3:.2f}/{py2 * 1e3:.2f}), "
              f"elmo bench {cli * 1e3:8.2f} ms, ratio {pym / cli:.3f}")

    print("2. Keras layer (elmo mode) against Model.embed, batch 32 x 20 tokens")
    batch = json.loads((a.workloads / "W3.jsonl").read_text().splitlines()[0])
    for backend in a.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        r = subprocess.run([sys.executable, "-c", KERAS_CHILD, a.model, str(a.threads), str(a.runs), json.dumps(batch)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"   {backend}: failed: {r.stderr[-500:]}")
            continue
        t = json.loads(r.stdout.strip().splitlines()[-1])
        base = t["Model.embed"]
        rest = ", ".join(f"{k} {v * 1e3:.1f} ms ({(v / base - 1) * 100:+.1f}%)" for k, v in t.items() if k != "Model.embed")
        print(f"   {backend:<10}: Model.embed {base * 1e3:.1f} ms; {rest}")


if __name__ == "__main__":
    main()
