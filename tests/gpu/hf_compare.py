#!/usr/bin/env python3
"""hf_compare.py - memsleep's logits against Hugging Face transformers.

Two steps, because the GPU machine need not build memsleep's engine:

  hf_compare.py prepare --mkmodel PATH --dump PATH --workdir DIR
      (where memsleep is built) makes a model of each architecture with
      memsleep-mkmodel (llama, qwen2 with q/k/v biases and tied embeddings, mistral in two shards; untied and
      tied embeddings; f32 and bf16 on disk) and writes, next to each, the
      logits memsleep's CPU engine computes for a fixed prompt (dump_logits).

  hf_compare.py check --workdir DIR [--device cuda]
      (where torch and transformers are) loads each model directory with
      transformers' AutoModelForCausalLM in float32 on the GPU (TF32 off),
      computes the logits of the same prompt and prints, per model, the
      relative error max|memsleep - hf| / max|hf| over all positions, and
      whether the greedy next token agrees at every position. Exits 1 if any
      relative error is over 1e-4 (both sides compute in float32).
"""
import argparse
import json
import os
import subprocess
import sys

PROMPT = [1, 17, 300, 42, 509, 7, 255, 256, 100, 3, 64, 128, 5, 400, 2, 99]
MODELS = [
    ("llama", []),
    ("llama-tied-bf16", ["--arch", "llama", "--tie", "--dtype", "bf16"]),
    ("qwen2", ["--arch", "qwen2"]),
    ("qwen2-f16", ["--arch", "qwen2", "--dtype", "f16"]),
    ("mistral-2-shards", ["--arch", "mistral", "--rope-theta", "1000000", "--shards", "2"]),
]
TOLERANCE = 1e-4


def prepare(args):
    os.makedirs(args.workdir, exist_ok=True)
    for name, extra in MODELS:
        d = os.path.join(args.workdir, name)
        subprocess.run([args.mkmodel, "--out", d, "--force", "--seed", "7"] + extra, check=True,
                       stdout=subprocess.DEVNULL)
        out = subprocess.run([args.dump, d, ",".join(map(str, PROMPT))], check=True,
                             capture_output=True, text=True).stdout
        rows = [[float(x) for x in line.split()] for line in out.splitlines() if line.strip()]
        with open(os.path.join(d, "memsleep_logits.json"), "w") as f:
            json.dump({"prompt": PROMPT, "logits": rows}, f)
        print(f"prepared {name}: {len(rows)} positions x {len(rows[0])} logits")


def check(args):
    import torch
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failed = 0
    rows = []
    for name, _ in MODELS:
        d = os.path.join(args.workdir, name)
        with open(os.path.join(d, "memsleep_logits.json")) as f:
            ours = json.load(f)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(args.device)
        model.eval()
        ids = torch.tensor([ours["prompt"]], device=args.device)
        with torch.no_grad():
            hf = model(ids).logits[0].double().cpu()
        mine = torch.tensor(ours["logits"], dtype=torch.float64)
        rel = ((mine - hf).abs().max() / hf.abs().max()).item()
        same_argmax = bool((mine.argmax(-1) == hf.argmax(-1)).all().item())
        ok = rel <= TOLERANCE and same_argmax
        failed += not ok
        rows.append((name, model.config.architectures[0], rel, same_argmax, ok))
        del model
    print()
    print(f"{'model':<20} {'architecture':<20} {'rel. error':>12} {'argmax':>8} {'result':>8}")
    for name, arch, rel, same, ok in rows:
        print(f"{name:<20} {arch:<20} {rel:>12.3e} {'same' if same else 'DIFF':>8} "
              f"{'PASS' if ok else 'FAIL':>8}")
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--mkmodel", required=True)
    pp.add_argument("--dump", required=True)
    pp.add_argument("--workdir", required=True)
    pc = sub.add_parser("check")
    pc.add_argument("--workdir", required=True)
    pc.add_argument("--device", default="cuda")
    args = p.parse_args()
    if args.cmd == "prepare":
        prepare(args)
        return 0
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"hf_compare: skipped, {e}")
        return 77
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
