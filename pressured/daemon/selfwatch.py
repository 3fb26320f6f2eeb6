"""The watcher watches itself: its own memory against its own cgroup's limit, its RSS, the
events its actions dropped or could not deliver, and how late its loop woke.

Agents of this kind are known to be OOM-killed themselves (coroot-node-agent#195), and a
watcher killed by the OOM killer says nothing about the kills it missed. So:

- ``/healthz`` answers 200 ``degraded: <why>`` (not 503: a liveness probe must not restart a
  daemon that still works) while its working set is at or above ``metrics.self_degraded_percent``
  of its own limit, or some action dropped or failed an event in the last ``DROP_HOLD_S``
  seconds;
- at or above ``metrics.self_shed_percent`` it sheds optional work: the actions whose class says
  ``optional`` (heap captures, Lua) are skipped, each skip counted as a drop with reason
  ``shed``, until it is SHED_HYSTERESIS points below that level again.

The limit is the smallest of its own cgroup's and its ancestors' (a container's limit is often
set on a parent); the working set is its own cgroup's (usage less inactive file pages, what
the kernel cannot simply reclaim). Its cgroup is found from /proc/self/cgroup; in node mode,
where the container's cgroup namespace names it "/" while the host's tree is mounted, the
daemon adopts the target of its own pod (kubernetes.pod_uid) whose cgroup holds its pid
(``adopt``). Without a memory cgroup of its own (limit unknown) only its RSS is reported and
nothing is shed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pressured.errors import CgroupError
from pressured.kernel import cgroupfs, procfs

log = logging.getLogger("pressured.daemon")

DROP_HOLD_S: Final = 300.0
"""How long a dropped or failed event keeps /healthz degraded."""
READ_EVERY_S: Final = 1.0
"""The own cgroup is read at most this often (every loop turn would be a syscall storm under a
burst of wake-ups); shedding also follows at once a reading above the level."""
SHED_HYSTERESIS: Final = 5.0
"""Shedding ends only this many percentage points below where it began: a working set that
hovers at the level does not toggle it, and its log lines, every second."""
_MAX_DROPS: Final = 1024


@dataclass(frozen=True)
class SelfReading:
    """One reading of the daemon's own memory."""

    rss_bytes: int | None
    working_set_bytes: int | None
    usage_bytes: int | None
    limit_bytes: int | None

    @property
    def percent(self) -> float | None:
        if not self.limit_bytes or self.working_set_bytes is None:
            return None
        return 100.0 * self.working_set_bytes / self.limit_bytes


def own_cgroup(proc: str = procfs.PROC, root: str = "/sys/fs/cgroup") -> list[cgroupfs.CgroupRef]:
    """The daemon's own memory cgroup and its ancestors up to the mount (own first), as
    /proc/self/cgroup names it under ``root``; [] when there is none to read."""
    try:
        layout = cgroupfs.detect_layout(root)
        cgroups = procfs.read_cgroups("self", proc)
    except (CgroupError, OSError):
        return []
    if layout.v2_memory:
        mount, rel = layout.v2, cgroups.unified
    else:
        mount, rel = layout.v1_memory, cgroups.v1_memory
    if mount is None or rel is None:
        return []
    refs: list[cgroupfs.CgroupRef] = []
    path = os.path.normpath(os.path.join(mount, rel.lstrip("/")))
    while True:
        try:
            refs.append(cgroupfs.resolve(path, layout))
        except CgroupError:
            break  # a cgroup namespace may name a path this mount does not have
        if path == mount or len(path) <= len(mount):
            break
        path = os.path.dirname(path)
    return refs


