"""A fake Kubernetes API server (and kubelet, through nodes/{name}/proxy) on loopback, kept
only for what a real one cannot be made to do on demand:

- an answer chosen by the test on a chosen request (``forced``: a status code, and
  ``forced_message`` for its Status message, a 1 MiB one say), then a normal answer again;
- the kubelet's /stats/summary behind nodes/{name}/proxy, since no kubelet runs here.

Everything else (lists, watches, resume and re-list on 410, Events and their aggregation,
evictions and PodDisruptionBudgets, RBAC refusals, in-cluster credentials and token rotation,
restarts, compaction, an outage) is proved against a real kube-apiserver and etcd in
tests/k8s_real. The endpoints here are the few those faults are met on, in real HTTP/1.1
(keep-alive, chunked watch streams) with the API server's Status bodies:

    GET   /api/v1/pods, /api/v1/namespaces/{ns}/pods       fieldSelector
          ...?watch=true&resourceVersion=N                  ADDED
    GET   /api/v1/events                                    fieldSelector (reason=...)
    POST  /api/v1/namespaces/{ns}/events
    GET   /api/v1/nodes/{name}/proxy/stats/summary          503 for a node without one

Every request is recorded (method, path, decoded query, headers, JSON body) for
assertions. State changes go through methods that also feed open watches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


def _status(code: int, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
        **extra,
    }


def _get_field(obj: dict[str, Any], dotted: str) -> str:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def _split_selector(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def field_matches(obj: dict[str, Any], selector: str | None) -> bool:
    for term in _split_selector(selector or ""):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if _get_field(obj, k.strip()) == v.strip():
                return False
        else:
            k, v = re.split(r"==?", term, maxsplit=1)
            if _get_field(obj, k.strip()) != v.strip():
                return False
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its connection mid-stream is normal here; anything else is a bug
        # in the fake, kept for the fixture to fail the test on.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError):
            self.fake.handler_errors.append(repr(exc))
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each reply would wait for the
    # client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the recorded requests are the log

    # ---- plumbing
    def _send_json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _handle(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body: Any = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        rec = Recorded(
            self.command,
            url.path,
            query,
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        with fake.cond:
            fake.requests.append(rec)
            forced = fake.forced.get((self.command, url.path))
            message = fake.forced_message.get(
                (self.command, url.path), f"forced {forced} by the test"
            )
        if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if forced is not None:
            self._send_json(forced, _status(forced, "Forced", message))
            return
        code, obj = fake.route(self.command, url.path, query, body, self)
        if code:
            self._send_json(code, obj)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()


class FakeKube:
    """State plus the server. ``url`` is http://127.0.0.1:PORT."""

    def __init__(self, *, token: str | None = None) -> None:
        self.cond = threading.Condition()
        self.rv = 1000
        self.pods: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.kicks = 0
        self.closing = False
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.forced: dict[tuple[str, str], int] = {}
        self.forced_message: dict[tuple[str, str], str] = {}
        """The Status message of a forced reply, when not the default one."""
        self.handler_errors: list[str] = []
        self.token = token
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self._server.shutdown()
        with self._server.conn_lock:
            conns = list(self._server.connections)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(5)

    # ---- state changes (feed watches)
    def _bump(self, kind: str, pod: dict[str, Any]) -> None:
        self.rv += 1
        pod.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, copy.deepcopy(pod)))
        self.cond.notify_all()

    def add_pod(self, pod: dict[str, Any]) -> None:
        with self.cond:
            pod = copy.deepcopy(pod)
            self.pods[pod["metadata"]["uid"]] = pod
            self._bump("ADDED", pod)

    def kick_watches(self) -> None:
        """End every open watch stream cleanly (as a server restart or timeout would)."""
        with self.cond:
            self.kicks += 1
            self.cond.notify_all()

    def add_event(self, event: dict[str, Any]) -> None:
        with self.cond:
            meta = event["metadata"]
            self.events[(meta["namespace"], meta["name"])] = copy.deepcopy(event)

    def requests_to(self, method: str, path_re: str) -> list[Recorded]:
        with self.cond:
            return [
                r for r in self.requests if r.method == method and re.fullmatch(path_re, r.path)
            ]

    # ---- routing
    def route(
        self, method: str, path: str, query: dict[str, str], body: Any, h: _Handler
    ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "v1"]:
            return 404, _status(404, "NotFound", f"the server could not find {path}")
        rest = parts[2:]
        ns: str | None = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if method == "GET" and rest == ["pods"]:
            if query.get("watch") in ("true", "1"):
                self._watch(h, ns, query)
                return 0, None
            return 200, self._list_pods(ns, query)
        if rest == ["events"] and method == "GET":
            with self.cond:
                items = [
                    e
                    for (ens, _), e in self.events.items()
                    if (ns is None or ens == ns) and field_matches(e, query.get("fieldSelector"))
                ]
                return 200, {
                    "kind": "EventList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
        if rest == ["events"] and method == "POST" and ns:
            return self._create_event(ns, body)
        if len(rest) == 5 and rest[0] == "nodes" and rest[2:] == ["proxy", "stats", "summary"]:
            summary = self.summaries.get(rest[1])
            if summary is None:
                return 503, _status(
                    503, "ServiceUnavailable", f'no endpoints available for node "{rest[1]}"'
                )
            return 200, summary
        return 404, _status(404, "NotFound", f"the server could not find {method} {path}")

    def _selected(self, pod: dict[str, Any], ns: str | None, query: dict[str, str]) -> bool:
        return (ns is None or pod["metadata"].get("namespace") == ns) and field_matches(
            pod, query.get("fieldSelector")
        )

    def _list_pods(self, ns: str | None, query: dict[str, str]) -> dict[str, Any]:
        with self.cond:
            items = [copy.deepcopy(p) for p in self.pods.values() if self._selected(p, ns, query)]
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }

    def _watch(self, h: _Handler, ns: str | None, query: dict[str, str]) -> None:
        try:
            cursor = int(query.get("resourceVersion") or self.rv)
        except ValueError:
            h._send_json(400, _status(400, "BadRequest", "bad resourceVersion"))
            return
        timeout = float(query.get("timeoutSeconds") or 30)
        deadline = time.monotonic() + timeout
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        kicks = self.kicks
        try:
            while True:
                with self.cond:
                    if self.closing or self.kicks != kicks:
                        break
                    pending = [
                        (rv, kind, pod)
                        for rv, kind, pod in self.history
                        if rv > cursor and self._selected(pod, ns, query)
                    ]
                    if not pending:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self.cond.wait(min(left, 0.2))
                        continue
                for rv, kind, obj in pending:
                    h._chunk({"type": kind, "object": obj})
                    cursor = rv
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _create_event(self, ns: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, _status(400, "BadRequest", "not a JSON object")
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return 422, _status(422, "Invalid", "metadata.name: Required value")
        with self.cond:
            if (ns, name) in self.events:
                return 409, _status(409, "AlreadyExists", f'events "{name}" already exists')
            self.rv += 1
            meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(self.rv))
            self.events[(ns, name)] = body
            return 201, body
