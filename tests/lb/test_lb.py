#!/usr/bin/env python3
"""Tests of memsleep-lb: the real balancer on loopback in front of fake
misbehaving workers and real memsleep-serve workers.

  test_lb.py --lb PATH --serve PATH --mkmodel PATH [unittest args]

FanoutFailures: each way a worker can fail a control fan-out (refused,
hung, 500 with a megabyte of binary, 404, closed mid-answer) gives the exact
502 body, within the timeout plus a margin, while the healthy workers still
got the request with the caller's body unchanged. ProxyFailures: no healthy
worker (503), a worker that hangs on /generate (bounded), a stream cut in the
middle (the client sees it cut; the balancer stays up). RealWorkers: three
memsleep-serve workers: answers as direct, tokens reach the client before
the worker finishes, a bounded load test (no lost request, spread, memory
flat), and generation through release/resume of one worker at a time.
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
import threading
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from balancer import BINARY, FakeWorker, LBProcess, refusing_url  # noqa: E402
from server import ServerProcess, make_model, sse_events  # noqa: E402

BIN = {}
# memsleep-lb was built with a sanitizer (leaks are then LeakSanitizer's job).
SANITIZED = False
# Seconds a bounded wait may overrun its timeout (sanitizer builds on a
# small shared machine are slow to start a request).
MARGIN_S = 3.0
CONTROL_TIMEOUT_S = 2.0
RELEASE_BODY = {"tags": ["kv_cache"], "timeout": 30}


def fast_lb(workers, *extra):
    return LBProcess(BIN["lb"], workers, "--control-timeout", str(CONTROL_TIMEOUT_S),
                     "--connect-timeout", "1", "--health-interval", "0.5",
                     "--health-timeout", "1", *extra)


class FanoutFailures(unittest.TestCase):
    """Two healthy fakes and one failing worker behind a fresh balancer."""

    @classmethod
    def setUpClass(cls):
        cls.ok = [FakeWorker("ok"), FakeWorker("ok")]

    @classmethod
    def tearDownClass(cls):
        for w in cls.ok:
            w.stop()

    def setUp(self):
        for w in self.ok:
            w.take()
        self.lbs = []
        self.fakes = []

    def tearDown(self):
        for lb in self.lbs:
            rc = lb.stop()
            if rc != 0:
                print(lb.log_text(), file=sys.stderr)
            self.assertEqual(rc, 0, "memsleep-lb did not stop cleanly on SIGTERM")
        for f in self.fakes:
            f.stop()

    def lb_with(self, bad_url):
        lb = fast_lb([w.url for w in self.ok] + [bad_url])
        self.lbs.append(lb)
        return lb

    def fake(self, mode):
        f = FakeWorker(mode)
        self.fakes.append(f)
        return f

    def release(self, lb, path="/release_memory_occupation", body=RELEASE_BODY):
        t0 = time.monotonic()
        status, headers, data = lb.request("POST", path, body,
                                           headers={"Content-Type": "application/json"})
        return status, json.loads(data.decode("utf-8")), time.monotonic() - t0

    def assert_healthy_did_their_part(self, path="/release_memory_occupation",
                                      body=RELEASE_BODY):
        raw = json.dumps(body).encode()
        for w in self.ok:
            self.assertEqual(w.take(), [("POST", path, raw)])

    def expected_502(self, failures, n=3, path="/release_memory_occupation"):
        return {"error": "%d of %d workers failed POST %s; see failures" %
                (len(failures), n, path),
                "failed": "%d/%d" % (len(failures), n), "failures": failures}

    def test_all_workers_ok_is_200_with_each_answer(self):
        lb = fast_lb([w.url for w in self.ok])
        self.lbs.append(lb)
        status, j, _ = self.release(lb)
        self.assertEqual(status, 200, j)
        self.assertEqual(j["success"], True)
        self.assertEqual([a["server"] for a in j["answers"]], [w.url for w in self.ok])
        self.assertEqual([a["answer"]["port"] for a in j["answers"]], [w.port for w in self.ok])
        self.assert_healthy_did_their_part()

    def test_aliases_forward_their_query_string(self):
        lb = fast_lb([w.url for w in self.ok])
        self.lbs.append(lb)
        for path in ("/sleep?level=2", "/wake_up?tags=weights,kv_cache"):
            status, _, data = lb.request("POST", path, b"")
            self.assertEqual(status, 200, data)
            for w in self.ok:
                self.assertEqual(w.take(), [("POST", path, b"")])

    def test_refused_connection(self):
        bad = refusing_url()
        lb = self.lb_with(bad)
        status, j, elapsed = self.release(lb)
        self.assertEqual(status, 502)
        self.assertEqual(j, self.expected_502(
            [{"server": bad, "error": "could not connect: Connection refused"}]))
        self.assertLess(elapsed, CONTROL_TIMEOUT_S + MARGIN_S)
        self.assert_healthy_did_their_part()

    def test_hung_worker_is_bounded_by_the_control_timeout(self):
        bad = self.fake("hang")
        lb = self.lb_with(bad.url)
        status, j, elapsed = self.release(lb)
        self.assertEqual(status, 502)
        self.assertEqual(j, self.expected_502([{
            "server": bad.url,
            "error": "no answer within 2000 ms (--control-timeout); the worker may be hung"}]))
        self.assertGreaterEqual(elapsed, CONTROL_TIMEOUT_S - 0.1)
        self.assertLess(elapsed, CONTROL_TIMEOUT_S + MARGIN_S)
        self.assert_healthy_did_their_part()
        # The hung worker is out of rotation for generation too.
        status, j = lb.json("GET", "/get_server_info")
        self.assertEqual([w["healthy"] for w in j["workers"]], [True, True, False])

    def test_binary_500_megabyte_body(self):
        bad = self.fake("binary500")
        lb = self.lb_with(bad.url)
        rss_before = lb.rss_kib()
        status, j, elapsed = self.release(lb)
        self.assertEqual(status, 502)
        detail = BINARY[:500].decode("utf-8", errors="replace")
        self.assertEqual(j, self.expected_502(
            [{"server": bad.url, "status": 500, "detail": detail}]))
        self.assertIn("\ufffd", detail)
        self.assertLess(elapsed, CONTROL_TIMEOUT_S + MARGIN_S)
        self.assert_healthy_did_their_part()
        # Reading at most 500 bytes of each answer: ten more of them do not
        # cost the balancer megabytes.
        for _ in range(10):
            self.assertEqual(self.release(lb)[0], 502)
        if not SANITIZED:
            self.assertLess(lb.rss_kib() - rss_before, 4096)
        for w in self.ok:
            w.take()

    def test_404_from_an_older_server(self):
        bad = self.fake("notfound")
        lb = self.lb_with(bad.url)
        status, j, elapsed = self.release(lb)
        self.assertEqual(status, 502)
        self.assertEqual(j, self.expected_502([{
            "server": bad.url, "status": 404,
            "detail": '{"error": "no endpoint POST /release_memory_occupation"}'}]))
        self.assertLess(elapsed, CONTROL_TIMEOUT_S + MARGIN_S)
        self.assert_healthy_did_their_part()

    def test_closes_in_the_middle_of_the_answer(self):
        bad = self.fake("cut")
        lb = self.lb_with(bad.url)
        status, j, elapsed = self.release(lb)
        self.assertEqual(status, 502)
        self.assertEqual(j, self.expected_502([{
            "server": bad.url,
            "error": "the worker closed the connection in the middle of its answer "
                     "(status 200)"}]))
        self.assertLess(elapsed, CONTROL_TIMEOUT_S + MARGIN_S)
        self.assert_healthy_did_their_part()

    def test_every_failure_at_once(self):
        bads = [refusing_url(), self.fake("hang").url, self.fake("binary500").url,
                self.fake("notfound").url, self.fake("cut").url]
        lb = fast_lb([w.url for w in self.ok] + bads)
        self.lbs.append(lb)
        status, j, elapsed = self.release(lb, "/flush_cache", {})
        self.assertEqual(status, 502)
        self.assertEqual(j["failed"], "5/7")
        self.assertEqual([f["server"] for f in j["failures"]], bads)
        self.assertLess(elapsed, CONTROL_TIMEOUT_S + MARGIN_S)
        self.assert_healthy_did_their_part("/flush_cache", {})

    def test_is_sleeping_is_asleep_if_any_worker_is(self):
        lb = fast_lb([w.url for w in self.ok])
        self.lbs.append(lb)
        status, j = lb.json("GET", "/is_sleeping")
        self.assertEqual((status, j["is_sleeping"]), (200, False))
        self.ok[1].sleeping = True
        try:
            status, j = lb.json("GET", "/is_sleeping")
        finally:
            self.ok[1].sleeping = False
        self.assertEqual((status, j["is_sleeping"]), (200, True))
        self.assertEqual([w["is_sleeping"] for w in j["workers"]], [False, True])
        bad = self.fake("notfound")
        lb2 = fast_lb([self.ok[0].url, bad.url])
        self.lbs.append(lb2)
        status, j = lb2.json("GET", "/is_sleeping")
        self.assertEqual(status, 502)
        self.assertEqual(j["failed"], "1/2")
        self.assertEqual(j["failures"][0]["status"], 404)

    def test_errors_are_json(self):
        lb = fast_lb([w.url for w in self.ok])
        self.lbs.append(lb)
        status, j = lb.json("GET", "/nope")
        self.assertEqual(status, 404)
        self.assertIn("/nope", j["error"])
        status, headers, data = lb.request("GET", "/release_memory_occupation")
        self.assertEqual(status, 405)
        self.assertEqual(headers["Allow"], "POST")
        self.assertIn("use POST", json.loads(data)["error"])
        status, j = lb.json("GET", "/health")
        self.assertEqual((status, j["healthy_workers"]), (200, 2))


class CommandLine(unittest.TestCase):
    def run_lb(self, *args):
        return subprocess.run([BIN["lb"], *args], capture_output=True, text=True, timeout=60)

    def test_bad_command_lines_exit_2_saying_why(self):
        r = self.run_lb()
        self.assertEqual(r.returncode, 2)
        self.assertIn("no worker given", r.stderr)
        r = self.run_lb("--worker", "127.0.0.1:1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("not an http:// URL", r.stderr)
        r = self.run_lb("--worker", "http://127.0.0.1:1", "--control-timeout", "0")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--control-timeout '0'", r.stderr)
        r = self.run_lb("--worker", "http://127.0.0.1:1", "--worker", "http://127.0.0.1:1/")
        self.assertEqual(r.returncode, 2)
        self.assertIn("given twice", r.stderr)
        r = self.run_lb("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--control-timeout", r.stdout)

    def test_workers_file(self):
        ok = FakeWorker("ok")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("# workers\n\n  %s/  \n" % ok.url)
        try:
            lb = LBProcess(BIN["lb"], [], "--workers-file", f.name)
            status, j = lb.json("GET", "/get_server_info")
            self.assertEqual(lb.stop(), 0)
            self.assertEqual([w["server"] for w in j["workers"]], [ok.url])
            with open(f.name, "a") as g:
                g.write("ftp://nope\n")
            r = self.run_lb("--workers-file", f.name)
            self.assertEqual(r.returncode, 2)
            self.assertIn(f.name + ":4:", r.stderr)
        finally:
            ok.stop()
            os.unlink(f.name)


class ProxyFailures(unittest.TestCase):
    def setUp(self):
        self.lbs, self.fakes = [], []

    def tearDown(self):
        for lb in self.lbs:
            self.assertEqual(lb.stop(), 0, lb.log_text())
        for f in self.fakes:
            f.stop()

    def start(self, workers, *extra):
        lb = fast_lb(workers, *extra)
        self.lbs.append(lb)
        return lb

    def test_no_healthy_worker_is_503_with_the_reason(self):
        bad = refusing_url()
        lb = self.start([bad])
        status, j = lb.json("POST", "/generate", {"text": "hi"})
        self.assertEqual(status, 503)
        self.assertIn("no healthy worker", j["error"])
        self.assertIn(bad + ": could not connect: Connection refused", j["error"])
        status, j = lb.json("GET", "/health")
        self.assertEqual(status, 503)
        self.assertIn("no healthy worker", j["error"])

    def test_worker_back_in_rotation_when_it_answers_again(self):
        w = FakeWorker("ok")
        self.fakes.append(w)
        w.refuse()
        lb = self.start([w.url])
        self.assertEqual(lb.json("POST", "/generate", {"text": "x"})[0], 503)
        w2 = FakeWorker("ok", port=w.port)  # listening again: the next check puts it back
        self.fakes.append(w2)
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            status, j = lb.json("POST", "/generate", {"text": "x"})
            if status == 200:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200)
        self.assertEqual(j["worker"], w.port)

    def test_refused_worker_is_skipped_and_taken_out_at_once(self):
        ok, gone = FakeWorker("ok"), FakeWorker("ok")
        self.fakes += [ok, gone]
        lb = LBProcess(BIN["lb"], [gone.url, ok.url], "--health-interval", "60")
        self.lbs.append(lb)
        gone.refuse()  # the next health check is a minute away
        for _ in range(4):
            status, j = lb.json("POST", "/generate", {"text": "x"})
            self.assertEqual((status, j["worker"]), (200, ok.port))
        status, j = lb.json("GET", "/get_server_info")
        w = j["workers"][0]
        self.assertEqual((w["server"], w["healthy"]), (gone.url, False))
        self.assertEqual(w["health_error"], "could not connect: Connection refused")

    def test_hung_generate_is_bounded(self):
        bad = FakeWorker("hang_generate")
        self.fakes.append(bad)
        lb = self.start([bad.url], "--generate-timeout", "2")
        t0 = time.monotonic()
        status, j = lb.json("POST", "/generate", {"text": "hi"})
        elapsed = time.monotonic() - t0
        self.assertEqual(status, 502)
        self.assertEqual(j, {"server": bad.url, "error":
                             "worker %s failed before answering /generate: no answer within "
                             "2000 ms (--generate-timeout); the worker may be hung" % bad.url})
        self.assertLess(elapsed, 2 + MARGIN_S)

    def test_stream_cut_mid_stream(self):
        bad = FakeWorker("cut")
        self.fakes.append(bad)
        lb = self.start([bad.url])
        c = lb.connection(30)
        c.request("POST", "/generate", body=b'{"text":"x","stream":true}')
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "text/event-stream")
        events = []
        with self.assertRaises(http.client.IncompleteRead):
            for e in sse_events(r):
                events.append(e)
        c.close()
        self.assertEqual(events, ['{"text":"0"}', '{"text":"1"}'])
        self.assertEqual(lb.json("GET", "/health")[0], 200)


class RealWorkers(unittest.TestCase):
    """Three memsleep-serve workers with a small model behind one balancer."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="memsleep-lb-")
        model = make_model(BIN["mkmodel"], os.path.join(cls.tmp, "model"))
        cls.workers = []
        try:
            for _ in range(3):
                cls.workers.append(ServerProcess(BIN["serve"], model, "--threads", "1"))
            cls.lb = LBProcess(BIN["lb"], ["http://127.0.0.1:%d" % w.port for w in cls.workers],
                               "--health-interval", "0.5")
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

    def gen_body(self, n=4, stream=False):
        return {"text": "Hello", "stream": stream,
                "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}

    def test_generate_through_lb_equals_direct(self):
        status, direct = self.workers[0].json("POST", "/generate", self.gen_body(8))
        self.assertEqual(status, 200)
        status, via = self.lb.json("POST", "/generate", self.gen_body(8))
        self.assertEqual(status, 200, via)
        self.assertEqual(via["output_ids"], direct["output_ids"])
        status, j = self.lb.json("POST", "/v1/completions",
                                 {"prompt": "Hello", "max_tokens": 3, "temperature": 0})
        self.assertEqual(status, 200, j)
        self.assertEqual(j["usage"]["completion_tokens"], 3)
        # A worker's own error passes through unchanged.
        status, j = self.lb.json("POST", "/generate", {"text": "x", "bogus": 1})
        self.assertEqual(status, 400)
        self.assertIn("bogus", j["error"])

    def test_stream_tokens_reach_the_client_before_the_worker_finishes(self):
        c = self.lb.connection(120)
        c.request("POST", "/generate", body=json.dumps(self.gen_body(1500, stream=True)).encode())
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        worker_url = r.getheader("X-Memsleep-Worker")
        w = next(w for w in self.workers if "http://127.0.0.1:%d" % w.port == worker_url)
        events = sse_events(r)
        first = json.loads(next(events))
        self.assertIsNone(first["meta_info"]["finish_reason"])
        # The worker is still generating this request while we hold a token.
        self.assertGreaterEqual(w.info()["scheduler"]["running"], 1)
        c.close()  # cancels the request on the worker too
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and w.info()["scheduler"]["running"] > 0:
            time.sleep(0.05)
        self.assertEqual(w.info()["scheduler"]["running"], 0)

    def test_client_that_goes_away_cancels_its_request(self):
        c = self.lb.connection(120)
        c.request("POST", "/generate", body=json.dumps(self.gen_body(1900)).encode())
        busy = lambda: [w for w in self.workers if w.info()["scheduler"]["running"] > 0]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not busy():
            time.sleep(0.02)
        self.assertEqual(len(busy()), 1)
        w = busy()[0]

        def disconnects():
            text = w.request("GET", "/metrics")[2].decode()
            return int(re.search(r"^memsleep_client_disconnects_total (\d+)$", text,
                                 re.M).group(1))

        before = disconnects()
        c.close()  # before any answer: the balancer drops the worker's request
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and disconnects() == before:
            time.sleep(0.05)
        self.assertEqual(disconnects(), before + 1)  # cancelled, not finished
        while time.monotonic() < deadline and busy():
            time.sleep(0.05)
        self.assertEqual(busy(), [])

    def test_streamed_answer_equals_direct(self):
        status, direct = self.workers[1].json("POST", "/generate", self.gen_body(6))
        c = self.lb.connection(120)
        c.request("POST", "/generate", body=json.dumps(self.gen_body(6, stream=True)).encode())
        r = c.getresponse()
        events = list(sse_events(r))
        c.close()
        self.assertEqual(events[-1], "[DONE]")
        ids = [i for e in events[:-1] for i in json.loads(e)["output_ids"]]
        self.assertEqual(ids, direct["output_ids"])

    def test_load_many_clients(self):
        clients, per_client = 16, 6
        results, lock = [], threading.Lock()

        def client():
            c = self.lb.connection(120)
            for _ in range(per_client):
                try:
                    c.request("POST", "/generate", body=json.dumps(self.gen_body(2)).encode())
                    r = c.getresponse()
                    data = r.read()
                    out = (r.status, r.getheader("X-Memsleep-Worker"),
                           len(json.loads(data)["output_ids"]))
                except Exception as e:  # recorded: the assertion below names it
                    out = (0, repr(e), 0)
                    c.close()
                    c = self.lb.connection(120)
                with lock:
                    results.append(out)
            c.close()

        def wave():
            ts = [threading.Thread(target=client) for _ in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(240)

        wave()  # warm-up: threads, connections, allocator
        rss0 = self.lb.rss_kib()
        results.clear()
        wave()
        wave()
        rss1 = self.lb.rss_kib()
        self.assertEqual(len(results), 2 * clients * per_client)
        bad = [r for r in results if r[0] != 200 or r[2] != 2]
        self.assertEqual(bad, [])
        spread = {}
        for r in results:
            spread[r[1]] = spread.get(r[1], 0) + 1
        self.assertEqual(len(spread), 3, spread)
        for n in spread.values():
            self.assertGreater(n, len(results) // 10, spread)
        if not SANITIZED:  # a sanitizer's quarantine and shadow memory grow by design
            self.assertLess(rss1 - rss0, 8 * 1024, "memsleep-lb grew %d KiB" % (rss1 - rss0))

    def test_control_fanout_to_real_workers(self):
        status, j = self.lb.json("POST", "/flush_cache")
        self.assertEqual(status, 200, j)
        self.assertEqual(len(j["answers"]), 3)
        status, j = self.lb.json("GET", "/get_server_info")
        self.assertEqual(status, 200)
        self.assertEqual([w["info"]["server"] for w in j["workers"]], ["memsleep-serve"] * 3)

    def has_control_plane(self):
        return self.workers[0].request("GET", "/is_sleeping")[0] == 200

    def test_generation_continues_while_workers_release_and_resume_one_at_a_time(self):
        if not self.has_control_plane():
            self.skipTest("memsleep-serve has no /release_memory_occupation yet")
        stop = threading.Event()
        results = []

        def generate():
            while not stop.is_set():
                status, _, data = self.lb.request("POST", "/generate", self.gen_body(2))
                results.append((status, data))

        ts = [threading.Thread(target=generate) for _ in range(3)]
        for t in ts:
            t.start()
        try:
            for w in self.workers:
                status, j = w.json("POST", "/release_memory_occupation", {})
                self.assertEqual(status, 200, j)
                done = len(results)
                time.sleep(0.5)  # the others keep answering meanwhile
                self.assertGreater(len(results), done)
                status, j = w.json("POST", "/resume_memory_occupation", {})
                self.assertEqual(status, 200, j)
        finally:
            stop.set()
            for t in ts:
                t.join(120)
        self.assertEqual([r for r in results if r[0] != 200], [])
        # The same through the balancer: all asleep, then all awake.
        status, j = self.lb.json("POST", "/release_memory_occupation", {})
        self.assertEqual(status, 200, j)
        status, j = self.lb.json("GET", "/is_sleeping")
        self.assertEqual((status, j["is_sleeping"]), (200, True), j)
        status, j = self.lb.json("POST", "/resume_memory_occupation", {})
        self.assertEqual(status, 200, j)
        status, j = self.lb.json("GET", "/is_sleeping")
        self.assertEqual((status, j["is_sleeping"]), (200, False), j)
        self.assertEqual(self.lb.json("POST", "/generate", self.gen_body(2))[0], 200)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    args, rest = ap.parse_known_args()
    BIN.update(lb=args.lb, serve=args.serve, mkmodel=args.mkmodel)
    with open(args.lb, "rb") as f:
        image = f.read()
    SANITIZED = b"__asan_init" in image or b"__tsan_init" in image
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
