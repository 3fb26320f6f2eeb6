"""The ``heapdump`` action: fetch a Go heap profile from the target over HTTP and store it.

    actions:
      - type: heapdump
        port: 6060                          # pprof HTTP port when no annotation names one
        path: /debug/pprof/heap?gc=1        # gc=1: a GC first, so inuse_* is live memory
        goroutines: false                   # also store goroutine?debug=2 (all stacks, text)
        discover_ports: false               # try every listening TCP port of the target
        severities: [critical]              # event severities that trigger a dump
        max_bytes: 268435456                # a bigger reply is aborted, nothing is stored
        cooldown_seconds: 300               # at most one dump per target in this window
        timeout_ms: 10000                   # per HTTP request, for the whole transfer
        analyze: true                       # run pprof top on the dump
        top_n: 3                            # functions put into the event
        analyze_timeout_ms: 5000            # the analysis is killed past this...
        analyze_max_mib: 512                # ...or past this much memory
        runtime: auto                       # auto | go | jvm | node (pressured.runtimes)
        full_dump: auto                     # JVM .hprof: never | auto | always
        sample_seconds: 2                   # Node.js: the sampling heap profile's window
        inspector_port: 9229                # Node.js: where SIGUSR1 opens the inspector

runtime: ``go`` is the HTTP pprof capture below; ``jvm`` and ``node`` capture through the
runtime itself (pressured.runtimes: the HotSpot attach protocol, the Node.js inspector), from
the first of the event's pids that runs it; ``auto`` asks each pid (libjvm mapped, a node
executable) and falls back to ``go``, since any program may serve pprof over HTTP. A JVM
capture stores the class histogram (``.histo.txt``, top classes in ``event.extra["heap_top"]``)
and, per full_dump, an ``.hprof``; a Node.js capture stores a profile.proto analysed as a Go
one. A failed runtime capture puts
its reason into ``event.extra["heapdump_error"]`` and fails the action (logged by the runner).

Where: ``http://<host>:<port><path>`` with host the pod IP (``event.identity.pod_ip``) in node
and cluster modes, 127.0.0.1 in sidecar and local modes (the pod's network namespace, or this
machine). Pod annotations override the options: ``pressured.io/pprof-enabled: "false"`` turns
dumps off for the pod, ``pressured.io/pprof-port`` and ``pressured.io/pprof-path`` set where to
ask. They are checked by pressured.k8s.annotations (the one check the daemon's warnings and Lua
also use): the port is decimal digits only, the path has no "//", "@", backslash, space or
control character, so no value can name another host. A refused annotation is logged and listed
in ``event.extra["heapdump_refused"]`` (one message per value), and the option is used instead;
nothing is fetched from what it named.

The cooldown counts from the last attempt, failed or not (a pod that does not serve pprof is
not asked again every poll), and a dry run counts as an attempt so its log shows what a real
run would have done.

discover_ports: the daemon puts the target's process ids into ``event.extra["pids"]``; the
action reads ``<proc_root>/<pid>/net/tcp`` and ``tcp6``, keeps the sockets in state LISTEN (0A)
that one of those processes holds open (``<proc_root>/<pid>/fd``), and asks each port in turn,
the configured one first, until one answers 200 (as the Go heap-dumper sidecar does).

The reply is streamed into storage chunk by chunk through pressured.httpget (never whole in
memory unless ``analyze``, which keeps at most ``max_bytes``) under::

    heaps/<namespace or "local">/<pod name or cgroup name>/<UTC %Y%m%dT%H%M%S.mmmZ>-<container or
    "none">-<pid or 0>.pb.gz

with the event JSON beside it (same name, ``.json``) and the goroutine dump as
``.goroutines.txt``. After a capture the top functions go into ``event.extra["pprof_top"]``
(a list of {function, flat, flat_pct, cum, cum_pct, unit, sample_type}) and the storage key into
``event.extra["heapdump"]``: the event's ``extra`` dict is the agreed channel, so the slow
actions configured after this one, which run in its lane after it (Lua's ``event.pprof_top``,
the Kubernetes Event, a webhook), see them. The log line does not wait for the dump: the result
is this action's own log line and the event JSON stored beside the profile.

Heap growth: when a target is captured again (warn then critical, or criticals after the
cooldown), ``event.extra["heap_growth_top"]`` lists the functions whose in-use bytes grew most
since its previous capture (pressured.pprof.growth: `go tool pprof -top -base` of the two,
the previous one read back from storage) and ``["heap_growth_since"]`` that capture's key; a
failure goes into ``["heap_growth_error"]``. A critical after a warn capture is captured despite
the cooldown: the pair is what shows the growth. On the JVM the rows are classes (two class
histograms); on Node.js each capture's rows are its own sampling window's
(``["heap_growth_window_seconds"]``), see ``_window_growth``.

The profile is the pod owner's to write, so it is analysed in a worker process
(pressured.pprof.worker) killed past ``analyze_timeout_ms`` or ``analyze_max_mib``: a profile
built to be slow or huge costs the daemon at most that, never its loop, its signals or its
memory. When the analysis fails the dump stays stored, the reason is logged and put into
``event.extra["pprof_error"]`` (e.g. "...: profile analysis exceeded 5 s / 512 MiB: killed (out
of memory)"); what the analysis ignored as go tool pprof does (an unusable drop_frames) goes
into ``event.extra["pprof_warnings"]``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pressured import httpget
from pressured.actions.base import Action, ActionContext
from pressured.actions.runner import RUN_CAP_S
from pressured.errors import (
    ActionError,
    ConfigError,
    HttpGetError,
    PprofError,
    StorageError,
    did_you_mean,
    quote,
)
from pressured.k8s.annotations import (
    PPROF_ENABLED,
    PPROF_PATH,
    PPROF_PORT,
    pprof_enabled,
    pprof_path,
    pprof_port,
)
from pressured.kernel.procfs import listening_ports
from pressured.model import Event
from pressured.pprof.growth import heap_growth_top
from pressured.pprof.worker import Limits, run_top
from pressured.runtimes import FULL_DUMP, RUNTIMES

log = logging.getLogger("pressured.actions.heapdump")

DEFAULT_PORT = 6060
DEFAULT_PATH = "/debug/pprof/heap?gc=1"
GOROUTINE_PATH = "goroutine?debug=2"
CHUNK_BYTES = 64 * 1024
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class HeapdumpAction(Action):
    type = "heapdump"
    enriches = True  # adds pprof_top for the actions after it
    optional = True  # shed near the daemon's own memory limit: it holds whole profiles

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown(
            {
                "port",
                "path",
                "goroutines",
                "discover_ports",
                "severities",
                "max_bytes",
                "cooldown_seconds",
                "timeout_ms",
                "analyze",
                "top_n",
                "analyze_timeout_ms",
                "analyze_max_mib",
                "runtime",
                "full_dump",
                "sample_seconds",
                "inspector_port",
            }
        )
        self.port: int = self.opt("port", int, DEFAULT_PORT)
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{where}.port: must be a TCP port 1..65535 (got {self.port!r})")
        self.path: str = self.opt("path", str, DEFAULT_PATH)
        if not self.path.startswith("/"):
            raise ConfigError(f"{where}.path: must start with '/' (got {self.path!r})")
        self.goroutines: bool = self.opt("goroutines", bool, False)
        self.discover_ports: bool = self.opt("discover_ports", bool, False)
        self.severities: frozenset[str] = frozenset(self.severities_opt(("critical",)))
        self.max_bytes: int = self.opt("max_bytes", int, 256 * 1024 * 1024)
        if self.max_bytes <= 0:
            raise ConfigError(f"{where}.max_bytes: must be positive (got {self.max_bytes!r})")
        self.cooldown_seconds: float = float(self.opt("cooldown_seconds", (int, float), 300))
        if self.cooldown_seconds < 0:
            raise ConfigError(
                f"{where}.cooldown_seconds: must be >= 0 (got {self.cooldown_seconds!r})"
            )
        self.timeout_ms: int = self.opt("timeout_ms", int, 10000)
        if self.timeout_ms <= 0:
            raise ConfigError(f"{where}.timeout_ms: must be positive (got {self.timeout_ms!r})")
        self.analyze: bool = self.opt("analyze", bool, True)
        self.top_n: int = self.opt("top_n", int, 3)
        if self.top_n < 1:
            raise ConfigError(f"{where}.top_n: must be at least 1 (got {self.top_n!r})")
        analyze_timeout_ms: int = self.opt("analyze_timeout_ms", int, 5000)
        if analyze_timeout_ms <= 0:
            raise ConfigError(
                f"{where}.analyze_timeout_ms: must be positive (got {analyze_timeout_ms!r})"
            )
        analyze_max_mib: int = self.opt("analyze_max_mib", int, 512)
        if analyze_max_mib < 64:
            raise ConfigError(
                f"{where}.analyze_max_mib: must be at least 64 (got {analyze_max_mib!r})"
            )
        self.analyze_limits = Limits(seconds=analyze_timeout_ms / 1000, memory_mib=analyze_max_mib)
        self.runtime: str = self._choice("runtime", RUNTIMES, "auto")
        self.full_dump: str = self._choice("full_dump", FULL_DUMP, "auto")
        self.sample_seconds = float(self.opt("sample_seconds", (int, float), 2))
        if not 0 < self.sample_seconds <= 60:
            raise ConfigError(
                f"{where}.sample_seconds: must be in (0, 60] (got {self.sample_seconds!r})"
            )
        self.inspector_port: int = self.opt("inspector_port", int, 9229)
        if not 1 <= self.inspector_port <= 65535:
            raise ConfigError(
                f"{where}.inspector_port: must be a TCP port 1..65535 (got {self.inspector_port!r})"
            )
        self._last_capture: dict[str, float] = {}
        self._last_severity: dict[str, str] = {}
        self._previous_key: dict[str, str] = {}
        self._client: Any = None

    # ----------------------------------------------------------------------------------------

    def run(self, event: Event) -> None:
        if event.severity not in self.severities:
            return
        enabled, port, path = self._settings(event)
        target = event.key or event.cgroup
        if not enabled:
            log.debug("heapdump: %s disabled by annotation %s", target, PPROF_ENABLED)
            return
        now = time.monotonic()
        last = self._last_capture.get(target)
        escalated = event.severity == "critical" and self._last_severity.get(target) == "warn"
        if last is not None and now - last < self.cooldown_seconds and not escalated:
            log.info(
                "heapdump: %s skipped, last dump %.0f s ago (cooldown_seconds %g)",
                target,
                now - last,
                self.cooldown_seconds,
            )
            return
        pids = _event_pids(event)
        try:
            runtime, runtime_pid = self._runtime_of(event, pids)
        except ActionError:
            self._last_capture[target] = now  # not asked again every poll
            raise
        if runtime != "go":
            self._last_capture[target] = now
            self._last_severity[target] = event.severity
            self._capture_runtime(event, runtime, runtime_pid, self._key(event, [runtime_pid]))
            return
        host = self._host(event)
        key = self._key(event, pids)
        if self.ctx.dry_run or event.dry_run:
            self._last_capture[target] = now
            how = "every listening port of pids " + str(pids) if self.discover_ports else ""
            log.info(
                "heapdump (dry run): would GET %s%s and store %s",
                _url(host, port, path),
                f" (or {how})" if how else "",
                key,
            )
            return
        self._last_capture[target] = now
        self._last_severity[target] = event.severity
        ports = [port]
        if self.discover_ports:
            ports = self._candidate_ports(port, pids)
        self._capture(event, host, ports, path, key)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ----------------------------------------------------------------------------------------

    def _settings(self, event: Event) -> tuple[bool, int, str]:
        ann = event.annotations
        enabled, port, path = True, self.port, self.path
        refused: list[str] = []

        def refuse(name: str, raw: str, exc: ValueError, used: str) -> None:
            refused.append(f"annotation {name}={quote(raw)} refused: {exc}; using {used}")

        raw = ann.get(PPROF_ENABLED)
        if raw is not None:
            try:
                enabled = pprof_enabled(raw)
            except ValueError as exc:
                refuse(PPROF_ENABLED, raw, exc, "true")
        raw = ann.get(PPROF_PORT)
        if raw is not None:
            try:
                port = pprof_port(raw)
            except ValueError as exc:
                refuse(PPROF_PORT, raw, exc, f"port {port}")
        raw = ann.get(PPROF_PATH)
        if raw is not None:
            try:
                path = pprof_path(raw)
            except ValueError as exc:
                refuse(PPROF_PATH, raw, exc, f"path {path}")
        if refused:
            event.extra["heapdump_refused"] = refused
            for message in refused:
                log.warning("heapdump: %s: %s", event.key or event.cgroup, message)
        return enabled, port, path

    def _host(self, event: Event) -> str:
        if self.ctx.mode in ("node", "cluster"):
            ip = event.identity.pod_ip
            if not ip:
                raise ActionError(
                    f"heapdump: {event.key or event.cgroup}: no pod IP to reach in "
                    f"{self.ctx.mode} mode (pod {event.identity.namespace}/"
                    f"{event.identity.pod_name})"
                )
            return ip
        return "127.0.0.1"

    def _key(self, event: Event, pids: list[int]) -> str:
        ident = event.identity
        namespace = _key_part(ident.namespace or "local")
        cgroup_name = event.cgroup.rstrip("/").rsplit("/", 1)[-1] or "root"
        name = _key_part(ident.pod_name or cgroup_name)
        container = _key_part(ident.container_name or "none")
        pid = pids[0] if pids else getattr(event, "pid", None) or 0
        now = _dt.datetime.now(tz=_dt.UTC)
        stamp = now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"
        return f"heaps/{namespace}/{name}/{stamp}-{container}-{pid}.pb.gz"

    def _candidate_ports(self, port: int, pids: list[int]) -> list[int]:
        if not pids:
            log.warning(
                "heapdump: discover_ports is on but the event names no pids; trying port %d",
                port,
            )
            return [port]
        found = listening_ports(self.ctx.proc_root, pids)
        if not found:
            raise ActionError(
                f"heapdump: no listening TCP port found for pids {pids} under {self.ctx.proc_root}"
            )
        # The configured (or annotated) port first: it is the likeliest pprof server.
        return sorted(found, key=lambda p: (p != port, p))

    def _http(self) -> Any:
        if self._client is None:
            import httpx  # noqa: PLC0415 - lazy: most events never dump

            # trust_env=False: a pod IP must be reached directly, never through HTTP(S)_PROXY.
            # Timeouts are set per request, from what is left of timeout_ms (httpget).
            self._client = httpx.Client(follow_redirects=False, trust_env=False)
        return self._client

    def _capture(self, event: Event, host: str, ports: list[int], path: str, key: str) -> None:
        storage = self._storage()
        failures: list[str] = []
        for port in ports:
            url = _url(host, port, path)
            try:
                size, body = self._fetch_into(storage, url, key, keep=self.analyze)
            except _FetchFailed as exc:
                failures.append(str(exc))
                if len(ports) > 1:
                    log.debug("heapdump: %s", exc)
                continue
            capture = _Capture(key, url, size, body, host, port, path)
            self._after_capture(event, storage, capture)
            return
        raise ActionError("heapdump: " + "; ".join(failures))

    def _storage(self) -> Any:
        if self.ctx.storage_factory is None:
            raise ActionError("heapdump: no storage is configured")
        try:
            return self.ctx.storage_factory()
        except StorageError as exc:
            raise ActionError(f"heapdump: storage unavailable: {exc}") from exc

    def _fetch_into(
        self, storage: Any, url: str, key: str, *, keep: bool
    ) -> tuple[int, bytes | None]:
        """Stream GET ``url`` into ``key``; abort (nothing stored) past max_bytes or timeout_ms."""
        kept = bytearray() if keep else None
        try:
            with httpget.stream(
                url,
                deadline_s=self.timeout_ms / 1000,
                max_bytes=self.max_bytes,
                chunk_size=CHUNK_BYTES,
                client=self._http(),
            ) as reply:
                writer = storage.open_write(key)
                try:
                    for chunk in reply:
                        writer.write(chunk)
                        if kept is not None:
                            kept += chunk
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
                total = reply.received
        except httpget.TooLarge as exc:
            raise _FetchFailed(f"{exc}; aborted, nothing stored") from exc
        except HttpGetError as exc:
            raise _FetchFailed(str(exc)) from exc
        except StorageError as exc:
            raise ActionError(f"heapdump: GET {url}: storing {key} failed: {exc}") from exc
        return total, None if kept is None else bytes(kept)

    def _after_capture(self, event: Event, storage: Any, cap: _Capture) -> None:
        key, url, size = cap.key, cap.url, cap.size
        stem = key.removesuffix(".pb.gz")
        info: dict[str, Any] = {"key": key, "url": url, "bytes": size}
        if self.goroutines:
            goroutine_key = stem + ".goroutines.txt"
            goroutine_url = _url(cap.host, cap.port, _goroutine_path(cap.path))
            try:
                self._fetch_into(storage, goroutine_url, goroutine_key, keep=False)
                info["goroutines_key"] = goroutine_key
            except (_FetchFailed, ActionError) as exc:
                log.warning("heapdump: goroutine dump not stored: %s", exc)
        event.extra["heapdump"] = info
        summary: list[dict[str, Any]] = []
        if cap.body is not None:
            summary = self._analyze(event, cap.body, key)
            if summary:
                event.extra["pprof_top"] = summary
            self._growth(event, storage, cap)
        try:
            storage.write(
                stem + ".json", json.dumps(event.to_json(), indent=2, default=str).encode()
            )
        except StorageError as exc:
            raise ActionError(f"heapdump: storing {stem}.json failed: {exc}") from exc
        if summary:
            from pressured.pprof import summary_text  # noqa: PLC0415

            log.info(
                "heapdump: stored %s (%d bytes) from %s; top: %s",
                key,
                size,
                url,
                summary_text(summary),
            )
        else:
            log.info("heapdump: stored %s (%d bytes) from %s", key, size, url)

    def _analyze(self, event: Event, body: bytes, key: str) -> list[dict[str, Any]]:
        try:
            report = run_top(
                body, key, n=self.top_n, summary_k=self.top_n, limits=self.analyze_limits
            )
        except PprofError as exc:
            log.warning("heapdump: stored, but not analysed: %s", exc)
            event.extra["pprof_error"] = str(exc)
            return []
        for warning in report.warnings:
            log.warning("heapdump: %s", warning)
        if report.warnings:
            event.extra["pprof_warnings"] = list(report.warnings)
        return report.summary

    # ------------------------------------------------------------- JVM and Node.js capture

    def run_deadline_s(self) -> float | None:
        if self.runtime == "go":
            return None  # the runner's cap
        # JVM: histogram, heap dump, reading it back, removing it: each within timeout_ms,
        # plus 1 s to start its helper; Node.js: timeout_ms and the sampling window; then the
        # analysis. Never below the runner's cap, which the Go path (auto) was given.
        step = self.timeout_ms / 1000 + 1.0
        return max(RUN_CAP_S, 4 * step + self.sample_seconds + self.analyze_limits.seconds)

    def _choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.opt(key, str, default)
        if value not in choices:
            raise ConfigError(
                f"{self.where}.{key}: must be one of {', '.join(choices)} (got {quote(value)})"
                f"{did_you_mean(value, choices)}"
            )
        return value

    def _runtime_of(self, event: Event, pids: list[int]) -> tuple[str, int]:
        """("go", 0) for the HTTP path, else the runtime and the pid to capture from."""
        if self.runtime == "go":
            return "go", 0
        from pressured.runtimes.detect import NAMES, detect  # noqa: PLC0415

        found = {pid: detect(pid, self.ctx.proc_root, go=False) for pid in pids}
        for pid, runtime in found.items():
            if runtime in ("jvm", "node") and self.runtime in ("auto", runtime):
                return runtime, pid
        if self.runtime == "auto":
            return "go", 0
        message = (
            f"heapdump: {event.key or event.cgroup}: runtime {self.runtime}: "
            + (
                f"none of pids {pids} is {NAMES[self.runtime]}"
                if pids
                else "the event names no pids"
            )
            + "; nothing signalled"
        )
        event.extra["heapdump_error"] = message
        raise ActionError(message)

    def _capture_runtime(self, event: Event, runtime: str, pid: int, key: str) -> None:
        stem = key.removesuffix(".pb.gz")
        what = f"heapdump: {event.key or event.cgroup}: {runtime} pid {pid}"
        if self.ctx.dry_run or event.dry_run:
            log.info("%s (dry run): would capture and store %s.*", what, stem)
            return
        from pressured.runtimes import CaptureOptions, Target  # noqa: PLC0415

        module: Any = importlib.import_module(f"pressured.runtimes.{runtime}")
        target = Target(
            pid,
            self.ctx.proc_root,
            getattr(event, "limit_bytes", None),
            getattr(event, "usage_bytes", None),
        )
        options = CaptureOptions(
            timeout_s=self.timeout_ms / 1000,
            max_bytes=self.max_bytes,
            full_dump=self.full_dump,  # type: ignore[arg-type]
            sample_seconds=self.sample_seconds,
            inspector_port=self.inspector_port,
            top_n=self.top_n,
        )
        try:
            cap = module.capture(target, self._storage(), stem, options)
        except (ActionError, PprofError) as exc:
            event.extra["heapdump_error"] = f"{what}: {exc}"
            raise ActionError(f"{what}: {exc}") from exc
        event.extra["heapdump"] = {"runtime": runtime, **cap.info}
        event.extra.update(cap.extra)
        if runtime == "jvm":
            self._class_growth(event, cap.key, module)
        for note in cap.notes:
            log.warning("%s: %s", what, note)
        if cap.profile is not None and self.analyze:
            summary = self._analyze(event, cap.profile, cap.key)
            if summary:
                event.extra["pprof_top"] = summary
                if runtime == "node":
                    self._window_growth(event, summary)
        try:
            self._storage().write(
                stem + ".json", json.dumps(event.to_json(), indent=2, default=str).encode()
            )
        except StorageError as exc:
            raise ActionError(f"heapdump: storing {stem}.json failed: {exc}") from exc
        shown = event.extra.get("heap_top") or event.extra.get("pprof_top") or []
        skipped = event.extra.get("full_dump_skipped")
        log.info(
            "%s: stored %s (%d bytes)%s; top: %s%s",
            what,
            cap.key,
            cap.size,
            f" and {cap.info['full_dump_key']}" if "full_dump_key" in cap.info else "",
            ", ".join(_top_name(row) for row in shown) or "-",
            f"; full dump skipped: {skipped}" if skipped else "",
        )

    def _class_growth(self, event: Event, histo_key: str, jvm: Any) -> None:
        # On the JVM, growth is by class: this target's previous class histogram (read back
        # from storage) against the one just taken.
        target = event.key or event.cgroup
        previous = self._previous_key.get(target)
        self._previous_key[target] = histo_key
        if previous is None or previous == histo_key or not previous.endswith(".histo.txt"):
            return
        try:
            before = jvm.parse_histogram(
                self._storage().read(previous).decode("utf-8", "replace"), previous
            )
            after = jvm.parse_histogram(
                self._storage().read(histo_key).decode("utf-8", "replace"), histo_key
            )
        except (PprofError, StorageError) as exc:
            log.warning("heapdump: no class growth since %s: %s", previous, exc)
            event.extra["heap_growth_error"] = f"{previous}: {exc}"
            return
        event.extra["heap_growth_top"] = jvm.class_growth(before, after, self.top_n)
        event.extra["heap_growth_since"] = previous

    def _window_growth(self, event: Event, summary: list[dict[str, Any]]) -> None:
        # On Node.js, growth is the capture's own window: V8's sampling heap profiler records
        # only allocations made after sampling starts and drops each sample its object's
        # collection frees, so the profile is what the window added and still holds. Two
        # captures cannot be compared instead: each samples only its own window (the
        # inspector is closed between them), and a steady leak would show no difference.
        event.extra["heap_growth_top"] = [row for row in summary if row.get("flat", 0) > 0]
        event.extra["heap_growth_window_seconds"] = self.sample_seconds

    def _growth(self, event: Event, storage: Any, cap: _Capture) -> None:
        # Heap growth since this target's previous capture, read back from storage (the daemon
        # keeps only its key): event.extra["heap_growth_top"], or ["heap_growth_error"].
        target = event.key or event.cgroup
        previous = self._previous_key.get(target)
        self._previous_key[target] = cap.key
        if previous is None or cap.body is None:
            return
        if previous == cap.key:  # stamped to the millisecond: the earlier one was replaced
            event.extra["heap_growth_error"] = f"{previous}: captured again within a millisecond"
            return
        try:
            before = storage.read(previous)
            grown = heap_growth_top(
                before, previous, cap.body, cap.key, k=self.top_n, limits=self.analyze_limits
            )
        except (PprofError, StorageError) as exc:
            log.warning("heapdump: no heap growth since %s: %s", previous, exc)
            event.extra["heap_growth_error"] = f"{previous}: {exc}"
            return
        event.extra["heap_growth_top"] = grown
        event.extra["heap_growth_since"] = previous


class _FetchFailed(Exception):
    pass


@dataclass(frozen=True)
class _Capture:
    key: str
    url: str
    size: int
    body: bytes | None
    host: str
    port: int
    path: str


# --------------------------------------------------------------------------------------------


def _event_pids(event: Event) -> list[int]:
    raw = event.extra.get("pids") or []
    pids = [p for p in raw if isinstance(p, int) and not isinstance(p, bool) and p > 0]
    pid = getattr(event, "pid", None)
    if not pids and isinstance(pid, int) and pid > 0:
        pids = [pid]
    return pids


def _url(host: str, port: int, path: str) -> str:
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def _goroutine_path(heap_path: str) -> str:
    # Beside the heap endpoint: /debug/pprof/heap?gc=1 -> /debug/pprof/goroutine?debug=2
    directory = heap_path.split("?", 1)[0].rsplit("/", 1)[0]
    return f"{directory}/{GOROUTINE_PATH}"


def _top_name(row: Mapping[str, Any]) -> str:
    return str(row.get("name") or row.get("function") or "?")


def _key_part(text: str) -> str:
    part = _UNSAFE_KEY_CHARS.sub("_", text)
    return "_" if part in ("", ".", "..") else part
