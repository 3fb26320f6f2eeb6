"""Prometheus families and the /metrics + /healthz HTTP endpoint.

The endpoint gives a connection READ_TIMEOUT seconds to deliver its request, keeps idle ones
without a thread (MAX_WAITING at most) and serves at most MAX_HANDLERS requests at once (503
beyond), so no client can take the daemon's threads or file descriptors.

Everything lives in one dedicated CollectorRegistry (never the process-global one), so tests and
embedders get a clean set and no default process collectors leak in.

Three groups of families:

- OOMHero's, per target (labels namespace, pod, container, cgroup, and pid when
  ``metrics.pid_labels``): ``memory_usage`` (percent), ``oom_score``, and ``memory_pressure``,
  ``io_pressure``, ``cpu_pressure`` with ``severity_level`` (some/full) and ``severity_window``
  (avg10/avg60/avg300). These series are removed ``ttl`` seconds after their target was last
  observed (``forget_stale``), so deleted pods do not linger.
- The eBPF OOM watcher's, per kill: ``oom_kills_total``, ``oom_kills_per_node_total``,
  ``oom_memory_usage_bytes{memory_type}`` and ``oom_last_timestamp``. Counters of kills are
  never expired: a kill is history, not a reading.
- pressured's own per target: ``pressured_memory_bytes{kind, decides}`` (usage, working_set,
  unreclaimable; ``decides="1"`` on the one warn/critical rest on) and
  ``pressured_memory_refaults_file`` (the kernel's workingset_refault_file counter: rate() of it
  is page-cache thrash).
- pressured's own: events by severity, the warning lead time before kills, unwarned kills,
  watched cgroups, wake-ups by cause, failed actions and active kill sources.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import platform
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

from pressured.errors import ConfigError
from pressured.metrics_config import ALL_INTERFACES, MetricsSettings
from pressured.model import Identity, OomKill, PressureEvent, Sample

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "LAG_BUCKETS",
    "LEAD_BUCKETS",
    "Metrics",
    "MetricsServer",
    "MetricsSettings",
    "Route",
    "start_http",
]

log = logging.getLogger("pressured.metrics")

LEAD_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Warning lead time buckets: sub-second (a spike outran the poll) up to an hour (slow leak)."""

