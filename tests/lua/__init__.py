"""Lua tests: real Lua 5.4 (lupa), a real HTTP server on loopback, real LocalStorage.

Shared helpers live here; the fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pressured.model import Identity, OomKill, PressureEvent

EVENT_TIME = 1_800_000_000.5  # 2027-01-15T08:00:00.500Z


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    wait: bool = False
    """Hold the answer until the test ends (a server that never answers in time)."""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class LoopbackServer:
    """ThreadingHTTPServer on 127.0.0.1 (or another loopback ``host``): ``routes`` answer,
    ``seen`` records every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.answered = 0
        """Requests answered in full (a held answer counts only once it is sent)."""
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                route = server.routes.get(self.path)
                if route is None:
                    route = Route(status=404, body=b"not found")
                if route.wait:
                    server.release.wait(10)
                self.send_response(route.status)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                # the client may stop reading on purpose (a stream callback returned false)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(route.body)
                    server.answered += 1

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def pressure(severity: str = "critical", **kw: Any) -> PressureEvent:
    fields: dict[str, Any] = {
        "time": EVENT_TIME,
        "severity": severity,
        "previous_severity": "warn",
        "cgroup": "/kubepods/burstable/pod1234/abcd",
        "usage_bytes": 900 * 2**20,
        "working_set_bytes": 880 * 2**20,
        "limit_bytes": 2**30,
        "usage_percent": 85.94,
        "growth_bytes_per_s": 1048576.0,
        "eta_seconds": 140.0,
        "psi_some_avg10": 3.5,
        "psi_full_avg10": None,
        "rule": "usage_percent >= 85",
        "key": "pod1234/app",
        "identity": Identity(
            namespace="shop",
            pod_name="web-7f9c",
            pod_uid="1234",
            container_name="app",
            node_name="node-a",
            pod_ip="127.0.0.1",
        ),
        "annotations": {"pressured.io/pprof-port": "6060", "team": "checkout"},
    }
    fields.update(kw)
    return PressureEvent(**fields)


def oom_kill(**kw: Any) -> OomKill:
    fields: dict[str, Any] = {
        "time": EVENT_TIME,
        "cgroup": "/kubepods/burstable/pod1234/abcd",
        "pid": 4242,
        "comm": "java",
        "oom_kill_count": 1,
        "sources": ("memory.events", "kmsg"),
        "warned_seconds_before": 12.5,
        "identity": Identity(namespace="shop", pod_name="web-7f9c"),
    }
    fields.update(kw)
    return OomKill(**fields)


# A handler for probing the sandbox: on a "probe" annotation it runs the probe, else it counts
# its calls in a global and stores the count, so a test sees the next event handled normally
# (by a new worker after a kill: count 1).
PROBED = """
calls = 0
function on_event(event, ctx)
  if event.annotations.probe == "1" then
{probe}
  end
  calls = calls + 1
  assert(storage.write("calls", tostring(calls)))
end
"""
