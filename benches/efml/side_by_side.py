#!/usr/bin/env python3
"""Time HIT-SCIR's ELMoForManyLangs package (PyPI `elmoformanylangs==0.0.4.post2`, unmodified,
imported and called) and our `elmo bench` on the same model and the same workloads, interleaved,
and print a markdown table of medians. Our own code; nothing of the package is copied.

  /tmp/efml-venv/bin/python benches/efml/side_by_side.py \
      [--efml /tmp/bench/efml_full] [--inputs /tmp/bench/workloads] [--workloads W1,W2,W3] \
      [--elmo target/release/elmo] [--model /tmp/bench/efml_full.safetensors] \
      [--reps 3] [--runs 5] [--runs-w3 3] [--warmup 2] [--threads 2] [--batch-size 64] \
      [--grad as-is|no_grad] [--also-forward] [--elmo-args '--no-word-sharing'] [--results FILE.jsonl]

(a) the package: a worker process on --python (default: this interpreter if it can import
elmoformanylangs, else /tmp/efml-venv/bin/python) loads `Embedder(--efml, batch_size=...)` once,
with torch.set_num_threads / set_num_interop_threads(--threads). One timed run = for every line
(batch) of the workload's .jsonl, in order: `e.model.encoder.reset_states()` (the package
otherwise carries the LSTM state from call to call), then `e.sents2elmo(batch, output_layer=-2)`
(all 3 layers per sentence, numpy). --grad as-is (default) calls it as the package's users do:
sents2elmo does not switch autograd off; no_grad wraps the call in torch.no_grad(). Character ids
are built inside the timed call (sents2elmo does that in Python); --also-forward also times
`e.model.forward` alone on batches built beforehand with the package's own create_batches.
(b) ours: `ELMO bench --model MODEL --input W.jsonl --runs R --warmup W --threads T --output layers`
(the anchors' command contract, shared/anchors/README.md), started once per (rep, workload);
skipped with a message when --model (the `elmo convert --elmoformanylangs` output) or the
binary is missing.
Per rep and workload: package block, then ours (--rotate swaps the order on odd reps). A figure
is the median over reps of the per-block medians; ratio = package median / ours median (> 1:
ours is faster). Blocks record others_cpu_frac (share of the machine's CPU used by other
processes, from /proc/stat) and the load average.
"""
import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
VENV_PY = "/tmp/efml-venv/bin/python"


# ---------------------------------------------------------------- shared helpers

