#!/usr/bin/env python3
"""The TensorFlow baseline of benches/serve_load.sh: what an ELMo user writes
today, bilm-tf behind a minimal Python HTTP server answering one request at a
time. POST /embed {"inputs": [[token, ...], ...]} -> one pooled vector per
input (bilm-tf's weight_layers mix, masked mean), as `elmo serve`'s /embed.

  $ENV/bin/python benches/serve/tf_server.py --anchors ../shared/anchors --model /tmp/bench/full --port 18490

Runs in the anchors' environment (shared/anchors/setup.sh): bilm==0.1.post5 on
tensorflow-cpu through the anchors' compatibility shim, 2 threads.
"""
import argparse
import contextlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--anchors", required=True, help="the shared/anchors folder")
ap.add_argument("--model", required=True, help="folder with options.json and lm_weights.hdf5")
ap.add_argument("--port", type=int, default=18490)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
sys.dont_write_bytecode = True
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(args.anchors))
import numpy as np  # noqa: E402

import anchors_common as C  # noqa: E402
import bilm_tf_compat  # noqa: E402

tf, bilm = bilm_tf_compat.load()
options_file, weight_file = C.model_files(args.model)
with open(options_file) as f:
    max_chars = json.load(f)["char_cnn"]["max_characters_per_token"]
ids_ph = tf.placeholder("int32", shape=(None, None, max_chars))
with contextlib.redirect_stdout(sys.stderr):
    lm = bilm.BidirectionalLanguageModel(options_file, weight_file)
    ops = lm(ids_ph)
    elmo = bilm.weight_layers("elmo", ops, l2_coef=0.0)["weighted_op"]
sess = tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=args.threads,
                                        inter_op_parallelism_threads=args.threads))
sess.run(tf.global_variables_initializer())


def embed(sentences):
    ids = C.batch_char_ids(sentences, max_chars, add_bos_eos=True)
    # bilm-tf is stateful by default; the shim made it stateless at load.
    mix, mask = sess.run([elmo, ops["mask"]], feed_dict={ids_ph: ids})
    m = mask.astype(np.float32)[:, :, None]
    return ((mix * m).sum(1) / np.maximum(m.sum(1), 1.0)).tolist()


embed([["warm", "up"]])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            inputs = body["inputs"]
            if isinstance(inputs, str):
                inputs = [inputs]
            sentences = [s.split() if isinstance(s, str) else s for s in inputs]
            out, status = json.dumps(embed(sentences)).encode(), 200
        except Exception as e:  # a bad request must not take the server down
            out, status = json.dumps({"error": str(e)}).encode(), 422
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class Server(HTTPServer):
    request_queue_size = 1024  # the listen backlog: concurrency 128 must not be refused


print(f"listening on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
Server(("127.0.0.1", args.port), Handler).serve_forever()
