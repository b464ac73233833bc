#!/usr/bin/env python3
"""Write a full-size ELMoForManyLangs model folder with random weights, for speed comparisons
against HIT-SCIR's PyPI package `elmoformanylangs==0.0.4.post2`. Our own code: it imports the
package (installed from PyPI, with torch and `overrides<4`) and calls it; nothing of it is copied.

  /tmp/efml-venv/bin/python benches/efml/make_full.py --out /tmp/bench/efml_full \
      [--workloads /tmp/bench/workloads] [--seed 13] [--noise fixed|fanin] [--no-check]

The folder is laid out like the released models and like shared/golden/make_efml.py's
miniatures: `config.json` ({"config_path": "efml_full.json"}), `efml_full.json` (the model
config), `char.dic` (`char<TAB>id` lines: the specials `<bow> <eow> <oov> <pad> <bos> <eos>`,
then the characters), no `word.dic` (word_dim 0), `token_embedder.pkl` and `encoder.pkl` (the two
state dicts, torch's legacy non-zip serialization, as the released models are). ~360 MiB.

The config is the released characters-only one at full size (`cnn_0_100_512_4096_sample.json`):
char CNN with filters [[1,32],[2,32],[3,64],[4,128],[5,256],[6,512],[7,1024]] (2048 channels),
relu, 2 highways, char_dim 50, 50 characters per token, word_dim 0; biLSTM with cell 4096,
projection 512, 2 layers, cell/proj clip 3; sampled-softmax classifier (not used at inference).
Note: the wheel's own `configs/cnn_0_100_512_4096_sample.json` is byte-identical to
`cnn_50_100_512_4096_sample.json` (both say word_dim 100); the released characters-only models
have word_dim 0, which is what is written here.

char.dic: every character of the workloads' .jsonl files, plus printable ASCII, Latin-1 and
Latin Extended-A, Greek, Cyrillic, kana and the first CJK ideographs, ~3,900 entries (the released
models have thousands), then, as the released files do, a line holding U+3000 (the package's
reader puts the character back after strip() eats it).

Weights: the package's own modules and initialisation (seeded), then perturbed as make_efml.py
does (N(0, 0.5) added to the character embedding, N(0, 0.3) to everything else), or with
--noise fanin N(0, 0.3 * sqrt(16 / fan_in)) (16 = the miniature's projection size) so the
full-size activations stay in range; the speed does not depend on it.
"""
import argparse
import codecs
import glob
import json
import math
import os
import random
import sys
import time

CONFIG_NAME = "efml_full.json"
CONFIG = {
    "encoder": {"name": "elmo", "projection_dim": 512, "cell_clip": 3, "proj_clip": 3, "dim": 4096,
                "n_layers": 2},
    "token_embedder": {"name": "cnn", "activation": "relu",
                       "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
                       "n_highway": 2, "word_dim": 0, "char_dim": 50, "max_characters_per_token": 50},
    "classifier": {"name": "sampled_softmax", "n_samples": 8192},
    "dropout": 0.1,
}
SPECIALS = ["<bow>", "<eow>", "<oov>", "<pad>", "<bos>", "<eos>"]


def ranges():
    """Extra characters beside the workloads', in code point order."""
    spans = [(0x21, 0x7E),      # printable ASCII (no space)
             (0xA1, 0x17F),     # Latin-1 Supplement, Latin Extended-A
             (0x391, 0x3C9),    # Greek
             (0x400, 0x4FF),    # Cyrillic
             (0x3041, 0x3096),  # hiragana
             (0x30A1, 0x30FA),  # katakana
             (0x3001, 0x3002),  # 、 。
             (0x4E00, 0x4E00 + 3000 - 1)]  # the first 3,000 CJK unified ideographs
    out = []
    for a, b in spans:
        for cp in range(a, b + 1):
            c = chr(cp)
            if c.isprintable() and not c.isspace() and c != "\u00ad":
                out.append(c)
    return out


