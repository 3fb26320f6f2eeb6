"""Process handles: a process held from the moment its pid is read until a signal reaches it.

A pid number names whichever process holds it now. Between the daemon reading a target's
cgroup.procs and an action running (seconds later, on the action thread) the target's process
may exit and an unrelated process take its number. A handle holds the process itself:

- where the kernel has pidfd_open (Linux 5.3), a pidfd: a signal sent through it reaches that
  process or, once it exited, nobody (ESRCH), whatever holds the number by then;
- else the pid with its start time (field 22 of /proc/PID/stat): a number whose start time
  changed names another process. So too for pids of a /proc other than this process's own (a
  test's fake tree, another PID namespace's view): pidfd_open would look their numbers up in
  the wrong namespace.

A handle also keeps the memory cgroup /proc/PID/cgroup named when it was opened; ``refusal``
compares it with the present one, so a process that moved out of the target between the reading
and the signal is left alone. A pidfd already is the same process; the cgroup guards a process
that moved.

``open_processes`` opens the pids just read from the target's cgroup.procs. Given ``members``
(a re-read of that file) it keeps only the processes still listed after they were opened and
still alive after that: each handle is then a process that was in the target, never one that
took the number in between. A pidfd is closed by ``close`` (ProcessHandles.close, after the
actions ran) or, failing that, when its handle is dropped. At most MAX_PIDFDS are held at once:
past that a handle falls back to the start time, so events waiting for the action thread never
exhaust the daemon's file descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

from pressured.kernel import procfs

log = logging.getLogger("pressured.kernel.pidfd")

MAX_PIDFDS = 512
"""Pidfds held by every unreleased handle together; more handles fall back to start times."""

_lock = threading.RLock()  # a handle dropped (finalized) while it is held is released
_held = 0
_unavailable: str | None = None
"""Why pidfd_open cannot be used on this kernel (or Python), once found out."""
_said: set[str] = set()


def _say_once(key: str, msg: str, *args: object) -> None:
    with _lock:
        if key in _said:
            return
        _said.add(key)
    log.warning(msg, *args)


def _count(delta: int) -> None:
    global _held
    with _lock:
        _held += delta


def held_pidfds() -> int:
    """How many pidfds unreleased handles hold now."""
    return _held


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    _count(-1)


def pidfd_unavailable() -> str | None:
    """Why this kernel or Python has no pidfds, or None when it has (or it is not known yet)."""
    if _unavailable is None and not (
        hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
    ):
        _no_pidfds("this Python has no os.pidfd_open")
    return _unavailable


def _no_pidfds(why: str) -> None:
    global _unavailable
    _unavailable = why
    _say_once(
        "unavailable",
        "no pidfds (%s): signals go to pid numbers, each checked against the start time "
        "its process had when it was read",
        why,
    )


class ProcessHandle:
    """One process as it was when its pid was read: its pid, a pidfd (None where none could be
    opened), its memory cgroup and start time (clock ticks after boot) then, and the /proc it
    was read from. The handle owns the pidfd it is given."""

    __slots__ = ("__weakref__", "_release", "cgroup", "pid", "pidfd", "proc", "start_ticks")

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        *,
        cgroup: str,
        start_ticks: int,
        proc: str = procfs.PROC,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.cgroup = cgroup
        self.start_ticks = start_ticks
        self.proc = proc
        self._release: weakref.finalize[[int], ProcessHandle] | None = None
        if pidfd is not None:
            _count(1)
            self._release = weakref.finalize(self, _release, pidfd)

    def __repr__(self) -> str:
        how = "closed" if self.closed else f"pidfd {self.pidfd}" if self.pidfd is not None else ""
        return f"ProcessHandle(pid {self.pid}, {how or 'no pidfd'}, {self.cgroup})"

    @property
    def closed(self) -> bool:
        return self._release is not None and not self._release.alive

    def close(self) -> None:
        if self._release is not None:
            self._release()

    def refusal(self) -> str | None:
        """Why the process must not be signalled now, or None: it is gone, its number names
        another process (no pidfd: another start time), or it left the cgroup it was read in.

        Read before the signal is sent: a process alive when the signal reaches it was alive
        at this reading, so what was read here was that process's own /proc entry."""
        if self.pidfd is None:
            ticks = procfs.process_start_ticks(self.pid, self.proc)
            if ticks is None:
                return "is gone"
            if ticks != self.start_ticks:
                return (
                    f"is gone: the pid now names another process (started at tick {ticks}, "
                    f"not {self.start_ticks})"
                )
        now = procfs.memory_cgroup(self.pid, self.proc)
        if now is None:
            return "is gone"
        if now != self.cgroup:
            return f"left {self.cgroup} (it is in {now} now)"
        return None

    def send(self, sig: int) -> None:
        """Send ``sig`` (0: only check). ProcessLookupError when the process is gone (with a
        pidfd: whatever holds the number now), PermissionError when it may not be signalled."""
        if self.pidfd is None:
            os.kill(self.pid, sig)
            return
        if self.closed:
            raise ValueError(f"pid {self.pid}: the handle is closed")
        signal.pidfd_send_signal(self.pidfd, sig)

    def alive(self) -> bool:
        """Whether the process still exists (with a pidfd: the same one; else: the number has
        the start time it had)."""
        if self.pidfd is None:
            return procfs.process_start_ticks(self.pid, self.proc) == self.start_ticks
        try:
            self.send(0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # EPERM: it exists, only not ours to signal
        return True


class ProcessHandles:
    """The handles of one event's processes, in the order their pids were read."""

    __slots__ = ("_handles",)

    def __init__(self, handles: Iterable[ProcessHandle] = ()) -> None:
        self._handles = tuple(handles)

    def __iter__(self) -> Iterator[ProcessHandle]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def __repr__(self) -> str:
        return f"ProcessHandles({list(self._handles)!r})"

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self._handles]

    def close(self) -> None:
        for h in self._handles:
            h.close()

    def __enter__(self) -> ProcessHandles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ours(proc: str) -> bool:
    """Whether ``proc`` is this process's own /proc, whose numbers pidfd_open understands."""
    return os.path.normpath(proc) == procfs.PROC


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where none can be had. ProcessLookupError: no such pid."""
    if pidfd_unavailable() is not None:
        return None
    if _held >= MAX_PIDFDS:
        _say_once(
            "budget",
            "%d pidfds held by events still waiting for their actions: further processes are "
            "held by pid and start time",
            MAX_PIDFDS,
        )
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            _no_pidfds("ENOSYS from pidfd_open: Linux before 5.3")
            return None
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        _say_once(
            f"errno:{name}",
            "pidfd_open(%d): %s; such processes are held by pid and start time",
            pid,
            name,
        )
        return None


def open_process(pid: int, proc: str = procfs.PROC) -> ProcessHandle | None:
    """A handle on process ``pid`` as seen under ``proc``, or None when it is gone."""
    if pid <= 0:
        return None
    try:
        pidfd = _open_pidfd(pid) if _ours(proc) else None
    except ProcessLookupError:
        return None
    cgroup = procfs.memory_cgroup(pid, proc)
    ticks = procfs.process_start_ticks(pid, proc)
    if cgroup is None or ticks is None:
        if pidfd is not None:
            os.close(pidfd)
        return None
    return ProcessHandle(pid, pidfd, cgroup=cgroup, start_ticks=ticks, proc=proc)


def open_processes(
    pids: Iterable[int],
    proc: str = procfs.PROC,
    *,
    members: Callable[[], Iterable[int]] | None = None,
) -> ProcessHandles:
    """Handles on ``pids`` (those gone already left out). With ``members``, which re-reads the
    target's cgroup.procs, only processes listed there after they were opened, and alive after
    that, are kept; what ``members`` raises (cgroupfs.read_procs: CgroupFileError, the cgroup
    is gone) comes through, with every handle closed."""
    opened = [h for pid in pids if (h := open_process(int(pid), proc)) is not None]
    if members is None:
        return ProcessHandles(opened)
    try:
        listed = set(members())
    except BaseException:
        for h in opened:
            h.close()
        raise
    kept: list[ProcessHandle] = []
    for h in opened:
        if h.pid in listed and h.alive():
            kept.append(h)
        else:
            h.close()
    return ProcessHandles(kept)
