"""native.BatchReader: one native call reads many kept-open files into fixed slots; a file
that does not fit its slot is read again whole, never handed back cut short."""

from __future__ import annotations

import errno
from pathlib import Path

from pressured import native

STAT = b"".join(
    b"%s %d\n" % (k, v)
    for k, v in [
        (b"anon", 104857600),
        (b"file", 52428800),
        (b"kernel", 2097152),
        (b"kernel_stack", 163840),
        (b"pagetables", 409600),
        (b"sock", 0),
        (b"shmem", 0),
        (b"file_mapped", 1048576),
        (b"file_dirty", 0),
        (b"file_writeback", 0),
        (b"inactive_anon", 0),
        (b"active_anon", 104857600),
    ]
)


def test_files_longer_than_the_stride_are_read_whole(tmp_path: Path) -> None:
    stride = 64
    cg = tmp_path / "cg"  # a cgroup-like directory: short counters and a long memory.stat
    cg.mkdir()
    contents = {
        "memory.current": b"157286400\n",
        "memory.stat": STAT,
        "fits": b"a" * (stride - 1),  # the most a slot holds with its NUL
        "one.over": b"b" * stride,
        "big": b"0123456789" * 1000,
        "empty": b"",
    }
    assert len(STAT) > stride
    for name, data in contents.items():
        (cg / name).write_bytes(data)
    fds = [native.open_read(str(cg / name)) for name in contents]
    reader = native.BatchReader(stride)
    try:
        for _ in range(2):  # buffers are reused between calls
            assert reader.read(fds) == list(contents.values())
        # a failing fd still reports its errno, between files read whole
        out = reader.read([fds[1], 987654, fds[4]])
        assert out == [STAT, errno.EBADF, contents["big"]]
        # past the size a file is read whole to, it fails with EFBIG, still not cut short
        reader.MAX_WHOLE = 4096
        assert reader.read(fds[:2] + fds[4:]) == [
            contents["memory.current"],
            STAT,
            errno.EFBIG,
            b"",
        ]
    finally:
        for fd in fds:
            native.close(fd)
