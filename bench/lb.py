#!/usr/bin/env python3
"""Latency overhead of memsleep-lb, measured against its baseline in the
same run.

  bench/lb.py --lb PATH --serve PATH --mkmodel PATH [--rounds N] [--fanout-rounds N]

1. A small /generate (1 new token, greedy): each round sends the same request
   to a worker directly and through the balancer (one keep-alive connection
   each, order alternating); prints p50/p99 of both and of the difference.
2. A control fan-out to 8 workers (POST /flush_cache): each round asks the 8
   workers directly, one after the other, then the balancer once; the added
   time is the fan-out minus the slowest of the 8 direct answers.
The last line is the ratio: p50 added by the balancer on /generate, in ms.
"""
import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lb"))
from balancer import LBProcess  # noqa: E402
from server import ServerProcess, make_model  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def timed(conn, method, path, body):
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise RuntimeError("%s %s: %d %s" % (method, path, r.status, data[:200]))
    return dt * 1000.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--fanout-rounds", type=int, default=300)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="memsleep-lb-bench-")
    workers, lbs = [], []
    try:
        model = make_model(a.mkmodel, os.path.join(tmp, "model"))
        for _ in range(8):
            workers.append(ServerProcess(a.serve, model, "--threads", "1"))
        urls = ["http://127.0.0.1:%d" % w.port for w in workers]
        one = LBProcess(a.lb, urls[:1])
        lbs.append(one)
        eight = LBProcess(a.lb, urls)
        lbs.append(eight)

        body = json.dumps({"input_ids": [1, 2, 3, 4], "sampling_params":
                           {"max_new_tokens": 1, "temperature": 0}}).encode()
        direct = http.client.HTTPConnection("127.0.0.1", workers[0].port, timeout=60)
        via = http.client.HTTPConnection("127.0.0.1", one.port, timeout=60)
        for _ in range(50):  # warm-up
            timed(direct, "POST", "/generate", body)
            timed(via, "POST", "/generate", body)
        d, v = [], []
        for i in range(a.rounds):
            if i % 2:
                d.append(timed(direct, "POST", "/generate", body))
                v.append(timed(via, "POST", "/generate", body))
            else:
                v.append(timed(via, "POST", "/generate", body))
                d.append(timed(direct, "POST", "/generate", body))
        diff = [x - y for x, y in zip(v, d)]
        print("/generate, 1 token, %d rounds (ms)      p50     p99" % a.rounds)
        print("  direct to the worker              %7.3f %7.3f" % (pct(d, 50), pct(d, 99)))
        print("  through memsleep-lb               %7.3f %7.3f" % (pct(v, 50), pct(v, 99)))
        print("  added (p of lb minus p of direct) %7.3f %7.3f" %
              (pct(v, 50) - pct(d, 50), pct(v, 99) - pct(d, 99)))
        print("  added, per round (p of lb - direct) %5.3f %7.3f" % (pct(diff, 50),
                                                                    pct(diff, 99)))

        conns = [http.client.HTTPConnection("127.0.0.1", w.port, timeout=60) for w in workers]
        lbc = http.client.HTTPConnection("127.0.0.1", eight.port, timeout=60)
        for _ in range(20):
            for c in conns:
                timed(c, "POST", "/flush_cache", b"{}")
            timed(lbc, "POST", "/flush_cache", b"{}")
        slowest, fan, added = [], [], []
        for _ in range(a.fanout_rounds):
            s = max(timed(c, "POST", "/flush_cache", b"{}") for c in conns)
            f = timed(lbc, "POST", "/flush_cache", b"{}")
            slowest.append(s)
            fan.append(f)
            added.append(f - s)
        print("fan-out POST /flush_cache to 8 workers, %d rounds (ms)  p50     p99" %
              a.fanout_rounds)
        print("  slowest of the 8, asked directly            %7.3f %7.3f" %
              (pct(slowest, 50), pct(slowest, 99)))
        print("  fan-out through memsleep-lb                 %7.3f %7.3f" %
              (pct(fan, 50), pct(fan, 99)))
        print("  added (fan-out minus slowest, per round)    %7.3f %7.3f" %
              (pct(added, 50), pct(added, 99)))
        print("ratio: memsleep-lb adds %.3f ms at p50 to a small /generate (target < 1 ms); "
              "lb/direct p50 = %.2f" % (pct(v, 50) - pct(d, 50), pct(v, 50) / pct(d, 50)))
    finally:
        for lb in lbs:
            lb.stop()
        for w in workers:
            w.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
