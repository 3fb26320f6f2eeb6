"""Prometheus families and the /metrics + /healthz HTTP endpoint.

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
- pressured's own: events by severity, the warning lead time before kills, unwarned kills,
  watched cgroups, wake-ups by cause, failed actions and active kill sources.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from pressured.errors import ConfigError, quote
from pressured.model import Identity, OomKill, PressureEvent, Sample

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["LEAD_BUCKETS", "Metrics", "MetricsServer", "MetricsSettings", "start_http"]

log = logging.getLogger("pressured.metrics")

LEAD_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Warning lead time buckets: sub-second (a spike outran the poll) up to an hour (slow leak)."""

ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104 - a DaemonSet is scraped from other nodes
DEFAULT_TTL: Final = 60.0
_LEVELS: Final = ("some", "full")
_WINDOWS: Final = ("avg10", "avg60", "avg300")
_TARGET_LABELS: Final = ("namespace", "pod", "container", "cgroup")
_KILL_LABELS: Final = ("node", "namespace", "pod", "container")


@dataclass(frozen=True)
class MetricsSettings:
    """The ``metrics`` config section."""

    enabled: bool = True
    port: int = 9000
    address: str = ALL_INTERFACES
    pid_labels: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "metrics") -> MetricsSettings:
        """Build from the root config mapping's ``metrics`` section (``where`` is its path)."""
        leaf = where.rpartition(".")[2]
        section = cfg.get(leaf) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: expected a mapping (got {quote(section)})")
        problems: list[str] = []
        known = {"enabled", "port", "address", "pid_labels"}
        problems.extend(
            f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})"
            for key in sorted(set(section) - known)
        )
        enabled = section.get("enabled", cls.enabled)
        pid_labels = section.get("pid_labels", cls.pid_labels)
        for key, value in (("enabled", enabled), ("pid_labels", pid_labels)):
            if not isinstance(value, bool):
                problems.append(f"{where}.{key}: expected true or false (got {quote(value)})")
        raw_port = section.get("port", cls.port)
        port = -1
        if isinstance(raw_port, int) and not isinstance(raw_port, bool):
            port = raw_port
        elif isinstance(raw_port, str) and raw_port.strip().isdigit():
            port = int(raw_port)
        if not 0 <= port <= 65535:
            problems.append(f"{where}.port: expected a port number 0-65535 (got {quote(raw_port)})")
        address = section.get("address", cls.address)
        if not isinstance(address, str) or not address:
            problems.append(f"{where}.address: expected a host address (got {quote(address)})")
        if problems:
            raise ConfigError(problems)
        return cls(bool(enabled), port, str(address), bool(pid_labels))


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

        self.memory_usage = Gauge(
            "memory_usage", "Memory in use, percent of the limit", target, registry=r
        )
        self.oom_score = Gauge(
            "oom_score", "oom_score of the target's main process", target, registry=r
        )
        self.memory_pressure = Gauge(
            "memory_pressure", "Memory pressure stall information, percent", psi, registry=r
        )
        self.io_pressure = Gauge(
            "io_pressure", "IO pressure stall information, percent", psi, registry=r
        )
        self.cpu_pressure = Gauge(
            "cpu_pressure", "CPU pressure stall information, percent", psi, registry=r
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
        self.wakeups = Counter(
            "pressured_wakeups", "Wake-ups of the main loop, by cause", ["cause"], registry=r
        )
        self.actions_failed = Counter(
            "pressured_actions_failed", "Actions that failed, by action", ["action"], registry=r
        )
        self.kill_sources_active = Gauge(
            "pressured_kill_sources_active",
            "1 for each kill source that is running",
            ["source"],
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
    ) -> None:
        labels = self._target_labels(cgroup, identity, pid)
        with self._lock:
            self._seen[labels] = self._clock()
        self.memory_usage.labels(*labels).set(usage_percent)
        if sample.oom_score is not None:
            self.oom_score.labels(*labels).set(sample.oom_score)
        for family, psi in (
            (self.memory_pressure, sample.memory_psi),
            (self.io_pressure, sample.io_psi),
            (self.cpu_pressure, sample.cpu_psi),
        ):
            if psi is None:
                continue
            for level in _LEVELS:
                for window in _WINDOWS:
                    value = getattr(psi, f"{level}_{window}")
                    family.labels(*labels, level, window).set(value)

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
        for family in (self.memory_usage, self.oom_score):
            with contextlib.suppress(KeyError):
                family.remove(*labels)
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

    def set_watched(self, n: int) -> None:
        self.watched.set(n)

    def set_kill_source(self, source: str, active: bool) -> None:
        self.kill_sources_active.labels(source).set(1 if active else 0)

    def set_kill_sources(self, active: Iterable[str], known: Iterable[str]) -> None:
        """Convenience: mark every source of ``known`` as active or not."""
        running = set(active)
        for source in known:
            self.set_kill_source(source, source in running)


# --- HTTP ----------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # Daemon request threads: a stuck scraper must not hold the process at exit.
    daemon_threads = True


Health = Callable[[], tuple[bool, str]]
"""(healthy, why): /healthz answers 200 with ``why`` when healthy, else 503 with ``why``."""


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


def _app(registry: CollectorRegistry, health: Health = _always_ok) -> WSGIApplication:
    metrics_app = make_wsgi_app(registry)

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
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class MetricsServer:
    """A running HTTP endpoint; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.address: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    def close(self) -> None:
        stopper = threading.Thread(target=self._server.shutdown, name="pressured-metrics-stop")
        stopper.start()
        # serve_forever sleeps in select() with no timeout (no idle wake-ups), so it notices
        # the shutdown request only when a connection wakes it.
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((self._wake_host(), self.port), timeout=1).close()
            stopper.join(0.05)
        self._server.server_close()
        self._thread.join()

    def _wake_host(self) -> str:
        if self.address in ("0.0.0.0", ""):  # noqa: S104 - a wildcard is reached on loopback
            return "127.0.0.1"
        if self.address == "::":
            return "::1"
        return self.address

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
) -> MetricsServer:
    """Serve /metrics and /healthz on a daemon thread. A bind failure raises ConfigError
    naming ``metrics.address``/``metrics.port``."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
        server_class: type[_ThreadingServer] = type(
            "_Server", (_ThreadingServer,), {"address_family": family}
        )
        server = make_server(address, port, _app(registry, health), server_class, _QuietHandler)
    except OSError as exc:
        raise ConfigError(
            f"metrics.address/metrics.port: cannot listen on {address}:{port}: "
            f"{exc.strerror or exc}"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": None},
        name="pressured-metrics",
        daemon=True,
    )
    thread.start()
    handle = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", address, handle.port)
    return handle
