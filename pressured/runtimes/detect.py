"""Which runtime a process runs: a HotSpot JVM, Node.js or Go, from /proc alone.

- jvm: ``libjvm.so`` mapped (/proc/PID/maps); every HotSpot launcher loads it.
- node: the executable is named ``node`` or ``nodejs``, or ``libnode.so`` is mapped (Debian's
  node links it).
- go: the executable carries Go's build information (the ``\\xff Go buildinf:`` header of its
  ``.go.buildinfo`` section, which ``go version -m`` reads), looked for in its first
  ``GO_SCAN_BYTES``.

Nothing here signals or attaches: sending SIGQUIT or SIGUSR1 to a process that is not the
runtime that handles it would kill it, so both capture paths ask ``detect`` first, through
``hold``: the process is held (kernel.pidfd) before /proc is read, and a signal goes through
that handle, never to a pid number that another process may have taken since.
"""

from __future__ import annotations

import os
from typing import Literal

from pressured.errors import ActionError
from pressured.kernel.pidfd import ProcessHandle, open_process

Runtime = Literal["jvm", "node", "go"]

GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
GO_SCAN_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
NODE_NAMES = frozenset({"node", "nodejs"})


def detect(pid: int, proc_root: str = "/proc", *, go: bool = True) -> Runtime | None:
    """The runtime of ``pid``, or None when it is none of them or cannot be read.

    ``go=False`` skips reading the executable: heapdump's ``auto`` needs only to know a JVM or
    Node.js, since pprof over HTTP (which any program may serve) is its fallback anyway."""
    libs = mapped_libraries(pid, proc_root)
    if any(lib.startswith("libjvm.") for lib in libs):
        return "jvm"
    if any(lib.startswith("libnode.") for lib in libs) or executable_name(pid, proc_root) in (
        NODE_NAMES
    ):
        return "node"
    if go and has_go_buildinfo(pid, proc_root):
        return "go"
    return None


NAMES: dict[str, str] = {
    "jvm": "a JVM (no libjvm mapped)",
    "node": "a Node.js process",
    "go": "a Go program",
}


def hold(
    pid: int, proc_root: str, runtime: Runtime, sig: str, error: type[ActionError]
) -> ProcessHandle:
    """Process ``pid`` held (kernel.pidfd.open_process) once /proc says it runs ``runtime``.

    Opened first, detected next, alive after that: what ``detect`` read was that very process,
    not one that took its number, and a signal sent through the handle reaches it or nobody.
    Else ``error`` saying why, and that ``sig`` was not sent. The caller closes the handle."""
    process = open_process(pid, proc_root)
    if process is None:
        raise error(f"pid {pid} is gone; no {sig} sent")
    try:
        found = detect(pid, proc_root, go=runtime == "go")
        why = process.refusal() or (None if process.alive() else "is gone")
        if why is None and found != runtime:
            why = f"is not {NAMES[runtime]}"
        if why is not None:
            raise error(f"pid {pid} {why}; no {sig} sent")
    except BaseException:
        process.close()
        raise
    return process


def mapped_libraries(pid: int, proc_root: str = "/proc") -> set[str]:
    """The base names of the files mapped into ``pid`` (empty when maps cannot be read)."""
    names: set[str] = set()
    try:
        with open(f"{proc_root}/{pid}/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    names.add(fields[5].rstrip("\n").rsplit("/", 1)[-1])
    except OSError:
        return set()
    return names


def executable_name(pid: int, proc_root: str = "/proc") -> str | None:
    try:
        target = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return None
    return target.removesuffix(" (deleted)").rsplit("/", 1)[-1]


def has_go_buildinfo(pid: int, proc_root: str = "/proc") -> bool:
    tail = b""
    seen = 0
    try:
        with open(f"{proc_root}/{pid}/exe", "rb") as f:
            while seen < GO_SCAN_BYTES:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return False
                if GO_BUILDINFO_MAGIC in tail + chunk:
                    return True
                tail = chunk[-len(GO_BUILDINFO_MAGIC) :]
                seen += len(chunk)
    except OSError:
        return False
    return False
