#!/usr/bin/env python3
"""Access control of memsleep-serve (docs/security.md): the real server on
loopback, driven over HTTP and with memsleepctl.

  test_security.py --serve PATH --mkmodel PATH --ctl PATH [unittest args]

Keys: every protected endpoint refuses a missing, malformed or wrong key
(and the API key where the admin key is needed) with 401 and a JSON error,
counted in /metrics, and changes nothing: afterwards the server is awake,
unpaused, generates the same tokens, ran no request and kept its prefix
cache. The right keys work, the admin key wherever the API key does; keys
come from the environment or the command line and never show in an answer.
Defaults: 127.0.0.1, and a warning when bound elsewhere without a key.
Paths: an update from outside the allowed model directories (by "..", by a
symlink, by an absolute path) is 403 and loads nothing. Slow and hostile
clients: a client that trickles its request is cut at --request-timeout
while others are served, a full connection cap recovers the same way, and
malformed HTTP is answered 4xx or dropped with the server still serving.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import (ServerProcess, SlowClient, assert_malformed_handled, bearer,  # noqa: E402
                    make_model, raw_exchange, stop_ok, wait_until)

BIN = {}
TMP = None
ALLOWED = None   # an allowed root: the served model and model-b live in it
MODEL_DIR = None  # the served model
MODEL_B = None    # same shapes, other weights, inside ALLOWED
OUTSIDE = None    # same shapes, other weights, outside every allowed root

API_KEY = "api-7b1e4c0d9a8f42e6b3c5d1f0a2e4c6b8"
ADMIN_KEY = "admin-5d3f1b9e7c2a4068a1b3c5d7e9f0a2b4"
KEY_ENV = {"MEMSLEEP_API_KEY": API_KEY, "MEMSLEEP_ADMIN_API_KEY": ADMIN_KEY}

# Seconds a deadline may be overrun (sanitizer builds on a small shared
# machine are slow).
MARGIN_S = 3.0

PROMPT = {"input_ids": list(range(10, 50)),  # spans two KV blocks: prefix-cached
          "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}}


def setUpModule():
    global TMP, ALLOWED, MODEL_DIR, MODEL_B, OUTSIDE
    TMP = tempfile.mkdtemp(prefix="memsleep-security-")
    ALLOWED = os.path.join(TMP, "allowed")
    MODEL_DIR = make_model(BIN["mkmodel"], os.path.join(ALLOWED, "model"))
    MODEL_B = make_model(BIN["mkmodel"], os.path.join(ALLOWED, "model-b"), "--seed", "2")
    OUTSIDE = make_model(BIN["mkmodel"], os.path.join(TMP, "outside", "model-c"), "--seed", "3")
    # A directory whose name starts with the allowed root's: not inside it.
    make_model(BIN["mkmodel"], ALLOWED + "-not", "--seed", "4")
    # Symlinks that lead out of the allowed directories.
    os.symlink(OUTSIDE, os.path.join(MODEL_DIR, "escape"))
    os.symlink(OUTSIDE, os.path.join(ALLOWED, "escape"))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)




# Every endpoint but /health, with a body it would accept, and the key it
# needs. Run with the right key, each would change something visible: a
# generation counts a request, flush empties the prefix cache, a release or
# /sleep leaves the server asleep, a pause leaves it paused, an update from
# model-b changes the tokens.
PROTECTED = [
    ("POST", "/generate", PROMPT, "api"),
    ("POST", "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2}, "api"),
    ("GET", "/health_generate", None, "api"),
    ("GET", "/get_server_info", None, "api"),
    ("GET", "/metrics", None, "api"),
    ("GET", "/is_sleeping", None, "api"),
    ("POST", "/flush_cache", {}, "admin"),
    ("POST", "/release_memory_occupation", {"backup": False}, "admin"),
    ("POST", "/resume_memory_occupation", {}, "admin"),
    ("POST", "/pause_generation", {"mode": "keep"}, "admin"),
    ("POST", "/continue_generation", {}, "admin"),
    ("POST", "/update_weights_from_disk", {"model_path": None}, "admin"),  # model-b
    ("POST", "/sleep?level=2", None, "admin"),
    ("POST", "/wake_up", None, "admin"),
]

# Authorization values that must never pass.
WRONG = [
    None,
    "Bearer wrong-key",
    "Bearer ",
    "Bearer " + ADMIN_KEY[:-1],          # a prefix of the key
    "Bearer " + ADMIN_KEY + "0",         # the key and more
    "Bearer " + ADMIN_KEY.upper(),
    ADMIN_KEY,                            # no scheme
    "Basic " + base64.b64encode(("admin:" + ADMIN_KEY).encode()).decode(),
    "Bearer " + ADMIN_KEY + " " + ADMIN_KEY,
]


class Keys(unittest.TestCase):
    """A server with both keys, from the environment."""

    @classmethod
    def setUpClass(cls):
        cls.s = ServerProcess(BIN["serve"], MODEL_DIR, "--allowed-model-dir", ALLOWED,
                              env=KEY_ENV)

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        if rc != 0:
            print(cls.s.log_text(), file=sys.stderr)
        assert rc == 0, "memsleep-serve did not stop cleanly on SIGTERM"

    def call(self, method, path, body=None, auth=None):
        if body is not None and "model_path" in body:
            body = {"model_path": MODEL_B}
        headers = {"Authorization": auth} if auth is not None else {}
        return self.s.request(method, path, body, headers=headers)

    def admin(self, method, path, body=None):
        status, j = self.s.json(method, path, body, headers=bearer(ADMIN_KEY))
        self.assertEqual(status, 200, (path, j))
        return j

    def observe(self):
        """What a refused call must not change."""
        status, gen = self.s.json("POST", "/generate", PROMPT, headers=bearer(API_KEY))
        self.assertEqual(status, 200, gen)
        info = self.admin("GET", "/get_server_info")
        return {"tokens": gen["output_ids"], "memory_saver": info["memory_saver"],
                "requests_total": info["scheduler"]["requests_total"],
                "prefix_cached_blocks": info["scheduler"]["prefix_cached_blocks"]}

    def unauthorized_total(self):
        status, _, data = self.s.request("GET", "/metrics", headers=bearer(API_KEY))
        self.assertEqual(status, 200)
        m = re.search(rb"^memsleep_http_unauthorized_total (\d+)$", data, re.M)
        return int(m.group(1)), data.decode()

    def test_health_is_open(self):
        status, j = self.s.json("GET", "/health")
        self.assertEqual((status, j), (200, {"status": "ok"}))

    def test_missing_or_wrong_keys_get_401_and_change_nothing(self):
        before = self.observe()
        self.assertGreater(before["prefix_cached_blocks"], 0)
        refused_before, _ = self.unauthorized_total()
        calls = 0
        for method, path, body, level in PROTECTED:
            bad = WRONG + (["Bearer " + API_KEY] if level == "admin" else [])
            for auth in bad:
                with self.subTest(path=path, auth=auth):
                    status, headers, data = self.call(method, path, body, auth)
                    calls += 1
                    self.assertEqual(status, 401, data)
                    self.assertEqual(headers.get("WWW-Authenticate"), "Bearer")
                    self.assertEqual(headers.get("Content-Type"), "application/json")
                    j = json.loads(data.decode("utf-8"))
                    self.assertEqual(list(j), ["error"])
                    want = "admin key" if level == "admin" else "API key"
                    self.assertIn(want, j["error"])
                    self.assertNotIn(ADMIN_KEY, j["error"])
                    self.assertNotIn(API_KEY, j["error"])
        # Nothing happened: still awake and unpaused, weights unchanged (no
        # update, no release without backup), no request ran, the prefix
        # cache is whole. observe() itself runs one request: count it.
        after = self.observe()
        self.assertEqual(after["tokens"], before["tokens"])
        self.assertEqual(after["memory_saver"], before["memory_saver"])
        self.assertFalse(after["memory_saver"]["paused"])
        self.assertEqual(after["memory_saver"]["released_tags"], [])
        self.assertEqual(after["requests_total"], before["requests_total"] + 1)
        self.assertEqual(after["prefix_cached_blocks"], before["prefix_cached_blocks"])
        refused_after, text = self.unauthorized_total()
        self.assertEqual(refused_after - refused_before, calls)
        self.assertIn('memsleep_http_requests_total{endpoint="/release_memory_occupation",'
                      'code="401"}', text)

    def test_api_key_reads_and_generates(self):
        for method, path, body, level in PROTECTED:
            if level != "api":
                continue
            with self.subTest(path=path):
                status, _, data = self.call(method, path, body, "Bearer " + API_KEY)
                self.assertEqual(status, 200, data)
        info = json.loads(self.call("GET", "/get_server_info", None, "Bearer " + API_KEY)[2])
        self.assertTrue(info["arguments"]["api_key"])
        self.assertTrue(info["arguments"]["admin_api_key"])
        self.assertEqual(info["arguments"]["allowed_model_dirs"], [os.path.realpath(ALLOWED)])
        self.assertEqual(info["arguments"]["host"], "127.0.0.1")

    def test_admin_key_works_everywhere(self):
        before = self.observe()
        # The admin key is a superset of the API key.
        status, _, data = self.call("POST", "/generate", PROMPT, "Bearer " + ADMIN_KEY)
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["output_ids"], before["tokens"])
        self.admin("POST", "/pause_generation", {"mode": "keep"})
        self.assertTrue(self.admin("GET", "/is_sleeping")["paused"])
        self.admin("POST", "/continue_generation", {})
        self.admin("POST", "/flush_cache", {})
        self.assertEqual(self.admin("GET", "/get_server_info")["scheduler"]
                         ["prefix_cached_blocks"], 0)
        self.admin("POST", "/release_memory_occupation", {"tags": ["kv_cache"]})
        self.admin("POST", "/resume_memory_occupation", {})
        self.admin("POST", "/sleep?level=1")
        self.assertTrue(self.admin("GET", "/is_sleeping")["is_sleeping"])
        self.admin("POST", "/wake_up")
        self.admin("POST", "/update_weights_from_disk", {"model_path": MODEL_B})
        self.assertNotEqual(self.observe()["tokens"], before["tokens"])
        self.admin("POST", "/update_weights_from_disk", {"model_path": MODEL_DIR})
        self.assertEqual(self.observe()["tokens"], before["tokens"])

    def test_keys_never_show_in_answers(self):
        for method, path, body, _ in PROTECTED[:6]:
            with self.subTest(path=path):
                status, headers, data = self.call(method, path, body, "Bearer " + ADMIN_KEY)
                self.assertEqual(status, 200)
                text = data.decode("utf-8", "replace") + json.dumps(headers)
                self.assertNotIn(API_KEY, text)
                self.assertNotIn(ADMIN_KEY, text)

    def test_memsleepctl_reads_keys_from_the_environment(self):
        url = "http://127.0.0.1:%d" % self.s.port

        def ctl(env, *args):
            e = {k: v for k, v in os.environ.items() if not k.startswith("MEMSLEEP_")}
            return subprocess.run([BIN["ctl"], "--url", url, *args], capture_output=True,
                                  env=dict(e, **env), timeout=120)

        out = ctl({}, "info")
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"401", out.stderr)
        self.assertIn(b"MEMSLEEP_API_KEY", out.stderr)
        api_only = {"MEMSLEEP_API_KEY": API_KEY}
        out = ctl(api_only, "generate", "--max-new-tokens", "3", "Hello")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(ctl(api_only, "is-sleeping").returncode, 0)
        out = ctl(api_only, "release", "--tags", "kv_cache")
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"admin key", out.stderr)
        self.assertFalse(self.admin("GET", "/is_sleeping")["is_sleeping"])
        out = ctl(KEY_ENV, "release", "--tags", "kv_cache")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["released"], ["kv_cache"])
        out = ctl(KEY_ENV, "resume")
        self.assertEqual(out.returncode, 0, out.stderr)
        # The admin key alone does everything.
        out = ctl({"MEMSLEEP_ADMIN_API_KEY": ADMIN_KEY}, "generate", "Hello")
        self.assertEqual(out.returncode, 0, out.stderr)


class OneKey(unittest.TestCase):
    """Only one of the two keys, on the command line."""

    def test_api_key_alone_protects_the_admin_endpoints_too(self):
        s = ServerProcess(BIN["serve"], MODEL_DIR, "--api-key", API_KEY)
        try:
            status, _, data = s.request("POST", "/release_memory_occupation", {})
            self.assertEqual(status, 401, data)
            status, j = s.json("POST", "/release_memory_occupation", {"tags": ["kv_cache"]},
                               headers=bearer(API_KEY))
            self.assertEqual(status, 200, j)
            self.assertEqual(s.request("GET", "/get_server_info")[0], 401)
            self.assertEqual(s.request("GET", "/health")[0], 200)
        finally:
            stop_ok(self, s)

    def test_admin_key_alone_leaves_generation_open(self):
        s = ServerProcess(BIN["serve"], MODEL_DIR, "--admin-api-key", ADMIN_KEY)
        try:
            self.assertEqual(s.request("POST", "/generate", PROMPT)[0], 200)
            self.assertEqual(s.request("GET", "/is_sleeping")[0], 200)
            self.assertEqual(s.request("POST", "/sleep")[0], 401)
            self.assertEqual(s.request("POST", "/sleep", headers=bearer(API_KEY))[0], 401)
            status, j = s.json("GET", "/is_sleeping")
            self.assertFalse(j["is_sleeping"])
        finally:
            stop_ok(self, s)


class Defaults(unittest.TestCase):
    """Where the server listens, and what it says about it."""

    def start(self, *args, env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith("MEMSLEEP_")}
        p = subprocess.Popen([BIN["serve"], "--model", MODEL_DIR, "--port", "0", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(e, **(env or {})))
        line = p.stdout.readline()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        return line, err

    def test_binds_loopback_by_default_without_warning(self):
        line, err = self.start()
        self.assertRegex(line, r"listening on http://127\.0\.0\.1:\d+")
        self.assertNotIn("WARNING", err)

    def test_warns_when_exposed_without_a_key(self):
        line, err = self.start("--host", "0.0.0.0")
        self.assertRegex(line, r"listening on http://0\.0\.0\.0:\d+")
        self.assertIn("WARNING", err)
        self.assertIn("not a loopback address", err)
        self.assertIn("--api-key", err)
        _, err = self.start("--host", "0.0.0.0", env=KEY_ENV)
        self.assertNotIn("WARNING", err)

    def test_bad_keys_and_directories_are_refused_at_start(self):
        for args, words in ((["--api-key", "has space"], "space"),
                            (["--admin-api-key", ""], "empty"),
                            (["--allowed-model-dir", os.path.join(TMP, "nope")], "nope")):
            with self.subTest(args=args):
                p = subprocess.run([BIN["serve"], "--model", MODEL_DIR, "--port", "0", *args],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 2)
                self.assertIn(words, p.stderr)
                self.assertNotIn("has space", p.stderr)


class ModelPaths(unittest.TestCase):
    """/update_weights_from_disk only reads from allowed directories."""

    def tokens(self, s):
        status, j = s.json("POST", "/generate", PROMPT)
        self.assertEqual(status, 200, j)
        return j["output_ids"]

    def update(self, s, path):
        return s.json("POST", "/update_weights_from_disk", {"model_path": path})

    def assert_refused(self, s, path, status, before):
        got, j = self.update(s, path)
        self.assertEqual(got, status, (path, j))
        self.assertEqual(list(j), ["error"])
        self.assertIn("nothing was changed", j["error"])
        self.assertEqual(self.tokens(s), before, path)
        self.assertTrue(s.json("GET", "/is_sleeping")[1]["weights_valid"])

    def test_default_allows_only_the_model_directory(self):
        s = ServerProcess(BIN["serve"], MODEL_DIR)
        try:
            before = self.tokens(s)
            self.assertEqual(self.update(s, MODEL_DIR)[0], 200)
            self.assertEqual(self.update(s, MODEL_DIR + "/")[0], 200)
            rel = os.path.relpath(MODEL_DIR)
            self.assertEqual(self.update(s, rel)[0], 200)  # the server runs in our directory
            for path in (MODEL_B,                                   # a sibling
                         os.path.join(MODEL_DIR, "..", "model-b"),  # climbing out
                         os.path.join(MODEL_DIR, "escape"),         # a symlink out
                         os.path.join(MODEL_DIR, "escape", "."),
                         OUTSIDE, "/", "/etc", "/proc/self/cwd",
                         os.path.join(MODEL_DIR, "nope", "..", "..", "model-b"),
                         "/no/such/dir"):
                with self.subTest(path=path):
                    self.assert_refused(s, path, 403, before)
            self.assert_refused(s, os.path.join(MODEL_DIR, "nope"), 400, before)
        finally:
            stop_ok(self, s)

    def test_allowed_roots_include_their_subdirectories_only(self):
        s = ServerProcess(BIN["serve"], MODEL_DIR, "--allowed-model-dir", ALLOWED)
        try:
            before = self.tokens(s)
            for path in (os.path.join(ALLOWED, "escape"),
                         os.path.join(MODEL_B, "..", "..", "outside", "model-c"),
                         ALLOWED + "-not", OUTSIDE):
                with self.subTest(path=path):
                    self.assert_refused(s, path, 403, before)
            self.assertEqual(self.update(s, os.path.join(ALLOWED, ".", "model-b"))[0], 200)
            self.assertNotEqual(self.tokens(s), before)
            self.assertEqual(self.update(s, MODEL_DIR)[0], 200)
            self.assertEqual(self.tokens(s), before)
        finally:
            stop_ok(self, s)


class SlowAndHostileClients(unittest.TestCase):
    """A server with a 2 s request timeout and a small connection cap."""

    TIMEOUT_S = 2

    def setUp(self):
        self.s = ServerProcess(BIN["serve"], MODEL_DIR, "--request-timeout",
                               str(self.TIMEOUT_S), "--max-connections", "8")

    def tearDown(self):
        stop_ok(self, self.s)

    def generate_ok(self):
        t0 = time.monotonic()
        status, j = self.s.json("POST", "/generate", PROMPT, timeout=30)
        self.assertEqual(status, 200, j)
        return time.monotonic() - t0

    def cut_counter(self):
        data = self.s.request("GET", "/metrics")[2]
        return int(re.search(rb"^memsleep_http_request_timeouts_total (\d+)$", data,
                             re.M).group(1))

    def test_slow_loris_is_cut_while_others_are_served(self):
        head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        slow = [SlowClient(self.s.port, b"", b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 500),
                SlowClient(self.s.port, b"", b"POST /generate HTTP/1.1\r\nHost: " + b"b" * 500),
                SlowClient(self.s.port, head, b"{" * 1000),   # headers whole, body trickles
                SlowClient(self.s.port, head, b"{" * 1000)]
        served = 0
        while any(c.closed_after is None for c in slow) and served < 1000:
            self.assertLess(self.generate_ok(), 10)
            served += 1
            if all(c.is_alive() for c in slow):
                self.assertLess(time.monotonic() - slow[0].t0, self.TIMEOUT_S + MARGIN_S)
        for c in slow:
            c.join(self.TIMEOUT_S + MARGIN_S)
            self.assertIsNotNone(c.closed_after, "a slow client was never cut")
            self.assertGreaterEqual(c.closed_after, self.TIMEOUT_S - 0.2)
            self.assertLess(c.closed_after, self.TIMEOUT_S + MARGIN_S)
            self.assertEqual(c.answer, b"")
        self.assertGreater(served, 0)
        self.assertEqual(self.cut_counter(), 4)
        self.generate_ok()

    def test_a_full_connection_cap_recovers(self):
        # Eight clients that never finish a request fill the cap: a ninth
        # is turned away; the request timeout frees the cap. (The eight are
        # connected when SlowClient returns, but a loaded machine may take a
        # moment to accept them all: until then a ninth may still get in.)
        idle = [SlowClient(self.s.port, b"", b"G", every_s=30) for _ in range(8)]
        refused = wait_until(lambda: not self.try_health(), timeout_s=3)
        self.assertTrue(refused, "a ninth connection was served past the cap")
        ok = wait_until(lambda: self.try_health(), timeout_s=self.TIMEOUT_S + MARGIN_S)
        self.assertTrue(ok, "the server never served again after its cap was full")
        self.assertGreaterEqual(time.monotonic() - idle[0].t0, self.TIMEOUT_S - 0.2)
        for c in idle:
            c.join(MARGIN_S)
            self.assertIsNotNone(c.closed_after)
        self.generate_ok()

    def try_health(self):
        try:
            return self.s.request("GET", "/health", timeout=1)[0] == 200
        except OSError:
            return False

    def test_malformed_http_is_answered_4xx_or_dropped(self):
        big = b"a" * 200000
        cases = [
            b"\x00\x01\x02garbage\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n",
            b"GET /" + big + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n"
            b"\r\n",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 9\r\n"
            b"\r\n{",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n\xff\xfe\x00{}]",
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n"
            b'{"input_ids": [1e999]}  ',
            b"POST /release_memory_occupation HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"
            b'{"tags": {}}',
            b"GET /health?%zz%%=1&&== HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        ]
        assert_malformed_handled(self, self.s.port, cases, self.TIMEOUT_S + MARGIN_S + 2)
        self.assertIsNone(self.s.proc.poll(), "the server died")
        self.assertEqual(self.s.json("GET", "/health")[0], 200)
        self.generate_ok()

    def test_a_burst_of_hostile_clients_does_not_stop_good_ones(self):
        stop = threading.Event()

        def hostile():
            junk = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\n\r\n",
                    b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{{{{{"]
            i = 0
            while not stop.is_set():
                try:
                    raw_exchange(self.s.port, junk[i % len(junk)], timeout_s=1)
                except OSError:
                    pass
                i += 1

        threads = [threading.Thread(target=hostile, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for _ in range(20):
                self.assertLess(self.generate_ok(), 10)
        finally:
            stop.set()
            for t in threads:
                t.join(10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    ap.add_argument("--ctl", required=True)
    args, rest = ap.parse_known_args()
    BIN.update(serve=args.serve, mkmodel=args.mkmodel, ctl=args.ctl)
    for k in [k for k in os.environ if k.startswith("MEMSLEEP_") and k.endswith("_KEY")]:
        del os.environ[k]  # the keys each process gets are the test's own
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