def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cpu_snapshot():
    """(busy seconds of the whole machine, wall clock)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.time()


def others_frac(before, after, own_cpu_s):
    busy = after[0] - before[0]
    wall = max(after[1] - before[1], 1e-9)
    return min(1.0, max(0.0, busy - own_cpu_s) / (os.cpu_count() * wall))


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def runs_for(name, runs, runs_w3):
    return runs_w3 if name.upper().startswith("W3") else runs


def med_stats(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


# ---------------------------------------------------------------- (a) the package, in a worker

def serve(args):
    """Worker: load the package's Embedder once, answer one JSON request per stdin line."""
    import torch
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    t_imp = time.perf_counter()
    import elmoformanylangs
    from elmoformanylangs import Embedder
    from elmoformanylangs import elmo as efml_elmo
    import logging
    logging.getLogger("elmoformanylangs").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    e = Embedder(args.efml, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    ready = {"ready": True, "load_s": load_s, "import_s": t0 - t_imp, "torch": torch.__version__,
             "threads": torch.get_num_threads(), "package_file": elmoformanylangs.__file__,
             "use_cuda": e.use_cuda, "config": e.config}
    print(json.dumps(ready), flush=True)
    import contextlib
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        try:
            batches = read_jsonl(req["input"])
            grad_ctx = torch.no_grad if req["grad"] == "no_grad" else contextlib.nullcontext
            n_tok = sum(len(s) for b in batches for s in b)

            def one_pass():
                for b in batches:
                    e.model.encoder.reset_states()
                    with grad_ctx():
                        out = e.sents2elmo(b, output_layer=-2)
                    assert len(out) == len(b) and out[0].shape[0] == 3
                return out

            def timed(fn, runs, warmup):
                for _ in range(warmup):
                    fn()
                ts = []
                for _ in range(runs):
                    t = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t)
                return ts

            c0, o0 = cpu_snapshot(), os.times()
            ts = timed(one_pass, req["runs"], req["warmup"])
            c1, o1 = cpu_snapshot(), os.times()
            own = (o1.user - o0.user) + (o1.system - o0.system)
            rec = {"runner": "elmoformanylangs", "workload": req["workload"], "runs": req["runs"],
                   "warmup": req["warmup"], "grad": req["grad"], "n_tokens": n_tok,
                   "batch_size": max(len(b) for b in batches), **med_stats(ts),
                   "tokens_per_s_median": n_tok / statistics.median(ts),
                   "cpu_per_wall": own / max(c1[1] - c0[1], 1e-9), "others_cpu_frac": others_frac(c0, c1, own),
                   "loadavg": loadavg(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            if req.get("also_forward"):
                # the model call alone, on batches built beforehand by the package's own functions
                cfg = e.config
                pre = []
                for b in batches:
                    test, text = efml_elmo.read_list(b, cfg["token_embedder"]["max_characters_per_token"])
                    w, c, lens, masks, _texts, _ind = efml_elmo.create_batches(
                        test, e.batch_size, e.word_lexicon, e.char_lexicon, cfg, text=text)
                    pre.append(list(zip(w, c, masks)))

                def fwd_pass():
                    for parts in pre:
                        e.model.encoder.reset_states()
                        with grad_ctx():
                            for w, c, masks in parts:
                                e.model.forward(w, c, masks)

                fts = timed(fwd_pass, req["runs"], req["warmup"])
                rec["forward_median_s"] = statistics.median(fts)
                rec["forward_times_s"] = fts
            print(json.dumps(rec), flush=True)
        except Exception as ex:  # report, keep serving
            print(json.dumps({"error": f"{type(ex).__name__}: {ex}"}), flush=True)


class PackageWorker:
    def __init__(self, python, args, log_path):
        self.log = open(log_path, "w")
        self.log_path = log_path
        argv = [python, os.path.abspath(__file__), "--serve", "--efml", args.efml, "--threads", str(args.threads),
                "--batch-size", str(args.batch_size)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self._read()

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                with open(self.log_path) as f:
                    tail = "".join(f.readlines()[-20:])
                raise RuntimeError(f"package worker exited ({self.proc.wait()}); log {self.log_path}:\n{tail}")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rec = self._read()
        if "error" in rec:
            raise RuntimeError(f"package worker failed on {req['workload']}: {rec['error']}")
        return rec

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- (b) ours: `elmo bench`

def run_ours(args, name, path, runs):
    argv = [args.elmo, "bench", "--model", args.model, "--input", path, "--runs", str(runs),
            "--warmup", str(args.warmup), "--threads", str(args.threads), "--output", "layers",
            *shlex.split(args.elmo_args)]
    c0, r0 = cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=args.timeout)
    c1, r1 = cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    lines = [x for x in lines if x.get("output") == "layers"]
    if len(lines) != 1:
        raise RuntimeError(f"{shlex.join(argv)}: expected one JSON line for output layers, got {len(lines)}")
    rec = lines[0]
    own = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    rec.update({"cmd_argv": argv, "cmd_wall_s": c1[1] - c0[1], "cmd_cpu_s": own,
                "others_cpu_frac": others_frac(c0, c1, own), "loadavg": loadavg()})
    if rec.get("runs") != runs:
        raise RuntimeError(f"{shlex.join(argv)}: runs {rec.get('runs')} != {runs}")
    return rec


# ---------------------------------------------------------------- main

def pick_python(arg):
    if arg:
        return arg
    try:
        import importlib.util
        if importlib.util.find_spec("elmoformanylangs") and importlib.util.find_spec("torch"):
            return sys.executable
    except (ImportError, ValueError):
        pass
    return VENV_PY


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efml", default="/tmp/bench/efml_full", help="ELMoForManyLangs model folder")
    ap.add_argument("--inputs", default="/tmp/bench/workloads", help="folder of W1.jsonl ...")
    ap.add_argument("--workloads", default="W1,W2,W3", help="names in --inputs or .jsonl paths")
    ap.add_argument("--elmo", default=os.path.join(REPO, "target", "release", "elmo"), help="our CLI binary")
    ap.add_argument("--model", default=None, help="the converted model (elmo convert --elmoformanylangs ...)")
    ap.add_argument("--elmo-args", default="", help="extra arguments for `elmo bench`, e.g. '--no-word-sharing'")
    ap.add_argument("--python", default=None, help=f"python with torch + elmoformanylangs (default: this one if it "
                                                   f"can import them, else {VENV_PY})")
    ap.add_argument("--peers", default="package,ours", help="subset/order of package,ours")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runs-w3", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="Embedder(batch_size=...); the package's default")
    ap.add_argument("--grad", choices=["as-is", "no_grad"], default="as-is")
    ap.add_argument("--also-forward", action="store_true", help="also time the package's model.forward alone")
    ap.add_argument("--rotate", action="store_true", help="swap the peer order on odd repetitions")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--results", default=None, help="append every block's record here (JSON lines)")
    ap.add_argument("--logs", default="/tmp/bench/logs")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)

    peers = args.peers.split(",")
    if not peers or not set(peers) <= {"package", "ours"} or len(set(peers)) != len(peers):
        sys.exit(f"error: --peers {args.peers!r}: a list of distinct package, ours")
    wls = []
    for spec in args.workloads.split(","):
        path = spec if spec.endswith(".jsonl") else os.path.join(args.inputs, f"{spec}.jsonl")
        if not os.path.exists(path):
            sys.exit(f"error: no workload {path} (python3 /work/shared/anchors/workloads.py --out {args.inputs})")
        name = os.path.basename(path)[:-len(".jsonl")]
        batches = read_jsonl(path)
        wls.append((name, os.path.abspath(path), sum(len(s) for b in batches for s in b)))
    if "ours" in peers:
        why = None
        if not args.model:
            why = "no --model given"
        elif not os.path.exists(args.model):
            why = f"--model {args.model} does not exist (make it: elmo convert --elmoformanylangs {args.efml} --out MODEL)"
        elif not os.access(args.elmo, os.X_OK):
            why = f"--elmo {args.elmo} is not an executable"
        if why:
            print(f"[efml side_by_side] skipping ours: {why}", file=sys.stderr, flush=True)
            peers = [p for p in peers if p != "ours"]
    if not peers:
        sys.exit("error: nothing to run")

    os.makedirs(args.logs, exist_ok=True)
    worker = None
    blocks = {(n, p): [] for n, _, _ in wls for p in peers}
    try:
        if "package" in peers:
            py = pick_python(args.python)
            log = os.path.join(args.logs, f"efml-package-{time.strftime('%Y%m%d-%H%M%S')}.log")
            print(f"[efml side_by_side] loading the package with {py} (log {log})", file=sys.stderr, flush=True)
            worker = PackageWorker(py, args, log)
            print(f"[efml side_by_side] package ready: load_s {worker.ready['load_s']:.2f}, torch "
                  f"{worker.ready['torch']}, threads {worker.ready['threads']}", file=sys.stderr, flush=True)
        for rep in range(args.reps):
            order = peers[::-1] if args.rotate and rep % 2 else peers
            for name, path, _ in wls:
                runs = runs_for(name, args.runs, args.runs_w3)
                for peer in order:
                    if peer == "package":
                        rec = worker.run(workload=name, input=path, runs=runs, warmup=args.warmup, grad=args.grad,
                                         also_forward=args.also_forward)
                    else:
                        rec = run_ours(args, name, path, runs)
                    rec = {**rec, "peer": peer, "rep": rep}
                    blocks[(name, peer)].append(rec)
                    if args.results:
                        with open(args.results, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                    extra = f" forward {rec['forward_median_s']:.4f} s" if "forward_median_s" in rec else ""
                    print(f"[efml side_by_side] rep {rep + 1}/{args.reps} {name} {peer:7s} median "
                          f"{rec['median_s']:.4f} s min {rec['min_s']:.4f} s{extra} others "
                          f"{rec['others_cpu_frac']:.2f} load {rec['loadavg'][0]:.2f}", file=sys.stderr, flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as ex:
        sys.exit(f"error: {ex}")
    finally:
        if worker:
            worker.close()

    summary = {}
    for name, _, n_tok in wls:
        summary[name] = {}
        for p in peers:
            bs = blocks[(name, p)]
            med = statistics.median(b["median_s"] for b in bs)
            s = {"median_s": med, "rep_medians_s": [b["median_s"] for b in bs], "min_s": min(b["min_s"] for b in bs),
                 "tokens_per_s_median": n_tok / med, "others_cpu_frac_max": max(b["others_cpu_frac"] for b in bs),
                 "loadavg_1m_max": max(b["loadavg"][0] for b in bs),
                 "peak_rss_mib": max((b.get("peak_rss_mib") or 0) for b in bs) or None}
            if any("forward_median_s" in b for b in bs):
                s["forward_median_s"] = statistics.median(b["forward_median_s"] for b in bs)
            summary[name][p] = s

    print(f"\nELMoForManyLangs package vs ours: model {args.efml}, {args.reps} reps x (warmup {args.warmup} + runs "
          f"{args.runs}, W3 {args.runs_w3}), threads {args.threads}, package grad {args.grad}, batch_size "
          f"{args.batch_size}\n")
    print("| workload | tokens | package median s | ours median s | ratio package/ours | package tok/s | ours tok/s "
          "| package forward-only s | others CPU max | load 1m max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, _, n_tok in wls:
        pk, ou = summary[name].get("package"), summary[name].get("ours")
        ratio = pk["median_s"] / ou["median_s"] if pk and ou else None
        oth = max(s["others_cpu_frac_max"] for s in summary[name].values())
        la = max(s["loadavg_1m_max"] for s in summary[name].values())
        print(f"| {name} | {n_tok} | {fmt(pk and pk['median_s'], '.4f')} | {fmt(ou and ou['median_s'], '.4f')} | "
              f"{fmt(ratio, '.2f')} | {fmt(pk and pk['tokens_per_s_median'], '.1f')} | "
              f"{fmt(ou and ou['tokens_per_s_median'], '.1f')} | {fmt(pk and pk.get('forward_median_s'), '.4f')} | "
              f"{oth:.2f} | {la:.2f} |")
    if "ours" not in peers:
        print("\n(ours skipped: see the message above)")
    print(json.dumps({"what": "efml_side_by_side", "efml": args.efml, "model": args.model, "peers": peers,
                      "reps": args.reps, "runs": args.runs, "runs_w3": args.runs_w3, "warmup": args.warmup,
                      "threads": args.threads, "grad": args.grad, "batch_size": args.batch_size,
                      "package_load_s": worker.ready["load_s"] if worker else None,
                      "torch": worker.ready["torch"] if worker else None, "workloads": summary}))


if __name__ == "__main__":
    main()
