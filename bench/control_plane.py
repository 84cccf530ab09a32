#!/usr/bin/env python3
"""Control-plane benchmark: release and resume over HTTP next to the memory
core's own release/resume of the same bytes, in the same run.

Makes a model with memsleep-mkmodel, starts memsleep-serve (idle: the drain
has nothing to wait for), and times CYCLES rounds of
POST /release_memory_occupation {"backup": true} (every tag: weights kept
in a backup, KV cache and workspace discarded) and
POST /resume_memory_occupation, as a client sees them (request sent ->
answer read). The baseline runs beside it: bench_core_release allocates the
same bytes in the same tag layout (per-tag allocations and reserved bytes
from /get_server_info, weights with MEMSLEEP_BACKUP, KV cache with
MEMSLEEP_ZERO) and times memsleep_release_flags/memsleep_resume of them.
An HTTP round trip of GET /is_sleeping is timed too, to show what the
transport alone costs. The difference (what the control plane adds: HTTP,
the controller, measuring the tags before and after, the prefix-cache reset,
giving cached heap back, repairing the KV pool) comes last, with the target:
under 5 ms plus the drain.

  bench/control_plane.py [--build DIR] [--cycles N] [--layers N] [--hidden N]
                         [--max-batch N] [--max-context N]
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
import time

TARGET_MS = 5.0


def start_server(serve, model, *extra):
    p = subprocess.Popen([serve, "--model", model, "--port", "0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        sys.exit("control_plane.py: memsleep-serve did not start: %r" % line)
    return p, int(m.group(1))


def timed(conn, method, path, body=None):
    """One request on a kept-alive connection: (ms, status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    t0 = time.perf_counter()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read()
    ms = (time.perf_counter() - t0) * 1e3
    return ms, r.status, json.loads(raw.decode("utf-8"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-release", help="CMake build directory")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-context", type=int, default=1024)
    a = ap.parse_args()
    serve = os.path.join(a.build, "src/server/memsleep-serve")
    mkmodel = os.path.join(a.build, "tools/memsleep-mkmodel")
    core = os.path.join(a.build, "bench/bench_core_release")
    tmp = tempfile.mkdtemp(prefix="memsleep-bench-cp-")
    p = None
    try:
        model = os.path.join(tmp, "model")
        subprocess.run([mkmodel, "--out", model, "--layers", str(a.layers), "--hidden",
                        str(a.hidden), "--heads", str(a.hidden // 64), "--kv-heads",
                        str(max(1, a.hidden // 128)), "--intermediate",
                        str(a.hidden * 11 // 4)], check=True, stdout=subprocess.DEVNULL)
        p, port = start_server(serve, model, "--max-batch", str(a.max_batch), "--max-context",
                               str(a.max_context))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        # Warm up: one generation (touches the workspace), one cycle.
        _, status, j = timed(conn, "POST", "/generate", {"input_ids": [1, 2, 3],
                                                         "sampling_params": {
                                                             "max_new_tokens": 4}})
        if status != 200:
            sys.exit("control_plane.py: /generate: %d %r" % (status, j))
        _, status, info = timed(conn, "GET", "/get_server_info")
        mem = info["memory"]
        layout = {t: (mem[t]["allocations"], mem[t]["reserved_bytes"]) for t in mem}
        total = sum(b for _, b in layout.values())
        print("model: %d layers, hidden %d; server: --max-batch %d --max-context %d"
              % (a.layers, a.hidden, a.max_batch, a.max_context))
        for t, (n, b) in layout.items():
            print("  %-10s %5d allocations %12d bytes (%.1f MiB)" % (t, n, b, b / 2**20))
        print("  total %.1f MiB; %d cycles, medians below" % (total / 2**20, a.cycles))
        rel, res, rtt, drained = [], [], [], 0
        for c in range(a.cycles + 1):
            ms_rtt, status, _ = timed(conn, "GET", "/is_sleeping")
            ms_rel, status, j = timed(conn, "POST", "/release_memory_occupation",
                                      {"backup": True})
            if status != 200:
                sys.exit("control_plane.py: release: %d %r" % (status, j))
            drained += j["drained_requests"]
            ms_res, status, j = timed(conn, "POST", "/resume_memory_occupation", {})
            if status != 200:
                sys.exit("control_plane.py: resume: %d %r" % (status, j))
            if c == 0:
                continue  # the warm-up cycle
            rel.append(ms_rel)
            res.append(ms_res)
            rtt.append(ms_rtt)
        _, status, j = timed(conn, "POST", "/generate", {"input_ids": [1, 2, 3],
                                                         "sampling_params": {
                                                             "max_new_tokens": 4}})
        if status != 200:
            sys.exit("control_plane.py: /generate after the cycles: %d %r" % (status, j))
        conn.close()
        p.terminate()
        p.wait(60)
        p.stdout.close()
        p = None

        flags = {"weights": "backup", "kv_cache": "zero"}
        args = [core, "--cycles", str(a.cycles)]
        for t, (n, b) in layout.items():
            args += ["--tag", "%s:%d:%d:%s" % (t, n, b, flags.get(t, "none"))]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        m = re.search(r"core: release_ms=([\d.]+) resume_ms=([\d.]+)", out)
        if not m:
            sys.exit("control_plane.py: bench_core_release said: %s" % out)
        core_rel, core_res = float(m.group(1)), float(m.group(2))
        http_rel, http_res = statistics.median(rel), statistics.median(res)
        rtt_ms = statistics.median(rtt)
        print()
        print("| | over HTTP (median) | memory core alone (median) | added by the control plane |")
        print("|---|---|---|---|")
        print("| release (weights backup, KV discarded) | %.2f ms | %.2f ms | %.2f ms |"
              % (http_rel, core_rel, http_rel - core_rel))
        print("| resume | %.2f ms | %.2f ms | %.2f ms |" % (http_res, core_res,
                                                            http_res - core_res))
        print("| GET /is_sleeping (HTTP round trip) | %.2f ms | | |" % rtt_ms)
        print("drained requests over all cycles: %d (idle server: the drain costs nothing)"
              % drained)
        ok = http_rel - core_rel < TARGET_MS and http_res - core_res < TARGET_MS
        print("control plane adds %.2f ms to release (%.2fx the core) and %.2f ms to resume "
              "(%.2fx the core); target < %.0f ms each: %s"
              % (http_rel - core_rel, http_rel / core_rel, http_res - core_res,
                 http_res / core_res, TARGET_MS, "met" if ok else "NOT met"))
        return 0 if ok else 1
    finally:
        if p is not None:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
