#!/usr/bin/env python3
"""One RL iteration against memsleep-serve, step by step, with the resident
memory after each step (docs/rl-loop.md explains the order).

  drain and release all -> train -> resume weights -> update weights
  -> resume kv_cache and workspace -> generate

Either drives a server that runs already:

  scripts/rl-loop.py --url http://127.0.0.1:30000 --model-path DIR

or makes a model, starts a server of its own and stops it at the end:

  scripts/rl-loop.py --build build

The "train" step here is a stand-in: it writes the next weights (the same
model with another seed, made by memsleep-mkmodel, when --build is given;
otherwise the weights in --model-path are reloaded as they are). A real
driver trains on the GPU memory the release gave back and saves a
checkpoint of the same shapes. Python standard library only.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse


class Server:
    """JSON over HTTP to one memsleep-serve."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80

    def call(self, method, path, body=None, timeout=600):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            c.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, json.loads(r.read().decode("utf-8"))
        finally:
            c.close()

    def ok(self, method, path, body=None):
        status, j = self.call(method, path, body)
        if status != 200:
            sys.exit("rl-loop: %s %s -> %d: %s" % (method, path, status, j.get("error", j)))
        return j


def proc_rss(pid):
    """Rss of a local process from /proc (bytes), or None."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, TypeError):
        return None
    return None


def mib(n):
    return "%8.1f MiB" % (n / 2**20) if n is not None else "       ?    "


def report(srv, step, probe=None):
    """Prints the memory after a step: the server's own measured figures and,
    for a local server, /proc and memsleep-probe."""
    info = srv.ok("GET", "/get_server_info")
    st = srv.ok("GET", "/is_sleeping")
    mem = info["memory"]
    host = info.get("process", {}).get("host", {})
    pid = info.get("process", {}).get("pid")
    tags = "  ".join("%s %s%s" % (t, mib(m["resident_bytes"]).strip(), "*" if m["asleep"] else "")
                     for t, m in mem.items())
    line = "%-34s process %s (server) %s (/proc)  | %s" % (
        step, mib(host.get("resident_bytes")), mib(proc_rss(pid)), tags)
    if probe and pid and os.path.exists("/proc/%d" % pid):
        out = subprocess.run([probe, "--pid", str(pid), "--host", "--json"],
                             capture_output=True, text=True)
        try:
            line += "  | probe host %s" % mib(json.loads(out.stdout)["host"]["resident_bytes"])
        except (ValueError, KeyError, TypeError):
            line += "  | probe: %s" % (out.stderr.strip() or out.stdout.strip())[:60]
    print(line)
    print("%-34s released %s, weights valid %s, paused %s" % (
        "", st["released_tags"] or "none", st["weights_valid"], st["paused"]))


def generate(srv, prompt_ids, n):
    j = srv.ok("POST", "/generate", {"input_ids": prompt_ids, "sampling_params": {
        "max_new_tokens": n, "temperature": 0, "ignore_eos": True}})
    return j["output_ids"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running memsleep-serve (else one is started)")
    ap.add_argument("--model-path", help="weights to load at the update step (with --url)")
    ap.add_argument("--build", default="build", help="CMake build directory (without --url)")
    ap.add_argument("--probe", help="memsleep-probe to run at each step (default: the "
                    "build's, when it exists)")
    a = ap.parse_args()
    tmp = proc = None
    probe = a.probe or os.path.join(a.build, "tools/memsleep-probe")
    probe = probe if os.access(probe, os.X_OK) else None
    try:
        if a.url:
            if not a.model_path:
                sys.exit("rl-loop: --url needs --model-path (the weights the update loads)")
            srv, next_weights = Server(a.url), a.model_path
        else:
            tmp = tempfile.mkdtemp(prefix="memsleep-rl-")
            mkmodel = os.path.join(a.build, "tools/memsleep-mkmodel")
            serve = os.path.join(a.build, "src/server/memsleep-serve")
            model = os.path.join(tmp, "policy-0")
            subprocess.run([mkmodel, "--out", model, "--layers", "8", "--hidden", "512",
                            "--heads", "8", "--kv-heads", "4", "--intermediate", "1408"],
                           check=True, stdout=subprocess.DEVNULL)
            # The next checkpoints are written beside the first: allow loading them.
            proc = subprocess.Popen([serve, "--model", model, "--port", "0", "--max-batch", "8",
                                     "--allowed-model-dir", tmp],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            m = re.search(r"listening on (http://\S+)", proc.stdout.readline())
            if not m:
                sys.exit("rl-loop: memsleep-serve did not start")
            srv = Server(m.group(1))
            next_weights = os.path.join(tmp, "policy-1")
            print("server %s, model %s" % (m.group(1), model))

        prompt = [1, 17, 42, 99]
        before = generate(srv, prompt, 16)
        report(srv, "0. serving (rollouts)", probe)

        t0 = time.perf_counter()
        j = srv.ok("POST", "/release_memory_occupation", {"backup": False, "timeout": 600})
        print("   release: %d requests drained, resident %s -> %s, %.1f ms" % (
            j["drained_requests"], mib(j["resident_bytes_before"]).strip(),
            mib(j["resident_bytes_after"]).strip(), (time.perf_counter() - t0) * 1e3))
        report(srv, "1. drained, released all", probe)

        # 2. Train: the memory the release gave back is the trainer's now.
        if tmp:
            subprocess.run([os.path.join(a.build, "tools/memsleep-mkmodel"), "--out",
                            next_weights, "--layers", "8", "--hidden", "512", "--heads", "8",
                            "--kv-heads", "4", "--intermediate", "1408", "--seed", "2"],
                           check=True, stdout=subprocess.DEVNULL)
        report(srv, "2. trained (new weights on disk)", probe)

        srv.ok("POST", "/resume_memory_occupation", {"tags": ["weights"]})
        report(srv, "3. resumed weights", probe)

        t0 = time.perf_counter()
        srv.ok("POST", "/update_weights_from_disk", {"model_path": next_weights})
        print("   update: %.1f ms" % ((time.perf_counter() - t0) * 1e3))
        report(srv, "4. updated weights from disk", probe)

        srv.ok("POST", "/resume_memory_occupation", {})  # kv_cache and workspace
        report(srv, "5. resumed kv_cache, workspace", probe)

        after = generate(srv, prompt, 16)
        report(srv, "6. generating (next rollouts)", probe)
        print("greedy output before: %s" % before)
        print("greedy output after:  %s (%s)" % (
            after, "same weights" if after == before else "the new weights answer"))
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
            proc.stdout.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
