"""A tiny HTTP proxy on loopback that injects S3 faults (500s, 503 SlowDown) before forwarding to the
real S3 protocol server, so retries are tested over real HTTP against a real server."""

from __future__ import annotations

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULT_BODIES = {
    500: b"<Error><Code>InternalError</Code><Message>injected</Message></Error>",
    503: b"<Error><Code>SlowDown</Code><Message>injected throttling</Message></Error>",
}


class FaultyS3Proxy:
    """Fails a seeded-random `rate` of requests (by method), at most `max_faults` times, alternating the
    statuses in `statuses`. Random, not every N-th: a fixed period can line up with a client's request
    pattern and fail the same step of every retry forever."""

    def __init__(self, upstream: str, *, rate: float = 0.2, max_faults: int = 8, seed: int = 0,
                 statuses: tuple[int, ...] = (500, 503),
                 methods: tuple[str, ...] = ("GET", "PUT", "POST", "HEAD", "DELETE")) -> None:
        self.upstream = urlparse(upstream)
        self.rate, self.max_faults, self.statuses, self.methods = rate, max_faults, statuses, methods
        self.random = random.Random(seed)
        self.seen = 0
        self.injected = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self, method: str) -> int | None:
        if method not in self.methods:
            return None
        with self.lock:
            self.seen += 1
            if self.injected >= self.max_faults or self.random.random() >= self.rate:
                return None
            status = self.statuses[self.injected % len(self.statuses)]
            self.injected += 1
            return status

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _read_body(self) -> bytes:
                """The request body, de-chunked: the AWS C++ SDK streams uploads with HTTP chunked
                transfer encoding (the aws-chunked payload inside is passed on untouched)."""
                if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else b""
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailer lines
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()

            def _handle(self) -> None:
                body = self._read_body()
                status = proxy._fault(self.command)
                if status is not None:
                    payload = FAULT_BODIES[status]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding", "content-length")}
                headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                # a HEAD answer carries the object's length, not the (empty) payload's
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler
