#!/usr/bin/python3
"""serve_residual.py - after a full release over HTTP, memsleep-serve's process
holds no more GPU memory than a bare CUDA process (the issue's residual
requirement, checked through the server as engine_residual_test.c checks it
through the engine's C API). On an otherwise idle GPU:

1. Baseline. The bare process is engine_residual_test's bare role
   (`engine_residual_test --role bare`: the same libraries, device 0 made
   current, then `stage bare FREE TOTAL ok` from cudaMemGetInfo and a wait
   on stdin; closing stdin ends it). Bare child A alone: its GPU memory by
   memsleep-probe (--pid A --no-children --gpu --json, gpu.total_bytes) is
   "bare". Bare child B beside A: B's free memory is FREE_BARE. Both stop.
2. A model of Qwen2-0.5B's shape (memsleep-mkmodel, bf16; vocabulary 151936
   where memsleep-mkmodel has --vocab, else its 512);
   memsleep-serve --device cuda:N on 127.0.0.1. One greedy /generate alone
   (the reference), then 16 at once from threads with different prompt and
   output lengths (decode runs at batch sizes 16 down to 1): each must answer
   200 with the tokens asked for. The probe's figure for the server: "loaded".
3. POST /release_memory_occupation {}: 200, success, every tag of
   /get_server_info released. The probe: "released". Bare child C beside the
   released server: C's free memory is FREE_RELEASED.
4. POST /resume_memory_occupation {}; the reference request (temperature 0)
   must give the same output_ids and text again.

Checks: released - bare <= 16 MiB, and FREE_BARE - FREE_RELEASED <= 16 MiB:
the free memory with the released server present is within 16 MiB of the
free memory with a bare process in its place. Both free figures are read by a
bare process beside the one compared, so the reader's own context cancels out
and no probe figure is mixed with a cudaMemGetInfo one. Also printed: the
per-tag memory of /get_server_info before and after the release, and last a
table with the reclaimed fraction of the footprint (1 - released/loaded) and
of what the server added above bare ((loaded - released)/(loaded - bare)).
This script never initialises CUDA; for cuda:N with N > 0 the bare children
run with CUDA_VISIBLE_DEVICES narrowed to that device.

  tests/gpu/serve_residual.py --serve BUILD/src/server/memsleep-serve
      --mkmodel BUILD/tools/memsleep-mkmodel --probe BUILD/tools/memsleep-probe
      --residual-test BUILD/tests/gpu/engine_residual_test
      [--workdir DIR] [--device cuda:0] [--port N]

Exits 0 (pass), 1 (fail), 77 (skipped: the bare child cannot start, i.e. no
usable GPU, or the probe cannot see per-process GPU memory here), 2 (bad
command line). The server and the children are stopped whatever happens.
"""
import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

MIB = 1 << 20
MARGIN = 16 * MIB
QWEN2_05B = ["--arch", "qwen2", "--layers", "24", "--hidden", "896", "--heads", "14",
             "--kv-heads", "2", "--intermediate", "4864", "--rope-theta", "1000000",
             "--dtype", "bf16", "--max-position", "4096"]
SERVE_ARGS = ["--max-batch", "32", "--max-context", "1024"]
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


class Failure(Exception):
    pass


class Skip(Exception):
    pass


