#!/usr/bin/env python3
"""PyTorch's ELMo (allennlp 2.10.1's _ElmoBiLm) timed on the workloads `elmo bench`
reads, on a CUDA device or the CPU: the peer for the GPU comparison of `.ci/gpu run`.

The device machine has torch, numpy and h5py but no allennlp and no network, so
`.ci/gpu build` carries the unpacked allennlp wheel and the anchors' import shim
(`../shared/anchors/allennlp_shim.py`) in `.gpu/torch/`; allennlp itself is used as is.

  python3 .ci/gpu_torch.py --allennlp DIR --shim DIR --options OPTIONS.json \
      --weights WEIGHTS.hdf5 --device cuda --runs 5 --warmup 2 A.jsonl [B.jsonl ...]

Input: the `.jsonl` format of `elmo bench` (one batch a line, each a JSON array of
sentences of token strings). One timed pass = every batch once, each from zero LSTM state,
all three layers without the sentence boundaries stacked to (B, 3, T, 2P) on the device
(as `elmo bench --output layers`); CUDA work is synchronised before the clock is read.
One JSON line per workload on stdout, with the fields of the anchors' command contract.
"""
import argparse
import json
import os
import statistics
import sys
import time
import types


def load_allennlp(allennlp_dir, shim_dir):
    # allennlp.common.util imports dill and base58 at top level; ELMo uses neither, and
    # the device image lacks both: empty modules stand in when they are missing.
    for name in ("dill", "base58"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, shim_dir)
    import allennlp_shim

    allennlp_shim.install(allennlp_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allennlp", required=True, help="the unpacked allennlp 2.10.1 wheel")
    ap.add_argument("--shim", required=True, help="folder holding allennlp_shim.py")
    ap.add_argument("--options", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("inputs", nargs="+")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_allennlp(args.allennlp, args.shim)
    from allennlp.data.token_indexers.elmo_indexer import ELMoCharacterMapper
    from allennlp.modules.elmo import _ElmoBiLm
    from allennlp.nn.util import remove_sentence_boundaries

    dev = torch.device(args.device)
    with open(args.options) as f:
        max_chars = json.load(f)["char_cnn"]["max_characters_per_token"]
    mapper = ELMoCharacterMapper()

    def char_ids(batch):
        # (B, T, C) ids as allennlp's batch_to_ids makes them: +1 offsets, padding 0.
        t = max((len(s) for s in batch), default=0)
        ids = torch.zeros((len(batch), t, max_chars), dtype=torch.long)
        for i, s in enumerate(batch):
            for j, w in enumerate(s):
                c = mapper.convert_word_to_char_ids(w)[:max_chars]
                ids[i, j, : len(c)] = torch.tensor(c)
        return ids

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    bilm = _ElmoBiLm(args.options, args.weights, requires_grad=False).to(dev).eval()

    def layers(ids):
        bilm._elmo_lstm.reset_states()
        out = bilm(ids)
        acts = [remove_sentence_boundaries(a, out["mask"])[0] for a in out["activations"]]
        return torch.stack(acts, dim=1)

    loaded = False
    for path in args.inputs:
        with open(path) as f:
            batches = [json.loads(line) for line in f if line.strip()]
        feeds = [char_ids(b).to(dev) for b in batches]
        n_tokens = sum(len(s) for b in batches for s in b)
        if n_tokens == 0:
            print(f"{path}: no tokens, skipped", file=sys.stderr)
            continue

        def one_pass():
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                for ids in feeds:
                    layers(ids)
            sync()
            return time.perf_counter() - t

        if not loaded:
            one_pass()
            load_s = time.perf_counter() - t0
            loaded = True
        for _ in range(args.warmup):
            one_pass()
        times = sorted(one_pass() for _ in range(args.runs))
        med = statistics.median(times)
        print(json.dumps({
            "runner": "torch",
            "impl": "allennlp 2.10.1 _ElmoBiLm",
            "torch": torch.__version__,
            "device": str(dev) if dev.type != "cuda" else f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name(dev)}",
            "output": "layers",
            "workload": os.path.splitext(os.path.basename(path))[0],
            "runs": args.runs,
            "median_s": med,
            "min_s": times[0],
            "max_s": times[-1],
            "tokens_per_s_median": n_tokens / med,
            "n_tokens": n_tokens,
            "batch_size": max(len(b) for b in batches),
            "load_s": load_s,
        }), flush=True)


if __name__ == "__main__":
    main()
