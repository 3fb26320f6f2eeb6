"""The machine and its processes: the one reader of /proc, from an injectable proc root.

Where the root is the real /proc, psutil reads what it offers: the process list, names, start
times, open fds and a process's TCP sockets (imported where first used: the daemon's wake-up
path needs none of it). Any other root (a fake tree a test builds, or a
sidecar's view of another /proc) is read file by file here, and so is what psutil has no reader
for: /proc/meminfo as the Watcher's native reads see it, oom_score, NSpid, a pending SIGKILL
and the exiting flag, /proc/PID/cgroup, and a network namespace's listening sockets when a
process's fds cannot be read. The pure text parsers are in ``kernel/parse.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pressured.errors import CgroupFileError
from pressured.kernel import parse
from pressured.kernel.cgroupfs import read_text

log = logging.getLogger("pressured.kernel.procfs")

PROC = "/proc"
TCP_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN = 10


def _real(proc: str) -> bool:
    """Whether ``proc`` is the /proc psutil reads."""
    return os.path.normpath(proc) == PROC


# ---------------------------------------------------------------------------------- machine
@dataclass(frozen=True)
class MachineMemory:
    total_bytes: int
    available_bytes: int

    @classmethod
    def from_meminfo(cls, text: str, path: str) -> MachineMemory:
        info = parse.parse_meminfo(text, path)
        return cls(info["MemTotal"], info["MemAvailable"])

    @property
    def working_set_bytes(self) -> int:
        """The machine's working set: what the kernel does not count as available."""
        return max(0, self.total_bytes - self.available_bytes)


def read_machine(proc: str = PROC) -> MachineMemory:
    path = os.path.join(proc, "meminfo")
    return MachineMemory.from_meminfo(read_text(path), path)


# -------------------------------------------------------------------------------- processes
def pids(proc: str = PROC) -> list[int]:
    """Every process id under ``proc``, ascending. OSError when it cannot be listed."""
    import psutil  # noqa: PLC0415 - imported only where it is used

    if _real(proc):
        return sorted(psutil.pids())
    return sorted(int(p) for p in os.listdir(proc) if p.isdigit())


def process_name(pid: int, proc: str = PROC) -> str | None:
    """A process's name, or None when it is gone. The kernel's comm is cut at 15 characters;
    psutil gives the whole name where the command line shows it."""
    import psutil  # noqa: PLC0415 - imported only where it is used

    if _real(proc):
        try:
            return psutil.Process(pid).name()
        except (psutil.Error, ValueError):  # gone; ValueError: not a pid (negative)
            return None
    try:
        return read_text(os.path.join(proc, str(pid), "comm")).strip()
    except CgroupFileError:
        return None


def read_oom_score(pid: int, proc: str = PROC) -> tuple[int, int] | None:
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


@dataclass(frozen=True)
class ProcessMemory:
    """One process as `pressured diagnose` lists it."""

    pid: int
    comm: str | None
    rss_bytes: int | None
    oom_score: int
    oom_score_adj: int

    def as_dict(self) -> dict[str, int | str | None]:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "rss_bytes": self.rss_bytes,
            "oom_score": self.oom_score,
            "oom_score_adj": self.oom_score_adj,
        }


def processes_memory(pids: Iterable[int], proc: str = PROC) -> list[ProcessMemory]:
    """Name, RSS and OOM score of each of ``pids`` still there (gone ones are left out)."""
    out = []
    for pid in pids:
        score = read_oom_score(pid, proc)
        if score is None:
            continue
        out.append(ProcessMemory(pid, process_name(pid, proc), rss_bytes(pid, proc), *score))
    return out


PF_EXITING = 0x4
"""Task flag (field 9 of /proc/PID/stat): the task is in do_exit."""
_SIGKILL = 1 << (signal.SIGKILL - 1)


def process_alive(pid: int, proc: str = PROC) -> bool:
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


def process_start_ticks(pid: int, proc: str = PROC) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None."""
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


def started_after_boot(pid: int, proc: str = PROC) -> float | None:
    """Seconds after boot (CLOCK_BOOTTIME) that a process started, or None when it is gone:
    for 'oldest process' choices and for placing this process on the kernel's clock."""
    import psutil  # noqa: PLC0415 - imported only where it is used

    if _real(proc):
        try:
            created = psutil.Process(pid).create_time()
        except (psutil.Error, ValueError):
            return None
        # psutil adds the boot time to the start tick; this takes it off again
        return created - psutil.boot_time()
    ticks = process_start_ticks(pid, proc)
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def own_start_usec(proc: str = PROC) -> int | None:
    """When this process started, on the clock /dev/kmsg stamps records with (microseconds
    since boot, as CLOCK_MONOTONIC counts them); None when /proc does not say."""
    started_boottime = started_after_boot(os.getpid(), proc)
    if started_boottime is None:
        return None
    # /proc counts start times on CLOCK_BOOTTIME, which also runs while suspended
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
    return max(0, int((started_boottime - offset) * 1e6))


