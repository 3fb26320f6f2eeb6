"""The /dev/kmsg reader: draining, EPIPE, EAGAIN, fragments across wake-ups; then the real
/dev/kmsg of this machine, and a real OOM kill read through epoll (marker kernel)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from pressured import native
from pressured.kills.readers.kmsg import KmsgReader, available
from pressured.model import KillRecord

from . import oom_kill_in, v1_child, v1_oom_skip_reason


class FakeKmsgRead:
    """Stands in for read(2) on /dev/kmsg where the kernel's behaviour cannot be forced here
    (overwritten records need the log buffer to overflow). Each read returns one queued
    record or raises the queued error; an empty queue is EAGAIN."""

    def __init__(self, items: Iterable[bytes | OSError]) -> None:
        self.items = list(items)
        self.sizes: list[int] = []

    def push(self, *items: bytes | OSError) -> None:
        self.items.extend(items)

    def __call__(self, fd: int, size: int) -> bytes:
        self.sizes.append(size)
        if not self.items:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        item = self.items.pop(0)
        if isinstance(item, OSError):
            raise item
        return item


STAND_IN = "/dev/null"
"""A character device to open in place of /dev/kmsg (the reader refuses any other kind of
file); the fake read supplies the records."""


def reader_with(fake: FakeKmsgRead, replay: bool = False) -> KmsgReader:
    return KmsgReader(STAND_IN, replay=replay, read=fake)


KILL = (
    b"3,%d,%d,-;Memory cgroup out of memory: Killed process %d (app) total-vm:8kB, "
    b"anon-rss:4kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0\n"
)


def test_drains_until_eagain() -> None:
    fake = FakeKmsgRead(
        [
            b"6,1,10,-;hello\n SUBSYSTEM=x\n",
            KILL % (2, 20, 41),
            KILL % (3, 30, 42),
        ]
    )
    reader = reader_with(fake)
    kills = reader.read()
    assert [k.pid for k in kills] == [41, 42]
    assert reader.records_read == 3
    assert reader.read() == []
    assert all(size >= 8192 for size in fake.sizes)  # a record can be 8 KiB: no EINVAL
    reader.close()


def test_epipe_counts_and_goes_on() -> None:
    fake = FakeKmsgRead(
        [
            KILL % (5, 10, 1),
            BrokenPipeError(32, "Broken pipe"),  # records 6..9 overwritten before we read them
            KILL % (10, 50, 2),
        ]
    )
    reader = reader_with(fake)
    assert [k.pid for k in reader.read()] == [1, 2]
    assert reader.overruns == 1
    assert reader.lost == 4
    assert reader.problems == {"lost": 4, "overrun": 1, "read_error": 0, "malformed": 0}
    reader.close()


def test_malformed_records_are_skipped() -> None:
    fake = FakeKmsgRead([b"nonsense", b"", KILL % (1, 1, 9)])
    reader = reader_with(fake)
    # an empty read ends the drain (end of file on a non-kmsg path); the next drain goes on
    assert reader.read() == []
    assert reader.malformed == 1
    assert [k.pid for k in reader.read()] == [9]
    assert reader.problems == {"lost": 0, "overrun": 0, "read_error": 0, "malformed": 1}
    reader.close()


def test_a_timestamp_too_big_for_a_float_is_not_a_record() -> None:
    # found by tests/kills/test_kmsg_fuzz.py: replaying a record whose usec has 4000 digits
    # raised OverflowError (int too large to convert to float) out of read()
    huge = b"9" * 4000
    fake = FakeKmsgRead(
        [b"4,700,%s,-;app invoked oom-killer: order=0\n" % huge, KILL % (701, 9, 7)]
    )
    reader = reader_with(fake, replay=True)
    assert [k.pid for k in reader.read()] == [7]
    assert reader.malformed == 1
    reader.close()


def test_a_fragment_waits_for_the_next_wakeup() -> None:
    fake = FakeKmsgRead(
        [
            b"4,1,100,-;app invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, "
            b"oom_score_adj=0\n",
            b"6,2,200,c;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0"
            b",oom_memcg=/a,task_memcg=\n",
        ]
    )
    reader = reader_with(fake)
    assert reader.read() == []
    fake.push(
        b"6,3,210,-;/a/b,task=app,pid=5,uid=0\n",
        b"3,4,300,-;Memory cgroup out of memory: Killed process 5 (app) total-vm:1kB\n",
    )
    kills = reader.read()
    assert [(k.pid, k.cgroup) for k in kills] == [(5, "/a/b")]
    reader.close()


def test_times_come_from_the_clocks() -> None:
    fake = FakeKmsgRead([KILL % (1, 1, 3)])
    reader = KmsgReader(STAND_IN, clock=lambda: 42.0, wall_clock=lambda: 1e9, read=fake)
    (kill,) = reader.read()
    assert (kill.time, kill.wall) == (42.0, 1e9)
    reader.close()


def test_replayed_records_are_dated_in_the_past() -> None:
    boot_s = time.clock_gettime(time.CLOCK_MONOTONIC)
    # printed at boot + 1 s: about boot_s - 1 seconds ago
    fake = FakeKmsgRead([KILL % (1, 1_000_000, 3)])
    reader = KmsgReader(
        STAND_IN, replay=True, clock=lambda: boot_s, wall_clock=lambda: 1e9, read=fake
    )
    (kill,) = reader.read()
    assert kill.time == pytest.approx(1.0, abs=0.5)
    assert kill.wall == pytest.approx(1e9 - boot_s + 1.0, abs=0.5)
    # after the first drain, records are live: stamped when read
    fake.push(KILL % (2, 2_000_000, 4))
    (live,) = reader.read()
    assert live.time == boot_s
    reader.close()


def test_since_start_replays_only_records_from_then_on() -> None:
    """A kill while the daemon was starting is in kmsg's buffer: read back from the daemon's
    start, nothing older."""
    started = 5_000_000  # the daemon started 5 s after boot
    fake = FakeKmsgRead([KILL % (1, 4_000_000, 3), KILL % (2, 6_000_000, 4)])
    reader = KmsgReader(STAND_IN, since_usec=started, read=fake)
    assert [k.pid for k in reader.read()] == [4]
    # from then on live, whatever their stamps
    fake.push(KILL % (3, 1, 5))
    assert [k.pid for k in reader.read()] == [5]
    reader.close()


def test_own_start_is_before_now_on_the_kmsg_clock() -> None:
    from pressured.kernel.procfs import own_start_usec

    started = own_start_usec()
    assert started is not None
    now = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
    # this test process started before now, and not before boot
    assert 0 < started <= now


def test_available_names_the_problem(tmp_path: Path) -> None:
    ok, why = available(str(tmp_path / "missing"))
    assert not ok
    assert "missing" in why and "No such file" in why


# --------------------------------------------------------------------------- the real device
def _kmsg_skip() -> str | None:
    ok, why = available("/dev/kmsg")
    return None if ok else why


needs_kmsg = pytest.mark.skipif(_kmsg_skip() is not None, reason=str(_kmsg_skip()))


@needs_kmsg
def test_real_kmsg_starts_at_the_end() -> None:
    reader = KmsgReader("/dev/kmsg")
    try:
        before = reader.records_read
        reader.read()
        # whatever the kernel printed since the open, never the whole buffer
        assert reader.records_read - before < 50
    finally:
        reader.close()


@needs_kmsg
def test_real_kmsg_replay_parses_everything() -> None:
    reader = KmsgReader("/dev/kmsg", replay=True)
    try:
        kills = reader.read()
        assert reader.records_read > 0
        assert reader.malformed == 0
        for k in kills:
            assert k.pid is not None and k.pid > 0
            assert k.time <= time.monotonic()
    finally:
        reader.close()


@pytest.mark.kernel
@needs_kmsg
def test_real_oom_kill_read_through_epoll() -> None:
    skip = v1_oom_skip_reason()
    if skip:
        pytest.skip(skip)
    reader = KmsgReader("/dev/kmsg")
    ep = native.Epoll()
    try:
        (fd,) = reader.fds()
        ep.add(fd, native.EPOLLIN, 1)
        with v1_child("pk-kmsg") as cg:
            victim = oom_kill_in(cg)
            assert victim.returncode == -9
            found: list[KillRecord] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not found:
                if ep.wait(1000):
                    found = [k for k in reader.read() if k.pid == victim.pid]
        (kill,) = found
        assert kill.comm == victim.comm
        assert kill.cgroup == victim.relpath
        assert kill.extra["oom_memcg"] == victim.relpath
        assert kill.rss["anon_rss"] > 0 and kill.rss["total_vm"] > 0
        assert kill.uid == os.geteuid()
    finally:
        ep.close()
        reader.close()
