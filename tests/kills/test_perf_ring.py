"""The native perf ring reader (csrc/perf.c) over a fake ring: a header page and data pages
in an anonymous mmap, written here as the kernel writes a tracepoint event's ring. The real
ring is covered by test_tracepoint.py's kernel tests; the fake also lets a test write records
a real kernel never writes."""

from __future__ import annotations

import errno
import logging
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from pressured import native
from pressured.kills.readers.tracepoint import MarkVictimSource

from .test_tracepoint import FORMAT_6_18, raw_6_18

pytestmark = pytest.mark.hostile

PAGE = 4096
# struct perf_event_mmap_page (linux/perf_event.h): where the ring's positions and area are
DATA_HEAD, DATA_TAIL, DATA_OFFSET, DATA_SIZE = 1024, 1032, 1040, 1048
PERF_RECORD_LOST, PERF_RECORD_SAMPLE = 2, 9
HEADER = struct.Struct("<IHH")  # struct perf_event_header: type, misc, size


class FakeRing:
    """A fake of the mmap perf_event_open shares for one CPU: the test is the kernel, it
    writes records at data_head and publishes them; the reader consumes them up to data_tail.
    """

    def __init__(self, data_pages: int = 1, cpu: int = 0) -> None:
        self.mem = mmap.mmap(-1, PAGE * (1 + data_pages))
        self.data_len = PAGE * data_pages
        struct.pack_into("<QQ", self.mem, DATA_OFFSET, PAGE, self.data_len)
        self.head = 0
        self.reader = native.PerfTracepoint.over_buffer(self.mem, cpu)

    def start_at(self, pos: int) -> None:
        """An empty ring whose positions are at ``pos`` (as after earlier records)."""
        self.head = pos
        struct.pack_into("<QQ", self.mem, DATA_HEAD, pos, pos)

    def write(self, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.mem[PAGE + (self.head + i) % self.data_len] = byte
        self.head += len(data)

    def record(self, rtype: int, body: bytes, size: int | None = None) -> None:
        self.write(HEADER.pack(rtype, 0, HEADER.size + len(body) if size is None else size))
        self.write(body)

    def sample(self, raw: bytes, *, size: int | None = None, raw_size: int | None = None) -> None:
        """A PERF_SAMPLE_RAW sample: u32 size, then the raw bytes (the kernel pads them so
        that the record stays 8-byte aligned)."""
        assert (4 + len(raw)) % 8 == 0, "pad raw to keep the record 8-byte aligned"
        self.record(
            PERF_RECORD_SAMPLE,
            struct.pack("<I", len(raw) if raw_size is None else raw_size) + raw,
            size,
        )

    def publish(self, head: int | None = None) -> None:
        """Make the records written so far visible (or move data_head to ``head``)."""
        if head is not None:
            self.head = head
        struct.pack_into("<Q", self.mem, DATA_HEAD, self.head)

    @property
    def tail(self) -> int:
        return int(struct.unpack_from("<Q", self.mem, DATA_TAIL)[0])

    def close(self) -> None:
        self.reader.close()
        self.mem.close()


@pytest.fixture
def ring() -> Iterator[FakeRing]:
    r = FakeRing()
    yield r
    r.close()


def payload(n: int, fill: int) -> bytes:
    """n raw bytes (n % 8 == 4) that say which sample they are."""
    return bytes([fill]) * n


def test_fake_ring_samples_and_lost_counts(ring: FakeRing) -> None:
    assert ring.reader.samples() == ([], None)
    ring.sample(payload(12, 1))
    ring.record(PERF_RECORD_LOST, struct.pack("<QQ", 77, 3))
    ring.sample(payload(100, 2))
    ring.publish()
    assert ring.reader.samples() == ([payload(12, 1), payload(100, 2)], None)
    assert ring.reader.lost == 3
    assert ring.tail == ring.head
    assert ring.reader.samples() == ([], None)


def test_fake_empty_sample_does_not_end_the_drain(ring: FakeRing) -> None:
    """A sample without raw bytes (fake: the tracepoint always has some) is passed over, not
    taken for the end of the ring."""
    ring.sample(payload(12, 1))
    ring.record(PERF_RECORD_SAMPLE, struct.pack("<II", 0, 0))
    ring.sample(payload(12, 2))
    ring.publish()
    assert ring.reader.samples() == ([payload(12, 1), payload(12, 2)], None)


def test_sample_larger_than_the_read_buffer_is_read_whole() -> None:
    """The reader starts with a 4 KiB buffer; a larger sample (a tracepoint with long strings)
    is read again with a larger one instead of being consumed and lost."""
    ring = FakeRing(data_pages=4)
    try:
        big = payload(3 * PAGE - 4, 2)
        ring.start_at(ring.data_len - 100)  # and across the end of the area
        ring.sample(payload(12, 1))
        ring.sample(big)
        ring.sample(payload(12, 3))
        ring.publish()
        assert ring.reader.samples() == ([payload(12, 1), big, payload(12, 3)], None)
        assert ring.tail == ring.head
    finally:
        ring.close()


@pytest.mark.parametrize("back", [4, 12, 30])
def test_fake_ring_records_across_the_end_of_the_area(ring: FakeRing, back: int) -> None:
    """Records that wrap past the end of the data area (header split, size word split,
    payload split) come back whole and in order."""
    start = 5 * ring.data_len - back  # positions run on; the area is position % data_len
    ring.start_at(start)
    ring.sample(payload(28, 3))
    ring.sample(payload(60, 4))
    ring.publish()
    assert ring.reader.samples() == ([payload(28, 3), payload(60, 4)], None)
    assert ring.tail == ring.head == start + 40 + 72


def test_fake_ring_layout_is_checked() -> None:
    mem = mmap.mmap(-1, 2 * PAGE)
    try:
        for offset, size in [(0, PAGE), (PAGE, PAGE + 8), (PAGE, 3000), (PAGE, 2 * PAGE)]:
            struct.pack_into("<QQ", mem, DATA_OFFSET, offset, size)
            with pytest.raises(OSError) as info:
                native.PerfTracepoint.over_buffer(mem)
            assert info.value.errno == errno.EINVAL
    finally:
        mem.close()  # a refused buffer is released: the mmap closes


# ------------------------------------------------------------------- records no kernel writes
# The kernel publishes data_head only after whole, well-formed records, so these faults exist
# only in the fake ring. They check that no length read from the ring takes a copy past its
# record or the data area, that the rest of the ring is skipped (data_tail moved to data_head,
# so it is not stuck), and that the samples read before the fault are kept.

STARTS = [0, PAGE - 20]  # at the start of the data area, and wrapping past its end
GOOD = payload(12, 0xAA)


def assert_skipped(
    ring: FakeRing, got: tuple[list[bytes], OSError | None], kept: list[bytes]
) -> None:
    samples, err = got
    assert samples == kept
    assert err is not None and err.errno == errno.EIO
    assert "malformed record, skipped the rest of the ring" in str(err)
    assert "(from perf ring)" in str(err) and err.filename == "cpu 0"
    assert ring.tail == ring.head
    # the ring reads on: the next record the kernel writes comes back
    ring.sample(payload(20, 0xBB))
    ring.publish()
    assert ring.reader.samples() == ([payload(20, 0xBB)], None)


@pytest.mark.parametrize("start", STARTS)
def test_fake_record_larger_than_the_data_area(ring: FakeRing, start: int) -> None:
    ring.start_at(start)
    ring.sample(GOOD)
    ring.sample(payload(12, 1), size=2 * ring.data_len)
    ring.publish(start + ring.data_len)  # the whole area published: the size is still too big
    assert_skipped(ring, ring.reader.samples(), [GOOD])


@pytest.mark.parametrize("start", STARTS)
def test_fake_record_smaller_than_its_header(ring: FakeRing, start: int) -> None:
    ring.start_at(start)
    ring.sample(GOOD)
    ring.record(PERF_RECORD_SAMPLE, struct.pack("<I", 12) + payload(12, 1), size=4)
    ring.sample(payload(12, 2))
    ring.publish()
    assert_skipped(ring, ring.reader.samples(), [GOOD])


@pytest.mark.parametrize("start", STARTS)
def test_fake_raw_size_past_the_record_end(ring: FakeRing, start: int) -> None:
    ring.start_at(start)
    ring.sample(GOOD)
    ring.sample(payload(12, 1), raw_size=200)  # the next record's bytes are not its payload
    ring.sample(payload(60, 2))
    ring.publish()
    assert_skipped(ring, ring.reader.samples(), [GOOD])


@pytest.mark.parametrize("start", STARTS)
def test_fake_record_past_data_head(ring: FakeRing, start: int) -> None:
    ring.start_at(start)
    ring.sample(GOOD)
    ring.sample(payload(12, 1), size=64)  # 24 bytes written and published, 64 claimed
    ring.publish()
    assert_skipped(ring, ring.reader.samples(), [GOOD])


@pytest.mark.parametrize("start", STARTS)
def test_fake_lost_record_without_its_counts(ring: FakeRing, start: int) -> None:
    ring.start_at(start)
    ring.record(PERF_RECORD_LOST, b"")  # the header alone: no id, no count
    ring.sample(payload(12, 1))
    ring.publish()
    assert_skipped(ring, ring.reader.samples(), [])
    assert ring.reader.lost == 0


def test_fake_head_further_ahead_than_the_area(ring: FakeRing) -> None:
    ring.sample(GOOD)
    ring.publish(ring.data_len + 8)
    assert_skipped(ring, ring.reader.samples(), [])


def victim(pid: int) -> bytes:
    return raw_6_18(pid, b"java", [100, 60, 30, 2, 8], 0, 0)


def test_drain_keeps_kills_before_a_malformed_record_and_reads_the_other_rings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "tracing" / "events" / "oom" / "mark_victim"
    events.mkdir(parents=True)
    (events / "format").write_text(FORMAT_6_18)
    rings = {cpu: FakeRing(cpu=cpu) for cpu in (0, 1, 2)}
    source = MarkVictimSource(
        str(tmp_path / "tracing"),
        rings,
        proc=str(tmp_path / "proc"),
        open_ring=lambda _id, cpu, _pages: rings[cpu].reader,
    )
    try:
        rings[0].sample(victim(100))
        rings[0].sample(victim(101), raw_size=500)  # fake: no kernel writes this
        rings[0].sample(victim(102))
        for cpu, pid in ((0, None), (1, 200), (2, 300)):
            if pid is not None:
                rings[cpu].sample(victim(pid))
            rings[cpu].publish()
        with caplog.at_level(logging.WARNING, logger="pressured.kills.readers.tracepoint"):
            kills = source.read()
        assert [k.pid for k in kills] == [100, 200, 300]
        assert source.ring_errors == 1 and source.decode_errors == 0
        (msg,) = [r.getMessage() for r in caplog.records]
        assert msg.startswith("oom:mark_victim ring on cpu 0: malformed record")
        assert msg.endswith("kept the 1 samples read before it")
        rings[0].sample(victim(103))
        rings[0].publish()
        assert [k.pid for k in source.read()] == [103]
    finally:
        source.close()
        for r in rings.values():
            r.close()
