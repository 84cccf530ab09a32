#!/usr/bin/env python3
"""Access control of memsleep-lb (docs/security.md): the real balancer on
loopback in front of real memsleep-serve workers that hold keys, and of
fake workers that record what the balancer sends them.

  test_lb_security.py --lb PATH --serve PATH --mkmodel PATH [unittest args]

Keys: a client without the balancer's key, with a wrong one, or with a
worker's key gets 401 on every protected endpoint and nothing reaches a
worker (they stay awake, nothing is released); with the balancer's keys
generation and the control fan-out work through it, the balancer
presenting the workers' keys (never the client's); without worker keys, a
worker's 401 is reported in the 502. Slow and hostile clients: a
slow-loris client is cut at --request-timeout while others are served;
malformed HTTP is answered 4xx or dropped and the balancer keeps serving.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from balancer import FakeWorker, LBProcess  # noqa: E402
from server import (ServerProcess, SlowClient, assert_malformed_handled, bearer,  # noqa: E402
                    make_model, stop_ok)

BIN = {}
MARGIN_S = 3.0

LB_API = "lb-api-3f9c1a7e5b2d4086c8e0a2f4b6d8e0c2"
LB_ADMIN = "lb-admin-8e6c4a2f0d1b3957e7c5a3b1f9d7e5c3"
W_API = "worker-api-1c3e5a7b9d0f2468ace0b2d4f6a8c0e2"
W_ADMIN = "worker-admin-7a5c3e1b9f0d8264bdf1a3c5e7b9d1f3"
LB_KEYS = {"MEMSLEEP_LB_API_KEY": LB_API, "MEMSLEEP_LB_ADMIN_API_KEY": LB_ADMIN}
WORKER_KEYS = {"MEMSLEEP_WORKER_API_KEY": W_API, "MEMSLEEP_WORKER_ADMIN_API_KEY": W_ADMIN}

GEN = {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4, "temperature": 0}}

# Every endpoint of the balancer but /health, and the key it needs.
PROTECTED = [
    ("POST", "/generate", GEN, "api"),
    ("POST", "/v1/completions", {"prompt": [1, 2], "max_tokens": 2}, "api"),
    ("GET", "/is_sleeping", None, "api"),
    ("GET", "/get_server_info", None, "api"),
    ("POST", "/release_memory_occupation", {}, "admin"),
    ("POST", "/resume_memory_occupation", {}, "admin"),
    ("POST", "/flush_cache", {}, "admin"),
    ("POST", "/update_weights_from_disk", {"model_path": "/"}, "admin"),
    ("POST", "/pause_generation", {"mode": "keep"}, "admin"),
    ("POST", "/continue_generation", {}, "admin"),
    ("POST", "/sleep?level=2", None, "admin"),
    ("POST", "/wake_up", None, "admin"),
]




class RealWorkersWithKeys(unittest.TestCase):
    """Two memsleep-serve workers with keys behind a balancer with its own."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="memsleep-lb-sec-")
        cls.model = make_model(BIN["mkmodel"], os.path.join(cls.tmp, "model"))
        worker_env = {"MEMSLEEP_API_KEY": W_API, "MEMSLEEP_ADMIN_API_KEY": W_ADMIN}
        cls.workers = []
        cls.lbs = []
        try:
            for _ in range(2):
                cls.workers.append(ServerProcess(BIN["serve"], cls.model, "--threads", "1",
                                                 env=worker_env))
            cls.urls = ["http://127.0.0.1:%d" % w.port for w in cls.workers]
            cls.lb = LBProcess(BIN["lb"], cls.urls, env=dict(LB_KEYS, **WORKER_KEYS))
        except Exception:
            for w in cls.workers:
                w.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.lb.stop()
        for w in cls.workers:
            w.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "memsleep-lb did not stop cleanly"

    def worker_state(self):
        """Each worker's sleep state and requests run, asked directly."""
        out = []
        for w in self.workers:
            status, info = w.json("GET", "/get_server_info", headers=bearer(W_API))
            self.assertEqual(status, 200, info)
            out.append((info["memory_saver"], info["scheduler"]["requests_total"]))
        return out

    def test_health_is_open(self):
        status, j = self.lb.json("GET", "/health")
        self.assertEqual(status, 200, j)

    def test_missing_wrong_and_worker_keys_get_401_and_reach_no_worker(self):
        before = self.worker_state()
        wrong = [None, "Bearer nope", "Bearer " + W_API, "Bearer " + W_ADMIN,
                 "Bearer " + LB_ADMIN[:-1], LB_ADMIN]
        for method, path, body, level in PROTECTED:
            bad = wrong + (["Bearer " + LB_API] if level == "admin" else [])
            for auth in bad:
                with self.subTest(path=path, auth=auth):
                    headers = {"Authorization": auth} if auth else {}
                    status, h, data = self.lb.request(method, path, body, headers=headers)
                    self.assertEqual(status, 401, data)
                    self.assertEqual(h.get("WWW-Authenticate"), "Bearer")
                    j = json.loads(data.decode("utf-8"))
                    self.assertEqual(list(j), ["error"])
                    self.assertIn("memsleep-lb", j["error"])
        self.assertEqual(self.worker_state(), before)
        status, info = self.lb.json("GET", "/get_server_info", headers=bearer(LB_API))
        self.assertGreaterEqual(info["counters"]["unauthorized_requests"], len(PROTECTED) * 6)
        self.assertNotIn(W_API, json.dumps(info))
        self.assertNotIn(LB_ADMIN, json.dumps(info))

    def test_right_keys_work_through_the_balancer(self):
        status, j = self.lb.json("POST", "/generate", GEN, headers=bearer(LB_API))
        self.assertEqual(status, 200, j)
        self.assertEqual(len(j["output_ids"]), 4)
        status, j = self.lb.json("POST", "/generate", GEN, headers=bearer(LB_ADMIN))
        self.assertEqual(status, 200, j)
        status, j = self.lb.json("POST", "/release_memory_occupation", {"tags": ["kv_cache"]},
                                 headers=bearer(LB_ADMIN))
        self.assertEqual(status, 200, j)
        self.assertEqual(len(j["answers"]), 2)
        status, j = self.lb.json("GET", "/is_sleeping", headers=bearer(LB_API))
        self.assertEqual(status, 200, j)
        self.assertTrue(j["is_sleeping"])
        self.assertTrue(all(w["is_sleeping"] for w in j["workers"]), j)
        status, j = self.lb.json("POST", "/resume_memory_occupation", {},
                                 headers=bearer(LB_ADMIN))
        self.assertEqual(status, 200, j)
        for state, _ in self.worker_state():
            self.assertEqual(state["released_tags"], [])
        status, info = self.lb.json("GET", "/get_server_info", headers=bearer(LB_API))
        self.assertEqual(status, 200, info)
        self.assertTrue(all("info" in w for w in info["workers"]), info)
        self.assertTrue(info["arguments"]["worker_admin_api_key"])

    def test_without_worker_keys_the_workers_refuse_and_the_502_says_so(self):
        lb = LBProcess(BIN["lb"], self.urls, env=LB_KEYS)
        try:
            status, j = lb.json("POST", "/release_memory_occupation", {"tags": ["kv_cache"]},
                                headers=bearer(LB_ADMIN))
            self.assertEqual(status, 502, j)
            self.assertEqual([f["status"] for f in j["failures"]], [401, 401])
            self.assertIn("admin key", j["failures"][0]["detail"])
            for state, _ in self.worker_state():
                self.assertEqual(state["released_tags"], [])
        finally:
            stop_ok(self, lb)


