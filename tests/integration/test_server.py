#!/usr/bin/env python3
"""Integration tests of memsleep-serve: the real server on loopback, driven
over HTTP, with a model made by memsleep-mkmodel.

  test_server.py --serve PATH --mkmodel PATH --ctl PATH [unittest args]

Every endpoint, streaming (SSE events that end with [DONE] and add up to
the non-streamed answer), bad input (400/404/405/413 with a JSON error, the
server still up), a full queue (503 with Retry-After), a client that goes
away mid-stream (its KV blocks come back), flush_cache while busy (400),
a model without tokenizer, memsleepctl, and a clean SIGTERM shutdown.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import (LONG_POSITIONS, LONG_TOKENS, ServerProcess, make_model, open_stream,  # noqa: E402
                    sse_events, wait_until)

BIN = {}
MODEL_DIR = None
TMP = None

# A request long enough to still be running while a test looks at it.
LONG = {"max_new_tokens": 1900, "ignore_eos": True, "temperature": 0}
MODEL_LONG = None  # on a GPU: LONG_POSITIONS positions, for LONGER requests
LONGER = dict(LONG, max_new_tokens=LONG_TOKENS or LONG["max_new_tokens"])


def setUpModule():
    global MODEL_DIR, TMP
    TMP = tempfile.mkdtemp(prefix="memsleep-it-")
    MODEL_DIR = make_model(BIN["mkmodel"], os.path.join(TMP, "model"))
    global MODEL_LONG
    MODEL_LONG = MODEL_DIR
    if LONG_POSITIONS:
        MODEL_LONG = make_model(BIN["mkmodel"], os.path.join(TMP, "model-long"),
                                "--max-position", str(LONG_POSITIONS))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def kv_all_free(info):
    s = info["scheduler"]
    return (s["running"] == 0 and s["waiting"] == 0 and
            s["kv_blocks_free"] + s["prefix_cached_blocks"] == s["kv_blocks_total"])


class Endpoints(unittest.TestCase):
    """One server with default limits (a small body cap) for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.s = ServerProcess(BIN["serve"], MODEL_DIR, "--max-body-bytes", "65536")

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        if rc != 0:
            print(cls.s.log_text(), file=sys.stderr)
        assert rc == 0, "memsleep-serve did not stop cleanly on SIGTERM (exit %r)" % rc

    def gen(self, body, path="/generate"):
        status, j = self.s.json("POST", path, body)
        self.assertEqual(status, 200, j)
        return j

    def test_health(self):
        status, j = self.s.json("GET", "/health")
        self.assertEqual((status, j), (200, {"status": "ok"}))

    def test_health_generate_makes_a_token(self):
        before = self.s.info()["scheduler"]["generated_tokens_total"]
        status, j = self.s.json("GET", "/health_generate")
        self.assertEqual(status, 200, j)
        self.assertEqual(j["tokens"], 1)
        self.assertGreater(self.s.info()["scheduler"]["generated_tokens_total"], before)

    def test_generate_text_greedy_is_deterministic(self):
        body = {"text": "The quick brown fox", "sampling_params":
                {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}}
        a, b = self.gen(body), self.gen(body)
        self.assertEqual(a["output_ids"], b["output_ids"])
        self.assertEqual(a["text"], b["text"])
        self.assertEqual(len(a["output_ids"]), 12)
        m = a["meta_info"]
        self.assertEqual(m["completion_tokens"], 12)
        self.assertGreater(m["prompt_tokens"], 0)
        self.assertEqual(m["finish_reason"], {"type": "length", "length": 12})

    def test_generate_input_ids(self):
        j = self.gen({"input_ids": [1, 2, 3, 4], "sampling_params":
                      {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}})
        self.assertEqual(j["meta_info"]["prompt_tokens"], 4)
        self.assertEqual(len(j["output_ids"]), 5)
        self.assertTrue(all(0 <= t < 512 for t in j["output_ids"]))

    def test_generate_same_seed_same_tokens(self):
        body = {"input_ids": [5, 6, 7], "sampling_params":
                {"max_new_tokens": 10, "temperature": 1.0, "sampling_seed": 42,
                 "ignore_eos": True}}
        self.assertEqual(self.gen(body)["output_ids"], self.gen(body)["output_ids"])

    def test_generate_stop_token_ends_request(self):
        first = self.gen({"input_ids": [9, 8, 7], "sampling_params":
                          {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}})
        stop = first["output_ids"][2]
        j = self.gen({"input_ids": [9, 8, 7], "sampling_params":
                      {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True,
                       "stop_token_ids": [stop]}})
        n = first["output_ids"].index(stop) + 1
        self.assertEqual(j["output_ids"], first["output_ids"][:n])
        self.assertEqual(j["meta_info"]["finish_reason"], {"type": "stop", "matched": stop})

    def test_stop_at_the_first_token_gives_empty_text(self):
        first = self.gen({"input_ids": [11, 12], "sampling_params":
                          {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True}})
        stop = first["output_ids"][0]
        sp = {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True,
              "stop_token_ids": [stop]}
        j = self.gen({"input_ids": [11, 12], "sampling_params": sp})
        self.assertEqual((j["text"], j["output_ids"]), ("", [stop]))
        events = self.stream("/generate", {"input_ids": [11, 12], "sampling_params": sp,
                                           "stream": True})
        self.assertEqual([(e["text"], e["output_ids"]) for e in events], [("", [stop])])

    def stream(self, path, body):
        c, r = open_stream(self.s, path, body)
        try:
            self.assertEqual(r.status, 200)
            self.assertTrue(r.getheader("Content-Type").startswith("text/event-stream"))
            events = list(sse_events(r))
        finally:
            c.close()
        self.assertEqual(events[-1], "[DONE]")
        return [json.loads(e) for e in events[:-1]]

    def test_stream_generate_adds_up_to_the_non_streamed_answer(self):
        sp = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
        whole = self.gen({"text": "Once upon a time", "sampling_params": sp})
        events = self.stream("/generate", {"text": "Once upon a time", "sampling_params": sp,
                                           "stream": True})
        self.assertEqual(len(events), 24)  # one event per token
        self.assertEqual("".join(e["text"] for e in events), whole["text"])
        self.assertEqual(sum((e["output_ids"] for e in events), []), whole["output_ids"])
        self.assertTrue(all(e["meta_info"]["finish_reason"] is None for e in events[:-1]))
        self.assertEqual(events[-1]["meta_info"]["finish_reason"]["type"], "length")
        self.assertEqual(events[-1]["meta_info"]["completion_tokens"], 24)

    def test_completions_openai_shape(self):
        j = self.gen({"model": "m", "prompt": "Hello there", "max_tokens": 7,
                      "temperature": 0, "ignore_eos": True}, "/v1/completions")
        self.assertEqual(j["object"], "text_completion")
        self.assertTrue(j["id"].startswith("cmpl-"))
        self.assertEqual(j["model"], "m")
        self.assertEqual(len(j["choices"]), 1)
        self.assertEqual(j["choices"][0]["finish_reason"], "length")
        u = j["usage"]
        self.assertEqual(u["completion_tokens"], 7)
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + 7)
        same = self.gen({"text": "Hello there", "sampling_params":
                         {"max_new_tokens": 7, "temperature": 0, "ignore_eos": True}})
        self.assertEqual(j["choices"][0]["text"], same["text"])

    def test_completions_stream_and_token_prompt(self):
        body = {"prompt": [3, 1, 4, 1, 5], "max_tokens": 9, "temperature": 0,
                "ignore_eos": True}
        whole = self.gen(body, "/v1/completions")
        events = self.stream("/v1/completions", dict(body, stream=True,
                                                     stream_options={"include_usage": True}))
        usage = events[-1]
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 9)
        chunks = events[:-1]
        self.assertEqual("".join(e["choices"][0]["text"] for e in chunks),
                         whole["choices"][0]["text"])
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")

    def test_server_info_reports_model_scheduler_and_memory(self):
        j = self.s.info()
        self.assertEqual(j["model"]["vocab_size"], 512)
        self.assertEqual(j["arguments"]["host"], "127.0.0.1")
        self.assertEqual(j["arguments"]["port"], self.s.port)
        for k in ("running", "waiting", "kv_blocks_total", "kv_blocks_free"):
            self.assertIn(k, j["scheduler"])
        for tag in ("weights", "kv_cache"):
            self.assertGreater(j["memory"][tag]["resident_bytes"], 0, tag)
            self.assertFalse(j["memory"][tag]["asleep"])
        self.assertGreaterEqual(j["memory"]["weights"]["resident_bytes"],
                                j["model"]["weight_bytes"])

    def test_server_info_reports_the_probes_measured_process_memory(self):
        j = self.s.info()
        proc = j["process"]
        self.assertEqual(proc["pid"], self.s.proc.pid)
        # Host: the server's measured resident set holds at least what memsleep
        # says is resident in its tags (weights, KV cache, workspace).
        self.assertTrue(proc["host"]["known"], proc["host"])
        tagged = sum(t["resident_bytes"] for t in j["memory"].values())
        on_gpu = j["arguments"].get("device", "cpu") != "cpu"
        if not on_gpu:
            self.assertGreaterEqual(proc["host"]["resident_bytes"], tagged)
        # GPU: a CPU server holds no GPU memory, a GPU server at least its
        # tags; either NVML is absent and the figure says why, or it answers.
        gpu = proc["gpu"]
        if gpu["known"] and on_gpu:
            self.assertGreaterEqual(gpu["max_bytes"], tagged)
        elif gpu["known"]:
            self.assertEqual(gpu["max_bytes"], 0)
        else:
            self.assertTrue(gpu["reason"] and gpu["detail"], gpu)

    def test_metrics_prometheus_text(self):
        self.gen({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 3}})
        status, headers, body = self.s.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain"))
        text = body.decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, v = line.rsplit(" ", 1)
                values[name] = float(v)
        self.assertGreaterEqual(values['memsleep_http_requests_total{endpoint="/generate",'
                                       'code="200"}'], 1)
        self.assertGreaterEqual(values["memsleep_generation_tokens_total"], 3)
        self.assertIn("memsleep_num_queue_reqs", values)
        self.assertGreater(values['memsleep_memory_resident_bytes{tag="weights"}'], 0)
        self.assertGreater(values['memsleep_memory_resident_bytes{tag="kv_cache"}'], 0)

    def test_flush_cache_when_idle(self):
        wait_until(lambda: kv_all_free(self.s.info()))
        status, j = self.s.json("POST", "/flush_cache")
        self.assertEqual(status, 200, j)

    def test_flush_cache_refused_while_a_request_runs(self):
        c, r = open_stream(self.s, "/generate", {"input_ids": [1, 2, 3], "stream": True,
                                                 "sampling_params": LONG})
        try:
            next(sse_events(r))  # it runs
            status, j = self.s.json("POST", "/flush_cache")
            self.assertEqual(status, 400, j)
            self.assertIn("while requests run", j["error"])
        finally:
            c.close()
        self.assertTrue(wait_until(lambda: kv_all_free(self.s.info())))
        self.assertEqual(self.s.json("POST", "/flush_cache")[0], 200)

    def test_client_gone_mid_stream_frees_kv_blocks(self):
        before = self.s.info()["scheduler"]["generated_tokens_total"]
        c, r = open_stream(self.s, "/generate", {"input_ids": [4, 5, 6], "stream": True,
                                                 "sampling_params": LONG})
        events = sse_events(r)
        next(events)
        next(events)
        busy = self.s.info()["scheduler"]
        self.assertEqual(busy["running"], 1)
        self.assertLess(busy["kv_blocks_free"] + busy["prefix_cached_blocks"],
                        busy["kv_blocks_total"])
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        self.assertTrue(wait_until(lambda: kv_all_free(self.s.info()), timeout_s=10),
                        self.s.info()["scheduler"])
        made = self.s.info()["scheduler"]["generated_tokens_total"] - before
        self.assertLess(made, LONG["max_new_tokens"], "the request was not cancelled")
        status, _, body = self.s.request("GET", "/metrics")
        self.assertIn("memsleep_client_disconnects_total", body.decode())
        self.assertNotIn("memsleep_client_disconnects_total 0\n", body.decode())

    def test_client_gone_while_waiting_for_a_whole_answer_frees_kv_blocks(self):
        s = self.s if MODEL_LONG == MODEL_DIR else ServerProcess(BIN["serve"], MODEL_LONG)
        try:
            before = s.info()["scheduler"]["generated_tokens_total"]
            c = s.connection()
            c.request("POST", "/generate", body=json.dumps(
                {"input_ids": [7, 7, 7], "sampling_params": LONGER}).encode())
            self.assertTrue(wait_until(lambda: s.info()["scheduler"]["running"] == 1))
            c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
            self.assertTrue(wait_until(lambda: kv_all_free(s.info()), timeout_s=10))
            made = s.info()["scheduler"]["generated_tokens_total"] - before
            self.assertLess(made, LONGER["max_new_tokens"], "the request was not cancelled")
        finally:
            if s is not self.s:
                self.assertEqual(s.stop(), 0)

    def test_output_text_is_valid_utf8_json(self):
        # Random weights emit arbitrary bytes; the JSON must still be strict
        # UTF-8 (self.s.json decodes strictly), streamed or not.
        sp = {"max_new_tokens": 64, "temperature": 1.0, "sampling_seed": 3, "ignore_eos": True}
        whole = self.gen({"input_ids": [200, 201], "sampling_params": sp})
        events = self.stream("/generate", {"input_ids": [200, 201], "sampling_params": sp,
                                           "stream": True})
        self.assertEqual("".join(e["text"] for e in events), whole["text"])


