#!/usr/bin/env python3
"""Serving benchmark: N concurrent clients against memsleep-serve on loopback.

Makes a model with memsleep-mkmodel, starts memsleep-serve, and for each
concurrency level (default 1, 8, 32) runs that many clients, each sending
streamed /generate requests back to back (same prompt length, same number
of new tokens, ignore_eos so every request makes exactly that many). It
reports generated tokens per second over the whole run and the time to
first token (TTFT: request sent -> first SSE event) per request.

The baseline runs beside it, on the same model and machine: the same
engine taking one request at a time (concurrency 1, run first and last; the
better of the two is the baseline); and, at the highest
concurrency, a second server started with --max-batch 1 (no batching: the
requests queue). Ratios to the single-request run come last.

  bench/serving.py [--build DIR] [--levels 1,8,32] [--requests N]
                   [--new-tokens N] [--prompt-tokens N] [--layers N] [--hidden N]
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start_server(serve, model, *extra):
    p = subprocess.Popen([serve, "--model", model, "--port", "0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        sys.exit("serving.py: memsleep-serve did not start: %r" % line)
    return p, int(m.group(1))


def stop_server(p):
    p.terminate()
    rc = p.wait(60)
    p.stdout.close()
    if rc != 0:
        sys.exit("serving.py: memsleep-serve exited with %d" % rc)


def one_request(port, prompt, new_tokens):
    """Sends one streamed request; returns (ttft_s, tokens, total_s)."""
    body = json.dumps({"input_ids": prompt, "stream": True, "sampling_params": {
        "max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}}).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError("HTTP %d: %s" % (r.status, r.read()[:200]))
    ttft = None
    tokens = 0
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            n = len(json.loads(ev[6:])["output_ids"])
            if n and ttft is None:
                ttft = time.perf_counter() - t0
            tokens += n
    c.close()
    return ttft, tokens, time.perf_counter() - t0


def run_level(port, clients, requests, prompt_tokens, new_tokens, vocab):
    """clients threads share `requests` requests; returns the figures."""
    # Fresh prompts for every run: a prompt seen before would hit the
    # prefix cache and skip its prefill.
    run_level.seed += 1
    rng = random.Random(run_level.seed)
    prompts = [[rng.randrange(vocab) for _ in range(prompt_tokens)] for _ in range(requests)]
    results, lock, next_i = [], threading.Lock(), [0]

    def client():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                return
            r = one_request(port, prompts[i], new_tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    if tokens != requests * new_tokens:
        sys.exit("serving.py: expected %d tokens, got %d" % (requests * new_tokens, tokens))
    return {"clients": clients, "requests": requests, "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "ttft_p50_ms": 1000 * statistics.median(ttfts),
            "ttft_p90_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))]}


run_level.seed = 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-release", help="CMake build directory")
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels")
    ap.add_argument("--requests", type=int, default=64,
                    help="requests per level (concurrency 1: a quarter, at least 4)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="server compute threads")
    a = ap.parse_args()
    serve = os.path.join(a.build, "src/server/memsleep-serve")
    mkmodel = os.path.join(a.build, "tools/memsleep-mkmodel")
    levels = [int(x) for x in a.levels.split(",")]
    tmp = tempfile.mkdtemp(prefix="memsleep-bench-")
    try:
        model = os.path.join(tmp, "model")
        subprocess.run([mkmodel, "--out", model, "--layers", str(a.layers), "--hidden",
                        str(a.hidden), "--heads", str(a.hidden // 64), "--kv-heads",
                        str(max(1, a.hidden // 128)), "--intermediate",
                        str(a.hidden * 11 // 4)], check=True, stdout=subprocess.DEVNULL)
        extra = ["--threads", str(a.threads), "--max-batch", str(max(levels))]
        p, port = start_server(serve, model, *extra)
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("GET", "/get_server_info")
        info = json.loads(c.getresponse().read())
        c.close()
        m = info["model"]
        print("model: %s, %d layers, hidden %d, vocab %d, %.1f MiB f32; prompt %d tokens, "
              "%d new tokens per request; %d CPU(s)" % (
                  m["architecture"], m["num_layers"], m["hidden_size"], m["vocab_size"],
                  m["weight_bytes"] / 2**20, a.prompt_tokens, a.new_tokens, os.cpu_count()))
        run_level(port, 2, 4, a.prompt_tokens, 8, m["vocab_size"])  # warm-up
        rows = []
        single = max(4, a.requests // 4)
        for n in levels:
            req = single if n == 1 else max(a.requests, n)
            rows.append(("batching", run_level(port, n, req, a.prompt_tokens, a.new_tokens,
                                               m["vocab_size"])))
        # The single-request baseline again at the end: the better of the two
        # runs is the baseline, so that noise on a shared machine cannot
        # flatter the ratios.
        again = run_level(port, 1, single, a.prompt_tokens, a.new_tokens, m["vocab_size"])
        stop_server(p)
        top = max(levels)
        p, port = start_server(serve, model, "--threads", str(a.threads), "--max-batch", "1",
                               "--max-queue", str(4 * top))
        rows.append(("max-batch 1", run_level(port, top, max(a.requests, top),
                                              a.prompt_tokens, a.new_tokens, m["vocab_size"])))
        stop_server(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows.insert(len(levels), ("batching (1 again)", again))
    base = max(r["tok_s"] for name, r in rows if r["clients"] == 1)
    print("\n| server | concurrent | requests | tokens | wall s | tokens/s | TTFT p50 ms "
          "| TTFT p90 ms | tokens/s vs 1 request |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print("| %s | %d | %d | %d | %.2f | %.1f | %.1f | %.1f | %.2f |" % (
            name, r["clients"], r["requests"], r["tokens"], r["wall_s"], r["tok_s"],
            r["ttft_p50_ms"], r["ttft_p90_ms"], r["tok_s"] / base))
    print()
    print("baseline: %.1f tokens/s, the better of the two single-request runs" % base)
    for name, r in rows:
        if r["clients"] == 1:
            continue
        print("ratio: %s at %d concurrent = %.2fx the tokens/s of one request at a time" % (
            name, r["clients"], r["tok_s"] / base))


if __name__ == "__main__":
    main()
