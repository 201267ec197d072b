"""A fault-injecting HTTP proxy for tests: it stands between a client (boto3) and a server (the test S3 endpoint)
and fails chosen requests the way networks and overloaded services do. Stdlib only, one thread per connection.

    with FaultProxy("http://127.0.0.1:9000") as proxy:  # in front of the real endpoint
        proxy.inject(CUT_REQUEST, method="PUT", target="partNumber=", times=2)
        ...  # point the client at proxy.url

A fault matches requests by method and a substring of the request target (path and query); it fails the first
`times` of them (a transient fault) or, with `times=None`, every one (a persistent fault). Kinds:
`ANSWER` replies with an S3 error (503 SlowDown by default) without forwarding, `CUT_REQUEST` reads half the
request body and resets the connection (a connection lost mid-upload), `CUT_RESPONSE` forwards the request
but sends only half the answer's body before the reset (lost mid-download), `STALL` reads the request and
answers nothing for `stall_s` (a read timeout). Requests no fault claims go through unchanged, each on a
fresh upstream connection.
"""

import dataclasses
import http.client
import io
import socket
import socketserver
import struct
import threading
import urllib.parse
from typing import Optional

ANSWER = "answer"
CUT_REQUEST = "cut-request"
CUT_RESPONSE = "cut-response"
STALL = "stall"
KINDS = (ANSWER, CUT_REQUEST, CUT_RESPONSE, STALL)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}
_UPSTREAM_TIMEOUT_S = 60


@dataclasses.dataclass
class Fault:
    """Which requests fail and how; `served` counts the requests it failed so far."""

    kind: str
    method: str = ""
    target: str = ""
    times: Optional[int] = None
    status: int = 503
    code: str = "SlowDown"
    stall_s: float = 30.0
    served: int = 0

    def claims(self, method: str, target: str) -> bool:
        """True when this fault fails the request (and counts it)."""
        if (self.method and method != self.method) or self.target not in target:
            return False
        if self.times is not None and self.served >= self.times:
            return False
        self.served += 1
        return True


@dataclasses.dataclass
class _Request:
    """A request's line and headers, as the client sent them."""

    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str:
        """The value of a header (`name` in lower case), or empty."""
        return next((value for key, value in self.headers if key.lower() == name), "")


class FaultProxy:
    """An HTTP proxy on a free local port (`url`) in front of `upstream` (an http:// or https:// endpoint)."""

    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the proxy needs an http:// or https:// endpoint, got {upstream!r}")
        self.upstream = upstream
        self._connect = (http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection,
                         parts.hostname, parts.port)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.requests: list[tuple[str, str, str]] = []  # (method, target, what the proxy did)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="mmlib-fault-proxy", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"FaultProxy({self.url!r} -> {self.upstream!r})"

    def inject(self, kind: str, *, method: str = "", target: str = "", times: Optional[int] = None,
               status: int = 503, code: str = "SlowDown", stall_s: float = 30.0) -> Fault:
        """Fail the first `times` requests (every one for None) whose method is `method` (any for "") and whose
        target contains `target`; the first matching fault, in the order injected, claims a request."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(KINDS)}")
        fault = Fault(kind, method, target, times, status, code, stall_s)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault: requests pass through again."""
        with self._lock:
            self._faults.clear()

    def close(self) -> None:
        """Stop serving; stalled connections are dropped."""
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _claim(self, request: _Request) -> Optional[Fault]:
        """The fault that fails this request, if any; every request is logged in `requests`."""
        with self._lock:
            fault = next((fault for fault in self._faults if fault.claims(request.method, request.target)), None)
            self.requests.append((request.method, request.target, fault.kind if fault else "passed"))
        return fault

    def _forward(self, request: _Request, body: bytes) -> tuple[bytes, bytes]:
        """Send the request upstream; (status line and headers, body) of the answer, framed by Content-Length."""
        connection_class, host, port = self._connect
        connection = connection_class(host, port, timeout=_UPSTREAM_TIMEOUT_S)
        try:
            connection.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body or request.header("content-length"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            answer = connection.getresponse()
            answer_body = answer.read()
            lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and (request.method == "HEAD" or name.lower() != "content-length"):
                    lines.append(f"{name}: {value}")
            if request.method != "HEAD":
                lines.append(f"Content-Length: {len(answer_body)}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), answer_body
        finally:
            connection.close()


class _Server(socketserver.ThreadingTCPServer):
    """The listening socket: a daemon thread per connection, none waited for on close."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(socketserver.StreamRequestHandler):
    """One client connection: requests one after another (keep-alive) until the client closes or a fault cuts."""

    server: _Server
    timeout = _UPSTREAM_TIMEOUT_S  # an idle keep-alive connection is dropped after this

    def handle(self) -> None:
        """Serve the connection until it ends, quietly when the client drops it."""
        try:
            self._serve()
        except (ConnectionError, TimeoutError):  # the client went away, or idled past the timeout
            return

    def _serve(self) -> None:
        """Pass requests on or fail them as the first fault that claims each says."""
        proxy = self.server.proxy
        while not proxy._closed.is_set():
            request = _read_head(self.rfile)
            if request is None:
                return
            fault = proxy._claim(request)
            if request.header("expect").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = _read_body(self.rfile, request, cut=fault is not None and fault.kind == CUT_REQUEST)
            if fault is not None and fault.kind == CUT_REQUEST:
                _reset(self.connection)
                return
            if fault is not None and fault.kind == STALL:
                proxy._closed.wait(fault.stall_s)
                return
            if fault is not None and fault.kind == ANSWER:
                self.wfile.write(_error_answer(fault))
                continue
            head, answer_body = proxy._forward(request, body)
            if fault is not None and fault.kind == CUT_RESPONSE:
                self.wfile.write(head + answer_body[:len(answer_body) // 2])
                self.wfile.flush()
                _reset(self.connection)
                return
            self.wfile.write(head + answer_body)
            if request.header("connection").lower() == "close":
                return


def _read_head(reader: io.BufferedIOBase) -> Optional[_Request]:
    """The request line and headers of the next request; None when the client closed the connection."""
    line = reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        header = reader.readline().decode("latin-1").rstrip("\r\n")
        if not header:
            return _Request(method, target, headers)
        name, _, value = header.partition(":")
        headers.append((name.strip(), value.strip()))


def _read_body(reader: io.BufferedIOBase, request: _Request, *, cut: bool) -> bytes:
    """The request body (Content-Length or chunked); only its first half when `cut`."""
    if request.header("transfer-encoding").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            chunk = reader.read(size + 2)[:size]
            if not size or (cut and chunks):
                return b"".join(chunks)
            chunks.append(chunk)
    length = int(request.header("content-length") or 0)
    return reader.read(length // 2 if cut else length)


def _error_answer(fault: Fault) -> bytes:
    """An S3 error reply with the fault's status and code."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>").encode()
    reason = http.client.responses.get(fault.status, "Error")
    head = (f"HTTP/1.1 {fault.status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset (no orderly FIN), as a dropped connection looks to the client."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
