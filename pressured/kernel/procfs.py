"""The machine and its processes, read from an injectable proc root."""

from __future__ import annotations

import os
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
