"""The webhook action posting to a real HTTP server on loopback started here: headers,
retries with backoff, timeouts, the oomhero body, and option errors."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pressured import __version__
from pressured.actions.base import ActionContext
from pressured.actions.webhook import WebhookAction, oomhero_body
from pressured.errors import ActionError, ConfigError
from pressured.model import Event
from tests.unit.actions.conftest import CGROUP, oom_kill, pressure


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    """A real HTTP server on loopback answering with scripted statuses (the last repeats)."""

    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay = delay
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                receiver.requests.append(Received(self.path, dict(self.headers), body))
                status = (
                    receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                )
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int], delay: float = 0.0) -> Receiver:
        r = Receiver(statuses, delay)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@contextlib.contextmanager
def webhook(options: dict[str, Any], *, dry_run: bool = False) -> Iterator[WebhookAction]:
    action = WebhookAction(options, ActionContext(dry_run=dry_run), "actions[3]")
    try:
        yield action
    finally:
        action.close()


def run_webhook(options: dict[str, Any], event: Event, *, dry_run: bool = False) -> None:
    with webhook(options, dry_run=dry_run) as action:
        action.run(event)


def test_webhook_posts_the_event_json_with_headers(
    receiver_factory: Callable[..., Receiver],
) -> None:
    r = receiver_factory([200])
    event = pressure("critical")
    run_webhook({"url": r.url, "headers": {"Authorization": "Bearer t0k", "X-Env": 3}}, event)
    assert len(r.requests) == 1
    got = r.requests[0]
    assert got.path == "/hook"
    assert got.body == json.loads(json.dumps(event.to_json()))
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["authorization"] == "Bearer t0k"
    assert headers["x-env"] == "3"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"pressured/{__version__}"


def test_webhook_retries_5xx_with_backoff_then_succeeds(
    receiver_factory: Callable[..., Receiver],
) -> None:
    r = receiver_factory([500, 503, 204])
    run_webhook({"url": r.url, "retries": 3, "backoff_ms": 1}, pressure())
    assert len(r.requests) == 3
    assert all(x.body["severity"] == "warn" for x in r.requests)


def test_webhook_retries_429(receiver_factory: Callable[..., Receiver]) -> None:
    r = receiver_factory([429, 200])
    run_webhook({"url": r.url, "retries": 1, "backoff_ms": 1}, pressure())
    assert len(r.requests) == 2


def test_webhook_gives_up_after_the_retries(receiver_factory: Callable[..., Receiver]) -> None:
    r = receiver_factory([500])
    with pytest.raises(ActionError) as info:
        run_webhook({"url": r.url, "retries": 2, "backoff_ms": 1}, pressure())
    assert str(info.value) == f"webhook {r.url}: HTTP 500 after 3 attempt(s)"
    assert len(r.requests) == 3


def test_webhook_does_not_retry_4xx(receiver_factory: Callable[..., Receiver]) -> None:
    r = receiver_factory([400, 200])
    with pytest.raises(ActionError) as info:
        run_webhook({"url": r.url, "retries": 3, "backoff_ms": 1}, pressure())
    assert str(info.value) == f"webhook {r.url}: HTTP 400 after 1 attempt(s)"
    assert len(r.requests) == 1


def test_webhook_connection_refused_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the port is closed now: nothing listens there
    url = f"http://127.0.0.1:{port}/hook"
    with pytest.raises(ActionError) as info:
        run_webhook({"url": url, "retries": 2, "backoff_ms": 1}, pressure())
    assert str(info.value).startswith(f"webhook {url}: ConnectError:")
    assert str(info.value).endswith("after 3 attempt(s)")


def test_webhook_timeout(receiver_factory: Callable[..., Receiver]) -> None:
    r = receiver_factory([200], delay=0.5)
    with pytest.raises(ActionError, match=r": ReadTimeout: .* after 1 attempt\(s\)$"):
        run_webhook({"url": r.url, "retries": 0, "timeout_ms": 50}, pressure())


def test_webhook_oomhero_body(receiver_factory: Callable[..., Receiver]) -> None:
    r = receiver_factory([200])
    run_webhook({"url": r.url, "format": "oomhero"}, pressure("warn"))
    run_webhook({"url": r.url, "format": "oomhero"}, oom_kill())
    warn, kill = (x.body for x in r.requests)
    assert warn == {
        "pod": "web-0",
        "namespace": "shop",
        "container": "app",
        "cgroup": CGROUP,
        "severity": "warning",
        "usage_percent": 78.12,
        "usage_bytes": 900 << 20,
        "limit_bytes": 1 << 30,
        "signal": "SIGUSR1",
        "time": "2025-11-21T05:22:14.250Z",
    }
    assert kill["severity"] == "oom_killed"
    assert kill["signal"] is None
    assert oomhero_body(pressure("critical").to_json())["signal"] == "SIGUSR2"
    assert oomhero_body(pressure("recovered").to_json())["severity"] == "ok"


def test_webhook_dry_run_sends_nothing(
    receiver_factory: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    r = receiver_factory([200])
    with caplog.at_level(logging.INFO, logger="pressured.actions.webhook"):
        run_webhook({"url": r.url}, pressure("critical"), dry_run=True)
    assert r.requests == []
    assert f"dry-run: would POST critical event for {CGROUP} to {r.url}" in caplog.text


def test_webhook_severities_filter(receiver_factory: Callable[..., Receiver]) -> None:
    r = receiver_factory([200])
    with webhook({"url": r.url, "severities": ["oom_killed"]}) as action:
        action.run(pressure("critical"))
        action.run(oom_kill())
    assert [x.body["event_type"] for x in r.requests] == ["oom_killed"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"^actions\[3\]\.url: required for type 'webhook'$"),
        (
            {"url": "ftp://example.com/x"},
            r"^actions\[3\]\.url: must be an http\(s\) URL with a host, got 'ftp://example.com/x'$",
        ),
        ({"url": "example.com/hook"}, r"^actions\[3\]\.url: must be an http\(s\) URL"),
        ({"url": "http://"}, r"^actions\[3\]\.url: "),
        (
            {"url": "http://h", "retries": 11},
            r"^actions\[3\]\.retries: must be between 0 and 10, got 11$",
        ),
        (
            {"url": "http://h", "retries": -1},
            r"^actions\[3\]\.retries: must be between 0 and 10, got -1$",
        ),
        (
            {"url": "http://h", "backoff_ms": -5},
            r"^actions\[3\]\.backoff_ms: must not be negative, got -5$",
        ),
        (
            {"url": "http://h", "timeout_ms": 0},
            r"^actions\[3\]\.timeout_ms: must be positive, got 0$",
        ),
        (
            {"url": "http://h", "format": "xml"},
            r"^actions\[3\]\.format: must be 'pressured' or 'oomhero', got 'xml'$",
        ),
        (
            {"url": "http://h", "headers": ["a"]},
            r"^actions\[3\]\.headers: expected dict, got \['a'\]$",
        ),
        (
            {"url": "http://h", "headers": {"X": {"y": 1}}},
            r"^actions\[3\]\.headers\.X: expected a text value",
        ),
        (
            {"url": "http://h", "severities": ["fatal"]},
            r"^actions\[3\]\.severities\[0\]: must be one of",
        ),
        (
            {"url": "http://h", "header": {}},
            r"^actions\[3\]\.header: unknown option for type 'webhook' "
            r"\(did you mean 'headers'\?\)$",
        ),
    ],
)
def test_webhook_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebhookAction(options, ActionContext(), "actions[3]")