class WhatWorkersSee(unittest.TestCase):
    """Fake workers record the Authorization header the balancer sends."""

    def setUp(self):
        self.fake = FakeWorker("ok")
        self.lbs = []

    def tearDown(self):
        for lb in self.lbs:
            stop_ok(self, lb)
        self.fake.stop()

    def start(self, env):
        lb = LBProcess(BIN["lb"], [self.fake.url], env=env)
        self.lbs.append(lb)
        return lb

    def test_the_worker_gets_the_worker_key_of_each_level(self):
        lb = self.start(dict(LB_KEYS, **WORKER_KEYS))
        self.fake.take_auth()
        self.assertEqual(lb.request("POST", "/generate", GEN, headers=bearer(LB_API))[0], 200)
        self.assertEqual(lb.request("POST", "/flush_cache", {}, headers=bearer(LB_ADMIN))[0], 200)
        self.assertEqual(lb.request("GET", "/is_sleeping", headers=bearer(LB_API))[0], 200)
        self.assertEqual(self.fake.take_auth(),
                         [("/generate", "Bearer " + W_API), ("/flush_cache", "Bearer " + W_ADMIN),
                          ("/is_sleeping", "Bearer " + W_API)])

    def test_one_worker_key_serves_both_levels(self):
        lb = self.start({"MEMSLEEP_WORKER_ADMIN_API_KEY": W_ADMIN})
        self.fake.take_auth()
        self.assertEqual(lb.request("POST", "/generate", GEN)[0], 200)
        self.assertEqual(self.fake.take_auth(), [("/generate", "Bearer " + W_ADMIN)])

    def test_without_worker_keys_the_client_header_passes_through(self):
        lb = self.start({})
        self.fake.take_auth()
        self.assertEqual(lb.request("POST", "/sleep", None, headers=bearer("client-key"))[0], 200)
        self.assertEqual(lb.request("POST", "/generate", GEN)[0], 200)
        self.assertEqual(self.fake.take_auth(),
                         [("/sleep", "Bearer client-key"), ("/generate", None)])


