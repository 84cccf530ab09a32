"""balancer.py - helpers for the load balancer's tests: run memsleep-lb on a free loopback
port, and fake workers that misbehave on purpose (refuse connections, accept
and never answer, answer 500 with a megabyte of binary, answer 404 like an
older server, close in the middle of an answer), all with the Python
standard library.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

# What the "binary500" fake answers: a mebibyte of every byte value.
BINARY = bytes(range(256)) * 4096


class LBProcess:
    """memsleep-lb running in the background on 127.0.0.1."""

    def __init__(self, lb, workers, *args, start_timeout_s=60, env=None):
        """env: variables to add to the balancer's environment (keys)."""
        self.log = tempfile.NamedTemporaryFile(prefix="memsleep-lb-", suffix=".log", delete=False)
        cmd = [lb, "--port", "0"]
        for w in workers:
            cmd += ["--worker", w]
        self.proc = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=dict(os.environ, **(env or {})))
        line = [None]
        t = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()),
                             daemon=True)
        t.start()
        t.join(start_timeout_s)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line[0] or "")
        if not m:
            self.kill()
            raise RuntimeError("memsleep-lb did not start: %r\n%s" % (line[0], self.log_text()))
        self.port = int(m.group(1))

    def log_text(self):
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()
        except OSError:
            return "(log gone)"

    def connection(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers, body bytes)."""
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
        """(status, JSON body): the body must be strict UTF-8 JSON."""
        status, _, data = self.request(method, path, body, headers=headers, timeout=timeout)
        return status, json.loads(data.decode("utf-8"))

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

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
        self.proc.stdout.close()
        self.log.close()
        if not keep_log and os.path.exists(self.log.name):
            os.unlink(self.log.name)


def refusing_url():
    """The URL of a loopback port nobody listens on (connections refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "http://127.0.0.1:%d" % port


class FakeWorker:
    """A worker on loopback that behaves as mode says:

    ok            GET /health 200; every other request 200 {"success": true, ...};
                  GET /is_sleeping {"is_sleeping": self.sleeping}
    hang          accepts, reads, never answers anything (GET /health included)
    hang_generate /health 200; everything else hangs
    binary500     /health 200; everything else 500 with BINARY as the body
    notfound      /health 200; everything else 404 {"error": ...} (an older server)
    cut           /health 200; a control request gets 200 with Content-Length 1000
                  and 10 bytes, then the connection closes; /generate gets two
                  server-sent events of a chunked answer, then the connection closes
    Every request but /health is recorded in self.requests as (method, path, body),
    and its Authorization header (None when absent) in self.auth as (path, value).
    port: the loopback port to listen on (0: a free one).
    """

    def __init__(self, mode, port=0):
        self.mode = mode
        self.sleeping = False
        self.requests = []
        self.auth = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.stopped = False
        self.conns = []
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def take(self):
        """The requests recorded so far; forgets them."""
        with self.lock:
            r, self.requests = self.requests, []
        return r

    def take_auth(self):
        """The (path, Authorization) pairs recorded so far; forgets them."""
        with self.lock:
            a, self.auth = self.auth, []
        return a

    def refuse(self):
        """Stops listening: connections are refused from now on (shutdown
        first: a plain close leaves the blocked accept() listening)."""
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def stop(self):
        self.refuse()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass

    @staticmethod
    def answer(conn, status, body, ctype="application/json", reason="X"):
        if isinstance(body, str):
            body = body.encode()
        head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            status, reason, ctype, len(body))
        conn.sendall(head.encode() + body)

    def serve(self, conn):
        try:
            f = conn.makefile("rb")
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                n = 0
                auth = None
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    if k.strip().lower() == "content-length":
                        n = int(v.strip())
                    if k.strip().lower() == "authorization":
                        auth = v.strip()
                body = f.read(n) if n else b""
                if path == "/health" and self.mode != "hang":
                    self.answer(conn, 200, '{"status":"ok"}')
                    continue
                with self.lock:
                    self.requests.append((method, path, body))
                    self.auth.append((path, auth))
                if not self.handle(conn, method, path):
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def handle(self, conn, method, path):
        """Answers one request; False ends the connection."""
        m = self.mode
        if m == "ok":
            if path.startswith("/is_sleeping"):
                self.answer(conn, 200, json.dumps({"is_sleeping": self.sleeping}))
            elif path.startswith("/generate"):
                self.answer(conn, 200, json.dumps({"text": "ok", "worker": self.port}))
            else:
                self.answer(conn, 200, json.dumps({"success": True, "port": self.port,
                                                   "path": path}))
            return True
        if m in ("hang", "hang_generate"):
            while conn.recv(65536):
                pass
            return False
        if m == "binary500":
            self.answer(conn, 500, BINARY, ctype="application/octet-stream")
            return False
        if m == "notfound":
            self.answer(conn, 404, json.dumps({"error": "no endpoint %s %s" % (method, path)}))
            return True
        if m == "cut":
            if path.startswith("/generate"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(2):
                    ev = b'data: {"text":"%d"}\n\n' % i
                    conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                    time.sleep(0.05)
                time.sleep(0.2)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n0123456789")
                time.sleep(0.1)
            conn.shutdown(socket.SHUT_RDWR)
            return False
        raise AssertionError("unknown mode " + m)
