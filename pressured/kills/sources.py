"""Opening the configured kernel kill sources."""

from __future__ import annotations

import logging
import time

from pressured.kills.base import Clock
from pressured.kills.config import KillsConfig
from pressured.kills.readers import kmsg as kmsg_mod
from pressured.kills.readers import tracepoint as tp_mod
from pressured.kills.readers.bcc import BccProbe
from pressured.model import (
    SOURCE_BCC,
    SOURCE_COUNTERS,
    SOURCE_KMSG,
    SOURCE_TRACEPOINT,
    KillRecord,
)

log = logging.getLogger("pressured.kills.sources")


class KillSources:
    """Opens the configured kernel kill sources and says which are active and why not.

    Nothing here is fatal: a source the machine lacks (no /dev/kmsg access, no tracefs, no
    bcc) is reported inactive with the reason and the daemon goes on with the others.
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
        self.kmsg: kmsg_mod.KmsgReader | None = None
        self.tracepoint: tp_mod.MarkVictimSource | None = None
        self.bcc: BccProbe | None = None
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
            ok, why = kmsg_mod.available(cfg.kmsg_path)
            if ok:
                try:
                    self.kmsg = kmsg_mod.KmsgReader(
                        cfg.kmsg_path,
                        replay=cfg.kmsg_replay,
                        clock=self._clock,
                        wall_clock=self._wall,
                        since_usec=since_usec,
                    )
                    why = f"reading {cfg.kmsg_path}" + (" (replaying)" if cfg.kmsg_replay else "")
                except OSError as exc:
                    ok, why = False, f"{cfg.kmsg_path}: {exc.strerror}"
            self._status[SOURCE_KMSG] = (ok, why)

        if cfg.bcc_enabled:
            self.bcc = BccProbe(
                True,
                tracefs=cfg.tracefs,
                clock=self._clock,
                wall_clock=self._wall,
                proc=self._proc,
            )
            self.bcc.start()
            self._status[SOURCE_BCC] = (self.bcc.active, self.bcc.reason)
            if not self.bcc.active:
                self.bcc.close()
                self.bcc = None
        else:
            self._status[SOURCE_BCC] = (False, "disabled in config (kills.bcc.enabled)")

        if not cfg.tracepoint_enabled:
            self._status[SOURCE_TRACEPOINT] = (
                False,
                "disabled in config (kills.tracepoint.enabled)",
            )
        elif self.bcc is not None:
            self._status[SOURCE_TRACEPOINT] = (
                False,
                "the bcc probe is active and reports oom:mark_victim itself",
            )
        else:
            try:
                self.tracepoint = tp_mod.open_mark_victim(
                    cfg.tracefs, clock=self._clock, wall_clock=self._wall, proc=self._proc
                )
                self._status[SOURCE_TRACEPOINT] = (
                    True,
                    f"oom:mark_victim via perf_event_open on {len(self.tracepoint.fds())} CPUs "
                    f"({self.tracepoint.tracefs})",
                )
            except tp_mod.TracepointUnavailable as exc:
                self._status[SOURCE_TRACEPOINT] = (False, str(exc))
        for name, (active, why) in self._status.items():
            log.info("kill source %s: %s (%s)", name, "active" if active else "inactive", why)
        return self.status()

    def status(self) -> dict[str, tuple[bool, str]]:
        return dict(self._status)

    def expected(self, key: str | None) -> frozenset[str]:
        """Sources that see every kill of a watched target (for Reconciler(expected=...))."""
        names = {n for n, (on, _) in self._status.items() if on and n != SOURCE_COUNTERS}
        if key is not None:
            names.add(SOURCE_COUNTERS)
        return frozenset(names)

    def fds(self) -> list[tuple[int, str]]:
        """(fd, source) pairs to register for EPOLLIN."""
        out: list[tuple[int, str]] = []
        if self.kmsg is not None:
            out.append((self.kmsg.fd, SOURCE_KMSG))
        if self.tracepoint is not None:
            out += [(fd, SOURCE_TRACEPOINT) for fd in self.tracepoint.fds()]
        if self.bcc is not None:
            out += [(fd, SOURCE_BCC) for fd in self.bcc.fds()]
        return out

    def poll_interval(self) -> float | None:
        """Seconds between reads for a source without a pollable fd (a bcc without reader
        fds); None when every active source wakes epoll itself."""
        if self.bcc is not None and not self.bcc.fds():
            return 0.5
        return None

    def read(self, source: str | None = None) -> list[KillRecord]:
        """Drain one source (or all). Never blocks."""
        out: list[KillRecord] = []
        if self.kmsg is not None and source in (None, SOURCE_KMSG):
            out += self.kmsg.read_records()
        if self.tracepoint is not None and source in (None, SOURCE_TRACEPOINT):
            out += self.tracepoint.drain()
        if self.bcc is not None and source in (None, SOURCE_BCC):
            out += self.bcc.poll()
        return out

    def close(self) -> None:
        for src in (self.kmsg, self.tracepoint, self.bcc):
            if src is not None:
                src.close()
        self.kmsg = self.tracepoint = self.bcc = None
