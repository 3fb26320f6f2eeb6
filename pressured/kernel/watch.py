"""The Watcher: one epoll set over every kernel notification pressured can arm.

For each target it arms what the kernel offers (Documentation/admin-guide/cgroup-v2.rst,
cgroup-v1/memory.rst, accounting/psi.rst):

- cgroup v1: eventfd usage thresholds at the given byte levels (several per cgroup), an
  eventfd on memory.oom_control, one on memory.pressure_level; the eventfds are also signalled
  when the cgroup is removed.
- cgroup v2: memory.events, memory.events.local and cgroup.events (EPOLLPRI, re-read after
  each wake, which also re-arms kernfs' notification).
- PSI: one trigger per pressure file (v2 cgroup, the hybrid v2 mirror, or /proc/pressure).
- inotify IN_DELETE_SELF on the cgroup directory: removal sends no memory.events notification.

Where the kernel has no notifier, the Watcher reads adaptively (one batched native call per
sweep): v2 usage always, v1 usage while it sits above the lowest threshold (the kernel only
says when usage crosses a level; working set and growth need reads in between), and the
machine's /proc/meminfo. Below its lowest threshold a v1 target is still read every
``v1_cold_interval_s`` (all such reads in one sweep), sooner when it grows: kernel memory
(pipe buffers, sockets, slab) is charged to memory.usage_in_bytes without the usage-threshold
check, which runs on page charges only (mm/memcontrol-v1.c memcg1_check_events), so a kernel
memory leak crosses the levels without an eventfd (measured here: a pipe-buffer leak went
past warn and critical to the kill without one). The interval shrinks as headroom shrinks
and as growth speeds up, between ``min_interval_s`` and ``max_interval_s``.

``wait()`` returns Wakeups naming the target and the cause:
threshold, psi, events, oom, gone, read; and "fd" for a caller's own fd (``watch_fd``: the
daemon's signal pipe, kmsg, perf rings), so everything waits in the same epoll_wait.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pressured import native
from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import parse
from pressured.kernel.cgroupfs import CgroupRef, read_limit, read_usage
from pressured.kernel.procfs import MachineMemory

Cause = Literal["threshold", "psi", "events", "oom", "gone", "read", "fd"]
FdKind = Literal[
    "v1_threshold",
    "v1_oom",
    "v1_pressure",
    "psi",
    "events",
    "events_local",
    "cgroup_events",
    "inotify",
    "external",
]


@dataclass(frozen=True)
class Wakeup:
    key: str
    cause: Cause
    time: float
    usage_bytes: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class PsiSpec:
    kind: str = "some"
    stall_us: int = 150_000
    window_us: int = 1_000_000


@dataclass
class WatchOptions:
    min_interval_s: float = 0.05
    max_interval_s: float = 1.0
    psi: PsiSpec | None = field(default_factory=PsiSpec)
    v1_pressure_level: str | None = "medium"
    change_fraction: float = 0.01
    """A cold adaptive read is reported when usage moved by this fraction of the limit."""
    v1_cold_interval_s: float = 2.0
    """Reads of a v1 target below its lowest threshold (kernel memory crosses no eventfd)."""
    read_always: bool = False
    """Read v1 usage adaptively even below the thresholds: a rule expression has no kernel
    notifier, so only reads can see it match (and the growth it may depend on)."""


@dataclass
class _Fd:
    fd: int
    kind: FdKind
    key: str
    path: str
    level: int | None = None
    last: bytes = b""


@dataclass
class _Target:
    key: str
    ref: CgroupRef | None  # None: the machine
    levels: list[int]
    limit: int | None
    fds: dict[int, _Fd] = field(default_factory=dict)  # token -> _Fd
    usage_fd: int = -1
    usage_path: str = ""
    adaptive_always: bool = False
    cold_reads: bool = False
    """v1 with thresholds: read below the lowest one too (v1_cold_interval_s)."""
    last_usage: int | None = None
    last_reported: int | None = None
    last_read: float = 0.0
    growth: float = 0.0
    next_due: float = 0.0
    inotify_wd: int = -1
    notes: list[str] = field(default_factory=list)

    @property
    def hot(self) -> bool:
        return (
            bool(self.levels)
            and self.last_usage is not None
            and self.last_usage >= min(self.levels)
        )

    @property
    def adaptive(self) -> bool:
        return self.adaptive_always or self.hot or self.cold_reads


@dataclass(frozen=True)
class ArmReport:
    """What was armed for a target, and what could not be (with why)."""

    key: str
    armed: tuple[str, ...]
    missing: tuple[str, ...]
    adaptive: bool


class Watcher:
    def __init__(
        self,
        options: WatchOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        proc: str = "/proc",
    ) -> None:
        self.options = options or WatchOptions()
        self._clock = clock
        self._proc = proc
        self._epoll = native.Epoll()
        self._inotify = native.Inotify()
        self._targets: dict[str, _Target] = {}
        self._tokens: dict[int, _Fd] = {}
        self._wds: dict[int, str] = {}
        self._next_token = 1
        self._reader = native.BatchReader(64)
        self._inotify_token = self._register(
            _Fd(self._inotify.fd, "inotify", "", "inotify"), native.EPOLLIN
        )
        self.psi_window_notes: list[str] = []

    # ------------------------------------------------------------------ registry
    def _register(self, entry: _Fd, events: int) -> int:
        token = self._next_token
        self._next_token += 1
        try:
            self._epoll.add(entry.fd, events, token)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
            # epoll refuses regular files: a "cgroup" made of plain files (a copy, a fake
            # tree) or a file put where the kernel's should be
            raise CgroupFileError(
                entry.path, "not a kernel file that can be waited on (a regular file?)"
            ) from exc
        self._tokens[token] = entry
        return token

    def _release(self, token: int) -> None:
        entry = self._tokens.pop(token, None)
        if entry is None:
            return
        self._epoll.remove(entry.fd)
        native.close(entry.fd)

    def watch_fd(self, fd: int, name: str, events: int = native.EPOLLIN) -> int:
        """Wake with Wakeup(name, "fd") when ``fd`` is readable. The caller keeps the fd."""
        return self._register(_Fd(fd, "external", name, name), events)

    def unwatch_fd(self, token: int) -> None:
        entry = self._tokens.pop(token, None)
        if entry is not None:
            self._epoll.remove(entry.fd)

    def keys(self) -> list[str]:
        return list(self._targets)

    def __contains__(self, key: str) -> bool:
        return key in self._targets

    def open_fds(self) -> int:
        """File descriptors held for targets (epoll and inotify excluded)."""
        return sum(len(t.fds) + (t.usage_fd >= 0) for t in self._targets.values())

    # ------------------------------------------------------------------ targets
    def add_cgroup(self, key: str, ref: CgroupRef, levels: Sequence[int] = ()) -> ArmReport:
        """Arm every notifier for ``ref``. Raises CgroupError when the cgroup is not usable."""
        if key in self._targets:
            self.remove(key)
        if not os.path.isdir(ref.path):
            raise CgroupError(f"{ref.path}: no such cgroup directory")
        try:
            limit = read_limit(ref)
            usage = read_usage(ref)
        except CgroupFileError as exc:
            raise CgroupError(str(exc)) from exc
        target = _Target(key, ref, sorted(set(levels)), limit)
        target.last_usage = usage
        target.last_reported = usage
        target.last_read = self._clock()
        self._targets[key] = target
        armed: list[str] = []
        missing: list[str] = []
        try:
            self._arm_cgroup(target, armed, missing)
        except BaseException:
            self.remove(key)
            raise
        target.notes = missing
        self._schedule(target, self._clock())
        return ArmReport(key, tuple(armed), tuple(missing), target.adaptive_always)

    def _arm_cgroup(self, t: _Target, armed: list[str], missing: list[str]) -> None:
        ref = t.ref
        assert ref is not None
        t.usage_path = ref.usage_file
        t.usage_fd = native.open_read(ref.usage_file)
        if ref.version == 1:
            self._arm_v1_levels(t, armed, missing)
            try:
                fd = native.register_v1_event(ref.path, "memory.oom_control")
                self._add_fd(t, _Fd(fd, "v1_oom", t.key, ref.file("memory.oom_control")))
                armed.append("oom_control")
            except OSError as exc:
                missing.append(f"oom_control: {exc.strerror}")
            level = self.options.v1_pressure_level
            if level:
                try:
                    fd = native.register_v1_event(ref.path, "memory.pressure_level", level)
                    self._add_fd(
                        t, _Fd(fd, "v1_pressure", t.key, ref.file("memory.pressure_level"))
                    )
                    armed.append(f"pressure_level {level}")
                except OSError as exc:
                    missing.append(f"pressure_level: {exc.strerror}")
        else:
            t.adaptive_always = t.limit is not None
            for name, kind in (
                ("memory.events", "events"),
                ("memory.events.local", "events_local"),
                ("cgroup.events", "cgroup_events"),
            ):
                path = ref.file(name)
                if not os.path.exists(path):
                    missing.append(f"{name}: missing")
                    continue
                fd = native.open_read(path)
                entry = _Fd(fd, kind, t.key, path)  # type: ignore[arg-type]
                entry.last = native.pread(fd, 4096, path)
                self._add_fd(t, entry, native.EPOLLPRI)
                armed.append(name)
        psi_path = ref.psi_file("memory")
        if psi_path is None:
            missing.append("psi: no memory.pressure for this cgroup")
        else:
            self._arm_psi(t, psi_path, armed, missing)
        try:
            t.inotify_wd = self._inotify.add(ref.path, native.IN_DELETE_SELF | native.IN_ONLYDIR)
            self._wds[t.inotify_wd] = t.key
            armed.append("inotify")
        except OSError as exc:
            missing.append(f"inotify: {exc.strerror}")

    def _arm_v1_levels(self, t: _Target, armed: list[str], missing: list[str]) -> None:
        assert t.ref is not None
        if self.options.read_always and t.limit is not None:
            t.adaptive_always = True
        for level in t.levels:
            try:
                fd = native.register_v1_event(t.ref.path, "memory.usage_in_bytes", str(level))
            except OSError as exc:
                missing.append(f"threshold {level}: {exc.strerror}")
                continue
            self._add_fd(t, _Fd(fd, "v1_threshold", t.key, t.ref.usage_file, level))
            armed.append(f"threshold {level}")
        t.cold_reads = bool(t.levels) and t.limit is not None
        if not t.levels:
            return
        if not any(e.kind == "v1_threshold" for e in t.fds.values()):
            t.adaptive_always = True  # the kernel refused: fall back to reading

    def _arm_psi(self, t: _Target, path: str, armed: list[str], missing: list[str]) -> None:
        spec = self.options.psi
        if spec is None:
            return
        try:
            trig = native.arm_psi_trigger(path, spec.kind, spec.stall_us, spec.window_us)
        except OSError as exc:
            missing.append(f"psi trigger on {path}: {exc.strerror}")
            return
        if trig.rounded:
            note = (
                f"PSI window {spec.window_us} us rounded up to {trig.window_us} us "
                "(no CAP_SYS_RESOURCE: the kernel takes only multiples of 2 s)"
            )
            if note not in self.psi_window_notes:
                self.psi_window_notes.append(note)
        self._add_fd(t, _Fd(trig.fd, "psi", t.key, path), native.EPOLLPRI)
        armed.append(f"psi {spec.kind} {spec.stall_us}/{trig.window_us}")

    def add_machine(
        self, key: str, levels: Sequence[int] = (), psi_path: str | None = None
    ) -> ArmReport:
        """The machine itself: /proc/meminfo read adaptively, /proc/pressure/memory trigger."""
        if key in self._targets:
            self.remove(key)
        path = os.path.join(self._proc, "meminfo")
        fd = native.open_read(path)
        target = _Target(key, None, sorted(set(levels)), None, usage_fd=fd, usage_path=path)
        target.adaptive_always = True
        self._targets[key] = target
        armed: list[str] = ["meminfo"]
        missing: list[str] = []
        try:
            total, used = self._parse_meminfo(native.pread(fd, 8192, path), path)
        except BaseException:
            self.remove(key)
            raise
        target.limit = total
        target.last_usage = target.last_reported = used
        target.last_read = self._clock()
        psi = psi_path or os.path.join(self._proc, "pressure", "memory")
        if os.path.exists(psi):
            self._arm_psi(target, psi, armed, missing)
        else:
            missing.append(f"psi: {psi} missing (kernel without PSI or psi=0)")
        target.notes = missing
        target.next_due = self._clock() + self._interval(target)
        return ArmReport(key, tuple(armed), tuple(missing), True)

    @staticmethod
    def _parse_meminfo(data: bytes, path: str) -> tuple[int, int]:
        machine = MachineMemory.from_meminfo(data.decode("ascii", "replace"), path)
        return machine.total_bytes, machine.working_set_bytes

    def _add_fd(self, t: _Target, entry: _Fd, events: int = native.EPOLLIN) -> None:
        try:
            token = self._register(entry, events)
        except BaseException:
            native.close(entry.fd)
            raise
        t.fds[token] = entry

    def set_levels(self, key: str, levels: Sequence[int]) -> None:
        """Move the usage thresholds of a target (v1: re-register the eventfds)."""
        t = self._targets[key]
        new = sorted(set(levels))
        if new == t.levels:
            return
        t.levels = new
        if t.ref is not None and t.ref.version == 1:
            for token in [tok for tok, e in t.fds.items() if e.kind == "v1_threshold"]:
                t.fds.pop(token)
                self._release(token)
            self._arm_v1_levels(t, [], t.notes)

    def set_limit(self, key: str, limit: int | None) -> None:
        if key in self._targets:
            self._targets[key].limit = limit

    def remove(self, key: str) -> None:
        """Stop watching ``key`` and release every fd held for it."""
        t = self._targets.pop(key, None)
        if t is None:
            return
        for token in list(t.fds):
            self._release(token)
        t.fds.clear()
        if t.usage_fd >= 0:
            native.close(t.usage_fd)
            t.usage_fd = -1
        if t.inotify_wd >= 0:
            self._wds.pop(t.inotify_wd, None)
            # the directory may be gone already, and the kernel dropped the watch itself
            with contextlib.suppress(OSError):
                self._inotify.remove(t.inotify_wd)
            t.inotify_wd = -1

    def notes(self, key: str) -> list[str]:
        t = self._targets.get(key)
        return list(t.notes) if t else []

    def close(self) -> None:
        for key in list(self._targets):
            self.remove(key)
        self._release(self._inotify_token)
        self._inotify.fd = -1
        self._epoll.close()

    # ------------------------------------------------------------------ waiting
    def _interval(self, t: _Target) -> float:
        lo, hi = self.options.min_interval_s, self.options.max_interval_s
        if t.cold_reads and not t.hot and not t.adaptive_always:
            return self._cold_interval(t)
        if not t.adaptive or t.limit is None or t.last_usage is None:
            return hi
        usage, limit = t.last_usage, t.limit
        headroom_frac = max(0.0, (limit - usage) / limit) if limit > 0 else 0.0
        # full interval with half the limit free or more, shrinking linearly to the floor at 0
        interval = hi * min(1.0, headroom_frac / 0.5)
        if t.growth > 0:
            above = [lv for lv in t.levels if lv > usage]
            goal = above[0] if above else limit
            # at least four reads before the next level (or the limit) at the current growth
            interval = min(interval, max(0.0, goal - usage) / t.growth / 4.0)
        return min(hi, max(lo, interval))

    def _cold_interval(self, t: _Target) -> float:
        """Until the next read of a v1 target below its lowest threshold: the cold interval,
        shortened by growth to four reads before the lowest level."""
        cold = max(self.options.v1_cold_interval_s, self.options.max_interval_s)
        if t.growth > 0 and t.levels and t.last_usage is not None:
            before = max(0.0, min(t.levels) - t.last_usage) / t.growth / 4.0
            if before < cold:
                return max(self.options.min_interval_s, before)
        return cold

    def next_deadline(self) -> float | None:
        due = [t.next_due for t in self._targets.values() if t.adaptive and t.usage_fd >= 0]
        return min(due) if due else None

    def wait(self, timeout_s: float | None) -> list[Wakeup]:
        """Sleep until the kernel says something or an adaptive read is due."""
        now = self._clock()
        deadline = self.next_deadline()
        wait_s = timeout_s
        if deadline is not None:
            until = max(0.0, deadline - now)
            wait_s = until if wait_s is None else min(wait_s, until)
        timeout_ms = -1 if wait_s is None else math.ceil(wait_s * 1000)
        ready = self._epoll.wait(timeout_ms)
        out: list[Wakeup] = []
        for token, mask in ready:
            entry = self._tokens.get(token)
            if entry is not None:
                out.extend(self._on_ready(token, entry, mask))
        out.extend(self._sweep())
        gone = {w.key for w in out if w.cause == "gone"}
        for key in gone:
            self.remove(key)
        return out

    def _gone(self, key: str, why: str) -> Wakeup:
        return Wakeup(key, "gone", self._clock(), detail=why)

    def _on_ready(self, token: int, entry: _Fd, mask: int) -> list[Wakeup]:
        now = self._clock()
        if entry.kind == "inotify":
            return self._on_inotify()
        if entry.kind == "external":
            return [Wakeup(entry.key, "fd", now)]
        t = self._targets.get(entry.key)
        if t is None:
            return []
        if entry.kind == "psi":
            if mask & native.EPOLLERR:
                # psi.rst: POLLERR means the source is gone (cgroup removed or pressure off)
                t.fds.pop(token, None)
                self._release(token)
                if t.ref is not None and not os.path.isdir(t.ref.path):
                    return [self._gone(t.key, f"{entry.path}: cgroup removed")]
                t.notes.append(f"psi: {entry.path} stopped reporting")
                return []
            return [Wakeup(t.key, "psi", now, detail=entry.path)]
        if entry.kind in ("v1_threshold", "v1_oom", "v1_pressure"):
            with contextlib.suppress(OSError):
                native.drain_eventfd(entry.fd)
            assert t.ref is not None
            if not os.path.isdir(t.ref.path):  # eventfds are signalled on removal too
                return [self._gone(t.key, f"{t.ref.path}: cgroup removed")]
            if entry.kind == "v1_oom":
                return [Wakeup(t.key, "oom", now, detail=entry.path)]
            if entry.kind == "v1_pressure":
                return [Wakeup(t.key, "psi", now, detail=entry.path)]
            usage = self._read_usage_now(t)
            return [Wakeup(t.key, "threshold", now, usage, detail=str(entry.level))]
        # kernfs files (v2 events): re-read, which also re-arms the notification
        try:
            data = native.pread(entry.fd, 4096, entry.path)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return [self._gone(t.key, f"{entry.path}: cgroup removed")]
            raise
        if data == entry.last:
            return []
        entry.last = data
        return [Wakeup(t.key, "events", now, detail=entry.path)]

    def _on_inotify(self) -> list[Wakeup]:
        out = []
        for ev in self._inotify.events():
            key = self._wds.get(ev.wd)
            if key is None:
                continue
            if ev.mask & (native.IN_DELETE_SELF | native.IN_IGNORED):
                self._wds.pop(ev.wd, None)
                t = self._targets.get(key)
                if t is not None:
                    t.inotify_wd = -1
                    out.append(self._gone(key, "cgroup directory removed"))
        return out

    def _read_usage_now(self, t: _Target) -> int | None:
        try:
            data = native.pread(t.usage_fd, 64, t.usage_path)
            usage = parse.parse_int(data.decode("ascii", "replace"), t.usage_path)
        except (OSError, CgroupFileError):
            return None
        self._update(t, usage, self._clock())
        return usage

    def _update(self, t: _Target, usage: int, now: float) -> None:
        if t.last_usage is not None and now > t.last_read:
            rate = (usage - t.last_usage) / (now - t.last_read)
            # EWMA: follows a leak within a few reads, ignores a single spike
            t.growth = 0.5 * t.growth + 0.5 * rate
        t.last_usage = usage
        t.last_read = now
        self._schedule(t, now)

    def _schedule(self, t: _Target, now: float) -> None:
        interval = self._interval(t)
        if t.cold_reads and not t.hot and interval >= self.options.v1_cold_interval_s:
            # on a common tick: every idle v1 target is read in the same sweep
            tick = self.options.v1_cold_interval_s
            t.next_due = math.ceil((now + interval) / tick) * tick
        else:
            t.next_due = now + interval

    def _sweep(self) -> list[Wakeup]:
        now = self._clock()
        due = [
            t
            for t in self._targets.values()
            if t.adaptive and t.usage_fd >= 0 and t.next_due <= now + 0.0005
        ]
        if not due:
            return []
        out: list[Wakeup] = []
        cgroups = [t for t in due if t.ref is not None]
        results = self._reader.read([t.usage_fd for t in cgroups]) if cgroups else []
        for t, res in zip(cgroups, results, strict=True):
            if isinstance(res, int):
                if res in (errno.ENODEV, errno.ENOENT):
                    out.append(self._gone(t.key, f"{t.usage_path}: cgroup removed"))
                else:
                    t.next_due = now + self.options.max_interval_s
                continue
            try:
                usage = parse.parse_int(res.decode("ascii", "replace"), t.usage_path)
            except CgroupFileError:
                t.next_due = now + self.options.max_interval_s
                continue
            w = self._after_read(t, usage, now)
            if w is not None:
                out.append(w)
        for t in due:
            if t.ref is None:
                try:
                    total, used = self._parse_meminfo(native.pread(t.usage_fd, 8192), t.usage_path)
                except (OSError, CgroupFileError):
                    t.next_due = now + self.options.max_interval_s
                    continue
                t.limit = total
                w = self._after_read(t, used, now)
                if w is not None:
                    out.append(w)
        return out

    def _after_read(self, t: _Target, usage: int, now: float) -> Wakeup | None:
        was_hot = t.hot
        prev = t.last_reported
        self._update(t, usage, now)
        crossed = prev is not None and any((prev < lv) != (usage < lv) for lv in t.levels)
        moved = prev is None or (
            t.limit is not None and abs(usage - prev) >= self.options.change_fraction * t.limit
        )
        if crossed or moved or was_hot or t.hot:
            t.last_reported = usage
            return Wakeup(t.key, "read", now, usage)
        return None

    def usage(self, key: str) -> int | None:
        t = self._targets.get(key)
        return None if t is None else t.last_usage

    def growth(self, key: str) -> float:
        t = self._targets.get(key)
        return 0.0 if t is None else t.growth

    def interval(self, key: str) -> float:
        return self._interval(self._targets[key])
