"""pressured.httpget against a real HTTP server on loopback: deadlines, caps, gzip, errors."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pressured import httpget
from pressured.errors import HttpGetError

pytestmark = pytest.mark.hostile

MIB = 1024 * 1024
GOOD = os.urandom(3 * MIB + 17)
"""Not compressible: what arrives is what was sent."""


def _gzip_of_zeros(size: int) -> bytes:
    # streamed, so building the bomb does not itself take `size` bytes
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * MIB
    parts = [z.compress(block) for _ in range(size // MIB)]
    return b"".join([*parts, z.flush()])


BOMB = _gzip_of_zeros(64 * MIB)
"""64 MiB of zeros, gzip-compressed to about 64 KiB."""

Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


def _send(
    status: int, body: bytes, headers: dict[str, str] | None = None, length: bool = True
) -> Route:
    def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if length:  # without: HTTP/1.0, the body ends when the connection closes
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    return route


def _trickle(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """One byte a second of a 100-byte body: each read is quick, the whole is not."""
    h.send_response(200)
    h.send_header("Content-Length", "100")
    h.end_headers()
    for _ in range(100):
        h.wfile.write(b"x")
        h.wfile.flush()
        if stop.wait(1.0):
            return


def _stall(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """Headers and a few bytes, then nothing until the test ends."""
    h.send_response(200)
    h.send_header("Content-Length", "100")
    h.end_headers()
    h.wfile.write(b"abc")
    h.wfile.flush()
    stop.wait(30)


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = server.routes.get(self.path, _send(404, b"no such route"))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self, server.stop)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# a good body


def test_good_body_arrives_whole(server: Server) -> None:
    server.routes["/good"] = _send(200, GOOD, {"X-Kind": "random"})
    got = httpget.get(server.url("/good"), deadline_s=10, max_bytes=len(GOOD))
    assert got.status == 200
    assert got.headers["x-kind"] == "random"
    assert got.body == GOOD


def test_body_without_length_and_exact_chunks(server: Server) -> None:
    server.routes["/good"] = _send(200, GOOD, length=False)
    with httpget.stream(server.url("/good"), deadline_s=10, chunk_size=100_000) as reply:
        chunks = list(reply)
        assert reply.received == len(GOOD)
    assert b"".join(chunks) == GOOD
    assert {len(c) for c in chunks[:-1]} == {100_000}
    assert len(chunks[-1]) == len(GOOD) % 100_000


def test_gzip_body_is_inflated_when_asked(server: Server) -> None:
    server.routes["/gz"] = _send(200, gzip.compress(GOOD) + gzip.compress(b"second member"))
    server.routes["/raw"] = _send(200, GOOD)
    url = server.url("/gz")
    assert httpget.get(url, deadline_s=10, gunzip=True).body == GOOD + b"second member"
    assert httpget.get(url, deadline_s=10, gunzip="auto").body == GOOD + b"second member"
    assert httpget.get(url, deadline_s=10).body.startswith(httpget.GZIP_MAGIC)  # not asked
    assert httpget.get(server.url("/raw"), deadline_s=10, gunzip="auto").body == GOOD


def test_content_encoding_gzip_is_decoded(server: Server) -> None:
    server.routes["/enc"] = _send(200, gzip.compress(GOOD), {"Content-Encoding": "gzip"})
    got = httpget.get(server.url("/enc"), deadline_s=10, max_bytes=len(GOOD))
    assert got.body == GOOD


# ------------------------------------------------------------------------------------------------
# the deadline is for the whole transfer


def test_trickling_server_is_cut_at_the_deadline(server: Server) -> None:
    server.routes["/trickle"] = _trickle
    t0 = time.monotonic()
    with pytest.raises(httpget.DeadlineExceeded) as info:
        httpget.get(server.url("/trickle"), deadline_s=1.0)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 10, elapsed  # 100 s if each read had its own timeout
    message = str(info.value)
    assert message.startswith(f"GET {server.url('/trickle')}: deadline of 1 s exceeded after ")
    assert info.value.status == 200


def test_stalling_server_is_cut_at_the_deadline(server: Server) -> None:
    server.routes["/stall"] = _stall
    t0 = time.monotonic()
    with pytest.raises(httpget.DeadlineExceeded, match=r"deadline of 1 s exceeded after 3 bytes"):
        httpget.get(server.url("/stall"), deadline_s=1.0)
    assert time.monotonic() - t0 < 10


def test_slow_consumer_is_held_to_the_deadline(server: Server) -> None:
    server.routes["/good"] = _send(200, GOOD)

    def read_slowly() -> None:
        with httpget.stream(server.url("/good"), deadline_s=0.5, chunk_size=MIB) as reply:
            for _ in reply:
                time.sleep(0.3)

    with pytest.raises(httpget.DeadlineExceeded, match=r"deadline of 0\.5 s exceeded after "):
        read_slowly()


# ------------------------------------------------------------------------------------------------
# caps


def test_oversize_body_is_refused_by_its_length(server: Server) -> None:
    server.routes["/big"] = _send(200, GOOD)
    url = server.url("/big")
    with pytest.raises(httpget.TooLarge) as info:
        httpget.get(url, deadline_s=10, max_bytes=MIB)
    assert str(info.value) == (
        f"GET {url}: Content-Length {len(GOOD)} is more than max_bytes={MIB}"
    )


def test_head_is_not_refused_for_the_length_it_announces(server: Server) -> None:
    server.routes["/big"] = _send(200, GOOD)
    got = httpget.get(server.url("/big"), method="HEAD", deadline_s=10, max_bytes=MIB)
    assert (got.status, got.headers["content-length"], got.body) == (200, str(len(GOOD)), b"")


def test_oversize_body_without_length_is_cut(server: Server) -> None:
    server.routes["/big"] = _send(200, GOOD, length=False)
    url = server.url("/big")
    with pytest.raises(httpget.TooLarge, match=rf"^GET {url}: body is more than max_bytes=1000 "):
        httpget.get(url, deadline_s=10, max_bytes=1000)


def _peak_of(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with contextlib.suppress(HttpGetError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gzip_bomb_is_refused_with_bounded_memory(server: Server) -> None:
    cap = 8 * MIB
    server.routes["/bomb"] = _send(200, BOMB)
    url = server.url("/bomb")
    with pytest.raises(httpget.TooLarge) as info:
        httpget.get(url, deadline_s=30, max_bytes=cap, gunzip=True)
    assert str(info.value) == f"GET {url}: body inflates to more than max_inflated={cap} bytes"

    peak = _peak_of(lambda: httpget.get(url, deadline_s=30, max_bytes=cap, gunzip=True))
    assert peak < 3 * cap, f"peak {peak / MIB:.1f} MiB for a cap of 8 MiB"


def test_gzip_bomb_as_content_encoding_is_refused_with_bounded_memory(server: Server) -> None:
    cap = 8 * MIB
    server.routes["/bomb"] = _send(200, BOMB, {"Content-Encoding": "gzip"})
    url = server.url("/bomb")
    with pytest.raises(
        httpget.TooLarge, match=r"body inflates to more than max_bytes=8388608 bytes"
    ):
        httpget.get(url, deadline_s=30, max_bytes=cap)
    peak = _peak_of(lambda: httpget.get(url, deadline_s=30, max_bytes=cap))
    assert peak < 3 * cap, f"peak {peak / MIB:.1f} MiB for a cap of 8 MiB"


# ------------------------------------------------------------------------------------------------
# other failures name the URL and say what is wrong, quoting a short prefix at most


def test_bad_status(server: Server) -> None:
    url = server.url("/missing")
    with pytest.raises(httpget.BadStatus) as info:
        httpget.get(url, deadline_s=10)
    assert str(info.value) == f"GET {url}: HTTP 404 Not Found"
    assert info.value.status == 404
    got = httpget.get(url, deadline_s=10, statuses=None)
    assert (got.status, got.body) == (404, b"no such route")


def test_not_gzip_quotes_a_short_prefix(server: Server) -> None:
    server.routes["/html"] = _send(200, b"<html>" + b"x" * 100_000)
    url = server.url("/html")
    with pytest.raises(httpget.BadBody) as info:
        httpget.get(url, deadline_s=10, gunzip=True)
    assert str(info.value) == (
        f"GET {url}: not gzip data (the body starts with b'<html>{'x' * 26}'...)"
    )


def test_truncated_and_corrupt_gzip(server: Server) -> None:
    data = gzip.compress(GOOD)
    server.routes["/cut"] = _send(200, data[: len(data) // 2])
    server.routes["/bad"] = _send(200, data[:10] + b"\xff" * 64 + data[74:])
    with pytest.raises(httpget.BadBody, match=r"/cut: bad gzip data: truncated$"):
        httpget.get(server.url("/cut"), deadline_s=10, gunzip=True)
    with pytest.raises(httpget.BadBody, match=r"/bad: bad gzip data: Error -3 "):
        httpget.get(server.url("/bad"), deadline_s=10, gunzip=True)


def test_unsupported_content_encoding(server: Server) -> None:
    server.routes["/br"] = _send(200, b"...", {"Content-Encoding": "br"})
    with pytest.raises(httpget.BadBody, match=r"/br: Content-Encoding 'br' is not supported$"):
        httpget.get(server.url("/br"), deadline_s=10)


def test_refused_connection() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x"
    with pytest.raises(httpget.TransferFailed, match=rf"^GET {url}: ConnectError: "):
        httpget.get(url, deadline_s=10)
