"""Helpers shared by the kill-source tests: kmsg fixtures and a real v1 OOM kill on this host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pressured.kernel import procfs

FIXTURES = Path(__file__).parent / "fixtures"
V1_MEMORY = "/sys/fs/cgroup/memory"

# touches every page (b"x" * n is a memset), 1 MiB at a time
ALLOCATOR = "b = []\nfor i in range({mib}):\n    b.append(b'x' * (1 << 20))\nprint('survived')\n"


def fixture_records(name: str) -> list[str]:
    """The records of a kmsg fixture, each as one read() of /dev/kmsg returns it."""
    records: list[str] = []
    for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines():
        if line.startswith(" ") and records:
            records[-1] += line + "\n"
        elif line:
            records.append(line + "\n")
    return records


def own_v1_memory_cgroup() -> str | None:
    """This process's v1 memory cgroup directory, from /proc/self/cgroup."""
    path = procfs.read_cgroups("self").v1_memory
    return None if path is None else os.path.join(V1_MEMORY, path.lstrip("/"))


def v1_oom_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create memory cgroups"
    if not os.path.exists(os.path.join(V1_MEMORY, "memory.usage_in_bytes")):
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory on this machine"
    own = own_v1_memory_cgroup()
    if own is None or not os.access(own, os.W_OK):
        return "own v1 memory cgroup is not writable"
    return None


@dataclass
class Victim:
    pid: int
    returncode: int
    comm: str
    cgroup_dir: str
    relpath: str  # as the kernel names it: relative to the v1 memory hierarchy root


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _remove_cgroup(path: str) -> None:
    if not os.path.isdir(path):
        return
    for _ in range(100):
        with (
            contextlib.suppress(OSError),
            open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f,
        ):
            for pid in f.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.05)


@contextlib.contextmanager
def v1_child(prefix: str, limit_bytes: int = 32 << 20) -> Iterator[str]:
    """A child v1 memory cgroup of our own, removed afterwards even when the test fails."""
    own = own_v1_memory_cgroup()
    assert own is not None
    path = os.path.join(own, f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 1_000_000}")
    os.mkdir(path)
    try:
        _write(os.path.join(path, "memory.limit_in_bytes"), str(limit_bytes))
        with contextlib.suppress(OSError):  # absent without swap accounting
            _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit_bytes))
        yield path
    finally:
        _remove_cgroup(path)


def start_allocator(cgroup_dir: str, alloc_mib: int = 200) -> subprocess.Popen[bytes]:
    """An allocator in ``cgroup_dir``, not waited for (it stays a zombie until reaped)."""
    # the shell moves itself into the cgroup, then becomes the allocator (same pid)
    return subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            'echo $$ > "$1/cgroup.procs" && exec "$2" -c "$3"',
            "sh",
            cgroup_dir,
            sys.executable,
            ALLOCATOR.format(mib=alloc_mib),
        ],
        stdout=subprocess.DEVNULL,
    )


def victim_of(proc: subprocess.Popen[bytes], cgroup_dir: str) -> Victim:
    rc = proc.wait(timeout=120)
    relpath = "/" + os.path.relpath(cgroup_dir, V1_MEMORY)
    # comm is the basename of the path given to execve, cut to TASK_COMM_LEN - 1
    comm = os.path.basename(sys.executable)[:15]
    return Victim(proc.pid, rc, comm, cgroup_dir, relpath)


def oom_kill_in(cgroup_dir: str, alloc_mib: int = 200) -> Victim:
    """Run an allocator in ``cgroup_dir`` until the kernel kills it."""
    return victim_of(start_allocator(cgroup_dir, alloc_mib), cgroup_dir)