DEFAULT_TTL: Final = 60.0
_LEVELS: Final = ("some", "full")
_WINDOWS: Final = ("avg10", "avg60", "avg300")
_TARGET_LABELS: Final = ("namespace", "pod", "container", "cgroup")
_KILL_LABELS: Final = ("node", "namespace", "pod", "container")
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Wake-up lag buckets: a healthy loop wakes within a millisecond of its deadline; seconds
mean the daemon was starved (CPU throttling, a stop, swapping)."""


class _SeriesGauge:
    """A labelled gauge kept as dicts (a target's label values -> the last ``split`` label
    values -> value) and served by ``collect``: the same series as a prometheus_client Gauge,
    without a child object and two locks per series (about 0.8 KiB each, some 25 per
    target), and without a label tuple per series."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        registry: CollectorRegistry,
        split: int = 0,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._split = len(self._labelnames) - split
        self._values: dict[tuple[str, ...], dict[tuple[str, ...], float]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def set(self, labels: tuple[str, ...], value: float, suffix: tuple[str, ...] = ()) -> None:
        """``labels``: the target's; ``suffix``: the ``split`` label values after them."""
        with self._lock:
            series = self._values.get(labels)
            if series is None:
                series = self._values[labels] = {}
            series[suffix] = float(value)

    def remove(self, *labels: str) -> None:
        """As a Gauge's remove: KeyError for label values never set."""
        head, suffix = labels[: self._split], labels[self._split :]
        with self._lock:
            series = self._values[head]
            del series[suffix]
            if not series:
                del self._values[head]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        with self._lock:
            items = [
                ((*labels, *suffix), value)
                for labels, series in self._values.items()
                for suffix, value in series.items()
            ]
        for labels, value in items:
            family.add_metric(labels, value)
        return [family]


_PSI_SERIES: Final = tuple((level, window) for level in _LEVELS for window in _WINDOWS)
"""(severity_level, severity_window) of each PSI series, shared by every target's."""
_KIND_SERIES: Final = {
    (kind, decides): (kind, decides)
    for kind in ("usage", "working_set", "unreclaimable")
    for decides in ("0", "1")
}


def _label(value: str | None) -> str:
    return "" if value is None else value


class Metrics:
    """The families of one pressured process, in ``self.registry``.

    ``node`` labels kill families (default: this host's name). ``clock`` stamps when a target
    was last observed, on the same scale as ``forget_stale(now)``.
    """

    def __init__(
        self,
        node: str | None = None,
        pid_labels: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node if node else platform.node()
        self.pid_labels = pid_labels
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, ...], float] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        target = [*_TARGET_LABELS, "pid"] if pid_labels else list(_TARGET_LABELS)
        psi = [*target, "severity_level", "severity_window"]

        self.memory_usage = _SeriesGauge(
            "memory_usage", "Memory in use, percent of the limit", target, registry=r
        )
        self.oom_score = _SeriesGauge(
            "oom_score", "oom_score of the target's main process", target, registry=r
        )
        self.memory_pressure = _SeriesGauge(
            "memory_pressure",
            "Memory pressure stall information, percent",
            psi,
            registry=r,
            split=2,
        )
        self.io_pressure = _SeriesGauge(
            "io_pressure", "IO pressure stall information, percent", psi, registry=r, split=2
        )
        self.cpu_pressure = _SeriesGauge(
            "cpu_pressure", "CPU pressure stall information, percent", psi, registry=r, split=2
        )

        self.memory_bytes = _SeriesGauge(
            "pressured_memory_bytes",
            "Memory of the target by kind (usage, working_set, unreclaimable: the OOM-risk "
            "figure); decides=1 on the kind warn/critical rest on",
            [*target, "kind", "decides"],
            registry=r,
            split=2,
        )
        self.refaults_file = _SeriesGauge(
            "pressured_memory_refaults_file",
            "workingset_refault_file of the target's memory.stat (a counter of the kernel: "
            "rate() of it is page-cache thrash)",
            target,
            registry=r,
        )

        self.oom_kills = Counter("oom_kills", "OOM kills", _KILL_LABELS, registry=r)
        self.oom_kills_per_node = Counter(
            "oom_kills_per_node", "OOM kills on the node", ["node"], registry=r
        )
        self.oom_memory_usage_bytes = Gauge(
            "oom_memory_usage_bytes",
            "Memory of the last killed process, from the kill record",
            [*_KILL_LABELS, "memory_type"],
            registry=r,
        )
        self.oom_last_timestamp = Gauge(
            "oom_last_timestamp", "Unix time of the last OOM kill", _KILL_LABELS, registry=r
        )

        self.memory_throttled = Counter(
            "pressured_memory_throttled_seconds",
            "Seconds the target was held at memory.high with memory stalled (memory_throttled)",
            list(_TARGET_LABELS),
            registry=r,
        )
        self.events = Counter(
            "pressured_events", "Events emitted, by severity", ["severity"], registry=r
        )
        self.warning_lead = Histogram(
            "pressured_warning_lead_seconds",
            "Seconds between the first warning of an episode and the OOM kill that ended it",
            buckets=LEAD_BUCKETS,
            registry=r,
        )
        self.kills_unwarned = Counter(
            "pressured_kills_unwarned", "OOM kills with no warning before them", registry=r
        )
        self.watched = Gauge("pressured_watched_cgroups", "Cgroups being watched", registry=r)
        self._vanished_seen = 0
        self.vanished = Counter(
            "pressured_targets_vanished",
            "Cgroups removed between being listed and being armed (short-lived containers)",
            registry=r,
        )
        self.wakeups = Counter(
            "pressured_wakeups", "Wake-ups of the main loop, by cause", ["cause"], registry=r
        )
        self.actions_failed = Counter(
            "pressured_actions_failed", "Actions that failed, by action", ["action"], registry=r
        )
        self.actions_dropped = Counter(
            "pressured_actions_dropped",
            "Events an action did not run, or not within its deadline, by action and reason "
            "(queue_full, deadline, shutdown, reload, closed, shed)",
            ["action", "reason"],
            registry=r,
        )
        self.kill_sources_active = Gauge(
            "pressured_kill_sources_active",
            "1 for each kill source that is running",
            ["source"],
            registry=r,
        )
        self.kill_source_problems = Counter(
            "pressured_kill_source_problems",
            "What a running kill source could not read, by source and kind: lost (records "
            "overwritten or dropped before they were read), overrun, read_error, malformed",
            ["source", "kind"],
            registry=r,
        )
        self._problems_seen: dict[tuple[str, str], int] = {}

        # the daemon itself (daemon/selfwatch.py)
        self.self_rss = Gauge(
            "pressured_self_rss_bytes", "Resident set of the pressured process", registry=r
        )
        self.self_working_set = Gauge(
            "pressured_self_memory_working_set_bytes",
            "Working set of pressured's own memory cgroup (usage less inactive file)",
            registry=r,
        )
        self.self_usage = Gauge(
            "pressured_self_memory_usage_bytes",
            "Usage of pressured's own memory cgroup",
            registry=r,
        )
        self.self_limit = Gauge(
            "pressured_self_memory_limit_bytes",
            "Memory limit of pressured's own cgroup (the smallest up its tree; 0: none found)",
            registry=r,
        )
        self.self_shedding = Gauge(
            "pressured_self_shedding",
            "1 while optional work (heap captures, Lua) is shed near the daemon's own limit",
            registry=r,
        )
        self.self_degraded = Gauge(
            "pressured_self_degraded",
            "1 while /healthz says degraded (near its own limit, or events dropped lately)",
            registry=r,
        )
        self.wakeup_lag = Histogram(
            "pressured_wakeup_lag_seconds",
            "How late the main loop woke past the deadline it slept towards",
            buckets=LAG_BUCKETS,
            registry=r,
        )

    # --- per target ---------------------------------------------------------------------

    def _target_labels(self, cgroup: str, identity: Identity, pid: int | None) -> tuple[str, ...]:
        labels: tuple[str, ...] = (
            _label(identity.namespace),
            _label(identity.pod_name),
            _label(identity.container_name),
            cgroup,
        )
        if self.pid_labels:
            labels = (*labels, "" if pid is None else str(pid))
        return labels

    def observe_sample(
        self,
        sample: Sample,
        cgroup: str,
        identity: Identity,
        usage_percent: float,
        *,
        pid: int | None = None,
        decided_by: str | None = None,
    ) -> None:
        labels = self._target_labels(cgroup, identity, pid)
        with self._lock:
            self._seen[labels] = self._clock()
        self.memory_usage.set(labels, usage_percent)
        for kind, value in (
            ("usage", sample.usage_bytes),
            ("working_set", sample.working_set_bytes),
            ("unreclaimable", sample.unreclaimable_bytes),
        ):
            if value is not None:
                decides = "1" if kind == decided_by else "0"
                self.memory_bytes.set(labels, value, _KIND_SERIES[kind, decides])
        if sample.refault_file is not None:
            self.refaults_file.set(labels, sample.refault_file)
        if sample.oom_score is not None:
            self.oom_score.set(labels, sample.oom_score)
        for family, psi in (
            (self.memory_pressure, sample.memory_psi),
            (self.io_pressure, sample.io_psi),
            (self.cpu_pressure, sample.cpu_psi),
        ):
            if psi is None:
                continue
            for suffix in _PSI_SERIES:
                family.set(labels, getattr(psi, f"{suffix[0]}_{suffix[1]}"), suffix)

    def add_throttled_seconds(self, cgroup: str, identity: Identity, seconds: float) -> None:
        """Seconds the engine counted the target held at memory.high (take_throttled_seconds)."""
        if seconds > 0:
            labels = self._target_labels(cgroup, identity, None)[: len(_TARGET_LABELS)]
            self.memory_throttled.labels(*labels).inc(seconds)

    def forget_stale(self, now: float | None = None, ttl: float = DEFAULT_TTL) -> int:
        """Remove the per-target series not observed for ``ttl`` seconds; returns how many
        targets were dropped."""
        if now is None:
            now = self._clock()
        with self._lock:
            stale = [labels for labels, seen in self._seen.items() if now - seen > ttl]
            for labels in stale:
                del self._seen[labels]
        for labels in stale:
            self._remove(labels)
        return len(stale)

    def _remove(self, labels: tuple[str, ...]) -> None:
        # remove() raises KeyError for a combination never set (a target without PSI).
        for family in (self.memory_usage, self.oom_score, self.refaults_file):
            with contextlib.suppress(KeyError):
                family.remove(*labels)
        for kind in ("usage", "working_set", "unreclaimable"):
            for decides in ("0", "1"):
                with contextlib.suppress(KeyError):
                    self.memory_bytes.remove(*labels, kind, decides)
        with contextlib.suppress(KeyError):
            self.memory_throttled.remove(*labels[: len(_TARGET_LABELS)])
        for family in (self.memory_pressure, self.io_pressure, self.cpu_pressure):
            for level in _LEVELS:
                for window in _WINDOWS:
                    with contextlib.suppress(KeyError):
                        family.remove(*labels, level, window)

    # --- events and the daemon ----------------------------------------------------------

    def observe_event(self, event: PressureEvent | OomKill) -> None:
        """Count an event; an OomKill also feeds the kill families and the lead histogram.

        ``event.extra["rss"]`` (a mapping of memory type to bytes, e.g. anon_rss, file_rss,
        shmem_rss, total_vm) fills ``oom_memory_usage_bytes`` when the kill record had it.
        """
        self.events.labels(event.severity).inc()
        if not isinstance(event, OomKill):
            return
        ident = event.identity
        labels = (
            self.node,
            _label(ident.namespace),
            _label(ident.pod_name),
            _label(ident.container_name),
        )
        self.oom_kills.labels(*labels).inc()
        self.oom_kills_per_node.labels(self.node).inc()
        self.oom_last_timestamp.labels(*labels).set(event.time)
        rss = event.extra.get("rss")
        if isinstance(rss, Mapping):
            for memory_type, value in rss.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.oom_memory_usage_bytes.labels(*labels, str(memory_type)).set(value)
        if event.warned_seconds_before is None:
            self.kills_unwarned.inc()
        else:
            self.warning_lead.observe(event.warned_seconds_before)

    def wakeup(self, cause: str) -> None:
        self.wakeups.labels(cause).inc()

    def action_failed(self, name: str) -> None:
        self.actions_failed.labels(name).inc()

    def action_dropped(self, name: str, reason: str) -> None:
        self.actions_dropped.labels(name, reason).inc()

    def set_watched(self, n: int, vanished_total: int = 0) -> None:
        """``vanished_total``: cgroups that vanished while being armed, since the start."""
        self.watched.set(n)
        if vanished_total > self._vanished_seen:
            self.vanished.inc(vanished_total - self._vanished_seen)
            self._vanished_seen = vanished_total

    def observe_self(
        self,
        *,
        rss: int | None,
        working_set: int | None,
        usage: int | None,
        limit: int | None,
        shedding: bool,
    ) -> None:
        """The daemon's own memory (daemon/selfwatch.py); None leaves a gauge as it was."""
        for gauge, value in (
            (self.self_rss, rss),
            (self.self_working_set, working_set),
            (self.self_usage, usage),
            (self.self_limit, limit),
        ):
            if value is not None:
                gauge.set(value)
        self.self_shedding.set(1 if shedding else 0)

    def set_degraded(self, degraded: bool) -> None:
        self.self_degraded.set(1 if degraded else 0)

    def observe_wakeup_lag(self, seconds: float) -> None:
        self.wakeup_lag.observe(max(0.0, seconds))

    def set_kill_source(self, source: str, active: bool) -> None:
        self.kill_sources_active.labels(source).set(1 if active else 0)

    def set_kill_source_problems(self, source: str, counts: Mapping[str, int]) -> None:
        """A kill source's problem counts since it opened (KillSource.problems): each series
        exists from the first call, and grows by what was added since the last."""
        for kind, total in counts.items():
            seen = self._problems_seen.get((source, kind))
            child = self.kill_source_problems.labels(source, kind)
            if seen is None or total > seen:
                child.inc(max(0, total - (seen or 0)))
                self._problems_seen[source, kind] = total

    def set_kill_sources(self, active: Iterable[str], known: Iterable[str]) -> None:
        """Convenience: mark every source of ``known`` as active or not."""
        running = set(active)
        for source in known:
            self.set_kill_source(source, source in running)


