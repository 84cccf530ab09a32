#!/usr/bin/env python3
"""Independent numpy reference of a Llama-family forward pass.

Reads a Hugging Face style model directory (config.json and *.safetensors,
f32/f16/bf16, one file or shards) with numpy alone and computes float64
logits for every position of a token sequence: RMSNorm, q/k/v projections
(with biases when the checkpoint has them), RoPE in the rotate_half
convention with rope_theta, grouped-query causal attention, SwiGLU, final
norm and lm_head (tied to the embeddings when lm_head.weight is absent).

  ref_forward.py logits MODEL_DIR ID,ID,...
      prints the logits, one line per position
  ref_forward.py check --mkmodel PATH --dump PATH --workdir DIR
      makes models of every architecture with memsleep-mkmodel, runs
      dump_logits (memsleep's compute backend) on each and fails unless the
      relative error (max |memsleep - ref| / max |ref| per position) is
      under 1e-4 everywhere
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np


def load_safetensors(path):
    """Returns {name: float64 array} of one safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    hlen = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[base + a:base + b]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(buf, dtype="<f4")
        elif dt == "F16":
            arr = np.frombuffer(buf, dtype="<f2")
        elif dt == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F64":
            arr = np.frombuffer(buf, dtype="<f8")
        else:
            raise ValueError("%s: tensor %s has dtype %s" % (path, name, dt))
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def load_model(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(d, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for fn in files:
        weights.update(load_safetensors(os.path.join(d, fn)))
    return cfg, weights


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    """x: [T, heads, head_dim]; pairs (i, i + head_dim/2)."""
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = pos[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
    half = hd // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def forward(cfg, w, ids):
    """float64 logits [T, vocab] for token ids."""
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    x = w["model.embed_tokens.weight"][np.array(ids)]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = h @ w[p + "self_attn.%s_proj.weight" % name].T
            b = w.get(p + "self_attn.%s_proj.bias" % name)
            return y if b is None else y + b

        q = rope(proj("q").reshape(T, nh, hd), pos, theta)
        k = rope(proj("k").reshape(T, nkv, hd), pos, theta)
        v = proj("v").reshape(T, nkv, hd)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask[None]
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, nh * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None:
        head = w["model.embed_tokens.weight"]
    return x @ head.T


def parse_ids(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t]


def check(mkmodel, dump, workdir):
    cases = [
        ("llama", ["--arch", "llama"]),
        ("llama-tied", ["--arch", "llama", "--tie", "--seed", "2"]),
        ("qwen2", ["--arch", "qwen2", "--rope-theta", "1000000", "--seed", "3"]),
        ("mistral", ["--arch", "mistral", "--kv-heads", "2", "--seed", "4"]),
        ("llama-mha-bf16", ["--arch", "llama", "--kv-heads", "8", "--dtype", "bf16",
                            "--seed", "5"]),
    ]
    worst = 0.0
    failed = []
    for name, args in cases:
        d = os.path.join(workdir, name)
        shutil.rmtree(d, ignore_errors=True)
        subprocess.run([mkmodel, "--out", d, "--layers", "2"] + args, check=True,
                       stdout=subprocess.DEVNULL)
        cfg, w = load_model(d)
        vocab = cfg["vocab_size"]
        ids = [(i * 131 + 7) % vocab for i in range(37)]
        res = subprocess.run([dump, d, ",".join(map(str, ids))], check=True,
                             stdout=subprocess.PIPE, text=True)
        got = np.array([[float(v) for v in line.split()] for line in res.stdout.splitlines()])
        ref = forward(cfg, w, ids)
        if got.shape != ref.shape:
            failed.append("%s: shape %s, reference %s" % (name, got.shape, ref.shape))
            continue
        rel = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
        err = float(rel.max())
        worst = max(worst, err)
        agree = float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1)))
        print("%-16s positions %d  max relative error %.3e  argmax agreement %.2f"
              % (name, len(ids), err, agree))
        if not err < 1e-4:
            failed.append("%s: relative error %.3e at position %d"
                          % (name, err, int(rel.argmax())))
        shutil.rmtree(d, ignore_errors=True)
    print("worst relative error %.3e (limit 1e-4)" % worst)
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    return 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "logits":
        cfg, w = load_model(argv[2])
        for row in forward(cfg, w, parse_ids(argv[3])):
            print(" ".join("%.9g" % v for v in row))
        return 0
    if len(argv) >= 2 and argv[1] == "check":
        opts = dict(zip(argv[2::2], argv[3::2]))
        workdir = opts["--workdir"]
        os.makedirs(workdir, exist_ok=True)
        return check(opts["--mkmodel"], opts["--dump"], workdir)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
