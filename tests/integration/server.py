"""Helpers for the integration tests: build a model, run memsleep-serve on a
free loopback port, and talk HTTP to it with the Python standard library
(raw bytes too: a slow-loris client, malformed requests).

A ServerProcess starts the real binary with --port 0, reads the port it
printed, waits for GET /health, and stops it with SIGTERM, checking that it
exits 0 (a clean shutdown) in time.
"""
import http.client
import json
import os
import re
import shlex
import signal
import socket
import sys
import subprocess
import tempfile
import threading
import time


class ServerProcess:
    """memsleep-serve running in the background on 127.0.0.1."""

    def __init__(self, serve, model_dir, *args, start_timeout_s=120, env=None):
        """env: variables to add to the server's environment (keys).
        MEMSLEEP_TEST_SERVE_ARGS (shell words, e.g. "--device cuda:0") is
        put before args, so every test's server runs with it and a test's
        own options still come last."""
        extra = shlex.split(os.environ.get("MEMSLEEP_TEST_SERVE_ARGS", ""))
        self.log = tempfile.NamedTemporaryFile(prefix="memsleep-serve-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(
            [serve, "--model", model_dir, "--host", "127.0.0.1", "--port", "0", *extra, *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=dict(os.environ, **(env or {})))
        self.port = None
        line = [None]

        def read_port():
            line[0] = self.proc.stdout.readline()

        t = threading.Thread(target=read_port, daemon=True)
        t.start()
        t.join(start_timeout_s)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line[0] or "")
        if not m:
            self.kill()
            raise RuntimeError("memsleep-serve did not start: %r\n%s" % (line[0], self.log_text()))
        self.port = int(m.group(1))
        deadline = time.time() + start_timeout_s
        while time.time() < deadline:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("memsleep-serve never answered /health\n" + self.log_text())

    def log_text(self):
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()
        except OSError:
            return "(log gone)"

    def connection(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """Returns (status, headers, body bytes); body may be bytes, str or a
        JSON-able object."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        c = self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, timeout=120, headers=None):
        """Like request(), but the body is decoded as strict UTF-8 JSON."""
        status, _, data = self.request(method, path, body, headers=headers, timeout=timeout)
        return status, json.loads(data.decode("utf-8"))

    def info(self):
        status, j = self.json("GET", "/get_server_info")
        assert status == 200, j
        return j

    def stop(self, timeout_s=30):
        """SIGTERM, then the exit status (expected 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.close_files(keep_log=rc != 0)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close_files(keep_log=True)

    def close_files(self, keep_log):
        """Closes our ends; the log stays on disk when something failed."""
        self.proc.stdout.close()
        self.log.close()
        if not keep_log and os.path.exists(self.log.name):
            os.unlink(self.log.name)


def sse_events(response):
    """Yields the data of each server-sent event of an http.client response
    as it arrives (the literal "[DONE]" last)."""
    buf = b""
    while True:
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    yield line[6:].decode("utf-8")


def open_stream(server, path, body):
    """Starts a streaming request; returns (connection, response)."""
    c = server.connection()
    c.request("POST", path, body=json.dumps(body).encode(),
              headers={"Content-Type": "application/json"})
    return c, c.getresponse()


def serving_on_gpu():
    """True when the servers under test run on a GPU (MEMSLEEP_TEST_SERVE_ARGS
    names --device cuda:N)."""
    return any("cuda" in a for a in shlex.split(os.environ.get("MEMSLEEP_TEST_SERVE_ARGS", "")))


# On a GPU (CUDA graphs) the tests' small model decodes a 2,000-token
# request in a fraction of a second: tests that need a request still
# running while they look use a model of LONG_POSITIONS positions and
# requests of LONG_TOKENS new tokens there (None: the test's own).
LONG_POSITIONS = 65536 if serving_on_gpu() else None
LONG_TOKENS = 60000 if serving_on_gpu() else None


def make_model(mkmodel, out_dir, *args):
    subprocess.run([mkmodel, "--out", out_dir, *args], check=True,
                   stdout=subprocess.DEVNULL)
    return out_dir


def wait_until(fn, timeout_s=20, every_s=0.05):
    """Calls fn until it returns a true value; returns it, or the last
    falsy value after timeout_s."""
    deadline = time.time() + timeout_s
    v = fn()
    while not v and time.time() < deadline:
        time.sleep(every_s)
        v = fn()
    return v


def rss_bytes(pid):
    """Resident set of process pid in bytes, from /proc/PID/smaps_rollup (the
    kernel's own sum over every mapping), or None if it cannot be read."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_stream(connection, response):
    """Reads a whole SSE answer; returns (events as dicts, ended_with_done)
    and closes the connection."""
    try:
        events = list(sse_events(response))
    finally:
        connection.close()
    done = bool(events) and events[-1] == "[DONE]"
    return [json.loads(e) for e in events if e != "[DONE]"], done


class Background(threading.Thread):
    """Runs fn(*args) in a thread; .result holds its value, .error the
    exception it raised (None if none)."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except Exception as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def value(self, timeout_s=120):
        """Waits for the thread; returns its result or raises its error."""
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError("background call still running after %s s" % timeout_s)
        if self.error is not None:
            raise self.error
        return self.result


class SlowClient(threading.Thread):
    """A slow-loris client of 127.0.0.1:port: sends head at once, then the
    bytes of trickle one every every_s seconds, and watches for the server
    to close the connection. .closed_after: seconds from the connection to
    the close (None while open or when every byte went out first);
    .answer: the bytes the server sent."""

    def __init__(self, port, head, trickle, every_s=0.25):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.t0 = time.monotonic()
        self.head, self.trickle, self.every_s = head, trickle, every_s
        self.closed_after = None
        self.answer = b""
        self.start()

    def run(self):
        try:
            self.sock.settimeout(self.every_s)
            if self.head:
                self.sock.sendall(self.head)
            for i in range(len(self.trickle)):
                self.sock.send(self.trickle[i:i + 1])
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                self.answer += chunk
            else:
                return
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.t0
        self.sock.close()


def raw_exchange(port, data, timeout_s=10):
    """Sends raw bytes on a fresh connection; returns (what came back until
    the server closed or timeout_s passed, whether it closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    got = b""
    closed = False
    deadline = time.monotonic() + timeout_s
    try:
        try:
            s.sendall(data)
        except OSError:
            pass
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if b"\r\n\r\n" in got and not got.startswith(b"HTTP/1.1 100"):
                head, _, rest = got.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
    finally:
        s.close()
    return got, closed


def bearer(key):
    """The Authorization header for key."""
    return {"Authorization": "Bearer " + key}


def stop_ok(case, proc, what="the process"):
    """Stops proc with SIGTERM and asserts a clean exit (its log on failure)."""
    rc = proc.stop()
    if rc != 0:
        print(proc.log_text(), file=sys.stderr)
    case.assertEqual(rc, 0, "%s did not stop cleanly on SIGTERM" % what)


def assert_malformed_handled(case, port, cases, timeout_s):
    """Each raw request in cases is answered with a non-5xx status (505 for
    an HTTP version the server does not speak) or dropped - never left
    hanging."""
    for data in cases:
        with case.subTest(data=data[:60]):
            got, closed = raw_exchange(port, data, timeout_s=timeout_s)
            case.assertTrue(got or closed, "neither answered nor dropped")
            if got:
                m = re.match(rb"HTTP/1\.[01] (\d{3}) ", got)
                case.assertIsNotNone(m, got[:200])
                code = int(m.group(1))
                case.assertTrue(code < 500 or code == 505, got[:300])