class Crowd(unittest.TestCase):
    """Many clients at once, some leaving early: every answer is whole, every
    KV block comes back, the server stays up."""

    @classmethod
    def setUpClass(cls):
        cls.s = ServerProcess(BIN["serve"], MODEL_DIR, "--max-batch", "8")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_many_clients_some_leaving(self):
        sp = {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True}
        whole = self.s.json("POST", "/generate", {"input_ids": [3, 4], "sampling_params": sp})[1]
        errors = []

        def client(i):
            try:
                body = {"input_ids": [3, 4], "sampling_params": sp, "stream": i % 2 == 0}
                if i % 4 == 3:  # leaves while its long request runs
                    c, r = open_stream(self.s, "/generate", dict(
                        body, stream=True, sampling_params=LONG))
                    next(sse_events(r))
                    c.close()
                elif body["stream"]:
                    c, r = open_stream(self.s, "/generate", body)
                    events = list(sse_events(r))
                    c.close()
                    ids = sum((json.loads(e)["output_ids"] for e in events[:-1]), [])
                    if events[-1] != "[DONE]" or ids != whole["output_ids"]:
                        errors.append((i, "stream", ids))
                else:
                    status, j = self.s.json("POST", "/generate", body)
                    if status != 200 or j["output_ids"] != whole["output_ids"]:
                        errors.append((i, status, j))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((i, repr(e)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertTrue(wait_until(lambda: kv_all_free(self.s.info()), timeout_s=20),
                        self.s.info()["scheduler"])
        self.assertEqual(self.s.json("GET", "/health_generate")[0], 200)


class BadInput(unittest.TestCase):
    """Every bad request gets a 4xx with {"error": "..."}; the server stays up."""

    @classmethod
    def setUpClass(cls):
        cls.s = ServerProcess(BIN["serve"], MODEL_DIR, "--max-body-bytes", "65536")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def expect(self, path, body, status, words, method="POST"):
        got, headers, data = self.s.request(method, path, body)
        self.assertEqual(got, status, (body, data))
        self.assertTrue(headers.get("Content-Type", "").startswith("application/json"), headers)
        j = json.loads(data.decode("utf-8"))
        self.assertEqual(list(j), ["error"], j)
        self.assertIn(words, j["error"], (body, j))
        return headers

    def test_bad_bodies_of_generate(self):
        ctx = 2048
        cases = [
            (b'{"text": "hi",', "malformed JSON"),
            (b'', "empty"),
            (b'[1, 2]', "must be a JSON object"),
            (b'"text"', "must be a JSON object"),
            ({}, "no prompt"),
            ({"text": 123}, '"text" must be a string'),
            ({"text": ""}, '"text" is empty'),
            ({"text": ["a", "b"]}, "batched"),
            ({"input_ids": "1 2 3"}, '"input_ids" must be a list'),
            ({"input_ids": []}, '"input_ids" is empty'),
            ({"input_ids": [1, "2"]}, '"input_ids"[1] must be an integer'),
            ({"input_ids": [1, 2.5]}, '"input_ids"[1] must be an integer'),
            ({"input_ids": [1, 512]}, "out of range"),
            ({"input_ids": [-1]}, "out of range"),
            ({"input_ids": [1, 99999999999999]}, "out of range"),
            ({"input_ids": [[1, 2], [3]]}, "batched"),
            ({"text": "a", "input_ids": [1]}, "not both"),
            ({"text": "a", "bogus": 1}, 'unknown field "bogus"'),
            ({"text": "a", "sampling_params": []}, "must be an object"),
            ({"text": "a", "sampling_params": {"max_new_token": 5}}, 'unknown field'),
            ({"text": "a", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
            ({"text": "a", "sampling_params": {"max_new_tokens": 0}}, "max_new_tokens"),
            ({"text": "a", "sampling_params": {"max_new_tokens": 10 ** 12}}, "max_new_tokens"),
            ({"text": "a", "sampling_params": {"max_new_tokens": "ten"}}, "must be an integer"),
            ({"text": "a", "sampling_params": {"max_new_tokens": 1.5}}, "must be an integer"),
            ({"text": "a", "sampling_params": {"max_new_tokens": None, "temperature": -1}},
             "temperature"),
            ({"text": "a", "sampling_params": {"temperature": "hot"}}, "must be a number"),
            ({"text": "a", "sampling_params": {"temperature": 1e300}}, "temperature"),
            ({"text": "a", "sampling_params": {"top_p": 0}}, "top_p"),
            ({"text": "a", "sampling_params": {"top_p": 1.5}}, "top_p"),
            ({"text": "a", "sampling_params": {"top_k": -5}}, "top_k"),
            ({"text": "a", "sampling_params": {"sampling_seed": -3}}, "sampling_seed"),
            ({"text": "a", "sampling_params": {"stop": ["x"]}}, "stop_token_ids"),
            ({"text": "a", "sampling_params": {"stop_token_ids": [600]}}, "stop_token_ids"),
            ({"text": "a", "sampling_params": {"stop_token_ids": "1"}}, "stop_token_ids"),
            ({"text": "a", "sampling_params": {"frequency_penalty": 0.5}}, "not supported"),
            ({"text": "a", "sampling_params": {"n": 2}}, "not supported"),
            ({"text": "a", "sampling_params": {"ignore_eos": "yes"}}, "true or false"),
            ({"text": "a", "stream": "yes"}, "true or false"),
            ({"text": "a", "return_logprob": True}, "not supported"),
            ({"input_ids": [1] * (ctx - 10), "sampling_params": {"max_new_tokens": 100}},
             "context length"),
            ({"input_ids": [1] * ctx}, "no room"),
        ]
        for body, words in cases:
            with self.subTest(body=body):
                self.expect("/generate", body, 400, words)
        self.assertEqual(self.s.json("GET", "/health")[0], 200)

    def test_bad_bodies_of_completions(self):
        cases = [
            ({}, 'no "prompt"'),
            ({"prompt": 5}, '"prompt" must be'),
            ({"prompt": ["a", "b"]}, "batched"),
            ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
            ({"prompt": "a", "n": 2}, "not supported"),
            ({"prompt": "a", "logprobs": 5}, "not supported"),
            ({"prompt": "a", "echo": True}, "not supported"),
            ({"prompt": "a", "stop": "\n"}, "stop_token_ids"),
            ({"prompt": "a", "stream_options": {"x": 1}}, "unknown field"),
            ({"prompt": "a", "best_of": 3}, "not supported"),
            ({"prompt": "a", "model": 7}, '"model" must be a string'),
            ({"prompt": "a", "typo": 7}, 'unknown field "typo"'),
        ]
        for body, words in cases:
            with self.subTest(body=body):
                self.expect("/v1/completions", body, 400, words)

    def test_unknown_path_and_wrong_method(self):
        self.expect("/nope", None, 404, "no endpoint", method="GET")
        h = self.expect("/generate", None, 405, "use POST", method="GET")
        self.assertEqual(h.get("Allow"), "POST")
        self.expect("/health", {}, 405, "use GET")

    def test_body_over_the_cap_is_413(self):
        body = json.dumps({"input_ids": [1] * 40000})  # ~120 KB > 64 KiB
        self.expect("/generate", body, 413, "--max-body-bytes")
        self.assertEqual(self.s.json("GET", "/health")[0], 200)

    def test_garbage_bytes_and_utf8(self):
        self.expect("/generate", b"\xff\xfe\x00garbage", 400, "malformed JSON")
        self.expect("/generate", b'{"text": "\xff"}', 400, "malformed JSON")
        self.assertEqual(self.s.json("GET", "/health")[0], 200)


class Queue(unittest.TestCase):
    """A server with one running slot and one waiting slot."""

    @classmethod
    def setUpClass(cls):
        cls.s = ServerProcess(BIN["serve"], MODEL_LONG, "--max-batch", "1", "--max-queue", "1")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_full_queue_is_503_with_retry_after(self):
        body = {"input_ids": [1, 2, 3], "stream": True, "sampling_params": LONGER}
        c1, r1 = open_stream(self.s, "/generate", body)
        next(sse_events(r1))  # running
        c2, r2 = open_stream(self.s, "/generate", body)
        try:
            self.assertTrue(wait_until(lambda: self.s.info()["scheduler"]["waiting"] == 1))
            status, headers, data = self.s.request("POST", "/generate",
                                                   {"input_ids": [1], "sampling_params":
                                                    {"max_new_tokens": 1}})
            self.assertEqual(status, 503, data)
            self.assertGreaterEqual(int(headers["Retry-After"]), 1)
            self.assertIn("retry", json.loads(data)["error"])
        finally:
            c1.close()
            c2.close()
        self.assertTrue(wait_until(lambda: kv_all_free(self.s.info()), timeout_s=10))
        status, j = self.s.json("POST", "/generate", {"input_ids": [1], "sampling_params":
                                                      {"max_new_tokens": 2}})
        self.assertEqual(status, 200, j)


class NoTokenizer(unittest.TestCase):
    def test_text_needs_a_tokenizer_ids_work(self):
        d = os.path.join(TMP, "model-no-tokenizer")
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(MODEL_DIR):
            if f != "tokenizer.json":
                shutil.copy(os.path.join(MODEL_DIR, f), d)
        s = ServerProcess(BIN["serve"], d)
        try:
            status, j = s.json("POST", "/generate", {"text": "hello"})
            self.assertEqual(status, 400)
            self.assertIn("no tokenizer; send input_ids", j["error"])
            status, j = s.json("POST", "/generate", {"input_ids": [1, 2], "sampling_params":
                                                     {"max_new_tokens": 3}})
            self.assertEqual(status, 200, j)
            self.assertEqual(j["text"], "")
            self.assertGreaterEqual(len(j["output_ids"]), 1)
        finally:
            self.assertEqual(s.stop(), 0)


class Lifecycle(unittest.TestCase):
    def test_sigterm_with_a_running_stream_exits_cleanly(self):
        s = ServerProcess(BIN["serve"], MODEL_DIR)
        c, r = open_stream(s, "/generate", {"input_ids": [1, 2], "stream": True,
                                            "sampling_params": LONG})
        events = sse_events(r)
        next(events)
        t0 = time.time()
        self.assertEqual(s.stop(timeout_s=20), 0, s.log_text())
        self.assertLess(time.time() - t0, 10)
        rest = list(events)  # the stream ends: an abort event and [DONE]
        c.close()
        self.assertEqual(rest[-1], "[DONE]")
        self.assertEqual(json.loads(rest[-2])["meta_info"]["finish_reason"]["type"], "abort")

    def test_help_and_bad_command_line(self):
        out = subprocess.run([BIN["serve"], "--help"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0)
        self.assertIn("--model DIR", out.stdout)
        out = subprocess.run([BIN["serve"]], capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)
        self.assertIn("--model", out.stderr)
        out = subprocess.run([BIN["serve"], "--model", MODEL_DIR, "--port", "x"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)
        out = subprocess.run([BIN["serve"], "--model", MODEL_DIR, "--cuda-graphs", "maybe"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)
        self.assertIn("--cuda-graphs: \"maybe\" is not on or off", out.stderr)
        out = subprocess.run([BIN["serve"], "--model", os.path.join(TMP, "missing")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot load the model", out.stderr)


class Ctl(unittest.TestCase):
    """memsleepctl against a real server."""

    @classmethod
    def setUpClass(cls):
        cls.s = ServerProcess(BIN["serve"], MODEL_DIR)
        cls.url = "http://127.0.0.1:%d" % cls.s.port

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def ctl(self, *args):
        return subprocess.run([BIN["ctl"], "--url", self.url, *args], capture_output=True,
                              timeout=120)

    def test_generate_streamed_equals_plain(self):
        a = self.ctl("generate", "--max-new-tokens", "10", "--ignore-eos", "Hello")
        b = self.ctl("generate", "--stream", "--max-new-tokens", "10", "--ignore-eos", "Hello")
        self.assertEqual(a.returncode, 0, a.stderr)
        self.assertEqual(b.returncode, 0, b.stderr)
        self.assertEqual(a.stdout, b.stdout)
        j = json.loads(self.ctl("generate", "--json", "--max-new-tokens", "10", "--ignore-eos",
                                "Hello").stdout)
        self.assertEqual(j["text"].encode() + b"\n", a.stdout)

    def test_info_health_and_errors(self):
        out = self.ctl("info")
        self.assertEqual(out.returncode, 0)
        self.assertEqual(json.loads(out.stdout)["arguments"]["port"], self.s.port)
        self.assertEqual(self.ctl("health").returncode, 0)
        self.assertEqual(self.ctl("health", "--generate").returncode, 0)
        bad = self.ctl("generate", "--max-new-tokens", "100000", "x")
        self.assertEqual(bad.returncode, 1)
        self.assertIn(b"max_new_tokens", bad.stderr)
        self.assertEqual(self.ctl("frobnicate").returncode, 2)
        gone = subprocess.run([BIN["ctl"], "--url", "http://127.0.0.1:9", "info"],
                              capture_output=True)
        self.assertEqual(gone.returncode, 3)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--mkmodel", required=True)
    ap.add_argument("--ctl", required=True)
    args, rest = ap.parse_known_args()
    BIN.update(serve=args.serve, mkmodel=args.mkmodel, ctl=args.ctl)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