class Bare:
    """A bare child (engine_residual_test --role bare), which stops at stage bare."""

    def __init__(self, exe, env, children):
        self.p = subprocess.Popen([exe, "--role", "bare"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env, text=True)
        children.append(self)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def free_bytes(self, timeout=120):
        """The device's free bytes it reported at stage bare; Failure saying why not."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise Failure("bare child %d: no stage line within %d s" % (self.p.pid, timeout))
        f = (line or "").split()
        if len(f) == 5 and f[:2] == ["stage", "bare"] and f[4] == "ok":
            return int(f[2])
        if line is None:
            raise Failure("bare child exited with %d before stage bare" % self.p.wait())
        raise Failure("bare child %d: %s" % (self.p.pid, line.strip()))

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()  # fgets gets EOF: it exits without going on
                self.p.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def probe_bytes(probe, pid, what, unknown=Failure):
    """The process's GPU bytes by memsleep-probe; raises unknown when it cannot tell."""
    r = subprocess.run([probe, "--pid", str(pid), "--no-children", "--gpu", "--json"],
                       capture_output=True, text=True, timeout=60)
    try:
        g = json.loads(r.stdout)["gpu"]
    except (ValueError, KeyError, TypeError):
        raise Failure("memsleep-probe --pid %d exited %d with no JSON: %s"
                      % (pid, r.returncode, (r.stderr or r.stdout).strip()[-400:]))
    if not g.get("known"):
        raise unknown("memsleep-probe cannot see %s's GPU memory here (%s: %s)"
                      % (what, g.get("reason"), g.get("detail")))
    return g["total_bytes"]


def call(port, method, path, body=None, timeout=600):
    """(HTTP status, the answer's JSON, or its text)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with HTTP.open(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def control(port, path):
    """POST path {}; the answer, which must be 200 with success true."""
    status, j = call(port, "POST", path, {})
    if status != 200 or not isinstance(j, dict) or j.get("success") is not True:
        raise Failure("%s {}: %d %r" % (path, status, j))
    return j


def generate(port, ids, n):
    """(output_ids, text) of a greedy request for exactly n tokens."""
    status, j = call(port, "POST", "/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": n, "temperature": 0, "sampling_seed": 0, "ignore_eos": True}})
    if status != 200 or not isinstance(j, dict) or len(j.get("output_ids") or []) != n:
        raise Failure("/generate (%d-token prompt, %d new tokens): %d %r"
                      % (len(ids), n, status, j))
    return j["output_ids"], j["text"]


def log_tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return "(no log: %s)\n" % e


def start_server(a, model, log_path, procs):
    """Starts memsleep-serve; (process, port) once /health answers 200."""
    with open(log_path, "w") as log:
        p = subprocess.Popen([a.serve, "--model", model, "--host", "127.0.0.1", "--port",
                              str(a.port), "--device", a.device, *SERVE_ARGS],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    port, deadline = None, time.monotonic() + 180
    while time.monotonic() < deadline and p.poll() is None:
        if port is None:
            with open(log_path, errors="replace") as f:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
            port = int(m.group(1)) if m else None
        try:
            if port is not None and call(port, "GET", "/health", timeout=5)[0] == 200:
                p.started = True  # from now on, an exit is reported with the log's end
                return p, port
        except OSError:
            pass
        time.sleep(0.2)
    raise Failure("memsleep-serve %s; the end of its log:\n%s"
                  % ("exited with %d during start-up" % p.returncode if p.poll() is not None
                     else "did not answer /health within 180 s", log_tail(log_path)))


def server_info(port, label):
    """GET /get_server_info; prints its per-tag memory, whatever keys it has."""
    status, info = call(port, "GET", "/get_server_info")
    if status != 200 or not isinstance(info, dict):
        raise Failure("/get_server_info (%s): %d %r" % (label, status, info))
    mem = info.get("memory")
    for tag, fig in (mem.items() if isinstance(mem, dict) else []):
        items = fig.items() if isinstance(fig, dict) else [("value", fig)]
        print("  %-9s %-10s %s" % (label, tag, ", ".join(
            "%s %.1f MiB" % (k[:-6], v / MIB) if k.endswith("_bytes") and isinstance(v, int)
            else "%s %s" % (k, json.dumps(v)) for k, v in items)))
    if not isinstance(mem, dict):
        print("  %-9s no per-tag memory in /get_server_info" % label)
    return info


def run(a):
    ordinal = int(a.device.split(":")[1])
    env = dict(os.environ)
    if ordinal:  # the bare role always takes CUDA device 0: make that the server's
        vis = env.get("CUDA_VISIBLE_DEVICES")
        vis = [v.strip() for v in vis.split(",")] if vis is not None else None
        if vis is not None and ordinal >= len(vis):
            raise Failure("--device %s: CUDA_VISIBLE_DEVICES=%s lists %d devices"
                          % (a.device, ",".join(vis), len(vis)))
        env["CUDA_VISIBLE_DEVICES"] = vis[ordinal] if vis is not None else str(ordinal)
    children, procs = [], []
    tmp = None if a.workdir else tempfile.mkdtemp(prefix="memsleep-serve-residual-")
    work = a.workdir or tmp
    os.makedirs(work, exist_ok=True)
    log_path = os.path.join(work, "serve.log")
    try:
        # 1. Baseline: A alone (probe), then B beside A (free memory).
        bare_a = Bare(a.residual_test, env, children)
        try:
            free_a = bare_a.free_bytes()
        except Failure as e:
            raise Skip("no usable CUDA device: the bare process could not start (%s)" % e)
        bare = probe_bytes(a.probe, bare_a.p.pid, "the bare process", Skip)
        bare_b = Bare(a.residual_test, env, children)
        free_bare = bare_b.free_bytes()
        bare_b.stop()
        bare_a.stop()
        print("bare: %.1f MiB by the probe; device free %.1f MiB alone, %.1f MiB beside a "
              "second bare process" % (bare / MIB, free_a / MIB, free_bare / MIB), flush=True)

        # 2. The server, loaded, after requests at several batch sizes.
        model = os.path.join(work, "qwen2-0.5b-shape")
        helptext = subprocess.run([a.mkmodel, "--help"], capture_output=True, text=True).stdout
        vocab = ["--vocab", "151936"] if "--vocab" in helptext else []  # Qwen2's, where it can
        subprocess.run([a.mkmodel, "--out", model, "--force", "--seed", "3", *QWEN2_05B, *vocab],
                       check=True, stdout=subprocess.DEVNULL)
        print("model: Qwen2-0.5B's shape, vocabulary %s" % (vocab[1] if vocab else "512"))
        server, port = start_server(a, model, log_path, procs)
        print("memsleep-serve %s on port %d (pid %d)" % (a.device, port, server.pid), flush=True)
        ref_ids = [(j * 7 + 3) % 500 for j in range(20)]
        ref = generate(port, ref_ids, 32)
        errs = []

        def one(i):
            try:
                generate(port, [(i * 13 + j * 3 + 1) % 500 for j in range(8 + i)], 8 + 4 * i)
            except Exception as e:  # noqa: BLE001 - reported below
                errs.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errs:
            raise Failure("%d of 16 concurrent requests failed; first: %s" % (len(errs), errs[0]))
        loaded = probe_bytes(a.probe, server.pid, "the server")
        tags = set(server_info(port, "loaded").get("memory") or {})

        # 3. Release every tag: the server's figure, and the free memory beside it.
        j = control(port, "/release_memory_occupation")
        if set(j.get("released_tags") or []) != tags:
            raise Failure("the release of every tag left some awake: released_tags %r, tags %s"
                          % (j.get("released_tags"), sorted(tags)))
        print("released %s: resident %.1f -> %.1f MiB (the server's accounting)"
              % (",".join(j.get("released") or []), j.get("resident_bytes_before", 0) / MIB,
                 j.get("resident_bytes_after", 0) / MIB), flush=True)
        released = probe_bytes(a.probe, server.pid, "the released server")
        server_info(port, "released")
        bare_c = Bare(a.residual_test, env, children)
        free_released = bare_c.free_bytes()
        bare_c.stop()

        # 4. Wake: the same greedy answer as before the release.
        j = control(port, "/resume_memory_occupation")
        if j.get("released_tags"):
            raise Failure("after the resume, released_tags is %r" % j["released_tags"])
        same = generate(port, ref_ids, 32) == ref

        d_probe, d_free = released - bare, free_bare - free_released
        ok = [d_probe <= MARGIN, d_free <= MARGIN, same]
        verdict = ["  FAIL", "  PASS"]
        print("\n%-62s %10s" % ("GPU memory of the process (memsleep-probe)", "MiB"))
        for label, v, mark in [
                ("bare (CUDA context, same libraries)", bare, ""),
                ("server, loaded, after 1 + 16 greedy requests", loaded, ""),
                ("server, after releasing every tag", released, ""),
                ("released - bare, limit 16", d_probe, verdict[ok[0]]),
                ("device free: bare beside bare - bare beside released, limit 16", d_free,
                 verdict[ok[1]])]:
            print("%-62s %10.1f%s" % (label, v / MIB, mark))
        print("%-62s %9.1f%%" % ("reclaimed: of the whole footprint",
                                 100.0 * (1 - released / loaded) if loaded else 0.0))
        print("%-62s %9.1f%%" % ("reclaimed: of what the server added above bare",
                                 100.0 * (loaded - released) / (loaded - bare)
                                 if loaded > bare else 0.0))
        print("%-62s %10s" % ("greedy output after resume", ("same" if same else "DIFFERENT")
                              + verdict[ok[2]]))
        return 0 if all(ok) else 1
    finally:
        for c in children:
            c.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            elif getattr(p, "started", False):
                print("memsleep-serve exited with %d during the test; the end of its log:\n%s"
                      % (p.returncode, log_tail(log_path)))
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", required=True, help="the memsleep-serve program")
    ap.add_argument("--mkmodel", required=True, help="the memsleep-mkmodel program")
    ap.add_argument("--probe", required=True, help="the memsleep-probe program")
    ap.add_argument("--residual-test", required=True,
                    help="the engine_residual_test program (its bare role)")
    ap.add_argument("--workdir", help="model and server log go here and are kept "
                                      "(default: a temporary directory, removed)")
    ap.add_argument("--device", default="cuda:0", help="cuda:N (default cuda:0)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    a = ap.parse_args()
    for opt in ("serve", "mkmodel", "probe", "residual_test"):
        path = getattr(a, opt)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            ap.error("--%s %s: not an executable file" % (opt.replace("_", "-"), path))
    if not re.fullmatch(r"cuda:\d+", a.device):
        ap.error("--device %s: expected cuda:N" % a.device)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("serve_residual.py: terminated"))
    try:
        return run(a)
    except Skip as e:
        print("SKIP: %s" % e)
        return 77
    except (Failure, subprocess.CalledProcessError, OSError) as e:
        print("FAIL: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
