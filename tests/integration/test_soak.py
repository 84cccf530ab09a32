#!/usr/bin/env python3
"""Soak test of the sleep/wake control plane: the real memsleep-serve under
steady traffic while its memory is released and resumed a thousand times.

  test_soak.py --serve PATH --mkmodel PATH [--cycles N] [--duration S] [--seed N]

Several clients send greedy /generate requests (streamed and not) and
/v1/completions requests back to back, while a controller runs cycles for
60 s and at least 200 of them (seeded, so a failure can be replayed):
release of a random tag subset with or without backup, then resume
(weights discarded are reloaded with /update_weights_from_disk from the
same model directory, sometimes before and sometimes after the other tags
wake), and pause/continue in random modes before, during and without a
release. It passes when no
request is lost or answered with garbage (every completed request matches
its reference tokens, an aborted one says so and sent a prefix of them), no
5xx but the documented ones (503 queue full or weights invalid, 504 drain
timeout) was seen, the server's resident set (/proc/PID/smaps_rollup) did
not grow from the early cycles to the late ones, and the server is still
up and answers as before at the end. It is bounded: about a minute on two
cores (thousands of cycles), failing if 200 cycles take more than 240 s.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import ServerProcess, make_model, read_stream, rss_bytes  # noqa: E402

BIN = {}
OPTS = {"cycles": 200, "duration_s": 60.0, "seed": 20261123}
TAGS = ["weights", "kv_cache", "workspace"]
CYCLES_DEADLINE_S = 240

PROMPTS = [
    {"input_ids": [1, 2, 3], "n": 6},
    {"input_ids": [40, 41, 42, 43, 44, 45, 46, 47], "n": 12},
    {"input_ids": list(range(60, 100)), "n": 16},
    {"text": "The quick brown fox", "n": 10},
    {"text": "Once upon a time there was", "n": 20},
    {"input_ids": [500, 3, 500, 3], "n": 4},
]


def body_of(p, stream=False):
    b = {k: v for k, v in p.items() if k != "n"}
    b["sampling_params"] = {"max_new_tokens": p["n"], "temperature": 0, "ignore_eos": True}
    if stream:
        b["stream"] = True
    return b


def documented_503(headers, data):
    """503 is documented for a full queue (Retry-After) and for weights that
    were discarded and not reloaded yet (the error says so)."""
    try:
        err = json.loads(data.decode("utf-8"))["error"]
    except (ValueError, KeyError, UnicodeDecodeError):
        return False
    return "Retry-After" in headers or "update_weights_from_disk" in err


class Tally:
    """Outcomes of every request, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []

    def add(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, *why):
        with self.lock:
            self.failures.append(why)
            self.counts["failed"] = self.counts.get("failed", 0) + 1