def workload_chars(folder):
    files = sorted(glob.glob(os.path.join(folder, "*.jsonl")))
    if not files:
        sys.exit(f"error: no .jsonl in {folder}; run: python3 /work/shared/anchors/workloads.py --out {folder}")
    chars = set()
    for fn in files:
        with open(fn, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    for sent in json.loads(line):
                        for tok in sent:
                            chars.update(tok)
    return chars, files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench/efml_full")
    ap.add_argument("--workloads", default="/tmp/bench/workloads", help="folder of the workloads' .jsonl files")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--noise", choices=["fixed", "fanin"], default="fixed")
    ap.add_argument("--no-check", action="store_true", help="skip loading the folder back with Embedder")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    repo = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    if out == repo or out.startswith(repo + os.sep):
        sys.exit(f"error: --out {out} is inside the repository; write it elsewhere (e.g. /tmp/bench/efml_full)")

    import torch
    from elmoformanylangs.modules.embedding_layer import EmbeddingLayer
    from elmoformanylangs.frontend import Model

    t0 = time.time()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, CONFIG_NAME), "w") as f:
        json.dump(CONFIG, f, indent=1)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"config_path": CONFIG_NAME}, f)

    wl_chars, wl_files = workload_chars(a.workloads)
    extra = ranges()
    chars = sorted(wl_chars - set(extra)) + extra
    assert not set(chars) & set(SPECIALS) and len(set(chars)) == len(chars)
    entries = SPECIALS + chars + ["\u3000"]
    with open(os.path.join(out, "char.dic"), "w", encoding="utf-8") as f:
        for i, c in enumerate(entries):
            f.write(f"{c}\t{i}\n")
    for stale in ("word.dic",):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))

    # read char.dic back the way the package's Embedder does
    lexicon = {}
    with codecs.open(os.path.join(out, "char.dic"), "r", encoding="utf-8") as fpi:
        for line in fpi:
            t = line.strip().split("\t")
            if len(t) == 1:
                t.insert(0, "\u3000")
            lexicon[t[0]] = int(t[1])
    assert len(lexicon) == len(entries), (len(lexicon), len(entries))

    char_layer = EmbeddingLayer(CONFIG["token_embedder"]["char_dim"], lexicon, fix_emb=False, embs=None)
    model = Model(CONFIG, None, char_layer, False)
    n_params = 0
    with torch.no_grad():
        for n, t in list(model.token_embedder.named_parameters()) + list(model.encoder.named_parameters()):
            n_params += t.numel()
            if "embedding" in n:
                std = 0.5
            elif a.noise == "fixed":
                std = 0.3
            else:
                fan_in = t.shape[1] * (t.shape[2] if t.dim() == 3 else 1) if t.dim() >= 2 else 16
                std = 0.3 * math.sqrt(16 / fan_in)
            t.add_(torch.randn_like(t) * std)
    kw = {"_use_new_zipfile_serialization": False}
    torch.save(model.token_embedder.state_dict(), os.path.join(out, "token_embedder.pkl"), **kw)
    torch.save(model.encoder.state_dict(), os.path.join(out, "encoder.pkl"), **kw)
    made_s = time.time() - t0

    info = {"out": out, "config": CONFIG_NAME, "char_dic_entries": len(entries), "workload_chars": len(wl_chars),
            "workload_files": [os.path.basename(x) for x in wl_files], "params": n_params, "seed": a.seed,
            "noise": a.noise, "legacy_pickles": True, "torch": torch.__version__, "made_s": round(made_s, 1),
            "bytes": {fn: os.path.getsize(os.path.join(out, fn)) for fn in sorted(os.listdir(out))}}
    if not a.no_check:
        from elmoformanylangs import Embedder
        t1 = time.time()
        e = Embedder(out, batch_size=64)
        e.model.encoder.reset_states()
        with torch.no_grad():
            o = e.sents2elmo([["Ein", "Test", "."]], output_layer=-2)
        assert o[0].shape == (3, 3, 1024), o[0].shape
        info["check"] = {"load_and_embed_s": round(time.time() - t1, 1), "shape": list(o[0].shape),
                         "layer_abs_max": [float(abs(o[0][k]).max()) for k in range(3)]}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