class SelfWatch:
    """The daemon's view of itself; ``observe`` is called from its loop, the rest from any
    thread (actions report drops from their lanes, /healthz asks from the HTTP thread)."""

    def __init__(
        self,
        *,
        degraded_percent: float,
        shed_percent: float,
        clock: Callable[[], float],
        proc: str = procfs.PROC,
        cgroups: list[cgroupfs.CgroupRef] | None = None,
        hold_s: float = DROP_HOLD_S,
    ) -> None:
        self.degraded_percent = degraded_percent
        self.shed_percent = shed_percent
        self._clock = clock
        self._proc = proc
        self._cgroups = own_cgroup(proc) if cgroups is None else cgroups
        self._hold_s = hold_s
        self._lock = threading.Lock()
        self._drops: deque[tuple[float, str, str]] = deque(maxlen=_MAX_DROPS)
        self._last_read: float | None = None
        self.reading = SelfReading(None, None, None, None)
        self.shedding = False
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0

    @property
    def cgroup(self) -> str | None:
        return self._cgroups[0].path if self._cgroups else None

    def adopt(self, ref: cgroupfs.CgroupRef) -> None:
        """Read ``ref`` (the daemon's own container, as a source found it) and its ancestors
        up to its hierarchy's mount from now on."""
        mount = ref.path[: len(ref.path) - len(ref.relpath.rstrip("/"))] or "/"
        refs = [ref]
        path = os.path.dirname(ref.path.rstrip("/"))
        while len(path) > len(mount.rstrip("/")):
            refs.append(cgroupfs.CgroupRef(path, ref.version, "/"))
            path = os.path.dirname(path)
        self._cgroups = refs
        self._last_read = None

    # ------------------------------------------------------------------ readings
    def observe(self, now: float, *, force: bool = False) -> SelfReading | None:
        """Read own memory when READ_EVERY_S passed since the last reading (or ``force``);
        the new reading, else None."""
        if not force and self._last_read is not None and now - self._last_read < READ_EVERY_S:
            return None
        self._last_read = now
        self.reading = self._read()
        pct = self.reading.percent
        level = self.shed_percent - (SHED_HYSTERESIS if self.shedding else 0.0)
        shed = pct is not None and pct >= level
        if shed != self.shedding:
            if shed:
                log.warning(
                    "own memory at %.1f%% of its limit (%d of %d bytes): shedding optional "
                    "work (heap captures, Lua) until below %.1f%%",
                    pct,
                    self.reading.working_set_bytes,
                    self.reading.limit_bytes,
                    self.shed_percent,
                )
            else:
                log.info(
                    "own memory below %.1f%% of its limit again: optional work resumes",
                    level,
                )
            self.shedding = shed
        return self.reading

    def _read(self) -> SelfReading:
        rss = procfs.rss_bytes("self", self._proc)
        if not self._cgroups:
            return SelfReading(rss, None, None, None)
        own = self._cgroups[0]
        try:
            mem = cgroupfs.read_memory(own)
        except CgroupError as exc:
            log.debug("own cgroup %s: %s", own.path, exc)
            return SelfReading(rss, None, None, None)
        limits = [mem.limit_bytes]
        for ref in self._cgroups[1:]:
            try:
                limits.append(cgroupfs.read_limit(ref))
            except CgroupError:
                break
        known = [x for x in limits if x]
        return SelfReading(rss, mem.working_set_bytes, mem.usage_bytes, min(known, default=None))

    def wake_lag(self, lag_s: float) -> None:
        """How late the loop woke past the deadline it slept towards."""
        self.last_lag_s = lag_s
        self.max_lag_s = max(self.max_lag_s, lag_s)

    # ------------------------------------------------------------------ drops
    def dropped(self, action: str, reason: str) -> None:
        """An event an action did not run (reason as the runner counts it, or "failed")."""
        with self._lock:
            self._drops.append((self._clock(), action, reason))

    def recent_drops(self, now: float | None = None) -> dict[str, int]:
        """ "action: reason" -> count, over the last ``hold_s`` seconds."""
        now = self._clock() if now is None else now
        out: dict[str, int] = {}
        with self._lock:
            while self._drops and now - self._drops[0][0] > self._hold_s:
                self._drops.popleft()
            for _t, action, reason in self._drops:
                key = f"{action}: {reason}"
                out[key] = out.get(key, 0) + 1
        return out

    # ------------------------------------------------------------------ verdict
    def degraded(self, now: float | None = None) -> list[str]:
        """Why the daemon is degraded, one reason a line; [] when it is not."""
        why: list[str] = []
        r = self.reading
        pct = r.percent
        if pct is not None and pct >= self.degraded_percent:
            why.append(
                f"own memory at {pct:.1f}% of its limit ({_mib(r.working_set_bytes)} of "
                f"{_mib(r.limit_bytes)}, degraded from {self.degraded_percent:g}%)"
                + (", shedding heap captures and Lua" if self.shedding else "")
            )
        drops = self.recent_drops(now)
        if drops:
            total = sum(drops.values())
            detail = ", ".join(f"{k} x{n}" for k, n in sorted(drops.items()))
            why.append(
                f"{total} event(s) dropped or not delivered in the last {self._hold_s:g}s "
                f"({detail})"
            )
        return why

    def snapshot(self) -> dict[str, Any]:
        r = self.reading
        return {
            "cgroup": self.cgroup,
            "rss_bytes": r.rss_bytes,
            "working_set_bytes": r.working_set_bytes,
            "limit_bytes": r.limit_bytes,
            "percent": None if r.percent is None else round(r.percent, 2),
            "shedding": self.shedding,
            "wakeup_lag_seconds": round(self.last_lag_s, 4),
            "wakeup_lag_max_seconds": round(self.max_lag_s, 4),
            "drops": self.recent_drops(),
            "degraded": self.degraded(),
        }


def _mib(v: int | None) -> str:
    return "?" if v is None else f"{v / 1048576:.1f}MiB"