# --- HTTP ----------------------------------------------------------------------------------


READ_TIMEOUT: Final = 10.0
"""Seconds a connection has to deliver its whole request (an idle one is closed then)."""
MAX_HANDLERS: Final = 32
"""Requests served at once, one thread each; a connection beyond them is answered 503."""
MAX_WAITING: Final = 256
"""Connections kept open before they have sent anything (no thread, one fd each); beyond
them the oldest is closed, so idle connections cannot take the daemon's file descriptors."""

_BUSY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


class _DeadlineIO(socket.SocketIO):
    """A socket's reads, each given only the time left before ``deadline`` (monotonic): a
    request trickled in a byte at a time cannot hold its thread longer than an idle one."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock, "rb")
        self._conn = sock
        self._deadline = deadline

    def readinto(self, b: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._conn.settimeout(left)
        return super().readinto(b)


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not to stderr; the request must arrive before the
    connection's deadline."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader setup() made: its reference would keep the fd
        self.rfile = io.BufferedReader(_DeadlineIO(self.connection, self.server.deadline()))

    def parse_request(self) -> bool:
        ok = super().parse_request()
        # the request is in: the answer gets its own timeout for each write
        self.connection.settimeout(self.server.read_timeout)
        return ok

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("%s: connection dropped: %s", self.address_string(), exc)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(WSGIServer):
    """The HTTP server: one thread accepts connections and keeps them, with no thread, until
    they send something (or until ``read_timeout``: then they are closed); a connection with
    a request is handed to a thread of its own, at most ``max_handlers`` at once, and
    answered 503 beyond them."""

    read_timeout: float = READ_TIMEOUT
    max_handlers: int = MAX_HANDLERS
    max_waiting: int = MAX_WAITING
    request_queue_size = 128  # the listen backlog: the accepting thread takes them at once

    def __init__(self, server_address: Any, handler: type[WSGIRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(self.max_handlers)
        self._local = threading.local()
        self._waiting: dict[socket.socket, tuple[Any, float]] = {}  # oldest first
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        super().__init__(server_address, handler)  # binds: on failure, server_close()

    def server_activate(self) -> None:
        super().server_activate()
        self.socket.setblocking(False)

    def deadline(self) -> float:
        """The deadline of the connection this handler thread serves."""
        return float(self._local.deadline)

    def serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            try:
                while not self._stopping:
                    try:
                        self._serve_once(sel)
                    except Exception:
                        # the endpoint must outlive any one connection's surprise
                        log.exception("metrics: the server loop failed; going on")
                        time.sleep(0.1)
            finally:
                for conn in self._waiting:
                    conn.close()
                self._waiting.clear()

    def _serve_once(self, sel: selectors.BaseSelector) -> None:
        timeout = None
        if self._waiting:
            _, oldest = next(iter(self._waiting.values()))
            timeout = max(0.0, oldest - time.monotonic())
        for key, _ in sel.select(timeout):
            if key.data == "accept":
                self._accept(sel)
            elif key.data == "wake":
                self._wake_r.recv(64)
            else:
                conn = cast("socket.socket", key.fileobj)
                entry = self._waiting.pop(conn, None)
                if entry is None:
                    continue  # closed as the oldest idle one by an accept in this round
                sel.unregister(conn)
                self._dispatch(conn, *entry)
        self._expire(sel, time.monotonic())

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            conn, address = self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # the connection stays queued and the socket readable: do not spin on it
                log.warning("metrics: cannot accept a connection: %s", exc.strerror)
                time.sleep(0.1)
            return  # else gone before it was accepted
        if len(self._waiting) >= self.max_waiting:
            oldest = next(iter(self._waiting))
            sel.unregister(oldest)
            del self._waiting[oldest]
            oldest.close()
            log.debug("metrics: too many idle connections; closed the oldest")
        self._waiting[conn] = (address, time.monotonic() + self.read_timeout)
        sel.register(conn, selectors.EVENT_READ, "conn")

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        while self._waiting:
            conn, (_, deadline) = next(iter(self._waiting.items()))
            if deadline > now:
                return
            sel.unregister(conn)
            del self._waiting[conn]
            conn.close()

    def _dispatch(self, conn: socket.socket, address: Any, deadline: float) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(conn)
            return
        thread = threading.Thread(
            target=self._serve_one,
            args=(conn, address, deadline),
            name="pressured-metrics-request",
            daemon=True,  # a stuck scraper must not hold the process at exit
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had
            self._slots.release()
            self._refuse(conn)

    def _serve_one(self, conn: socket.socket, address: Any, deadline: float) -> None:
        self._local.deadline = deadline
        try:
            self.finish_request(conn, address)
        except Exception:  # one bad request must not reach the daemon
            self.handle_error(conn, address)
        finally:
            self.shutdown_request(conn)
            self._slots.release()

    def _refuse(self, conn: socket.socket) -> None:
        """503 without a thread: never blocks the accepting thread."""
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.recv(65536)  # what the client sent, so closing does not reset the answer
        with contextlib.suppress(OSError):
            conn.send(_BUSY)
            conn.shutdown(socket.SHUT_WR)
        conn.close()
        log.debug("metrics: %d requests in progress; answered 503", self.max_handlers)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: request from %s failed", client_address, exc_info=True)


Health = Callable[[], tuple[bool, str]]
"""(healthy, why): /healthz answers 200 with ``why`` when healthy, else 503 with ``why``."""


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


Route = Callable[[Mapping[str, list[str]]], tuple[str, str, bytes]]
"""A read-only GET endpoint beside /metrics: query parameters -> (status line, content type,
body). It runs on its request's thread and may wait there, boundedly (daemon/state.py)."""


