#!/usr/bin/env python3
"""Integration tests of the sleep/wake control plane of memsleep-serve: the
real server on loopback, driven over HTTP, with models made by
memsleep-mkmodel.

  test_control.py --serve PATH --mkmodel PATH [unittest args]

Each of DESIGN's fourteen "Sleep/wake rules of the server" has a test named
test_rule_NN_... that fails when the rule is broken; docs/control-plane.md
is the contract. Beside them: after a full release without backup the
server's resident set (/proc/PID/smaps_rollup) falls by at least 95% of the
bytes of its weights, KV cache and workspace; with backup every tag reports
0 resident bytes while released; greedy output after any release/resume
cycle is token-identical to the output before it; and the pause modes, the
drain timeout, /update_weights_from_disk and the vLLM-style aliases behave
as documented. Every test starts its own server, so one failure cannot
spill into the next.
"""
import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import (LONG_POSITIONS, LONG_TOKENS, Background, ServerProcess,  # noqa: E402
                    make_model, open_stream, read_stream, rss_bytes, sse_events, wait_until)

BIN = {}
TMP = None
MODEL_DIR = None    # the model every test serves
MODEL_B = None      # same shapes, other weights (seed 2)
MODEL_BAD = None    # other shapes (2 layers): update must refuse it
MODEL_LONG = None   # 8192-token context: requests that outlast a drain timeout

TAGS = ["weights", "kv_cache", "workspace"]  # the tags holding memsleep memory


def graphs_expected():
    """True when the servers under test replay CUDA graphs: on a GPU
    (MEMSLEEP_TEST_SERVE_ARGS names --device cuda:N) without --cuda-graphs
    off. Their extra tag cuda_graph is released with every full release;
    test_tags_are_what_the_server_says checks this guess against the server."""
    args = os.environ.get("MEMSLEEP_TEST_SERVE_ARGS", "").split()
    on_gpu = any(a.startswith("cuda") or a.startswith("--device=cuda") for a in args)
    off = any(a == "off" and i > 0 and args[i - 1] == "--cuda-graphs" for i, a in enumerate(args))
    return on_gpu and "--cuda-graphs=off" not in args and not off


# Every tag of the servers under test: the memsleep ones, and cuda_graph.
ALL_TAGS = TAGS + (["cuda_graph"] if graphs_expected() else [])
GRAPH = ["cuda_graph"] if graphs_expected() else []

# A set of prompts whose greedy answers must survive every cycle.
PROMPTS = [
    {"input_ids": [1, 2, 3, 4], "n": 24},
    {"input_ids": [300, 7, 42, 99, 511, 0, 17], "n": 40},
    {"text": "The quick brown fox jumps over", "n": 32},
    {"text": "Once upon a time, in a land far away", "n": 16},
    {"input_ids": list(range(5, 5 + 90)), "n": 48},  # spans several KV blocks
]

LONG_N = 1500  # new tokens of a request that is still running while a test looks


def greedy(n):
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}


def body_of(p, stream=False):
    b = {k: v for k, v in p.items() if k != "n"}
    b["sampling_params"] = greedy(p["n"])
    if stream:
        b["stream"] = True
    return b


def setUpModule():
    global TMP, MODEL_DIR, MODEL_B, MODEL_BAD, MODEL_LONG
    TMP = tempfile.mkdtemp(prefix="memsleep-control-")
    MODEL_DIR = make_model(BIN["mkmodel"], os.path.join(TMP, "model"))
    MODEL_B = make_model(BIN["mkmodel"], os.path.join(TMP, "model-b"), "--seed", "2")
    MODEL_BAD = make_model(BIN["mkmodel"], os.path.join(TMP, "model-bad"), "--layers", "2")
    MODEL_LONG = make_model(BIN["mkmodel"], os.path.join(TMP, "model-long"),
                            "--max-position", str(LONG_POSITIONS or 8192))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


