#!/usr/bin/env python3
"""GPU serving benchmark: memsleep-serve --device cuda:N against Hugging Face
transformers on the same model directory and GPU, in one run.

Makes a model of Qwen2-0.5B's shape with memsleep-mkmodel (24 layers,
hidden 896, 14 heads, 2 KV heads, SwiGLU 4864, q/k/v biases, tied
embeddings, bf16, and Qwen2's vocabulary of 151,936: --vocab 151936 gives
the embeddings and the output layer that many rows, so the weights, the
output GEMM and sampling are full size; the tokenizer keeps memsleep-mkmodel's
512 ids, which does not matter here: every request is token ids) and
measures, in this order:

1. Decode throughput of memsleep-serve over HTTP at each batch level B:
   B clients send one non-streamed greedy /generate each at once (a
   PROMPT-token prompt, exactly NEW new tokens, ignore_eos); tokens/s =
   B * NEW / (first request sent -> last answer read), prefill included.
   One warm-up round first; the best of REPEATS rounds counts.
2. Sleep/wake over HTTP: CYCLES rounds of POST /release_memory_occupation
   (every tag; weights backed up to host memory, KV cache and workspace
   discarded) and POST /resume_memory_occupation, as a client sees them;
   greedy output before and after must be identical.
3. Baselines, with the server stopped: the device-to-device copy bandwidth
   (torch copy_ of a 1 GiB buffer; counted as bytes read + bytes written,
   what HBM moves); a raw pinned copy of the weights' bytes (device ->
   pinned host -> device, torch); and transformers generate in bf16 on the
   same directory at the same batch levels (same prompts, do_sample=False,
   min_new_tokens = max_new_tokens = NEW).

Prints the ratios and the targets: >= 3x transformers at the largest batch;
batch 1 >= 60% of the bound weight_bytes / copy bandwidth (the weights read
once per token); release + resume >= 80% of the pinned copy's rate.

  bench/gpu_serving.py [--build DIR] [--device cuda:0] [--levels 1,16,64]
                       [--new-tokens N] [--prompt-tokens N] [--cycles N]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

QWEN2_05B = ["--arch", "qwen2", "--layers", "24", "--hidden", "896", "--heads", "14",
             "--kv-heads", "2", "--intermediate", "4864", "--rope-theta", "1000000",
             "--dtype", "bf16", "--max-position", "4096", "--vocab", "151936"]


def start_server(serve, model, *extra):
    p = subprocess.Popen([serve, "--model", model, "--host", "127.0.0.1", "--port", "0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        sys.exit("gpu_serving.py: memsleep-serve did not start: %r" % line)
    return p, int(m.group(1))


def call(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        c.request(method, path, body=None if body is None else json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None
    finally:
        c.close()


def prompts(batch, length):
    return [[(i * 13 + j * 3 + 1) % 500 for j in range(length)] for i in range(batch)]


def generate(port, ids, n):
    status, j = call(port, "POST", "/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": n, "temperature": 0, "ignore_eos": True}})
    if status != 200 or len(j["output_ids"]) != n:
        raise RuntimeError("/generate: %d %r" % (status, j))
    return j["output_ids"]


def serve_round(port, batch, plen, n):
    outs = [None] * batch
    errs = []

    def one(i, ids):
        try:
            outs[i] = generate(port, ids, n)
        except Exception as e:  # noqa: BLE001 - reported below
            errs.append(e)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts(batch, plen))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errs:
        raise errs[0]
    return batch * n / dt


def hf_round(model, torch, batch, plen, n, dev):
    ids = torch.tensor(prompts(batch, plen), device=dev)
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape[1] == plen + n, out.shape
    return batch * n / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-gpu-engine", help="CMake build directory")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=5)
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    serve = os.path.join(a.build, "src/server/memsleep-serve")
    mkmodel = os.path.join(a.build, "tools/memsleep-mkmodel")
    tmp = tempfile.mkdtemp(prefix="memsleep-bench-gpu-")
    p = None
    try:
        model = os.path.join(tmp, "qwen2-0.5b-shape")
        subprocess.run([mkmodel, "--out", model, "--seed", "3", *QWEN2_05B], check=True,
                       stdout=subprocess.DEVNULL)
        max_batch = max(levels)
        ctx = a.prompt_tokens + a.new_tokens + 16
        args = ["--device", a.device, "--max-batch", str(max_batch), "--max-context", str(ctx)]
        print("model: Qwen2-0.5B shape (%s)" % " ".join(QWEN2_05B[2:]))
        print("server: memsleep-serve %s; prompt %d tokens, %d new tokens, greedy"
              % (" ".join(args), a.prompt_tokens, a.new_tokens))
        p, port = start_server(serve, model, *args)
        _, info = call(port, "GET", "/get_server_info")
        weight_bytes = info["model"]["weight_bytes"]
        ours = {}
        for b in levels:
            serve_round(port, b, a.prompt_tokens, 8)  # warm-up
            ours[b] = max(serve_round(port, b, a.prompt_tokens, a.new_tokens)
                          for _ in range(a.repeats))
            print("memsleep batch %3d: %9.1f tokens/s" % (b, ours[b]), flush=True)

        probe = prompts(1, a.prompt_tokens)[0]
        before = generate(port, probe, 32)
        _, info = call(port, "GET", "/get_server_info")
        mem = {t: v["reserved_bytes"] for t, v in info["memory"].items()}
        rel, res = [], []
        for c in range(a.cycles + 1):
            t0 = time.perf_counter()
            s1, j1 = call(port, "POST", "/release_memory_occupation", {})
            t1 = time.perf_counter()
            s2, j2 = call(port, "POST", "/resume_memory_occupation", {})
            t2 = time.perf_counter()
            if s1 != 200 or s2 != 200:
                sys.exit("gpu_serving.py: release %d %r / resume %d %r" % (s1, j1, s2, j2))
            if c:  # the first cycle is a warm-up
                rel.append(t1 - t0)
                res.append(t2 - t1)
        after = generate(port, probe, 32)
        p.terminate()
        p.wait(60)
        p.stdout.close()
        p = None

        import torch
        from transformers import AutoModelForCausalLM
        dev = a.device
        nbytes = 1 << 30
        src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize()
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        torch.cuda.synchronize()
        d2d = 2 * nbytes * reps / (time.perf_counter() - t0)  # read + written
        del src, dst
        w = torch.empty(weight_bytes, dtype=torch.uint8, device=dev)
        host = torch.empty(weight_bytes, dtype=torch.uint8, pin_memory=True)
        d2h, h2d = [], []
        for c in range(a.cycles + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            host.copy_(w)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            w.copy_(host)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if c:
                d2h.append(t1 - t0)
                h2d.append(t2 - t1)
        del w, host
        torch.cuda.empty_cache()

        hf_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).to(dev).eval()
        hf = {}
        for b in levels:
            hf_round(hf_model, torch, b, a.prompt_tokens, 8, dev)
            hf[b] = max(hf_round(hf_model, torch, b, a.prompt_tokens, a.new_tokens, dev)
                        for _ in range(a.repeats))
            print("transformers batch %3d: %9.1f tokens/s" % (b, hf[b]), flush=True)

        bound = d2d / weight_bytes
        print()
        print("device: %s; weights %d bytes (%.1f MiB); tags reserved: %s"
              % (torch.cuda.get_device_name(dev), weight_bytes, weight_bytes / 2**20,
                 ", ".join("%s %.1f MiB" % (t, v / 2**20) for t, v in mem.items())))
        print("device-to-device copy: %.0f GB/s (read + written; %.0f GB/s copied)"
              % (d2d / 1e9, d2d / 2e9))
        print()
        print("| batch | memsleep-serve (HTTP) | transformers generate | ratio |")
        print("|---|---|---|---|")
        for b in levels:
            print("| %d | %.1f tokens/s | %.1f tokens/s | %.2fx |" % (b, ours[b], hf[b],
                                                                   ours[b] / hf[b]))
        print()
        top = max(levels)
        r_top = ours[top] / hf[top]
        print("batch %d: %.2fx transformers (target >= 3x): %s"
              % (top, r_top, "met" if r_top >= 3 else "NOT met"))
        if 1 in ours:
            f = ours[1] / bound
            print("batch 1: %.1f tokens/s = %.1f%% of the bound %.1f tokens/s "
                  "(weights once per token at the copy bandwidth; target >= 60%%): %s"
                  % (ours[1], 100 * f, bound, "met" if f >= 0.6 else "NOT met"))
        m_rel, m_res = statistics.median(rel), statistics.median(res)
        m_d2h, m_h2d = statistics.median(d2h), statistics.median(h2d)
        http_rate = weight_bytes / (m_rel + m_res)
        copy_rate = weight_bytes / (m_d2h + m_h2d)
        print()
        print("| sleep/wake (%d cycles, medians) | release | resume | both | rate |" % a.cycles)
        print("|---|---|---|---|---|")
        print("| memsleep-serve over HTTP | %.1f ms | %.1f ms | %.1f ms | %.2f GB/s |"
              % (1e3 * m_rel, 1e3 * m_res, 1e3 * (m_rel + m_res), http_rate / 1e9))
        print("| raw pinned copy of the weights | %.1f ms (D2H) | %.1f ms (H2D) | %.1f ms | "
              "%.2f GB/s |" % (1e3 * m_d2h, 1e3 * m_h2d, 1e3 * (m_d2h + m_h2d), copy_rate / 1e9))
        f = http_rate / copy_rate
        print("sleep/wake at %.1f%% of the pinned copy's rate (target >= 80%%): %s; greedy output "
              "after %d cycles %s" % (100 * f, "met" if f >= 0.8 else "NOT met", a.cycles + 1,
                                     "identical" if before == after else "DIFFERENT"))
        return 0 if before == after else 1
    finally:
        if p is not None:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
