#!/usr/bin/env bash
# Load benchmark of `elmo serve` (issue 20): wrk (Debian's) against the full
# model, one 10-token sentence per request (POST /embed), concurrency 1, 8,
# 32, 128, batching on and off (--no-batching: one request at a time), and
# `elmo bench` W1 (the batch-1 pass) for reference. Prints a Markdown table.
#
#   benches/serve_load.sh [MODEL] [SECONDS]     (default /tmp/bench/full.safetensors, 15 s a point)
#
# Not run by CI: it takes minutes and needs the full model. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-/tmp/bench/full.safetensors}
secs=${2:-15}
[ -f "$model" ] || { echo "no model at $model (see docs/performance.md to make one)"; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin elmo
elmo=$CARGO_TARGET_DIR/release/elmo
out=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
pid=

echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
w1=/tmp/bench/workloads/W1.jsonl
if [ -f "$w1" ]; then
  echo "# elmo bench W1 (1 x 10 tokens):"
  "$elmo" bench --model "$model" --input "$w1" --runs 7 --warmup 2 | sed 's/^/#   /'
fi

port=18480
measure() { # mode (the server on $port is up)
  local mode=$1
  # Warm-up: the pages of the mapped weights, the thread pools.
  wrk -t1 -c1 -d3s -s benches/serve/post.lua "http://127.0.0.1:$port/embed" >/dev/null
  for c in 1 8 32 128; do
    t=$(( c < 2 ? 1 : 2 ))
    wrk -t$t -c$c -d${secs}s --timeout 60s --latency -s benches/serve/post.lua \
      "http://127.0.0.1:$port/embed" >"$out/wrk-$mode-$c.txt"
    rps=$(sed -n 's/^Requests\/sec: *//p' "$out/wrk-$mode-$c.txt")
    p50=$(awk '$1=="50%"{print $2}' "$out/wrk-$mode-$c.txt")
    p99=$(awk '$1=="99%"{print $2}' "$out/wrk-$mode-$c.txt")
    errs=$(grep -E "Non-2xx|Socket errors" "$out/wrk-$mode-$c.txt" | tr '\n' ' ' || true)
    echo "| $mode | $c | $rps | $p50 | $p99 | ${errs:-none} |"
    if [ "$c" = 1 ] && [ -f "$w1" ]; then
      # The batch-1 pass right after (the server idle): the machine is
      # shared, so the reference is taken in the same minute.
      echo "# elmo bench W1 after $mode c=1: median $("$elmo" bench --model "$model" --input "$w1" --runs 7 --warmup 2 | sed -n 's/.*"median_s":\([0-9.]*\).*/\1/p') s"
    fi
  done
}
wait_up() {
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.2; done
  echo "the server on $port did not come up"; exit 1
}
run_mode() { # mode flags...
  local mode=$1; shift
  "$elmo" serve --model "$model" --port $port --log warn "$@" 2>"$out/serve-$mode.log" &
  pid=$!
  wait_up
  measure "$mode"
  curl -s "http://127.0.0.1:$port/metrics" | grep -E '^elmo_(batches_total|sentences_total|batch_sentences_(sum|count))' | sed "s/^/# $mode: /"
  kill -TERM $pid; wait $pid || { echo "elmo serve exited non-zero"; exit 1; }
  pid=
}
echo "| batching | concurrency | requests/s | p50 | p99 | errors |"
echo "| --- | --- | --- | --- | --- | --- |"
run_mode on
run_mode off --no-batching
# The TensorFlow baseline (bilm-tf behind Python's http.server, one request
# at a time), when the anchors' environment is there (shared/anchors/setup.sh)
# and the model's bilm-tf files are beside it (MODEL without .safetensors).
anchors=${ANCHORS:-../shared/anchors}
py=${ELMO_ANCHORS_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/elmo-anchors}/bin/python
tfmodel=${model%.safetensors}
if [ -x "$py" ] && [ -f "$anchors/bilm_tf_compat.py" ] && [ -f "$tfmodel/options.json" ]; then
  "$py" benches/serve/tf_server.py --anchors "$anchors" --model "$tfmodel" --port $port 2>"$out/tf.log" &
  pid=$!
  wait_up
  measure "TF (bilm-tf, one at a time)"
  kill $pid; wait $pid 2>/dev/null || true
  pid=
else
  echo "# no TF baseline: needs $py (shared/anchors/setup.sh) and $tfmodel/options.json"
fi
