"""Action lanes with `pressured run` on a real leak: a webhook whose server (a real HTTP server on
loopback, started here) answers only after 30 s must delay neither the log lines nor the
signals, nor a reload's wake-ups, and a stop while it hangs still writes every event and names
what the webhook did not deliver.

Times are compared on one clock: the leaker records each signal with time.monotonic(), the test
notes when each line of the events file first appears (it reads the file every 20 ms), and an
event's wall-clock ``time`` is moved onto the monotonic clock with the offset measured here. The
bounds (2 s) are tied to the 30 s server, not to this machine's speed: a signal or a line that
waits behind the webhook is 13 s or more late (3 s timeout, 3 retries).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.cgroups import Child, leaker_argv
from tests.support.daemon import PressuredProcess, running
from tests.support.events import Event, kind

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024
PROMPT_S = 2.0
"""A signal or an event line is prompt within this of its event (the webhook needs 13.4 s)."""
POLL_S = 1.0
"""source.poll_interval_ms: the daemon reads every target at least this often."""
KILL_WINDOW_S = 5.0
"""kills.window_seconds: an oom_killed is reported at most this long after its first record."""


class SlowServer:
    """A real HTTP server on loopback that answers every POST after 30 s (or at release)."""

    ANSWER_AFTER_S = 30.0

    def __init__(self) -> None:
        self.requests: list[tuple[float, str]] = []  # (monotonic arrival, severity)
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                server.requests.append((time.monotonic(), str(kind(body))))
                server.release.wait(SlowServer.ANSWER_AFTER_S)
                with contextlib.suppress(OSError):  # the client gave up long ago
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def wait_for_requests(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.requests) >= n, f"the webhook sent {self.requests}, expected {n}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer()
    try:
        yield server
    finally:
        server.close()


class LineClock:
    """When each line of the events file first appeared, on this process's monotonic clock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, Event]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        offset = 0
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                buf += chunk
            now = time.monotonic()
            *whole, buf = buf.split(b"\n")
            if whole:
                with self._cond:
                    self.lines.extend((now, json.loads(x)) for x in whole)
                    self._cond.notify_all()
            self._stop.wait(0.02)

    def wait_for(self, done: Callable[[list[Event]], bool], timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.docs()) and time.monotonic() < deadline:
                self._cond.wait(0.1)
            return self.docs()

    def docs(self) -> list[Event]:
        return [doc for _t, doc in self.lines]

    def seen(self, severity: str) -> tuple[float, Event]:
        """(when the first line of this severity appeared, the line)."""
        return next((t, d) for t, d in self.lines if kind(d) == severity)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def has(*severities: str) -> Callable[[list[Event]], bool]:
    return lambda docs: set(severities) <= {kind(d) for d in docs}


def monotonic_of(doc: Event, offset: float) -> float:
    """The event's wall-clock time on the monotonic clock (offset: time.time() - monotonic)."""
    wall = dt.datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")).timestamp()
    return wall - offset


def clock_offset() -> float:
    return time.time() - time.monotonic()


