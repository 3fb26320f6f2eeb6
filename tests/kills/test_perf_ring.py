"""The native perf ring reader (csrc/perf.c) over a fake ring: a header page and data pages
in an anonymous mmap, written here as the kernel writes a tracepoint event's ring. The real
ring is covered by test_tracepoint.py's kernel tests; the fake also lets a test write records
a real kernel never writes."""

from __future__ import annotations

import errno
import mmap
import struct
from collections.abc import Iterator

import pytest

from pressured import native

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
        struct.pack_into("<Q", self.mem, DATA_HEAD, self.head if head is None else head)

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
    assert ring.reader.samples() == []
    ring.sample(payload(12, 1))
    ring.record(PERF_RECORD_LOST, struct.pack("<QQ", 77, 3))
    ring.sample(payload(100, 2))
    ring.publish()
    assert ring.reader.samples() == [payload(12, 1), payload(100, 2)]
    assert ring.reader.lost == 3
    assert ring.tail == ring.head
    assert ring.reader.samples() == []


@pytest.mark.parametrize("back", [4, 12, 30])
def test_fake_ring_records_across_the_end_of_the_area(ring: FakeRing, back: int) -> None:
    """Records that wrap past the end of the data area (header split, size word split,
    payload split) come back whole and in order."""
    start = 5 * ring.data_len - back  # positions run on; the area is position % data_len
    ring.start_at(start)
    ring.sample(payload(28, 3))
    ring.sample(payload(60, 4))
    ring.publish()
    assert ring.reader.samples() == [payload(28, 3), payload(60, 4)]
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
