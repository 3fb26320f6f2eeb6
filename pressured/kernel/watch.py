"""The Watcher: one epoll set over every kernel notification pressured can arm.

For each target it arms what the kernel offers (Documentation/admin-guide/cgroup-v2.rst,
cgroup-v1/memory.rst, accounting/psi.rst):

- cgroup v1: usage thresholds at the given byte levels (several per cgroup), memory.oom_control
  and memory.pressure_level, all registered on ONE eventfd per cgroup (the kernel lets an
  eventfd carry several registrations); a wake-up re-reads usage and oom_control to tell a
  crossing from an OOM from a pressure level. The eventfd is also signalled when the cgroup is
  removed.
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
and as growth speeds up, between ``min_interval_s`` and ``max_interval_s``; when the next level
is due (at the current growth) before two such reads, reads come at half the time left, down
to PREDICT_FLOOR_S, so a crossing is seen about when it happens rather than up to
``min_interval_s`` later.

Arming is slow in the kernel, not here: each v1 threshold registration waits for an RCU grace
period (~12 ms measured), as does closing a PSI trigger. ``add_cgroups`` arms many targets on
a pool of threads (the C calls release the GIL), so those waits overlap; the targets nearest
to their limit are started first, and each is installed in the epoll set as soon as it is
ready. ``set_levels`` registers the new levels before it closes the old ones: no blind gap.

``wait()`` returns Wakeups naming the target and the cause:
threshold, psi, events, oom, gone, read; and "fd" for a caller's own fd (``watch_fd``: the
daemon's signal pipe, kmsg, perf rings), so everything waits in the same epoll_wait.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import math
import os
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pressured import native
from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import parse
from pressured.kernel.cgroupfs import CgroupRef, read_limit, read_text, read_usage
from pressured.kernel.procfs import MachineMemory

Cause = Literal["threshold", "psi", "events", "oom", "gone", "read", "fd"]
FdKind = Literal[
    "v1_event",
    "psi",
    "events",
    "events_local",
    "cgroup_events",
    "inotify",
    "external",
]


PREDICT_FLOOR_S = 0.001
"""The shortest interval of a read timed to a level's predicted crossing (below
min_interval_s, which bounds routine reads)."""
SWEEP_EARLY_S = 0.0005
"""A sweep also reads the targets due this soon after it (one wake-up, not two)."""
ARM_WORKERS = 64
"""Threads that arm targets at once: they spend their time waiting for RCU grace periods."""


@dataclass(frozen=True, slots=True)
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
    v1_cold_interval_s: float = 4.0
    """Reads of a v1 target below its lowest threshold (kernel memory crosses no eventfd)."""
    read_always: bool = False
    """Read v1 usage adaptively even below the thresholds: a rule expression has no kernel
    notifier, so only reads can see it match (and the growth it may depend on)."""


@dataclass(slots=True)
class _Fd:
    fd: int
    kind: FdKind
    key: str
    path: str
    level: int | None = None
    last: bytes = b""


@dataclass(slots=True)
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
    last_rate: float = 0.0
    """Growth between the last two reads: a leak that just started runs ahead of the EWMA."""
    next_due: float = 0.0
    inotify_wd: int = -1
    oom_kills: int | None = None
    """v1: memory.oom_control's oom_kill when last read (tells an OOM wake-up apart)."""
    notes: list[str] = field(default_factory=list)

    @property
    def hot(self) -> bool:
        levels, usage = self.levels, self.last_usage  # levels are sorted
        return bool(levels) and usage is not None and usage >= levels[0]

    @property
    def adaptive(self) -> bool:
        return self.adaptive_always or self.cold_reads or self.hot


def _aimed(interval: float, eta: float) -> float:
    """``interval``, unless a level is due (at the current growth) in ``eta`` seconds, before two
    such reads: then half the time left, again and again, so the crossing is seen within
    PREDICT_FLOOR_S of when it comes at this growth (a few reads per crossing, then routine
    reads again)."""
    return max(PREDICT_FLOOR_S, eta / 2) if eta < 2 * interval else interval