class Soak(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="memsleep-soak-")
        cls.model = make_model(BIN["mkmodel"], os.path.join(cls.tmp, "model"))
        cls.s = ServerProcess(BIN["serve"], cls.model, "--max-batch", "8",
                              "--max-context", "512")

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        if rc != 0:
            print(cls.s.log_text(), file=sys.stderr)
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "memsleep-serve did not stop cleanly on SIGTERM (exit %r)" % rc

    # -- control calls: each must answer as the contract says ---------------

    def call(self, path, body=None, expect=200):
        status, j = self.s.json("POST", path, {} if body is None else body, timeout=120)
        if status not in ((expect,) if isinstance(expect, int) else expect):
            raise AssertionError("cycle %d: POST %s %r -> %d %r"
                                 % (self.cycle, path, body, status, j))
        return status, j

    def state(self):
        status, j = self.s.json("GET", "/is_sleeping")
        assert status == 200, j
        return j

    # -- clients --------------------------------------------------------------

    def client(self, k, stop, tally, refs, ref_text):
        rng = random.Random(OPTS["seed"] * 31 + k)
        kind = ("plain", "stream", "plain", "stream", "completions")[k % 5]
        while not stop.is_set():
            i = rng.randrange(len(PROMPTS))
            p = PROMPTS[i]
            try:
                if kind == "completions":
                    self.one_completion(p, ref_text[i], tally)
                else:
                    self.one_generate(p, refs[i], kind == "stream", tally)
            except Exception as e:  # noqa: BLE001 - a lost request
                tally.fail("client %d (%s), prompt %d: %r" % (k, kind, i, e))

    def one_generate(self, p, ref, stream, tally):
        c = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=120)
        c.request("POST", "/generate", body=json.dumps(body_of(p, stream)).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            data = r.read()
            c.close()
            return self.not_200(r.status, dict(r.getheaders()), data, tally)
        if stream:
            events, done = read_stream(c, r)
            if not done or not events:
                return tally.fail("stream without [DONE]", p, events[-1:] if events else None)
            ids = sum((e["output_ids"] for e in events), [])
            finish = events[-1]["meta_info"]["finish_reason"]
            if any(e["meta_info"]["finish_reason"] for e in events[:-1]):
                return tally.fail("finish_reason before the last event", p)
        else:
            j = json.loads(r.read().decode("utf-8"))
            c.close()
            ids, finish = j["output_ids"], j["meta_info"]["finish_reason"]
        kind = "stream" if stream else "plain"
        if finish == {"type": "length", "length": p["n"]} and ids == ref:
            tally.add(kind + " ok")
        elif finish and finish.get("type") == "abort" and ids == ref[:len(ids)]:
            tally.add(kind + " aborted")
        else:
            tally.fail("garbage", kind, p, finish, ids, ref)

    def one_completion(self, p, ref_text, tally):
        body = {"max_tokens": p["n"], "temperature": 0, "ignore_eos": True,
                "prompt": p.get("text", p.get("input_ids"))}
        c = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=120)
        c.request("POST", "/v1/completions", body=json.dumps(body).encode())
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            return self.not_200(r.status, dict(r.getheaders()), data, tally)
        choice = json.loads(data.decode("utf-8"))["choices"][0]
        if choice["finish_reason"] == "length" and choice["text"] == ref_text:
            tally.add("completions ok")
        elif choice["finish_reason"] == "abort":
            tally.add("completions aborted")
        else:
            tally.fail("garbage completion", p, choice, ref_text)

    def not_200(self, status, headers, data, tally):
        if status == 503 and documented_503(headers, data):
            tally.add("503 " + ("queue full" if "Retry-After" in headers else "weights invalid"))
            time.sleep(0.02)  # back off a little, as Retry-After asks
        else:
            tally.fail("HTTP %d" % status, data[:300])

    # -- the controller -------------------------------------------------------

    def one_cycle(self, rng, stats):
        """One control cycle; returns nothing, raises on a contract break."""
        r = rng.random()
        if r < 0.15:  # pause and continue without a release
            mode = rng.choice(["abort", "wait", "keep"])
            self.call("/pause_generation", {"mode": mode})
            st = self.state()
            assert st["paused"] and st["pause_mode"] == mode, st
            self.call("/continue_generation")
            stats["pauses"] += 1
            return
        tags = None if rng.random() < 0.25 else sorted(rng.sample(TAGS, rng.randint(1, 3)))
        backup = rng.random() < 0.6
        want = set(TAGS if tags is None else tags)
        paused = None
        if rng.random() < 0.2:
            paused = rng.choice(["abort", "wait", "keep"])
            self.call("/pause_generation", {"mode": paused})
            if paused == "keep":
                # A frozen scheduler cannot drain requests it holds: 409, nothing
                # released. With nothing running there is nothing to drain, and
                # a release may go ahead (the contract allows either reading).
                status, j = self.call("/release_memory_occupation", {"tags": tags or TAGS},
                                      expect=(200, 409))
                if status == 200:
                    stats["keep_releases"] += 1
                    self.call("/resume_memory_occupation")
                else:
                    assert self.state()["released_tags"] == [], self.state()
                st = self.state()
                assert st["paused"] and st["pause_mode"] == "keep", st
                self.call("/continue_generation")
                paused = None
        body = {"backup": backup}
        if tags is not None:
            body["tags"] = tags
        status, j = self.call("/release_memory_occupation", body, expect=(200, 504))
        if status == 504:  # documented: the drain outlasted its timeout
            stats["timeouts"] += 1
            assert self.state()["released_tags"] == [], self.state()
            if paused:
                self.call("/continue_generation")
            return
        stats["releases"] += 1
        stats["drained"] += j["drained_requests"]
        st = self.state()
        assert set(st["released_tags"]) == want, (body, st)
        assert st["weights_valid"] == (backup or "weights" not in want), (body, st)
        if self.cycle % 10 == 0:
            mem = self.s.info()["memory"]
            for tag in want:
                assert mem[tag]["asleep"] and mem[tag]["resident_bytes"] == 0, (tag, mem[tag])
        if paused is None and rng.random() < 0.1:  # a user pause during the sleep
            paused = rng.choice(["abort", "wait"])
            self.call("/pause_generation", {"mode": paused})
        if rng.random() < 0.3:  # rule 2: no scheduler resume while released
            self.call("/continue_generation", expect=409)
        discarded = "weights" in want and not backup
        if discarded and rng.random() < 0.7:
            # The RL order: weights, update, then the rest.
            self.call("/resume_memory_occupation", {"tags": ["weights"]})
            self.call("/update_weights_from_disk", {"model_path": self.model})
            stats["updates"] += 1
            self.call("/resume_memory_occupation")
        elif discarded:
            # Everything awake first: generation is refused (503) until the update.
            self.call("/resume_memory_occupation")
            assert not self.state()["weights_valid"]
            self.call("/update_weights_from_disk", {"model_path": self.model})
            stats["updates"] += 1
        elif rng.random() < 0.5:
            _, j = self.call("/resume_memory_occupation")
            assert set(j["resumed"]) == want, (want, j)
        else:
            for tag in rng.sample(sorted(want), len(want)):
                self.call("/resume_memory_occupation", {"tags": [tag]})
        st = self.state()
        assert not st["is_sleeping"] and st["weights_valid"], st
        if paused:  # rule 7: the user's pause outlives the wake
            assert st["paused"], st
            self.call("/continue_generation")

    def test_soak_release_resume_under_traffic(self):
        pid = self.s.proc.pid
        refs, ref_text = [], []
        for p in PROMPTS:
            status, j = self.s.json("POST", "/generate", body_of(p))
            self.assertEqual(status, 200, j)
            refs.append(j["output_ids"])
            ref_text.append(j["text"])
        tally, stop = Tally(), threading.Event()
        clients = [threading.Thread(target=self.client, args=(k, stop, tally, refs, ref_text))
                   for k in range(5)]
        for t in clients:
            t.start()
        rng = random.Random(OPTS["seed"])
        stats = dict(pauses=0, releases=0, keep_releases=0, timeouts=0, updates=0, drained=0)
        rss = []
        t0 = time.time()
        self.cycle = 0
        try:
            # At least OPTS["cycles"] cycles, and more until duration_s passed.
            while self.cycle < OPTS["cycles"] or time.time() - t0 < OPTS["duration_s"]:
                self.assertLess(time.time() - t0, CYCLES_DEADLINE_S,
                                "only %d cycles in %d s" % (self.cycle, CYCLES_DEADLINE_S))
                self.assertIsNone(self.s.proc.poll(), "the server died")
                self.one_cycle(rng, stats)
                rss.append(rss_bytes(pid))
                self.cycle += 1
                if self.cycle % 500 == 0:
                    print("soak: %d cycles, %.1f s, RSS %.1f MiB" % (
                        self.cycle, time.time() - t0, rss[-1] / 2**20), file=sys.stderr)
        finally:
            stop.set()
            if self.s.proc.poll() is None:  # let held clients finish after a failure
                self.s.json("POST", "/resume_memory_occupation", {})
                self.s.json("POST", "/update_weights_from_disk", {"model_path": self.model})
                self.s.json("POST", "/continue_generation", {})
            for t in clients:
                t.join(150)
        duration = time.time() - t0
        self.assertFalse(any(t.is_alive() for t in clients), "a client hangs")
        n = len(rss)
        early = statistics.median(rss[n // 10:n // 10 + 30])
        late = statistics.median(rss[-30:])
        requests = sum(v for k, v in tally.counts.items())
        print("\nsoak: %d cycles (%s) in %.1f s; %d requests: %s; RSS early %.1f MiB, "
              "late %.1f MiB" % (self.cycle, ", ".join("%s %d" % kv for kv in stats.items()),
                                 duration, requests,
                                 ", ".join("%s %d" % kv for kv in sorted(tally.counts.items())),
                                 early / 2**20, late / 2**20), file=sys.stderr)
        self.assertEqual(tally.failures[:10], [])
        self.assertGreater(tally.counts.get("plain ok", 0), 0)
        self.assertGreater(tally.counts.get("stream ok", 0), 0)
        self.assertGreaterEqual(self.cycle, OPTS["cycles"])
        self.assertGreaterEqual(stats["releases"], self.cycle // 2)
        self.assertLessEqual(late, early + max(8 << 20, early // 10),
                             "RSS grew across cycles: early %d, late %d" % (early, late))
        # Still up, and still answering as before.
        self.assertEqual(self.s.json("GET", "/health_generate")[0], 200)
        for p, ref in zip(PROMPTS, refs):
            self.assertEqual(self.s.json("POST", "/generate", body_of(p))[1]["output_ids"], ref)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    ap.add_argument("--cycles", type=int, default=OPTS["cycles"])
    ap.add_argument("--duration", type=float, default=OPTS["duration_s"],
                    help="keep cycling until this many seconds passed")
    ap.add_argument("--seed", type=int, default=OPTS["seed"])
    args, rest = ap.parse_known_args()
    BIN.update(serve=args.serve, mkmodel=args.mkmodel)
    OPTS.update(cycles=args.cycles, duration_s=args.duration, seed=args.seed)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