def _app(
    registry: CollectorRegistry,
    health: Health = _always_ok,
    routes: Mapping[str, Route] | None = None,
) -> WSGIApplication:
    metrics_app = make_wsgi_app(registry)
    extra = dict(routes or {})

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, why = health()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode()]
        if path == "/metrics":
            body: Iterable[bytes] = metrics_app(environ, start_response)
            return body
        route = extra.get(path)
        if route is not None:
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
                return [b"read-only: GET only\n"]
            try:
                query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=16)
            except ValueError:
                start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"bad query: at most 16 parameters\n"]
            status, ctype, data = route(query)
            start_response(status, [("Content-Type", ctype), ("Cache-Control", "no-store")])
            return [data]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        known = ", ".join(["/metrics", "/healthz", *extra])
        return [f"not found: try {known}\n".encode()]

    return app


class MetricsServer:
    """A running HTTP endpoint; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.address: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    def close(self) -> None:
        self._server.stop()
        self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_http(
    registry: CollectorRegistry,
    address: str = ALL_INTERFACES,
    port: int = 9000,
    *,
    health: Health = _always_ok,
    routes: Mapping[str, Route] | None = None,
    read_timeout: float = READ_TIMEOUT,
    max_handlers: int = MAX_HANDLERS,
    max_waiting: int = MAX_WAITING,
) -> MetricsServer:
    """Serve /metrics, /healthz and ``routes`` on a daemon thread. A bind failure raises ConfigError
    naming ``metrics.address``/``metrics.port``.

    A connection has ``read_timeout`` seconds to deliver its request; at most
    ``max_handlers`` requests are served at once (503 beyond) and at most ``max_waiting``
    connections that have sent nothing yet are kept (the oldest is closed beyond)."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        server_class: type[_Server] = type(
            "_Server",
            (_Server,),
            {
                "address_family": infos[0][0],
                "read_timeout": read_timeout,
                "max_handlers": max_handlers,
                "max_waiting": max_waiting,
            },
        )
        server = server_class((address, port), _QuietHandler)
    except OSError as exc:
        raise ConfigError(
            f"metrics.address/metrics.port: cannot listen on {address}:{port}: "
            f"{exc.strerror or exc}"
        ) from exc
    server.set_app(_app(registry, health, routes))
    thread = threading.Thread(target=server.serve, name="pressured-metrics", daemon=True)
    thread.start()
    handle = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", address, handle.port)
    return handle
