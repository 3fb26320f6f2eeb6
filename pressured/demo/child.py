"""Child cgroups made by pressured itself: for `pressured demo`, the kernel tests and benches.

On the hybrid host (KERNEL.md) the memory controller is on v1: a child is made under this
process's own v1 memory cgroup (from /proc/self/cgroup), and a v2 cgroup at the same relative
path under the unified mount gives it real PSI. In the pure v2 guest the child is made under
/sys/fs/cgroup with memory.max. Cleanup kills what is inside and removes every directory it
made, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pressured.errors import CgroupFileError
from pressured.kernel import procfs

ROOT = "/sys/fs/cgroup"


def own_memory_cgroup(root: str = ROOT) -> tuple[str | None, str]:
    """(the v1 memory cgroup dir of this process, or None; why not)."""
    if os.geteuid() != 0:
        return None, "needs root to create cgroups"
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        try:
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "memory" in f.read().split():
                    return root, ""
        except OSError as exc:
            return None, f"cannot read {root}/cgroup.controllers: {exc}"
        return None, f"{root} is cgroup v2 without the memory controller"
    try:
        path = procfs.read_cgroups("self").v1_memory
    except CgroupFileError as exc:
        return None, str(exc)
    if path is None:
        return None, "no memory controller in /proc/self/cgroup"
    cg = os.path.join(root, "memory", path.lstrip("/"))
    if os.access(cg, os.W_OK):
        return cg, ""
    return None, f"own memory cgroup {cg} is not writable"


_ENTER = (
    "import os,sys\n"
    "n=int(sys.argv[1])\n"
    "for d in sys.argv[2:2+n]:\n"
    "    with open(os.path.join(d,'cgroup.procs'),'w') as f: f.write(str(os.getpid()))\n"
    "argv=sys.argv[2+n:]\n"
    "os.execvp(argv[0],argv)\n"
)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _rmdir(path: str) -> None:
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


class Child:
    """A child memory cgroup (v1 or v2) plus, on a hybrid host, its v2 PSI mirror. ``name`` is
    a path relative to this process's memory cgroup; every level it makes is removed again."""

    def __init__(self, name: str, limit_bytes: int | None, root: str = ROOT) -> None:
        base, why = own_memory_cgroup(root)
        if base is None:
            raise RuntimeError(why)
        self.root = root
        self.v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
        self.path = os.path.join(base, name)
        self.mirror: str | None = None
        self._made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        if os.path.isdir(self.path):
            self._kill_all(self.path)
            _rmdir(self.path)
        # ``name`` may have several levels (a kubelet's kubepods/burstable/pod<uid>/<id>): the
        # missing ones are made, and on v2 each delegates the memory controller to the next.
        level = base
        for part in name.split("/"):
            level = os.path.join(level, part)
            if os.path.isdir(level):
                continue
            os.mkdir(level)
            self._made.append(level)
            if self.v2 and level != self.path:
                _write(os.path.join(level, "cgroup.subtree_control"), "+memory")
        if limit_bytes is not None:
            if self.v2:
                _write(os.path.join(self.path, "memory.max"), str(limit_bytes))
                swap = os.path.join(self.path, "memory.swap.max")
                if os.path.exists(swap):
                    _write(swap, "0")
            else:
                _write(os.path.join(self.path, "memory.limit_in_bytes"), str(limit_bytes))
        if not self.v2:
            unified = os.path.join(root, "unified")
            if os.path.exists(os.path.join(unified, "cgroup.procs")):
                rel = os.path.relpath(self.path, os.path.join(root, "memory"))
                mirror = unified
                for part in rel.split("/"):
                    mirror = os.path.join(mirror, part)
                    if not os.path.isdir(mirror):
                        os.mkdir(mirror)
                        self._made.append(mirror)
                self.mirror = mirror

    @property
    def memory_file(self) -> str:
        return os.path.join(self.path, "memory.current" if self.v2 else "memory.usage_in_bytes")

    def psi_file(self, resource: str = "memory") -> str | None:
        """Its ``<resource>.pressure`` (v2, or the hybrid host's mirror), None without PSI."""
        base = self.path if self.v2 else self.mirror
        path = None if base is None else os.path.join(base, f"{resource}.pressure")
        return path if path is not None and os.path.exists(path) else None

    def usage(self) -> int:
        with open(self.memory_file) as f:
            return int(f.read())

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        with open(os.path.join(self.path, name)) as f:
            for line in f:
                k, v = line.split()
                if k == "oom_kill":
                    return int(v)
        return 0

    def entering(self) -> list[str]:
        """A command prefix that moves itself into this cgroup (and its PSI mirror), then
        execs the rest of its command line."""
        targets = [self.path] + ([self.mirror] if self.mirror else [])
        return [sys.executable, "-c", _ENTER, str(len(targets)), *targets]

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this cgroup (and its PSI mirror) from its first instruction.

        The child moves itself, then execs: no preexec_fn, which can deadlock a forked child
        when the parent has threads (the daemon's action worker, a benchmark's poller).
        """
        proc: subprocess.Popen[Any] = subprocess.Popen([*self.entering(), *argv], **kw)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _kill_all(path: str) -> None:
        procs = os.path.join(path, "cgroup.procs")
        for _ in range(50):
            try:
                with open(procs) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream is not None:
                    stream.close()
        for d in reversed(self._made):
            self._kill_all(d)
            _rmdir(d)
        self._made.clear()


@contextlib.contextmanager
def child_cgroup(name: str, limit_bytes: int | None) -> Iterator[Child]:
    child = Child(name, limit_bytes)
    try:
        yield child
    finally:
        child.remove()


def leaker_argv(*args: str) -> list[str]:
    """The leaking process of pressured.demo.leaker, run with this interpreter."""
    return [sys.executable, "-m", "pressured.demo.leaker", *args]