def read_signals(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    words = path.read_text().split()
    return [(words[i], float(words[i + 1])) for i in range(0, len(words), 2)]


def write_config(path: Path, url: str, *, warn: int, critical: int, webhook: str = "") -> None:
    path.write_text(
        f"thresholds: {{warn_percent: {warn}, critical_percent: {critical}, metric: usage}}\n"
        "actions:\n"
        "  - {type: log}\n"
        f"  - {{type: webhook, url: '{url}'{webhook}}}\n"
        "  - {type: signal, warn: SIGUSR1, critical: SIGUSR2}\n"
        "metrics: {enabled: false}\n"
    )


def test_signals_and_event_lines_do_not_wait_for_a_hanging_webhook(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, slow_server: SlowServer
) -> None:
    """Defect: one serial action queue. SIGUSR1 came 13.4 s after the warn, SIGUSR2 after the
    OOM kill, and the oom_killed line 14.5 s late, all behind the webhook's retries."""
    child = make_cgroup(256 * MiB)
    events, signals, cfg = tmp_path / "events.jsonl", tmp_path / "signals.txt", tmp_path / "c.yaml"
    write_config(cfg, slow_server.url, warn=60, critical=80)
    offset = clock_offset()
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    lines = LineClock(events)
    try:
        with running(args) as daemon:
            app = child.spawn(
                leaker_argv("--rate-mib", "16", "--max-mib", "400", "--signals-out", str(signals))
            )
            assert app.wait(timeout=60) == -9, "the leak should end in a real OOM kill"
            dead = time.monotonic()
            lines.wait_for(has("warn", "critical", "oom_killed"), KILL_WINDOW_S + 10)
            assert daemon.stop() == 0
    finally:
        lines.close()
    kinds = [kind(d) for d in lines.docs()]
    assert kinds.index("warn") < kinds.index("critical") < kinds.index("oom_killed"), kinds
    assert slow_server.requests, "the webhook was never called: nothing slow was tested"
    got = read_signals(signals)
    assert [name for name, _t in got][:2] == ["SIGUSR1", "SIGUSR2"], got
    received = dict(reversed(got))  # the first receipt of each
    for severity, sig in (("warn", "SIGUSR1"), ("critical", "SIGUSR2")):
        seen, doc = lines.seen(severity)
        made = monotonic_of(doc, offset)
        assert -0.1 <= received[sig] - made < PROMPT_S, (severity, received[sig] - made)
        assert seen - made < PROMPT_S, f"the {severity} line came {seen - made:.1f} s late"
        assert received[sig] < dead
    seen, _kill = lines.seen("oom_killed")
    assert seen - dead < KILL_WINDOW_S + PROMPT_S, f"oom_killed line {seen - dead:.1f} s late"


def test_a_reload_while_the_webhook_hangs_does_not_delay_the_critical(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, slow_server: SlowServer
) -> None:
    """Defect: SIGHUP closed the old actions on the main thread and joined their worker for up
    to 10 s; meanwhile no wake-up was handled and the critical (75 %) fired at 98 %."""
    child = make_cgroup(256 * MiB)
    events, signals, cfg = tmp_path / "events.jsonl", tmp_path / "signals.txt", tmp_path / "c.yaml"
    write_config(cfg, slow_server.url, warn=50, critical=75)
    offset = clock_offset()
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    lines = LineClock(events)
    try:
        with running(args) as daemon:
            # 16 MiB/s: from warn (50 %) to 90 % in about 6 s, well inside the old 10 s join;
            # held at 232 MiB (about 94 % with the interpreter), short of an OOM kill
            child.spawn(
                leaker_argv(
                    "--rate-mib", "16", "--max-mib", "232", "--hold", "--signals-out", str(signals)
                )
            )
            assert has("warn")(lines.wait_for(has("warn"), 30)), daemon.stderr.text()
            slow_server.wait_for_requests(1, 5)  # the webhook hangs on the warn now
            mark = daemon.log_mark()
            asked = time.monotonic()
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_for_log("configuration reloaded", 15, start=mark)
            reloaded = time.monotonic() - asked
            docs = lines.wait_for(has("critical"), 30)
            assert has("critical")(docs), daemon.stderr.text()
            assert daemon.stop() == 0
            log = daemon.stderr.text()
    finally:
        lines.close()
    assert reloaded < PROMPT_S, f"the reload took {reloaded:.1f} s"
    # the stop came while both webhooks waited: the old one's warn, the new one's critical
    undelivered = "\n".join(re.findall(r"webhook: \d+ event\(s\) not delivered .*", log))
    assert "warn of" in undelivered and "critical of" in undelivered, log
    seen, crit = lines.seen("critical")
    assert crit["usage_percent"] < 90, f"the critical came late: {crit}"
    made = monotonic_of(crit, offset)
    assert seen - made < PROMPT_S
    received = dict(reversed(read_signals(signals)))
    assert "SIGUSR2" in received and received["SIGUSR2"] - made < PROMPT_S, received


def test_sigterm_while_the_webhook_hangs_writes_every_event_and_names_the_undelivered(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, slow_server: SlowServer
) -> None:
    """Defect: on SIGTERM the runner gave up after 10 s and the events queued behind the
    hanging webhook (their log lines included) were lost without a word."""
    child = make_cgroup(256 * MiB)
    events, cfg = tmp_path / "events.jsonl", tmp_path / "c.yaml"
    # timeout 10 s: one run of the webhook lasts 41 s, longer than any stop may take
    write_config(cfg, slow_server.url, warn=60, critical=80, webhook=", timeout_ms: 10000")
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    daemon = PressuredProcess(args)
    lines = LineClock(events)
    try:
        daemon.wait_ready()
        # 32 MiB/s to 224 MiB (about 91 % with the interpreter), then held: a warn and a
        # critical, no kill
        signals = tmp_path / "signals.txt"  # SIGUSR1 and SIGUSR2 are noted, not fatal
        child.spawn(
            leaker_argv(
                "--rate-mib", "32", "--max-mib", "224", "--hold", "--signals-out", str(signals)
            )
        )
        assert has("warn")(lines.wait_for(has("warn"), 30)), daemon.stderr.text()
        slow_server.wait_for_requests(1, 5)  # the webhook hangs on the warn now
        deadline = time.monotonic() + 30
        while child.usage() < 0.85 * 256 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.usage() >= 0.85 * 256 * MiB
        time.sleep(POLL_S + 0.5)  # the daemon has read the target since: the critical is made
        asked = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(30)
        took = time.monotonic() - asked
        daemon.stderr.join(10)
        log = daemon.stderr.text()
    finally:
        lines.close()
        daemon.__exit__()
    assert code == 0, log
    assert took < 15, f"the daemon took {took:.1f} s to stop:\n{log}"
    docs = [json.loads(x) for x in events.read_text().splitlines()]
    assert has("warn", "critical")(docs), f"{[kind(d) for d in docs]}\n{log}"
    undelivered = re.search(r"webhook: (\d+) event\(s\) not delivered within .*", log)
    assert undelivered, log
    assert "warn of" in undelivered[0] and "critical of" in undelivered[0], undelivered[0]
