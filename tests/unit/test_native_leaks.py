"""The native core neither leaks memory nor fds over many calls (psutil's test_memleaks idea):
after a warm-up, repeating each call thousands of times must not grow the process's RSS."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable

import pytest

from pressured import native
from pressured.kernel.procfs import count_open_fds

CALLS = 20_000
ALLOWED_GROWTH = 1 << 20  # 1 MiB: allocator noise, far below 20k leaked buffers of any size


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def assert_no_leak(fn: Callable[[], object]) -> None:
    for _ in range(2000):
        fn()
    fds, before = count_open_fds(), rss()
    for _ in range(CALLS):
        fn()
    grown = rss() - before
    assert grown < ALLOWED_GROWTH, f"RSS grew by {grown} bytes over {CALLS} calls"
    assert count_open_fds() == fds


def test_pread_and_batch_reads() -> None:
    fds = [native.open_read("/proc/self/stat") for _ in range(8)]
    reader = native.BatchReader(512)
    try:
        assert_no_leak(lambda: native.pread(fds[0], 512))
        assert_no_leak(lambda: reader.read(fds))
        out = reader.read([*fds, 987654])
        assert isinstance(out[-1], int)  # a bad fd reports its errno, the others read
        assert all(isinstance(x, bytes) and x for x in out[:-1])
    finally:
        for fd in fds:
            native.close(fd)


def test_open_close_and_epoll() -> None:
    ep = native.Epoll()
    try:

        def cycle() -> None:
            fd = native.open_read("/proc/self/mounts")  # a pollable proc file
            ep.add(fd, native.EPOLLIN, 1)
            ep.wait(0)
            ep.remove(fd)
            native.close(fd)

        assert_no_leak(cycle)
    finally:
        ep.close()


def test_eventfd_and_inotify(tmp_path: object) -> None:
    ino = native.Inotify()
    try:

        def cycle() -> None:
            wd = ino.add(str(tmp_path), native.IN_CREATE)
            ino.remove(wd)
            ino.events()

        assert_no_leak(cycle)
    finally:
        ino.close()


def test_perf_ring_over_a_buffer() -> None:
    mem = mmap.mmap(-1, 2 * 4096)
    struct.pack_into("<QQ", mem, 1040, 4096, 4096)  # perf_event_mmap_page data_offset, size
    try:

        def cycle() -> None:
            ring = native.PerfTracepoint.over_buffer(mem)
            ring.samples()
            ring.close()

        assert_no_leak(cycle)
    finally:
        mem.close()


def test_errors_name_syscall_and_path() -> None:
    with pytest.raises(FileNotFoundError) as info:
        native.open_read("/nonexistent/pressured")
    assert "(from open)" in str(info.value)
    assert info.value.filename == "/nonexistent/pressured"
    with pytest.raises(OSError, match=r"from write\(cgroup.event_control\)"):
        native.register_v1_event("/nonexistent/cg", "memory.usage_in_bytes", "1")
    with pytest.raises(ValueError, match="stall"):
        native.arm_psi_trigger("/proc/pressure/memory", "some", 5, 1)