class ControlCase(unittest.TestCase):
    """A fresh server per test; helpers to drive the control plane."""

    MODEL = None  # None: MODEL_DIR
    ARGS = ("--max-batch", "4")

    def setUp(self):
        self.s = ServerProcess(BIN["serve"], self.MODEL or MODEL_DIR, *self.ARGS)

    def tearDown(self):
        rc = self.s.stop()
        if rc != 0:
            print(self.s.log_text(), file=sys.stderr)
        self.assertEqual(rc, 0, "memsleep-serve did not stop cleanly on SIGTERM")

    # -- HTTP helpers -------------------------------------------------------

    def post(self, path, body=None, timeout=120):
        return self.s.json("POST", path, {} if body is None else body, timeout=timeout)

    def ok(self, path, body=None):
        status, j = self.post(path, body)
        self.assertEqual(status, 200, (path, body, j))
        return j

    def refused(self, path, body, status, *words):
        """path answers status with {"error": ...} naming every one of words."""
        got, headers, data = self.s.request("POST", path, {} if body is None else body)
        self.assertEqual(got, status, (path, body, data))
        j = json.loads(data.decode("utf-8"))
        self.assertEqual(list(j), ["error"], (path, body, j))
        for w in words:
            self.assertIn(w, j["error"], (path, body, j))
        return headers, j

    def release(self, **body):
        return self.ok("/release_memory_occupation", body)

    def resume(self, **body):
        return self.ok("/resume_memory_occupation", body)

    def state(self):
        status, j = self.s.json("GET", "/is_sleeping")
        self.assertEqual(status, 200, j)
        return j

    def info(self):
        return self.s.info()

    def sched(self):
        return self.info()["scheduler"]

    def gen(self, p, stream=False):
        """Greedy answer of prompt p: (output_ids, the answer or the events)."""
        if stream:
            c, r = open_stream(self.s, "/generate", body_of(p, stream=True))
            self.assertEqual(r.status, 200)
            events, done = read_stream(c, r)
            self.assertTrue(done, "the stream did not end with [DONE]")
            return sum((e["output_ids"] for e in events), []), events
        status, j = self.post("/generate", body_of(p))
        self.assertEqual(status, 200, j)
        return j["output_ids"], j

    def answers(self):
        """Greedy output of every prompt, plain and streamed (must agree)."""
        out = []
        for p in PROMPTS:
            ids, j = self.gen(p)
            self.assertEqual(len(ids), p["n"])
            sids, _ = self.gen(p, stream=True)
            self.assertEqual(sids, ids, "streamed and plain answers differ")
            out.append(ids)
        return out

    def assert_same_answers(self, before, why):
        self.assertEqual(self.answers(), before, "greedy output changed " + why)

    def start_long(self, n=LONG_N, prompt=(9, 8, 7)):
        """Starts a streamed greedy request of n tokens and waits for its first
        event: (connection, response, events iterator, first ids)."""
        c, r = open_stream(self.s, "/generate", {"input_ids": list(prompt), "stream": True,
                                                 "sampling_params": greedy(n)})
        self.assertEqual(r.status, 200)
        events = sse_events(r)
        first = json.loads(next(events))
        return c, r, events, first["output_ids"]

    def finish_long(self, c, events, ids):
        """Reads the rest of a stream started by start_long(): (ids, finish)."""
        finish = None
        try:
            for e in events:
                if e == "[DONE]":
                    break
                j = json.loads(e)
                ids = ids + j["output_ids"]
                finish = j["meta_info"]["finish_reason"]
        finally:
            c.close()
        return ids, finish

    def tag_memory(self):
        return self.info()["memory"]

    def on_gpu(self):
        """True when the server runs on a GPU (MEMSLEEP_TEST_SERVE_ARGS): its
        tags hold device memory, not host memory."""
        return self.info()["arguments"].get("device", "cpu") != "cpu"

    def gpu_bytes(self):
        """The probe's measured GPU memory of the server process, or skips
        the test when NVML cannot see it."""
        gpu = self.info()["process"]["gpu"]
        if not gpu["known"]:
            self.skipTest("the GPU figure is unknown: %s" % gpu.get("detail"))
        return gpu["max_bytes"]

    def released_tags(self):
        return sorted(self.state()["released_tags"])