def count_open_fds(pid: int | None = None, proc: str = PROC) -> int:
    import psutil  # noqa: PLC0415 - imported only where it is used

    pid = pid or os.getpid()
    if _real(proc):
        return psutil.Process(pid).num_fds()
    return len(os.listdir(os.path.join(proc, str(pid), "fd")))


def rss_bytes(pid: int | str, proc: str = PROC) -> int | None:
    """A process's resident set in bytes (``pid`` "self" for this process), or None when it
    cannot be read (the process exited, or has no memory: a kernel thread)."""
    if _real(proc):
        import psutil  # noqa: PLC0415 - imported only where it is used

        try:
            p = psutil.Process() if pid == "self" else psutil.Process(int(pid))
            return int(p.memory_info().rss)
        except (psutil.Error, ValueError):
            return None
    try:
        with open(os.path.join(proc, str(pid), "statm"), encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def namespace_pids(pid: int, proc: str = PROC) -> list[str] | None:
    """The NSpid fields of /proc/PID/status (outermost namespace first), or None when the
    status cannot be read (the process is gone); [] on kernels before 4.1, which have none."""
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return line.split()[1:]
    except OSError:
        return None
    return []


def is_namespace_init(pid: int, proc: str = PROC) -> bool:
    """True when ``pid`` is PID 1 of its own PID namespace (last NSpid field is 1)."""
    fields = namespace_pids(pid, proc)
    if fields:
        return fields[-1] == "1"
    return pid == 1


# ---------------------------------------------------------------------------------- cgroups
def read_cgroups(pid: int | str, proc: str = PROC) -> parse.ProcCgroups:
    """A process's /proc/PID/cgroup (``pid`` "self" for this process). CgroupFileError when it
    cannot be read: the process exited, or no permission."""
    path = os.path.join(proc, str(pid), "cgroup")
    return parse.parse_proc_cgroups(read_text(path))


def memory_cgroup(pid: int | str, proc: str = PROC) -> str | None:
    """The cgroup a process's memory is charged to, as /proc/PID/cgroup names it (the v1
    memory line, else the v2 line); None when it cannot be read or names neither."""
    try:
        return read_cgroups(pid, proc).memory
    except CgroupFileError:
        return None


# ------------------------------------------------------------------------------------- net
def listening_ports(proc: str, pids: Iterable[int]) -> list[int]:
    """TCP ports in state LISTEN held open by any of ``pids``, from /proc/PID/net/tcp{,6}.

    A process's net/tcp lists every socket of its network namespace; the socket inodes in
    /proc/PID/fd narrow that to the process's own. When fd/ cannot be read (no ptrace access),
    every listening port of the namespace is returned.
    """
    import psutil  # noqa: PLC0415 - imported only where it is used

    ports: set[int] = set()
    for pid in pids:
        if _real(proc):
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.AccessDenied:
                pass  # its fds are not readable: the namespace's table, below
            except (psutil.Error, ValueError):
                continue  # gone, or not a pid
            else:
                ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)
                continue
        ports.update(_listening_in_tables(os.path.join(proc, str(pid))))
    return sorted(ports)


def _listening_in_tables(base: str) -> set[int]:
    ports: set[int] = set()
    inodes = _socket_inodes(os.path.join(base, "fd"))
    for name in ("tcp", "tcp6"):
        table = os.path.join(base, "net", name)
        try:
            with open(table, encoding="ascii", errors="replace") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue  # no tcp6 without IPv6; the process may be gone
        except OSError as exc:
            log.warning("cannot read %s: %s", table, exc.strerror or exc)
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN:
                continue
            try:
                port = int(fields[1].rsplit(":", 1)[1], 16)
                inode = int(fields[9])
            except (IndexError, ValueError):
                log.debug("%s: unparsable line %r", table, line)
                continue
            if inodes is None or inode in inodes:
                ports.add(port)
    return ports


def _socket_inodes(fd_dir: str) -> set[int] | None:
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    inodes: set[int] = set()
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(int(target[8:-1]))
    return inodes
