#!/usr/bin/env python3
"""Corpus embedding benchmarks (`elmo embed --out X.hdf5`), one command:

* peak memory on N and 10 N sentences (the summary line's VmHWM);
* tokens/s with length grouping (the default) and in input order
  (`--no-length-grouping`), medians of `--runs` alternating runs;
* with `--full MODEL --w3 W3.jsonl`: the same corpus on the full-size model
  against `elmo bench` on the anchors' W3 workload, in the same command.

The corpus has a realistic length mix: most sentences 5-40 tokens, 3% a tail
of 100-260, 1% blank, words from a Zipf-like vocabulary of 20,000.

    python3 benches/corpus.py --model M.safetensors [--sentences 30000]
        [--full full.safetensors --w3 W3.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("ELMO_BIN", REPO / "target" / "release" / "elmo"))


def write_corpus(path: Path, n: int, seed: int = 1) -> int:
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" + "abcdefghij"[: i % 11] for i in range(20_000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    tokens = 0
    with open(path, "w") as f:
        for _ in range(n):
            r = rng.random()
            k = 0 if r < 0.01 else rng.randint(100, 260) if r < 0.04 else rng.randint(5, 40)
            words = rng.choices(vocab, weights, k=k)
            tokens += k
            f.write(" ".join(words) + "\n")
    return tokens


def run_embed(model: Path, corpus: Path, out: Path, *flags: str) -> dict:
    r = subprocess.run(
        [str(BIN), "embed", "--model", str(model), "--input", str(corpus), "--out", str(out), *flags],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    m = re.search(r"(\d+) tokens, ([\d.]+) MB in ([\d.]+) s \((\d+) tok/s.*padding ([\d.]+)%; peak memory (\d+) MiB", line)
    if not m:
        raise SystemExit(f"unexpected summary: {line}")
    out.unlink()
    return {
        "tokens": int(m[1]),
        "mb": float(m[2]),
        "s": float(m[3]),
        "tok_s": int(m[4]),
        "padding_pct": float(m[5]),
        "peak_mib": int(m[6]),
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="a small model for the memory and grouping figures")
    ap.add_argument("--sentences", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--full", type=Path, help="the full-size model")
    ap.add_argument("--w3", type=Path, help="the anchors' W3 workload (.jsonl)")
    ap.add_argument("--full-sentences", type=int, default=2_000)
    a = ap.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        out = d / "o.hdf5"
        # Memory: N and 10 N sentences.
        for n in (a.sentences, 10 * a.sentences):
            c = d / f"c{n}.txt"
            tokens = write_corpus(c, n)
            r = run_embed(a.model, c, out)
            print(json.dumps({"what": "memory", "sentences": n, "tokens": tokens, **r}))
            if n != a.sentences:
                c.unlink()
        # Grouping against input order, alternating runs.
        c = d / f"c{a.sentences}.txt"
        res = {"grouped": [], "input order": []}
        for _ in range(a.runs):
            res["grouped"].append(run_embed(a.model, c, out))
            res["input order"].append(run_embed(a.model, c, out, "--no-length-grouping"))
        for k, rs in res.items():
            print(json.dumps({
                "what": k,
                "median_tok_s": statistics.median(r["tok_s"] for r in rs),
                "padding_pct": rs[0]["padding_pct"],
                "runs": [r["tok_s"] for r in rs],
            }))
        if a.full and a.w3:
            c = d / "full.txt"
            write_corpus(c, a.full_sentences, seed=2)
            rows = {"corpus grouped": [], "corpus input order": [], "bench W3": []}
            for _ in range(a.runs):
                rows["corpus grouped"].append(run_embed(a.full, c, out)["tok_s"])
                rows["corpus input order"].append(run_embed(a.full, c, out, "--no-length-grouping")["tok_s"])
                r = subprocess.run(
                    [str(BIN), "bench", "--model", str(a.full), "--input", str(a.w3), "--runs", "3", "--warmup", "1"],
                    capture_output=True, text=True, check=True,
                )
                b = json.loads(r.stdout.strip().splitlines()[0])
                rows["bench W3"].append(round(b["tokens_per_s_median"]))
            for k, v in rows.items():
                print(json.dumps({"what": f"full model: {k}", "runs_tok_s": v}))


if __name__ == "__main__":
    main()