@dataclass(slots=True)
class _V1Reg:
    """A v1 cgroup's registrations on one eventfd, made off the Watcher's thread."""

    entry: _Fd | None = None
    armed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    thresholds: int = 0
    oom_kills: int | None = None


@dataclass(slots=True)
class _Opened:
    """A target whose kernel side is armed, not yet in the Watcher's epoll set and tables."""

    target: _Target
    entries: list[tuple[_Fd, int]] = field(default_factory=list)  # (fd, epoll events)
    armed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    psi_note: str = ""

    def discard(self) -> None:
        for entry, _events in self.entries:
            native.close(entry.fd)
        self.entries.clear()
        if self.target.usage_fd >= 0:
            native.close(self.target.usage_fd)
            self.target.usage_fd = -1


@dataclass(frozen=True, slots=True)
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
        self._due: list[tuple[float, int, str]] = []  # (when, seq, key): adaptive reads
        self._seq = 0
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
        return self._install(self._open_cgroup(key, ref, levels, self._read_now(ref)))

    def add_cgroups(
        self,
        items: Sequence[tuple[str, CgroupRef, Sequence[int]]],
        *,
        workers: int = ARM_WORKERS,
        on_armed: Callable[[str, ArmReport | Exception], None] | None = None,
    ) -> dict[str, ArmReport | Exception]:
        """Arm many targets at once: (key, cgroup, levels) each.

        The kernel's waits overlap on ``workers`` threads; the targets nearest to their limit
        (usage / limit) are started first, unlimited ones last. Each target is installed as
        soon as its registrations are done, on the calling thread, and ``on_armed`` is called
        with its report. The answer per key: its ArmReport, or the error that kept it from
        being watched (CgroupError, OSError); one target's error never stops the others.
        """
        results: dict[str, ArmReport | Exception] = {}

        def done(key: str, result: ArmReport | Exception) -> None:
            results[key] = result
            if on_armed is not None:
                on_armed(key, result)

        queue: list[tuple[float, str, CgroupRef, Sequence[int], tuple[int | None, int]]] = []
        for key, ref, levels in items:
            if key in self._targets:
                self.remove(key)
            try:
                known = self._read_now(ref)
            except CgroupError as exc:
                done(key, exc)
                continue
            limit, usage = known
            headroom = (limit - usage) / limit if limit else math.inf
            queue.append((headroom, key, ref, levels, known))
        queue.sort(key=lambda q: q[0])
        if workers <= 1 or len(queue) <= 1:
            for _h, key, ref, levels, known in queue:
                try:
                    done(key, self._install(self._open_cgroup(key, ref, levels, known)))
                except (CgroupError, OSError) as exc:
                    done(key, exc)
            return results
        from concurrent.futures import ThreadPoolExecutor, as_completed  # noqa: PLC0415

        pool = ThreadPoolExecutor(min(workers, len(queue)), thread_name_prefix="pressured-arm")
        futures = {
            pool.submit(self._open_cgroup, key, ref, levels, known): key
            for _h, key, ref, levels, known in queue
        }
        taken = set()
        try:
            for fut in as_completed(futures):
                taken.add(fut)
                key = futures[fut]
                try:
                    done(key, self._install(fut.result()))
                except (CgroupError, OSError) as exc:
                    done(key, exc)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for fut in futures:  # interrupted: what was opened but not installed is closed
                if fut not in taken and not fut.cancelled() and fut.exception() is None:
                    fut.result().discard()
        return results

    @staticmethod
    def _read_now(ref: CgroupRef) -> tuple[int | None, int]:
        """(limit, usage) of a cgroup about to be armed; CgroupError when it is not usable."""
        if not os.path.isdir(ref.path):
            raise CgroupError(f"{ref.path}: no such cgroup directory")
        try:
            return read_limit(ref), read_usage(ref)
        except CgroupFileError as exc:
            raise CgroupError(str(exc)) from exc

    def _open_cgroup(
        self,
        key: str,
        ref: CgroupRef,
        levels: Sequence[int],
        known: tuple[int | None, int],
    ) -> _Opened:
        """Everything that talks to the kernel to arm a target, and nothing that touches the
        Watcher's tables: safe on a worker thread. ``_install`` puts the result in place."""
        limit, usage = known
        t = _Target(key, ref, sorted(set(levels)), limit)
        t.last_usage = t.last_reported = usage
        t.last_read = self._clock()
        op = _Opened(t)
        try:
            t.usage_path = ref.usage_file
            t.usage_fd = native.open_read(ref.usage_file)
            if ref.version == 1:
                reg = self._register_v1(key, ref, t.levels)
                self._apply_v1(t, reg)
                op.armed += reg.armed
                op.missing += reg.missing
                if reg.entry is not None:
                    op.entries.append((reg.entry, native.EPOLLIN))
            else:
                t.adaptive_always = t.limit is not None
                for name, kind in (
                    ("memory.events", "events"),
                    ("memory.events.local", "events_local"),
                    ("cgroup.events", "cgroup_events"),
                ):
                    path = ref.file(name)
                    if not os.path.exists(path):
                        op.missing.append(f"{name}: missing")
                        continue
                    fd = native.open_read(path)
                    entry = _Fd(fd, kind, key, path)  # type: ignore[arg-type]
                    op.entries.append((entry, native.EPOLLPRI))
                    entry.last = native.pread(fd, 4096, path)
                    op.armed.append(name)
            psi_path = ref.psi_file("memory")
            if psi_path is None:
                op.missing.append("psi: no memory.pressure for this cgroup")
            else:
                self._open_psi(op, key, psi_path)
        except BaseException:
            op.discard()
            raise
        return op

    def _install(self, op: _Opened) -> ArmReport:
        """Put an opened target in the epoll set and the tables (the calling thread only)."""
        t = op.target
        if t.key in self._targets:
            self.remove(t.key)
        self._targets[t.key] = t
        try:
            while op.entries:
                entry, events = op.entries[0]
                token = self._register(entry, events)
                op.entries.pop(0)
                t.fds[token] = entry
        except BaseException:
            self.remove(t.key)
            op.discard()
            raise
        if op.psi_note and op.psi_note not in self.psi_window_notes:
            self.psi_window_notes.append(op.psi_note)
        assert t.ref is not None
        try:
            t.inotify_wd = self._inotify.add(t.ref.path, native.IN_DELETE_SELF | native.IN_ONLYDIR)
            self._wds[t.inotify_wd] = t.key
            op.armed.append("inotify")
        except OSError as exc:
            op.missing.append(f"inotify: {exc.strerror}")
        t.notes = op.missing
        self._schedule(t, self._next_read(t, self._clock()))
        return ArmReport(t.key, tuple(op.armed), tuple(op.missing), t.adaptive_always)

    def _register_v1(self, key: str, ref: CgroupRef, levels: Sequence[int]) -> _V1Reg:
        """Every v1 registration of a target on one new eventfd (thread-safe)."""
        reg = _V1Reg()
        efd = native.eventfd()
        try:
            for level in levels:
                try:
                    native.register_v1_event(ref.path, "memory.usage_in_bytes", str(level), efd)
                except OSError as exc:
                    reg.missing.append(f"threshold {level}: {exc.strerror}")
                    continue
                reg.armed.append(f"threshold {level}")
                reg.thresholds += 1
            _under, reg.oom_kills = self._oom_state(ref)
            try:
                native.register_v1_event(ref.path, "memory.oom_control", "", efd)
                reg.armed.append("oom_control")
            except OSError as exc:
                reg.missing.append(f"oom_control: {exc.strerror}")
            level_name = self.options.v1_pressure_level
            if level_name:
                try:
                    native.register_v1_event(ref.path, "memory.pressure_level", level_name, efd)
                    reg.armed.append(f"pressure_level {level_name}")
                except OSError as exc:
                    reg.missing.append(f"pressure_level: {exc.strerror}")
        except BaseException:
            native.close(efd)
            raise
        if reg.armed:
            reg.entry = _Fd(efd, "v1_event", key, ref.file("cgroup.event_control"))
        else:
            native.close(efd)
        return reg

    def _apply_v1(self, t: _Target, reg: _V1Reg) -> None:
        t.oom_kills = reg.oom_kills
        # a rule has no kernel notifier; where the kernel refused every threshold, read instead
        t.adaptive_always = t.limit is not None and (
            self.options.read_always or (bool(t.levels) and reg.thresholds == 0)
        )
        # below the lowest threshold too, on the cold tick: kernel memory skips the check
        t.cold_reads = bool(t.levels) and t.limit is not None

    @staticmethod
    def _oom_state(ref: CgroupRef) -> tuple[bool, int | None]:
        """v1 memory.oom_control: (under_oom, oom_kill); (False, None) when unreadable."""
        path = ref.file("memory.oom_control")
        try:
            ctl = parse.parse_flat_keyed(read_text(path), path)
        except CgroupFileError:
            return False, None
        return bool(ctl.get("under_oom", 0)), ctl.get("oom_kill")

    def _open_psi(self, op: _Opened, key: str, path: str) -> None:
        spec = self.options.psi
        if spec is None:
            return
        try:
            trig = native.arm_psi_trigger(path, spec.kind, spec.stall_us, spec.window_us)
        except OSError as exc:
            op.missing.append(f"psi trigger on {path}: {exc.strerror}")
            return
        op.entries.append((_Fd(trig.fd, "psi", key, path), native.EPOLLPRI))
        if trig.rounded:
            op.psi_note = (
                f"PSI window {spec.window_us} us rounded up to {trig.window_us} us "
                "(no CAP_SYS_RESOURCE: the kernel takes only multiples of 2 s)"
            )
        op.armed.append(f"psi {spec.kind} {spec.stall_us}/{trig.window_us}")

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
            op = _Opened(target)
            self._open_psi(op, key, psi)
            for entry, events in op.entries:
                self._add_fd(target, entry, events)
            armed += op.armed
            missing += op.missing
            if op.psi_note and op.psi_note not in self.psi_window_notes:
                self.psi_window_notes.append(op.psi_note)
        else:
            missing.append(f"psi: {psi} missing (kernel without PSI or psi=0)")
        target.notes = missing
        self._schedule(target, self._clock() + self._interval(target))
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
        """Move the usage thresholds of a target (v1: re-register, the new before the old
        is closed, so the target is never unwatched in between)."""
        self.set_levels_many({key: levels})

    def set_levels_many(
        self, wanted: dict[str, Sequence[int]], *, workers: int = ARM_WORKERS
    ) -> None:
        """``set_levels`` for many targets, their registrations overlapping on threads."""
        moves: list[tuple[_Target, list[int]]] = []
        for key, levels in wanted.items():
            t = self._targets[key]
            new = sorted(set(levels))
            if new == t.levels:
                continue
            if t.ref is None or t.ref.version != 1:
                t.levels = new
                continue
            moves.append((t, new))
        if not moves:
            return

        def register(move: tuple[_Target, list[int]]) -> _V1Reg:
            t, new = move
            assert t.ref is not None
            return self._register_v1(t.key, t.ref, new)

        if workers <= 1 or len(moves) == 1:
            regs = [register(m) for m in moves]
        else:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            with ThreadPoolExecutor(min(workers, len(moves)), "pressured-arm") as pool:
                regs = list(pool.map(register, moves))
        for (t, new), reg in zip(moves, regs, strict=True):
            self._swap_v1(t, new, reg)

    def _swap_v1(self, t: _Target, levels: list[int], reg: _V1Reg) -> None:
        """The new registrations in place first, then the old eventfd closed (the kernel
        drops the registrations it carried)."""
        if t.key not in self._targets:  # removed meanwhile
            if reg.entry is not None:
                native.close(reg.entry.fd)
            return
        old = [tok for tok, e in t.fds.items() if e.kind == "v1_event"]
        if reg.entry is not None:
            self._add_fd(t, reg.entry)
        for token in old:
            t.fds.pop(token)
            self._release(token)
        t.levels = levels
        self._apply_v1(t, reg)
        self._schedule(t, self._next_read(t, self._clock()))
        v1_notes = ("threshold ", "oom_control", "pressure_level")
        t.notes = [n for n in t.notes if not n.startswith(v1_notes)] + reg.missing

    def levels(self, key: str) -> list[int]:
        return list(self._targets[key].levels)

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
        # closing a PSI trigger waits for an RCU grace period: those waits overlap on threads
        psi = [tok for t in self._targets.values() for tok, e in t.fds.items() if e.kind == "psi"]
        if len(psi) > 1:
            fds = []
            for token in psi:
                entry = self._tokens.pop(token)
                self._epoll.remove(entry.fd)
                fds.append(entry.fd)
            for t in self._targets.values():
                for token in psi:
                    t.fds.pop(token, None)
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            with ThreadPoolExecutor(min(ARM_WORKERS, len(fds)), "pressured-close") as pool:
                list(pool.map(native.close, fds))
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
        eta: float | None = None
        if t.growth > 0:
            above = [lv for lv in t.levels if lv > usage]
            goal = above[0] if above else limit
            # at least four reads before the next level (or the limit) at the current growth
            interval = min(interval, max(0.0, goal - usage) / t.growth / 4.0)
            if above:
                # the sooner of the two: a read too early costs a read, one too late a delay
                eta = (above[0] - usage) / max(t.growth, t.last_rate)
        interval = min(hi, max(lo, interval))
        return interval if eta is None else _aimed(interval, eta)

    def _cold_interval(self, t: _Target) -> float:
        """Until the next read of a v1 target below its lowest threshold: the cold interval,
        shortened by growth to four reads before the lowest level. Not aimed at the crossing
        as the levels above are: the eventfd reports it (measured: reads aimed at it made the
        wake-up later, p50 0.48 -> 0.80 ms, as each reported read takes the loop's time)."""
        cold = max(self.options.v1_cold_interval_s, self.options.max_interval_s)
        if t.growth > 0 and t.levels and t.last_usage is not None:
            before = max(0.0, t.levels[0] - t.last_usage) / t.growth / 4.0
            if before < cold:
                return max(self.options.min_interval_s, before)
        return cold

    def next_deadline(self) -> float | None:
        heap = self._due
        while heap:
            when, _seq, key = heap[0]
            if self._still_due(key, when):
                return when
            heapq.heappop(heap)
        return None

    def _schedule(self, t: _Target, when: float) -> None:
        """The next adaptive read of ``t``. Only targets read adaptively enter the heap, so
        a wake-up costs what the targets due need, not a walk over every target."""
        t.next_due = when
        if t.adaptive and t.usage_fd >= 0:
            self._seq += 1
            heapq.heappush(self._due, (when, self._seq, t.key))

    def _still_due(self, key: str, when: float) -> bool:
        """Whether a heap entry is current (entries of moved or removed targets stay in the
        heap until they reach its top, and are dropped there)."""
        t = self._targets.get(key)
        return t is not None and t.adaptive and t.usage_fd >= 0 and t.next_due == when

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
        if entry.kind == "v1_event":
            return self._on_v1_event(t, entry, now)
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

    def _on_v1_event(self, t: _Target, entry: _Fd, now: float) -> list[Wakeup]:
        """The one eventfd of a v1 cgroup: a level crossed, an OOM, a pressure level, or
        removal; told apart by reading usage and oom_control again."""
        with contextlib.suppress(OSError):
            native.drain_eventfd(entry.fd)
        ref = t.ref
        assert ref is not None
        if not os.path.isdir(ref.path):  # eventfds are signalled on removal too
            return [self._gone(t.key, f"{ref.path}: cgroup removed")]
        prev = t.last_usage
        usage = self._read_usage_now(t)
        out: list[Wakeup] = []
        under, kills = self._oom_state(ref)
        if under or (kills is not None and t.oom_kills is not None and kills > t.oom_kills):
            out.append(Wakeup(t.key, "oom", now, detail=ref.file("memory.oom_control")))
        if kills is not None:
            t.oom_kills = kills
        crossed = [
            lv
            for lv in t.levels
            if prev is not None and usage is not None and (prev < lv) != (usage < lv)
        ]
        if crossed:
            detail = ",".join(map(str, crossed))
            out.append(Wakeup(t.key, "threshold", now, usage, detail=detail))
        elif not out:
            out.append(Wakeup(t.key, "psi", now, usage, detail=ref.file("memory.pressure_level")))
        return out

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
            t.last_rate = rate
        t.last_usage = usage
        t.last_read = now
        self._schedule(t, self._next_read(t, now))

    def _next_read(self, t: _Target, now: float) -> float:
        """When to read ``t`` next: after its interval, or, for an idle v1 target below its
        lowest threshold, on the last common tick within its interval (every such target is
        read in the same sweep, and none waits longer than its interval: a kernel memory leak
        is seen by these reads only)."""
        if t.cold_reads and not t.adaptive_always and not t.hot:
            interval = self._cold_interval(t)
            tick = self.options.v1_cold_interval_s
            if interval >= tick:
                # a read made a little early (SWEEP_EARLY_S) still aims at the next tick
                return math.floor((now + interval + SWEEP_EARLY_S) / tick) * tick
            return now + interval
        return now + self._interval(t)

    def _sweep(self) -> list[Wakeup]:
        now = self._clock()
        picked: dict[str, _Target] = {}
        heap = self._due
        while heap and heap[0][0] <= now + SWEEP_EARLY_S:
            when, _seq, key = heapq.heappop(heap)
            if self._still_due(key, when):
                picked[key] = self._targets[key]
        if not picked:
            return []
        due = list(picked.values())
        out: list[Wakeup] = []
        cgroups = [t for t in due if t.ref is not None]
        results = self._reader.read([t.usage_fd for t in cgroups]) if cgroups else []
        for t, res in zip(cgroups, results, strict=True):
            if isinstance(res, int):
                if res in (errno.ENODEV, errno.ENOENT):
                    out.append(self._gone(t.key, f"{t.usage_path}: cgroup removed"))
                else:
                    self._schedule(t, now + self.options.max_interval_s)
                continue
            try:
                usage = int(res)  # the usual case, cheaply: a sweep may read thousands
            except ValueError:
                try:
                    usage = parse.parse_int(res.decode("ascii", "replace"), t.usage_path)
                except CgroupFileError:
                    self._schedule(t, now + self.options.max_interval_s)
                    continue
            w = self._after_read(t, usage, now)
            if w is not None:
                out.append(w)
        for t in due:
            if t.ref is None:
                try:
                    total, used = self._parse_meminfo(native.pread(t.usage_fd, 8192), t.usage_path)
                except (OSError, CgroupFileError):
                    self._schedule(t, now + self.options.max_interval_s)
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
        # a level lies between the two readings (levels are sorted)
        crossed = prev is not None and bisect_right(t.levels, prev) != bisect_right(t.levels, usage)
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
