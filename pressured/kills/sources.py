"""Opening the configured kernel kill sources; reading them through the KillSource protocol."""

from __future__ import annotations

import logging
import time

from pressured.kills.base import Clock, KillSource
from pressured.kills.config import KillsConfig
from pressured.kills.readers.bcc import BccProbe
from pressured.kills.readers.kmsg import KmsgReader, available
from pressured.kills.readers.tracepoint import TracepointUnavailable, open_mark_victim
from pressured.model import SOURCE_BCC, SOURCE_COUNTERS, SOURCE_KMSG, SOURCE_TRACEPOINT, KillRecord

log = logging.getLogger("pressured.kills.sources")


class KillSources:
    """Opens the configured kernel kill sources and says which are active and why not.

    Nothing here is fatal: a source the machine lacks (no /dev/kmsg access, no tracefs, no
    bcc) is reported inactive with the reason and the daemon goes on with the others. The
    open sources are read by name (the name their records carry).
    """

    def __init__(
        self,
        config: KillsConfig,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        proc: str = "/proc",
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self._proc = proc
        self._open: dict[str, KillSource] = {}
        self._status: dict[str, tuple[bool, str]] = {
            SOURCE_COUNTERS: (
                True,
                "event-driven through the Watcher (memory.events.local / memory.oom_control)",
            ),
        }

    def start(self, since_usec: int | None = None) -> dict[str, tuple[bool, str]]:
        """Open every enabled source. ``since_usec`` (kmsg's clock): kmsg records from then
        on are read back from the kernel's buffer, so a kill while the daemon was starting
        up is not lost; None starts at the newest record."""
        cfg = self.config
        if not cfg.kmsg_enabled:
            self._status[SOURCE_KMSG] = (False, "disabled in config (kills.kmsg.enabled)")
        else:
            ok, why = available(cfg.kmsg_path)
            if not ok:
                self._status[SOURCE_KMSG] = (False, why)
            else:
                try:
                    reader = KmsgReader(
                        cfg.kmsg_path,
                        replay=cfg.kmsg_replay,
                        clock=self._clock,
                        wall_clock=self._wall,
                        since_usec=since_usec,
                    )
                except OSError as exc:
                    self._status[SOURCE_KMSG] = (False, f"{cfg.kmsg_path}: {exc.strerror}")
                else:
                    self.add(reader)

        if cfg.bcc_enabled:
            probe = BccProbe(
                True,
                tracefs=cfg.tracefs,
                clock=self._clock,
                wall_clock=self._wall,
                proc=self._proc,
            )
            probe.start()
            self.add(probe)
        else:
            self._status[SOURCE_BCC] = (False, "disabled in config (kills.bcc.enabled)")

        if not cfg.tracepoint_enabled:
            self._status[SOURCE_TRACEPOINT] = (
                False,
                "disabled in config (kills.tracepoint.enabled)",
            )
        elif SOURCE_BCC in self._open:
            self._status[SOURCE_TRACEPOINT] = (
                False,
                "the bcc probe is active and reports oom:mark_victim itself",
            )
        else:
            try:
                tracepoint = open_mark_victim(
                    cfg.tracefs, clock=self._clock, wall_clock=self._wall, proc=self._proc
                )
            except TracepointUnavailable as exc:
                self._status[SOURCE_TRACEPOINT] = (False, str(exc))
            else:
                self.add(tracepoint)
        for name, (active, why) in self._status.items():
            log.info("kill source %s: %s (%s)", name, "active" if active else "inactive", why)
        return self.status()

    def add(self, source: KillSource) -> bool:
        """Take an opened source. One that says it is inactive is closed at once; only its
        status (why not) is kept."""
        active, why = source.status
        self._status[source.name] = (active, why)
        if not active:
            source.close()
            return False
        self._open[source.name] = source
        return True

    def status(self) -> dict[str, tuple[bool, str]]:
        """{source: (active, why)} as found at start."""
        return dict(self._status)

    def expected(self, key: str | None) -> frozenset[str]:
        """Sources that see every kill of a watched target (for Reconciler(expected=...))."""
        names = {n for n, (on, _) in self._status.items() if on and n != SOURCE_COUNTERS}
        if key is not None:
            names.add(SOURCE_COUNTERS)
        return frozenset(names)

    def fds(self) -> list[tuple[int, str]]:
        """(fd, source) pairs to register for EPOLLIN."""
        return [(fd, name) for name, source in self._open.items() for fd in source.fds()]

    def polled(self) -> list[str]:
        """Sources that no fd wakes the loop for: read them on every wake-up, and at least
        every ``poll_interval()``."""
        return [name for name, source in self._open.items() if source.poll_interval is not None]

    def poll_interval(self) -> float | None:
        """The shortest poll interval of the ``polled()`` sources; None when every open source
        wakes epoll itself."""
        intervals = [s.poll_interval for s in self._open.values() if s.poll_interval is not None]
        return min(intervals) if intervals else None

    def read(self, source: str | None = None) -> list[KillRecord]:
        """Drain one source (or all). Never blocks."""
        out: list[KillRecord] = []
        for name, src in self._open.items():
            if source in (None, name):
                out += src.read()
        return out

    def open_names(self) -> list[str]:
        """The sources open now."""
        return list(self._open)

    def problems(self, source: str) -> dict[str, int]:
        """An open source's problem counts by kind (KillSource.problems); {} when not open."""
        src = self._open.get(source)
        return {} if src is None else src.problems

    def close(self) -> None:
        for source in self._open.values():
            source.close()
        self._open = {}
