"""The only importer of pressured._native (one FFI gate: everything else is typed).

Typed wrappers over the C shim. Every C function returns 0 or -errno; here a negative return
becomes ``OSError(errno, "<what> (from <syscall>)", path)``.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pressured import _native  # type: ignore[attr-defined]

_ffi: Any = _native.ffi
_lib: Any = _native.lib

EPOLLIN: int = _lib.EPOLLIN
EPOLLPRI: int = _lib.EPOLLPRI
EPOLLERR: int = _lib.EPOLLERR
EPOLLHUP: int = _lib.EPOLLHUP

PSI_WINDOW_UNPRIVILEGED_US = 2_000_000
"""psi.rst: without CAP_SYS_RESOURCE the window must be a multiple of 2 s (measured: EINVAL)."""


def _error(rc: int, syscall: str, path: str | None = None, detail: str = "") -> OSError:
    code = -rc
    msg = f"{detail or os.strerror(code)} (from {syscall})"
    if path is None:
        return OSError(code, msg)
    return OSError(code, msg, path)


def _check(rc: int, syscall: str, path: str | None = None) -> None:
    if rc < 0:
        raise _error(rc, syscall, path)


def _b(path: str) -> bytes:
    return os.fsencode(path)


def open_read(path: str) -> int:
    out = _ffi.new("int *")
    _check(_lib.pn_open_read(_b(path), out), "open", path)
    return int(out[0])


def close(fd: int) -> None:
    _check(_lib.pn_close(fd), "close")


def pread(fd: int, size: int = 4096, path: str | None = None) -> bytes:
    buf = _ffi.new("char[]", size)
    n = _ffi.new("ssize_t *")
    _check(_lib.pn_pread(fd, buf, size, n), "pread", path)
    return bytes(_ffi.buffer(buf, n[0]))


class BatchReader:
    """Reads many small kept-open files in one native call (pread at offset 0 each)."""

    MAX_WHOLE = 1 << 24
    """A file that does not fit its slot is read again whole, up to this many bytes."""

    def __init__(self, stride: int = 512) -> None:
        self._stride = stride
        self._cap = 0
        self._buf: Any = None
        self._lens: Any = None
        self._fds: Any = None
        self._n = _ffi.new("ssize_t *")

    def read(self, fds: Sequence[int]) -> list[bytes | int]:
        """Contents per fd, or a positive errno for a file that failed.

        A file longer than the stride allows is read again on its own with a buffer large
        enough for all of it (EFBIG past ``MAX_WHOLE``): contents are never cut short.
        """
        n = len(fds)
        if n == 0:
            return []
        if n > self._cap:
            self._cap = max(n, self._cap * 2)
            self._buf = _ffi.new("char[]", self._cap * self._stride)
            self._lens = _ffi.new("ssize_t[]", self._cap)
            self._fds = _ffi.new("int[]", self._cap)
        for i, fd in enumerate(fds):
            self._fds[i] = fd
        _check(_lib.pn_read_batch(self._fds, n, self._buf, self._stride, self._lens), "pread")
        out: list[bytes | int] = []
        raw = _ffi.buffer(self._buf, n * self._stride)
        for i in range(n):
            ln = int(self._lens[i])
            if ln == -_errno.EFBIG:
                out.append(self._read_whole(fds[i]))
            elif ln < 0:
                out.append(-ln)
            else:
                start = i * self._stride
                out.append(bytes(raw[start : start + ln]))
        return out

    def _read_whole(self, fd: int) -> bytes | int:
        size = 2 * self._stride
        while size <= self.MAX_WHOLE:
            buf = _ffi.new("char[]", size)
            rc = int(_lib.pn_pread(fd, buf, size, self._n))
            if rc < 0:
                return -rc
            if self._n[0] < size:
                return bytes(_ffi.buffer(buf, self._n[0]))
            size *= 2
        return _errno.EFBIG


class Epoll:
    """One epoll set; callers register fds under a 64-bit token."""

    def __init__(self) -> None:
        out = _ffi.new("int *")
        _check(_lib.pn_epoll_create(out), "epoll_create1")
        self.fd = int(out[0])
        self._events = _ffi.new("struct pn_event[64]")
        self._n = _ffi.new("int *")

    def add(self, fd: int, events: int, token: int) -> None:
        _check(_lib.pn_epoll_add(self.fd, fd, events, token), "epoll_ctl(ADD)")

    def remove(self, fd: int) -> None:
        rc = _lib.pn_epoll_del(self.fd, fd)
        if rc in (-_errno.ENOENT, -_errno.EBADF):
            return
        _check(rc, "epoll_ctl(DEL)")

    def wait(self, timeout_ms: int) -> list[tuple[int, int]]:
        """(token, mask) pairs; an empty list on timeout or when a signal interrupted."""
        rc = _lib.pn_epoll_wait(self.fd, self._events, 64, timeout_ms, self._n)
        if rc == -_errno.EINTR:
            return []
        _check(rc, "epoll_wait")
        return [(int(self._events[i].token), int(self._events[i].mask)) for i in range(self._n[0])]

    def close(self) -> None:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class PsiTrigger:
    fd: int
    path: str
    kind: str
    stall_us: int
    window_us: int
    requested_window_us: int

    @property
    def rounded(self) -> bool:
        return self.window_us != self.requested_window_us


def arm_psi_trigger(path: str, kind: str, stall_us: int, window_us: int) -> PsiTrigger:
    """Open a pressure file and arm one trigger on it; poll it for EPOLLPRI only.

    Without CAP_SYS_RESOURCE the kernel rejects windows that are not a multiple of 2 s with
    EINVAL: then the window is rounded up to the next multiple and the caller is told through
    ``PsiTrigger.window_us`` (it logs the change once).
    """
    if kind not in ("some", "full"):
        raise ValueError(f"PSI trigger kind must be 'some' or 'full', not {kind!r}")
    if stall_us <= 0 or window_us <= 0 or stall_us > window_us:
        raise ValueError(f"PSI trigger needs 0 < stall ({stall_us}) <= window ({window_us})")
    out = _ffi.new("int *")
    _check(_lib.pn_psi_open(_b(path), out), "open", path)
    fd = int(out[0])
    effective = window_us
    rc = _lib.pn_psi_arm(fd, kind == "full", stall_us, window_us)
    if rc == -_errno.EINVAL and window_us % PSI_WINDOW_UNPRIVILEGED_US:
        effective = -(-window_us // PSI_WINDOW_UNPRIVILEGED_US) * PSI_WINDOW_UNPRIVILEGED_US
        rc = _lib.pn_psi_arm(fd, kind == "full", stall_us, effective)
    if rc < 0:
        _lib.pn_close(fd)
        _check(rc, "write(psi trigger)", path)
    return PsiTrigger(fd, path, kind, stall_us, effective, window_us)


def register_v1_event(cgroup_dir: str, target_file: str, args: str = "", efd: int = -1) -> int:
    """Register an eventfd through cgroup.event_control; returns the eventfd.

    With ``efd`` (from ``eventfd()``) the registration is made on that eventfd, which may
    already carry others: one fd wakes for all of them, and closing it removes them all.
    Without, a new eventfd is made for this registration alone.
    """
    control = os.path.join(cgroup_dir, "cgroup.event_control")
    target = os.path.join(cgroup_dir, target_file)
    if efd >= 0:
        rc = _lib.pn_v1_register_on(efd, _b(control), _b(target), args.encode())
        _check(rc, "write(cgroup.event_control)", target)
        return efd
    out = _ffi.new("int *")
    _check(
        _lib.pn_v1_register(_b(control), _b(target), args.encode(), out),
        "write(cgroup.event_control)",
        target,
    )
    return int(out[0])


def eventfd() -> int:
    """A non-blocking, close-on-exec eventfd for ``register_v1_event(efd=...)``."""
    out = _ffi.new("int *")
    _check(_lib.pn_eventfd_create(out), "eventfd")
    return int(out[0])


def drain_eventfd(fd: int) -> int:
    out = _ffi.new("uint64_t *")
    _check(_lib.pn_eventfd_drain(fd, out), "read(eventfd)")
    return int(out[0])


class PerfTracepoint:
    """A tracepoint counted on one CPU through perf_event_open, samples read from its ring."""

    def __init__(self, tracepoint_id: int, cpu: int, ring_pages: int = 8) -> None:
        handle = _ffi.new("struct pn_perf **")
        fd = _ffi.new("int *")
        _check(
            _lib.pn_perf_open(tracepoint_id, cpu, ring_pages, handle, fd),
            "perf_event_open",
            f"tracepoint id {tracepoint_id} cpu {cpu}",
        )
        self._setup(handle[0], int(fd[0]), cpu)

    @classmethod
    def over_buffer(cls, buf: Any, cpu: int = -1) -> PerfTracepoint:
        """For tests: a ring over ``buf``, writable memory laid out like the perf mmap (a
        struct perf_event_mmap_page, then the data area where its data_offset and data_size
        say), 8-byte aligned (an anonymous mmap). Read exactly as a kernel ring is, so a test
        can write records a real kernel never writes. ``buf`` stays in use until ``close()``.
        """
        keep = _ffi.from_buffer(buf, require_writable=True)
        handle = _ffi.new("struct pn_perf **")
        rc = _lib.pn_perf_attach_buffer(keep, _ffi.sizeof(keep), handle)
        if rc < 0:
            _ffi.release(keep)
            _check(rc, "perf ring", "caller buffer")
        self = cls.__new__(cls)
        self._setup(handle[0], -1, cpu)
        self._keep = keep
        return self

    def _setup(self, handle: Any, fd: int, cpu: int) -> None:
        self._handle: Any = handle
        self._keep: Any = None
        self.fd = fd
        self.cpu = cpu
        self._size = 4096  # grows for a larger sample (bounded by a record's u16 size)
        self._buf = _ffi.new("char[]", self._size)
        self._len = _ffi.new("size_t *")
        self._lost = _ffi.new("uint64_t *")

    def samples(self) -> tuple[list[bytes], OSError | None]:
        """Raw payloads of every sample waiting in the ring, and the error that ended the
        drain early (None when it ran to the end).

        The samples read before an error are always returned with it. A malformed record is
        EIO: the reader cannot find the next record's start, so the rest of the ring (the
        records published so far) is skipped and the next drain starts clean.
        """
        out: list[bytes] = []
        while self._handle is not None:
            rc = _lib.pn_perf_next(self._handle, self._buf, self._size, self._len, self._lost)
            if rc == -_errno.EMSGSIZE:
                self._size = max(int(self._len[0]), 2 * self._size)
                self._buf = _ffi.new("char[]", self._size)
                continue
            if rc < 0:
                return out, self._ring_error(rc)
            if self._len[0] == 0:
                break
            out.append(bytes(_ffi.buffer(self._buf, self._len[0])))
        return out, None

    def _ring_error(self, rc: int) -> OSError:
        detail = ""
        if rc == -_errno.EIO:
            detail = f"malformed record, skipped the rest of the ring ({self._len[0]} bytes)"
        return _error(rc, "perf ring", f"cpu {self.cpu}", detail)

    @property
    def lost(self) -> int:
        return int(self._lost[0])

    def close(self) -> None:
        if self._handle is not None:
            _lib.pn_perf_close(self._handle)
            self._handle = None
            self.fd = -1
        if self._keep is not None:
            _ffi.release(self._keep)
            self._keep = None


IN_CREATE: int = _lib.IN_CREATE
IN_DELETE: int = _lib.IN_DELETE
IN_DELETE_SELF: int = _lib.IN_DELETE_SELF
IN_IGNORED: int = _lib.IN_IGNORED
IN_ISDIR: int = _lib.IN_ISDIR
IN_ONLYDIR: int = _lib.IN_ONLYDIR
IN_MOVED_FROM: int = _lib.IN_MOVED_FROM
IN_MOVED_TO: int = _lib.IN_MOVED_TO
IN_Q_OVERFLOW: int = _lib.IN_Q_OVERFLOW


def read(fd: int, size: int = 65536) -> bytes:
    """read() for position-less fds (inotify, kmsg). Empty bytes when nothing is ready."""
    buf = _ffi.new("char[]", size)
    n = _ffi.new("ssize_t *")
    rc = _lib.pn_read(fd, buf, size, n)
    if rc == -_errno.EAGAIN:
        return b""
    _check(rc, "read")
    return bytes(_ffi.buffer(buf, n[0]))


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    name: str


class Inotify:
    """A non-blocking inotify instance; events are decoded here (struct inotify_event)."""

    def __init__(self) -> None:
        out = _ffi.new("int *")
        _check(_lib.pn_inotify_init(out), "inotify_init1")
        self.fd = int(out[0])

    def add(self, path: str, mask: int) -> int:
        out = _ffi.new("int *")
        _check(_lib.pn_inotify_add(self.fd, _b(path), mask, out), "inotify_add_watch", path)
        return int(out[0])

    def remove(self, wd: int) -> None:
        rc = _lib.pn_inotify_rm(self.fd, wd)
        if rc == -_errno.EINVAL:  # the kernel already dropped it (IN_IGNORED)
            return
        _check(rc, "inotify_rm_watch")

    def events(self) -> list[InotifyEvent]:
        out: list[InotifyEvent] = []
        while True:
            data = read(self.fd)
            if not data:
                return out
            pos = 0
            while pos + 16 <= len(data):
                wd, mask, _cookie, ln = struct.unpack_from("iIII", data, pos)
                raw = data[pos + 16 : pos + 16 + ln]
                out.append(InotifyEvent(wd, mask, os.fsdecode(raw.rstrip(b"\0"))))
                pos += 16 + ln

    def close(self) -> None:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
