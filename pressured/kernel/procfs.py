"""The machine and its processes, read from an injectable proc root."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from pressured.errors import CgroupFileError
from pressured.kernel import parse
from pressured.kernel.cgroupfs import read_text


@dataclass(frozen=True)
class MachineMemory:
    total_bytes: int
    available_bytes: int

    @property
    def working_set_bytes(self) -> int:
        return max(0, self.total_bytes - self.available_bytes)


def read_machine(proc: str = "/proc") -> MachineMemory:
    path = os.path.join(proc, "meminfo")
    info = parse.parse_meminfo(read_text(path), path)
    return MachineMemory(info["MemTotal"], info["MemAvailable"])


def read_oom_score(pid: int, proc: str = "/proc") -> tuple[int, int] | None:
    """(oom_score, oom_score_adj) of a process, or None when it is gone."""
    try:
        score = read_text(os.path.join(proc, str(pid), "oom_score"))
        adj = read_text(os.path.join(proc, str(pid), "oom_score_adj"))
    except CgroupFileError:
        return None
    try:
        return int(score.strip()), int(adj.strip())
    except ValueError:
        return None


def read_comm(pid: int, proc: str = "/proc") -> str | None:
    try:
        return read_text(os.path.join(proc, str(pid), "comm")).strip()
    except CgroupFileError:
        return None


PF_EXITING = 0x4
"""Task flag (field 9 of /proc/PID/stat): the task is in do_exit."""
_SIGKILL = 1 << (signal.SIGKILL - 1)


def process_alive(pid: int, proc: str = "/proc") -> bool:
    """Whether a process exists and is not on its way out.

    An OOM victim stays in its cgroup's cgroup.procs while the kernel frees its memory: first
    with SIGKILL pending, then exiting (PF_EXITING); a zombie keeps its /proc entry until it is
    reaped. None of them is a process to report or signal. A process whose first thread exited
    is alive while another of its threads is.
    """
    base = os.path.join(proc, str(pid))
    try:
        status = read_text(os.path.join(base, "status"))
    except CgroupFileError:
        return False
    pending, threads = 0, 1
    for line in status.splitlines():
        key, _, value = line.partition(":")
        try:
            if key in ("SigPnd", "ShdPnd"):
                pending |= int(value.strip(), 16)
            elif key == "Threads":
                threads = int(value)
        except ValueError:
            continue
    if pending & _SIGKILL:
        return False
    if not _task_exiting(os.path.join(base, "stat")):
        return True
    if threads <= 1:
        return False
    try:
        tids = os.listdir(os.path.join(base, "task"))
    except OSError:
        return False
    others = [tid for tid in tids if tid != str(pid)]
    return any(not _task_exiting(os.path.join(base, "task", tid, "stat")) for tid in others)


def _task_exiting(stat_path: str) -> bool:
    """A task that is gone, a zombie, or in do_exit; an unparsable stat counts as running."""
    try:
        raw = read_text(stat_path)
    except CgroupFileError:
        return True
    fields = raw.rpartition(")")[2].split()
    try:
        return fields[0] in ("Z", "X", "x") or bool(int(fields[6]) & PF_EXITING)
    except (IndexError, ValueError):
        return False


def process_start_ticks(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), for 'oldest process' choices."""
    try:
        raw = read_text(os.path.join(proc, str(pid), "stat"))
    except CgroupFileError:
        return None
    _, _, rest = raw.rpartition(")")
    fields = rest.split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def own_start_usec(proc: str = "/proc") -> int | None:
    """When this process started, on the clock /dev/kmsg stamps records with (microseconds
    since boot, as CLOCK_MONOTONIC counts them); None when /proc does not say."""
    ticks = process_start_ticks(os.getpid(), proc)
    if ticks is None:
        return None
    started_boottime = ticks / os.sysconf("SC_CLK_TCK")
    # /proc counts start times on CLOCK_BOOTTIME, which also runs while suspended
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
    return max(0, int((started_boottime - offset) * 1e6))


def count_open_fds(pid: int | None = None, proc: str = "/proc") -> int:
    return len(os.listdir(os.path.join(proc, str(pid or os.getpid()), "fd")))