class Rules(ControlCase):
    """The fourteen rules, one or more tests each."""

    # Rule 1 ---------------------------------------------------------------

    def test_rule_01_release_drains_running_requests_first(self):
        long_n = LONG_N
        if LONG_TOKENS:  # a GPU: a longer request, on the long model
            self.s.stop()
            self.s = ServerProcess(BIN["serve"], MODEL_LONG, *self.ARGS)
            long_n = LONG_TOKENS // 4
        ref_long = self.gen({"input_ids": [9, 8, 7], "n": long_n})[0]
        short = {"input_ids": [4, 4, 4], "n": 8}
        ref_short = self.gen(short)[0]
        c, r, events, ids = self.start_long(n=long_n)
        rel = Background(self.post, "/release_memory_occupation", {})
        self.assertTrue(wait_until(lambda: self.state()["draining"], timeout_s=30),
                        "the release never reported draining while a request ran: %r"
                        % (rel.result,))
        # Draining: nothing released yet, the release has not answered, the
        # running request still makes tokens.
        self.assertTrue(rel.is_alive(), "release answered before the running request ended")
        self.assertEqual(self.released_tags(), [])
        for tag in TAGS:
            self.assertFalse(self.tag_memory()[tag]["asleep"], tag)
        made = self.sched()["generated_tokens_total"]
        self.assertTrue(wait_until(lambda: self.sched()["generated_tokens_total"] > made + 5),
                        "the running request stopped making tokens while draining")
        # A request arriving while draining waits in the queue.
        queued = Background(self.gen, short)
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
        ids, finish = self.finish_long(c, events, ids)
        self.assertEqual(finish, {"type": "length", "length": long_n})
        self.assertEqual(ids, ref_long, "the drained request was corrupted by the release")
        status, j = rel.value(60)
        self.assertEqual(status, 200, j)
        self.assertTrue(j["success"])
        self.assertEqual(sorted(j["released"]), sorted(ALL_TAGS))
        self.assertGreaterEqual(j["drained_requests"], 1)
        # Asleep: the queued request still waits, and runs after the wake.
        self.assertTrue(queued.is_alive(), "a request ran while the memory was released")
        self.assertEqual(self.sched()["waiting"], 1)
        self.resume()
        self.assertEqual(queued.value(60)[0], ref_short)

    def test_rule_01_queue_is_bounded_while_asleep(self):
        self.s.stop()
        self.s = ServerProcess(BIN["serve"], MODEL_DIR, "--max-batch", "1", "--max-queue", "1")
        p = {"input_ids": [5, 6], "n": 6}
        ref = self.gen(p)[0]
        self.release(tags=["kv_cache"])
        waiting = Background(self.gen, p)
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
        headers, j = self.refused("/generate", body_of(p), 503, "retry")
        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
        self.assertTrue(waiting.is_alive())
        self.resume()
        self.assertEqual(waiting.value(60)[0], ref)

    # Rule 2 ---------------------------------------------------------------

    def test_rule_02_continue_refused_while_released(self):
        p = {"input_ids": [3, 3], "n": 5}
        ref = self.gen(p)[0]
        self.release(tags=["kv_cache"])
        queued = Background(self.gen, p)
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
        self.refused("/continue_generation", {}, 409)
        st = self.state()
        self.assertTrue(st["is_sleeping"])
        self.assertEqual(sorted(st["released_tags"]), ["kv_cache"])
        steps = self.sched()["steps"]
        self.assertEqual(self.sched()["waiting"], 1, "continue admitted work while released")
        self.assertEqual(self.sched()["steps"], steps)
        self.assertTrue(queued.is_alive())
        self.resume()
        self.assertEqual(queued.value(60)[0], ref)
        self.assertEqual(self.ok("/continue_generation")["success"], True)

    def test_rule_02_continue_refused_while_draining(self):
        c, r, events, ids = self.start_long()
        rel = Background(self.post, "/release_memory_occupation", {"tags": ["weights"]})
        self.assertTrue(wait_until(lambda: self.state()["draining"], timeout_s=30))
        self.refused("/continue_generation", {}, 409)
        self.assertTrue(self.state()["draining"])
        self.finish_long(c, events, ids)
        self.assertEqual(rel.value(60)[0], 200)
        self.assertEqual(self.released_tags(), ["weights"])
        self.resume()

    # Rule 3 ---------------------------------------------------------------

    def test_rule_03_resume_without_tags_wakes_exactly_the_released(self):
        before = self.answers()
        for subset in (["weights"], ["kv_cache"], ["workspace"], ["kv_cache", "workspace"],
                       ["weights", "workspace"]):
            with self.subTest(subset=subset):
                j = self.release(tags=subset)
                self.assertEqual(sorted(j["released"]), sorted(subset))
                self.assertEqual(sorted(j["released_tags"]), sorted(subset))
                mem = self.tag_memory()
                for tag in TAGS:
                    self.assertEqual(mem[tag]["asleep"], tag in subset, (tag, mem[tag]))
                j = self.resume()
                self.assertEqual(sorted(j["resumed"]), sorted(subset))
                self.assertEqual(j["released_tags"], [])
                self.assertFalse(self.state()["is_sleeping"])
                mem = self.tag_memory()
                for tag in TAGS:
                    self.assertFalse(mem[tag]["asleep"], tag)
                self.assert_same_answers(before, "after a partial release of %s" % subset)

    def test_rule_03_releases_add_up_and_resume_can_name_a_subset(self):
        before = self.answers()
        self.release(tags=["weights"])
        self.release(tags=["kv_cache"])
        self.assertEqual(self.released_tags(), ["kv_cache", "weights"])
        self.refused("/release_memory_occupation", {"tags": ["weights"]}, 409)
        self.refused("/resume_memory_occupation", {"tags": ["workspace"]}, 409)
        j = self.resume(tags=["kv_cache"])
        self.assertEqual(j["resumed"], ["kv_cache"])
        self.assertEqual(j["released_tags"], ["weights"])
        # Weights still asleep: generation waits.
        queued = Background(self.gen, PROMPTS[0])
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
        j = self.resume()
        self.assertEqual(j["resumed"], ["weights"])
        self.assertEqual(queued.value(60)[0], before[0])
        self.assert_same_answers(before, "after releases added up")

    # Rule 4 ---------------------------------------------------------------

    def test_rule_04_bad_tags_are_400_naming_the_valid_tags(self):
        bad = [{"tags": []}, {"tags": ["weight"]}, {"tags": ["weights", "weights"]},
               {"tags": ["kv_cache", "bogus"]}, {"tags": ["KV_CACHE"]}]
        for path in ("/release_memory_occupation", "/resume_memory_occupation"):
            for body in bad:
                with self.subTest(path=path, body=body):
                    self.refused(path, body, 400, *TAGS)
        wrong_types = [{"tags": "weights"}, {"tags": [1]}, {"tags": None, "x": 1},
                       {"tags": {"weights": True}}, {"backup": "no"}, {"timeout": 0},
                       {"timeout": -1}, {"timeout": 4000}, {"timeout": "5"},
                       {"tag": ["weights"]}]
        for body in wrong_types:
            with self.subTest(body=body):
                self.refused("/release_memory_occupation", body, 400)
        for body in ([], "weights", b"{", b"\xff"):
            with self.subTest(body=body):
                self.refused("/release_memory_occupation", body, 400)
        st = self.state()
        self.assertFalse(st["is_sleeping"], st)
        self.assertFalse(st["draining"], st)
        self.assertEqual(st["released_tags"], [])
        self.assertEqual(len(self.gen(PROMPTS[0])[0]), PROMPTS[0]["n"])

    # Rule 5 ---------------------------------------------------------------

    def test_rule_05_resume_while_draining_is_409_and_changes_nothing(self):
        ref_long = self.gen({"input_ids": [9, 8, 7], "n": LONG_N})[0]
        c, r, events, ids = self.start_long()
        rel = Background(self.post, "/release_memory_occupation", {"tags": ["kv_cache"]})
        self.assertTrue(wait_until(lambda: self.state()["draining"], timeout_s=30))
        for body in ({}, {"tags": ["kv_cache"]}):
            with self.subTest(body=body):
                self.refused("/resume_memory_occupation", body, 409, "draining")
        self.refused("/release_memory_occupation", {"tags": ["weights"]}, 409)
        st = self.state()
        self.assertTrue(st["draining"], st)
        self.assertEqual(st["released_tags"], [])
        ids, finish = self.finish_long(c, events, ids)
        self.assertEqual(ids, ref_long)
        status, j = rel.value(60)
        self.assertEqual(status, 200, j)
        # The release went ahead as asked: the refused resume cancelled nothing.
        self.assertEqual(self.released_tags(), ["kv_cache"])
        self.assertTrue(self.tag_memory()["kv_cache"]["asleep"])
        self.assertEqual(self.resume()["resumed"], ["kv_cache"])

    # Rule 6 ---------------------------------------------------------------

    def test_rule_06_resume_with_nothing_released_keeps_the_user_pause(self):
        p = {"input_ids": [2, 7, 1], "n": 6}
        ref = self.gen(p)[0]
        for mode in ("abort", "wait", "keep"):
            with self.subTest(mode=mode):
                self.assertEqual(self.ok("/pause_generation", {"mode": mode})["mode"], mode)
                j = self.resume()
                self.assertEqual(j["resumed"], [])
                self.assertEqual(j["released_tags"], [])
                st = self.state()
                self.assertTrue(st["paused"], st)
                self.assertEqual(st["pause_mode"], mode)
                queued = Background(self.gen, p)
                self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
                steps = self.sched()["steps"]
                time.sleep(0.3)  # room for a wrongly reopened scheduler to run it
                self.assertEqual(self.sched()["steps"], steps, "a paused scheduler stepped")
                self.assertTrue(queued.is_alive(), "a request ran while the user paused")
                self.ok("/continue_generation")
                self.assertEqual(queued.value(60)[0], ref)
                self.assertFalse(self.state()["paused"])

    # Rule 7 ---------------------------------------------------------------

    def test_rule_07_user_pause_before_release_survives_the_wake(self):
        p = {"input_ids": [8, 1, 8], "n": 6}
        ref = self.gen(p)[0]
        for mode in ("abort", "wait"):
            with self.subTest(mode=mode):
                self.ok("/pause_generation", {"mode": mode})
                self.release()
                self.assertEqual(self.resume()["released_tags"], [])
                st = self.state()
                self.assertTrue(st["paused"], st)
                self.assertEqual(st["pause_mode"], mode)
                queued = Background(self.gen, p)
                self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
                steps = self.sched()["steps"]
                time.sleep(0.3)
                self.assertEqual(self.sched()["steps"], steps, "the wake unpaused the scheduler")
                self.assertTrue(queued.is_alive())
                self.ok("/continue_generation")
                self.assertEqual(queued.value(60)[0], ref)

    def test_rule_07_user_pause_during_sleep_survives_the_wake(self):
        p = {"input_ids": [8, 2, 8], "n": 6}
        ref = self.gen(p)[0]
        self.release(tags=["weights", "kv_cache"])
        self.ok("/pause_generation", {"mode": "wait"})
        self.resume()
        st = self.state()
        self.assertTrue(st["paused"], st)
        queued = Background(self.gen, p)
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1))
        steps = self.sched()["steps"]
        time.sleep(0.3)
        self.assertEqual(self.sched()["steps"], steps)
        self.ok("/continue_generation")
        self.assertEqual(queued.value(60)[0], ref)

    # Rule 8 ---------------------------------------------------------------

    def test_rule_08_releasing_kv_cache_resets_the_prefix_cache(self):
        p = {"input_ids": list(range(100, 180)), "n": 10}
        first = self.gen(p)[1]
        second = self.gen(p)[1]
        self.assertGreater(second["meta_info"]["cached_tokens"], 0, "prefix cache not in use")
        self.assertGreater(self.sched()["prefix_cached_blocks"], 0)
        self.release(tags=["kv_cache"])
        self.assertEqual(self.sched()["prefix_cached_blocks"], 0,
                         "the prefix cache survived the release of kv_cache")
        self.resume()
        s = self.sched()
        self.assertEqual(s["prefix_cached_blocks"], 0)
        self.assertEqual(s["kv_blocks_free"], s["kv_blocks_total"])
        third = self.gen(p)[1]
        self.assertEqual(third["meta_info"]["cached_tokens"], 0,
                         "a prefix cache entry pointed into the discarded KV cache")
        self.assertEqual(third["output_ids"], first["output_ids"])

    def test_rule_08_a_refused_release_keeps_the_prefix_cache(self):
        # Fail closed: a kv_cache release that cannot go ahead (the scheduler
        # is frozen with a request holding KV blocks) releases nothing and
        # leaves the prefix cache and the KV contents as they were.
        p = {"input_ids": list(range(200, 260)), "n": 6}
        ref = self.gen(p)[0]
        cached = self.sched()["prefix_cached_blocks"]
        self.assertGreater(cached, 0)
        c, r, events, ids = self.start_long()
        self.ok("/pause_generation", {"mode": "keep"})
        self.refused("/release_memory_occupation", {"tags": ["kv_cache"]}, 409,
                     "continue_generation")
        self.assertEqual(self.released_tags(), [])
        self.assertFalse(self.tag_memory()["kv_cache"]["asleep"])
        self.assertGreaterEqual(self.sched()["prefix_cached_blocks"], cached)
        self.ok("/continue_generation")
        self.finish_long(c, events, ids)
        j = self.gen(p)[1]
        self.assertGreater(j["meta_info"]["cached_tokens"], 0)
        self.assertEqual(j["output_ids"], ref)

    # Rule 9 ---------------------------------------------------------------

    def test_rule_09_kv_cache_is_repaired_after_wake(self):
        before = self.answers()
        # Fill much of the pool (prefix cache and running KV) before release.
        for i in range(12):
            self.gen({"input_ids": [i] * 150, "n": 4})
        for backup in (True, False):
            with self.subTest(backup=backup):
                self.release(tags=["kv_cache"], backup=backup)
                self.resume(tags=["kv_cache"])
                mem = self.tag_memory()["kv_cache"]
                self.assertEqual(mem["resident_bytes"], mem["reserved_bytes"], mem)
                s = self.sched()
                self.assertEqual(s["kv_blocks_free"], s["kv_blocks_total"], s)
                self.assert_same_answers(before, "after the KV cache woke")
                self.assertEqual(self.gen({"input_ids": [0] * 150, "n": 4})[1]["meta_info"]
                                 ["cached_tokens"], 0)

    def test_rule_09_kv_wake_under_load_gives_correct_answers(self):
        # The reference runs the same four prompts as one batch (queued while
        # paused, admitted together): on a GPU a batch of one and a batch of
        # four take different GEMM kernels, whose last bits may differ.
        self.ok("/pause_generation", {"mode": "wait"})
        first = [Background(self.gen, p) for p in PROMPTS[:4]]
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 4))
        self.ok("/continue_generation")
        ref = [q.value(60)[0] for q in first]
        self.release()
        # Queue every prompt while asleep (max-batch 4: they run in a batch).
        queued = [Background(self.gen, p) for p in PROMPTS[:4]]
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 4))
        self.resume()
        for q, want in zip(queued, ref):
            self.assertEqual(q.value(60)[0], want)

    # Rule 10 --------------------------------------------------------------

    def test_rule_10_without_memory_saver_release_and_resume_are_errors(self):
        self.s.stop()
        self.s = ServerProcess(BIN["serve"], MODEL_DIR, "--disable-memory-saver")
        before = self.gen(PROMPTS[0])[0]
        for path, body in (("/release_memory_occupation", {}),
                           ("/release_memory_occupation", {"tags": ["weights"]}),
                           ("/resume_memory_occupation", {}),
                           ("/resume_memory_occupation", {"tags": ["kv_cache"]}),
                           ("/sleep?level=1", None), ("/sleep?level=2", None),
                           ("/wake_up", None)):
            with self.subTest(path=path, body=body):
                status, headers, data = self.s.request("POST", path, body)
                self.assertEqual(status, 400, (path, data))
                j = json.loads(data)
                self.assertIn("memory", j["error"], j)
        st = self.state()
        self.assertFalse(st["is_sleeping"], st)
        self.assertEqual(self.gen(PROMPTS[0])[0], before)

    # Rule 11 --------------------------------------------------------------

    def test_rule_11_weights_discarded_refuse_generation_until_update(self):
        before = self.answers()
        j = self.release(backup=False)
        self.assertEqual(sorted(j["released"]), sorted(ALL_TAGS))
        self.assertFalse(self.state()["weights_valid"])
        # Refused at once, even while asleep: a queued request could only
        # ever run on the discarded weights.
        self.refused("/generate", body_of(PROMPTS[0]), 503, "update_weights_from_disk")
        # The weights tag must be awake for an update.
        self.refused("/update_weights_from_disk", {"model_path": MODEL_DIR}, 409, "resume")
        self.resume()
        st = self.state()
        self.assertFalse(st["is_sleeping"])
        self.assertFalse(st["weights_valid"], st)
        for p in PROMPTS[:2]:
            for stream in (False, True):
                with self.subTest(stream=stream):
                    self.refused("/generate", body_of(p, stream), 503,
                                 "update_weights_from_disk")
        self.refused("/v1/completions", {"prompt": [1, 2], "max_tokens": 3}, 503,
                     "update_weights_from_disk")
        self.assertEqual(self.s.json("GET", "/health_generate")[0], 503)
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        self.assertTrue(self.state()["weights_valid"])
        self.assert_same_answers(before, "after weights were discarded and reloaded")

    def test_rule_11_requests_queued_before_the_discard_never_see_it(self):
        # A request that arrives while a release without backup drains waits
        # in the queue; the weights are then discarded under it. It must be
        # refused (503, saying why) or run on weights loaded again - never on
        # what the discarded weights read as after the wake.
        p = {"input_ids": [6, 6, 6], "n": 12}
        ref = self.gen(p)[0]
        c, r, events, ids = self.start_long(n=600)
        rel = Background(self.post, "/release_memory_occupation", {"backup": False})
        self.assertTrue(wait_until(lambda: self.state()["draining"], timeout_s=30))
        queued = Background(self.post, "/generate", body_of(p))
        self.assertTrue(wait_until(lambda: self.sched()["waiting"] == 1 or not queued.is_alive()))
        self.finish_long(c, events, ids)
        self.assertEqual(rel.value(60)[0], 200)
        self.resume()
        if queued.is_alive():  # still held: it may run once the weights are loaded
            self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        status, j = queued.value(60)
        if status == 200:
            self.assertEqual(j["output_ids"], ref, "a request ran on discarded weights")
        else:
            self.assertEqual(status, 503, j)
            self.assertIn("update_weights_from_disk", j["error"])
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        self.assertEqual(self.gen(p)[0], ref)

    def test_rule_11_rl_order_update_while_kv_cache_asleep(self):
        before = self.answers()
        self.release(backup=False)
        j = self.resume(tags=["weights"])
        self.assertEqual(sorted(j["released_tags"]), sorted(["kv_cache", "workspace"] + GRAPH))
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        st = self.state()
        self.assertTrue(st["weights_valid"], st)
        self.assertEqual(sorted(st["released_tags"]), sorted(["kv_cache", "workspace"] + GRAPH))
        self.resume()
        self.assert_same_answers(before, "after the RL-order wake")

    def test_rule_11_sleep_level_2_discards_weights(self):
        before = self.gen(PROMPTS[1])[0]
        status, j = self.post("/sleep?level=2", None)
        self.assertEqual(status, 200, j)
        self.assertFalse(self.state()["weights_valid"])
        self.ok("/wake_up", None)
        self.refused("/generate", body_of(PROMPTS[1]), 503, "update_weights_from_disk")
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        self.assertEqual(self.gen(PROMPTS[1])[0], before)

    # Rule 12 --------------------------------------------------------------

    def test_rule_12_release_with_backup_then_resume_is_token_identical(self):
        before = self.answers()
        seeded = {"input_ids": [7, 7, 1], "sampling_params": {
            "max_new_tokens": 20, "temperature": 0.8, "sampling_seed": 11, "ignore_eos": True}}
        seeded_before = self.ok("/generate", seeded)["output_ids"]
        comp = {"prompt": "Hello there", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        comp_before = self.ok("/v1/completions", comp)["choices"][0]["text"]
        for cycle in range(3):
            with self.subTest(cycle=cycle):
                self.release(backup=True)
                self.assertTrue(self.state()["weights_valid"])
                self.resume()
                self.assert_same_answers(before, "after release with backup (cycle %d)" % cycle)
                self.assertEqual(self.ok("/generate", seeded)["output_ids"], seeded_before)
                self.assertEqual(self.ok("/v1/completions", comp)["choices"][0]["text"],
                                 comp_before)

    def test_rule_12_sleep_level_1_and_wake_up_aliases(self):
        before = self.answers()
        status, j = self.post("/sleep?level=1", None)
        self.assertEqual(status, 200, j)
        self.assertEqual(self.released_tags(), sorted(ALL_TAGS))
        self.assertTrue(self.state()["weights_valid"])
        j = self.ok("/wake_up?tags=weights,kv_cache", None)
        self.assertEqual(self.released_tags(), sorted(["workspace"] + GRAPH))
        self.ok("/wake_up", None)
        self.assertEqual(self.released_tags(), [])
        self.assert_same_answers(before, "after /sleep?level=1 and /wake_up")

    # Rule 13 --------------------------------------------------------------

    def test_rule_13_release_hands_cached_heap_back(self):
        pid = self.s.proc.pid
        for p in PROMPTS:
            self.gen(p)
        fresh = rss_bytes(pid)
        # Heap churn: large request bodies are parsed (many small blocks) and
        # freed; glibc keeps most of that memory cached in its arenas.
        big = json.dumps({"input_ids": [1, 2], "not_a_field": list(range(600000))})
        churn = [Background(self.s.request, "POST", "/generate", big) for _ in range(4)]
        for b in churn:
            self.assertEqual(b.value(120)[0], 400)
        churned = rss_bytes(pid)
        grown = churned - fresh
        tagged = sum(t["resident_bytes"] for t in self.tag_memory().values())
        if self.on_gpu():
            tagged = 0  # the tags are device memory: the host holds none of it
        self.release(backup=False)
        after = rss_bytes(pid)
        # Without trimming, after ~= fresh + grown - tagged. With it, the
        # cached heap goes back too (a quarter of it may stay: live buffers).
        self.assertLessEqual(after, fresh - 0.95 * tagged + 0.25 * max(grown, 0) + (1 << 20),
                             "fresh %d, after churn %d, tagged %d, after release %d: the "
                             "cached heap was not given back" % (fresh, churned, tagged, after))
        self.resume()
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})

    # Rule 14 --------------------------------------------------------------

    def test_rule_14_memory_figures_are_measured(self):
        for p in PROMPTS:
            self.gen(p)
        info = self.info()
        mem = info["memory"]
        for tag in TAGS:
            m = mem[tag]
            self.assertGreater(m["reserved_bytes"], 0, tag)
            self.assertEqual(m["resident_bytes"], m["reserved_bytes"], (tag, m))
        self.assertGreaterEqual(mem["weights"]["resident_bytes"], info["model"]["weight_bytes"])
        tagged = sum(mem[t]["resident_bytes"] for t in ALL_TAGS)
        pid = self.s.proc.pid
        self.assertLess(abs(info["process"]["host"]["resident_bytes"] - rss_bytes(pid)), 4 << 20)
        j = self.release(backup=False)
        # The answer's figures are what was resident, before and after.
        self.assertGreaterEqual(j["resident_bytes_before"], int(0.99 * tagged))
        self.assertLessEqual(j["resident_bytes_before"], tagged + (1 << 20))
        self.assertEqual(j["resident_bytes_after"], 0)
        info = self.info()
        for tag in TAGS:
            m = info["memory"][tag]
            self.assertTrue(m["asleep"], tag)
            self.assertEqual(m["resident_bytes"], 0, (tag, m))
            self.assertEqual(m["reserved_bytes"], mem[tag]["reserved_bytes"], tag)
        # The process figure follows what the kernel says, not a plan.
        probe = info["process"]["host"]["resident_bytes"]
        self.assertLess(abs(probe - rss_bytes(pid)), 4 << 20)
        self.resume(tags=["weights"])
        m = self.tag_memory()
        self.assertEqual(m["weights"]["resident_bytes"], m["weights"]["reserved_bytes"])
        self.assertEqual(m["kv_cache"]["resident_bytes"], 0)
        self.resume()
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})

    def test_rule_14_metrics_follow_the_release(self):
        self.release(tags=["kv_cache"])
        status, _, body = self.s.request("GET", "/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertIn('memsleep_memory_resident_bytes{tag="kv_cache"} 0\n', text)
        self.assertIn('memsleep_memory_asleep{tag="kv_cache"} 1\n', text)
        self.assertIn('memsleep_memory_asleep{tag="weights"} 0\n', text)
        self.resume()
        text = self.s.request("GET", "/metrics")[2].decode()
        self.assertIn('memsleep_memory_asleep{tag="kv_cache"} 0\n', text)


class Memory(ControlCase):
    """What a full release gives back, measured by the kernel."""

    def test_full_release_without_backup_frees_95_percent_of_tagged_rss(self):
        pid = self.s.proc.pid
        before_answers = self.answers()
        info = self.info()
        tagged = sum(info["memory"][t]["resident_bytes"] for t in TAGS)
        self.assertGreaterEqual(tagged, info["model"]["weight_bytes"])
        # The memory the tags hold: the resident set on the CPU, the GPU
        # memory NVML measures for the process on a GPU.
        on_gpu = self.on_gpu()
        measure = self.gpu_bytes if on_gpu else (lambda: rss_bytes(pid))
        what = "GPU memory" if on_gpu else "RSS"
        rss_before = measure()
        self.release(backup=False)
        rss_after = measure()
        drop = rss_before - rss_after
        self.assertGreaterEqual(drop, 0.95 * tagged,
                                "%s %d -> %d: fell by %d bytes, less than 95%% of the %d "
                                "bytes of weights + KV cache + workspace"
                                % (what, rss_before, rss_after, drop, tagged))
        self.resume(tags=["weights"])
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        self.resume()
        self.assert_same_answers(before_answers, "after a full release without backup")
        self.assertGreaterEqual(measure(), rss_before - (4 << 20))

    def test_release_with_backup_reports_zero_resident_per_tag(self):
        before = self.answers()
        self.release(backup=True)
        mem = self.tag_memory()
        for tag in TAGS:
            self.assertTrue(mem[tag]["asleep"], tag)
            self.assertEqual(mem[tag]["resident_bytes"], 0, (tag, mem[tag]))
            self.assertGreater(mem[tag]["reserved_bytes"], 0, tag)
        # The weights' contents are kept somewhere: the backup.
        self.assertGreaterEqual(mem["weights"]["backup_bytes"],
                                self.info()["model"]["weight_bytes"])
        self.resume()
        mem = self.tag_memory()
        for tag in TAGS:
            self.assertEqual(mem[tag]["resident_bytes"], mem[tag]["reserved_bytes"], tag)
        if self.on_gpu():
            # The CUDA backend keeps its pinned backups for the next release
            # (memsleep_keep_backups): held, and reused rather than grown.
            kept = mem["weights"]["backup_bytes"]
            self.assertGreaterEqual(kept, self.info()["model"]["weight_bytes"])
            self.release(backup=True)
            self.assertEqual(self.tag_memory()["weights"]["backup_bytes"], kept)
            self.resume()
        else:
            self.assertEqual(mem["weights"]["backup_bytes"], 0)
        self.assert_same_answers(before, "after release with backup")


class CudaGraphTag(ControlCase):
    """Tag cuda_graph: the decode steps' CUDA graphs on a GPU server; an
    unknown tag elsewhere."""

    def test_tags_are_what_the_server_says(self):
        self.assertEqual(self.info()["memory_saver"]["tags"], ALL_TAGS)

    def test_cuda_graph_release_and_resume(self):
        if not GRAPH:
            for path in ("/release_memory_occupation", "/resume_memory_occupation"):
                self.refused(path, {"tags": ["cuda_graph"]}, 400, "cuda_graph", "no such tag",
                             *TAGS)
            self.assertEqual(self.released_tags(), [])
            self.assertNotIn("cuda_graph", self.tag_memory())
            return
        before = self.answers()
        g = self.tag_memory()["cuda_graph"]
        self.assertGreater(g["graphs"], 0, g)
        self.assertEqual(g["allocations"], g["graphs"], g)
        self.assertFalse(g["asleep"], g)
        j = self.release(tags=["cuda_graph"])
        self.assertEqual(j["released"], ["cuda_graph"])
        gr = self.tag_memory()["cuda_graph"]
        self.assertTrue(gr["asleep"], gr)
        self.assertEqual((gr["allocations"], gr["resident_bytes"]), (0, 0), gr)
        self.assertEqual(gr["graphs"], g["graphs"], "the graphs themselves are kept")
        for tag in TAGS:
            self.assertFalse(self.tag_memory()[tag]["asleep"], tag)
        self.resume()
        # The executables come back when next used, from the kept graphs.
        gw = self.tag_memory()["cuda_graph"]
        self.assertFalse(gw["asleep"], gw)
        self.assertEqual(gw["allocations"], 0, gw)
        self.assert_same_answers(before, "after releasing cuda_graph")
        gu = self.tag_memory()["cuda_graph"]
        self.assertEqual(gu["captures"], g["captures"], "captured again after the wake")
        self.assertEqual(gu["allocations"], g["graphs"], gu)
        self.assertEqual(gu["instantiations"], g["instantiations"] + g["graphs"], gu)
        self.assertGreater(gu["replays"], g["replays"])


class PauseModes(ControlCase):
    """/pause_generation and /continue_generation as documented."""

    def test_pause_abort_ends_running_requests_with_abort(self):
        ref = self.gen({"input_ids": [9, 8, 7], "n": 64})[0]
        c, r, events, ids = self.start_long()
        j = self.ok("/pause_generation", {"mode": "abort"})
        self.assertGreaterEqual(j["aborted"], 1)
        ids, finish = self.finish_long(c, events, ids)
        self.assertEqual(finish["type"], "abort")
        self.assertLess(len(ids), LONG_N)
        self.assertEqual(ids[:64], ref[:len(ids[:64])], "an aborted stream sent garbage")
        self.ok("/continue_generation")
        self.assertEqual(self.gen({"input_ids": [9, 8, 7], "n": 64})[0], ref)

    def test_pause_wait_answers_after_running_requests_finish(self):
        n = 300
        ref = self.gen({"input_ids": [9, 8, 7], "n": n})[0]
        c, r, events, ids = self.start_long(n=n)
        status, j = self.post("/pause_generation", {"mode": "wait"})
        self.assertEqual(status, 200, j)
        self.assertEqual(j["aborted"], 0)
        # Answered only once the running request finished: it made all its tokens.
        self.assertEqual(self.sched()["running"], 0)
        ids, finish = self.finish_long(c, events, ids)
        self.assertEqual(ids, ref)
        self.assertEqual(finish["type"], "length")
        self.ok("/continue_generation")

    def test_pause_keep_freezes_and_continue_resumes_identically(self):
        ref = self.gen({"input_ids": [9, 8, 7], "n": 400})[0]
        c, r, events, ids = self.start_long(n=400)
        self.ok("/pause_generation", {"mode": "keep"})
        steps = self.sched()["steps"]
        time.sleep(0.3)
        self.assertEqual(self.sched()["steps"], steps, "a kept request still stepped")
        self.assertEqual(self.sched()["running"], 1)
        self.assertEqual(self.state()["pause_mode"], "keep")
        self.ok("/continue_generation")
        ids, finish = self.finish_long(c, events, ids)
        self.assertEqual(ids, ref)

    def test_pause_keep_blocks_release_with_409(self):
        c, r, events, ids = self.start_long(n=400)
        self.ok("/pause_generation", {"mode": "keep"})
        self.refused("/release_memory_occupation", {}, 409, "continue_generation", "abort")
        st = self.state()
        self.assertEqual(st["released_tags"], [])
        self.assertFalse(st["draining"])
        self.ok("/pause_generation", {"mode": "abort"})
        self.release()
        self.resume()
        self.assertTrue(self.state()["paused"])
        self.ok("/continue_generation")
        self.finish_long(c, events, ids)

    def test_bad_pause_mode_is_400(self):
        for body in ({"mode": "stop"}, {"mode": 1}, {"modes": "abort"}):
            with self.subTest(body=body):
                self.refused("/pause_generation", body, 400)
        self.assertFalse(self.state()["paused"])


class DrainTimeout(ControlCase):
    """A release whose drain outlasts its timeout: 504, nothing released."""

    MODEL = property(lambda self: MODEL_LONG)

    def test_drain_timeout_is_504_and_releases_nothing(self):
        c, r, events, ids = self.start_long(n=LONG_TOKENS or 8000)
        t0 = time.time()
        status, j = self.post("/release_memory_occupation", {"timeout": 1})
        self.assertEqual(status, 504, j)
        self.assertIn("error", j)
        self.assertLess(time.time() - t0, 30)
        st = self.state()
        self.assertFalse(st["is_sleeping"], st)
        self.assertFalse(st["draining"], st)
        self.assertFalse(st["paused"], st)
        for tag in TAGS:
            self.assertFalse(self.tag_memory()[tag]["asleep"], tag)
        # Admission reopened: a new request runs beside the long one.
        self.assertEqual(len(self.gen({"input_ids": [1, 2], "n": 4})[0]), 4)
        self.assertEqual(self.sched()["running"], 1)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        self.assertTrue(wait_until(lambda: self.sched()["running"] == 0, timeout_s=20))


class UpdateWeights(ControlCase):
    """/update_weights_from_disk: other weights of the same shapes load in
    place; a wrong model is refused and the old weights stay."""

    def setUp(self):
        # The other models sit beside the served one: allow their parent
        # (by default only the served model's own directory is allowed).
        self.s = ServerProcess(BIN["serve"], MODEL_DIR, *self.ARGS, "--allowed-model-dir", TMP)

    def test_update_loads_other_weights_of_the_same_shapes(self):
        other = ServerProcess(BIN["serve"], MODEL_B, "--max-batch", "4")
        try:
            want = [other.json("POST", "/generate", body_of(p))[1]["output_ids"]
                    for p in PROMPTS]
        finally:
            self.assertEqual(other.stop(), 0)
        mine = [self.gen(p)[0] for p in PROMPTS]
        self.assertNotEqual(mine, want)
        self.ok("/update_weights_from_disk", {"model_path": MODEL_B})
        self.assertEqual([self.gen(p)[0] for p in PROMPTS], want)
        self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        self.assertEqual([self.gen(p)[0] for p in PROMPTS], mine)

    def test_update_refuses_a_truncated_file_before_writing_a_byte(self):
        # A weights file cut in half: the tensors at its start are whole, the
        # rest missing. A loader that wrote as it read would leave half the
        # new bytes in place; "every file is checked before a byte is
        # written" means the old weights stay, whole.
        bad = os.path.join(TMP, "model-truncated")
        shutil.copytree(MODEL_B, bad, dirs_exist_ok=True)
        f = os.path.join(bad, "model.safetensors")
        os.truncate(f, os.path.getsize(f) // 2)
        before = self.answers()
        self.refused("/update_weights_from_disk", {"model_path": bad}, 400, "model.safetensors")
        self.assertTrue(self.state()["weights_valid"])
        self.assert_same_answers(before, "after a refused update from a truncated file")

    def test_update_between_steps_leaves_running_requests_whole(self):
        ref = self.gen({"input_ids": [9, 8, 7], "n": 600})[0]
        c, r, events, ids = self.start_long(n=600)
        for _ in range(3):
            self.ok("/update_weights_from_disk", {"model_path": MODEL_DIR})
        ids, finish = self.finish_long(c, events, ids)
        self.assertEqual(finish, {"type": "length", "length": 600})
        self.assertEqual(ids, ref)

    def test_update_refuses_a_wrong_model_and_keeps_the_old_weights(self):
        before = self.answers()
        for path, words in ((MODEL_BAD, "model"), (os.path.join(TMP, "missing"), "missing")):
            with self.subTest(path=path):
                self.refused("/update_weights_from_disk", {"model_path": path}, 400, words)
        for body in ({}, {"model_path": 5}, {"model_path": MODEL_DIR, "x": 1}):
            with self.subTest(body=body):
                self.refused("/update_weights_from_disk", body, 400)
        self.assertTrue(self.state()["weights_valid"])
        self.assert_same_answers(before, "after a refused update")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    args, rest = ap.parse_known_args()
    BIN.update(serve=args.serve, mkmodel=args.mkmodel)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