class SlowAndHostileClients(unittest.TestCase):
    """A balancer with a 2 s request timeout in front of a fake worker."""

    TIMEOUT_S = 2

    def setUp(self):
        self.fake = FakeWorker("ok")
        self.lb = LBProcess(BIN["lb"], [self.fake.url], "--request-timeout", str(self.TIMEOUT_S))

    def tearDown(self):
        stop_ok(self, self.lb)
        self.fake.stop()

    def generate_ok(self):
        status, j = self.lb.json("POST", "/generate", GEN, timeout=30)
        self.assertEqual(status, 200, j)

    def test_slow_loris_is_cut_while_others_are_served(self):
        head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        slow = [SlowClient(self.lb.port, b"", b"POST /generate HTTP/1.1\r\nX: " + b"a" * 500),
                SlowClient(self.lb.port, head, b"{" * 1000)]
        served = 0
        while any(c.closed_after is None for c in slow) and served < 1000:
            self.generate_ok()
            served += 1
            time.sleep(0.05)
        for c in slow:
            c.join(self.TIMEOUT_S + MARGIN_S)
            self.assertIsNotNone(c.closed_after, "a slow client was never cut")
            self.assertGreaterEqual(c.closed_after, self.TIMEOUT_S - 0.2)
            self.assertLess(c.closed_after, self.TIMEOUT_S + MARGIN_S)
        self.assertGreater(served, 0)
        info = self.lb.json("GET", "/get_server_info")[1]
        self.assertEqual(info["counters"]["request_timeouts"], 2)
        self.generate_ok()

    def test_malformed_http_is_answered_4xx_or_dropped(self):
        cases = [
            b"\x00\xffgarbage\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /sleep?level=%zz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /is_sleeping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01\x02\r\n\r\n",
        ]
        assert_malformed_handled(self, self.lb.port, cases, self.TIMEOUT_S + MARGIN_S + 2)
        self.assertIsNone(self.lb.proc.poll(), "memsleep-lb died")
        self.generate_ok()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    args, rest = ap.parse_known_args()
    BIN.update(lb=args.lb, serve=args.serve, mkmodel=args.mkmodel)
    for k in [k for k in os.environ if k.startswith("MEMSLEEP_") and k.endswith("_KEY")]:
        del os.environ[k]  # the keys each process gets are the test's own
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
