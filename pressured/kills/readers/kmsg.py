"""OOM kills from /dev/kmsg (Documentation/ABI/testing/dev-kmsg): the reader.

A read returns one record, or fails with EAGAIN when there is none (the fd is non-blocking),
or with EPIPE when the reader's next record was overwritten; the following read then returns
the oldest record still there. The records are parsed by :mod:`.kmsg_parse`.

Only a character device is read: ``kills.kmsg.path`` at a regular file, a FIFO or a
directory makes the source inactive with that reason (epoll refuses a regular file, and the
daemon must not stop over a source it can do without).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

from pressured.kills.readers.kmsg_parse import KmsgOomParser, KmsgRecord, parse_kmsg_record
from pressured.model import SOURCE_KMSG, KillRecord

log = logging.getLogger("pressured.kills.readers.kmsg")

KMSG_READ_SIZE = 16384
"""A record is at most CONSOLE_EXT_LOG_MAX (8 KiB); a smaller buffer makes read() fail EINVAL."""


def available(path: str = "/dev/kmsg") -> tuple[bool, str]:
    """Whether ``path`` can be read, and why not (dmesg_restrict without CAP_SYSLOG, not the
    kernel's log device, ...)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EPERM, errno.EACCES):
            hint = " (kernel.dmesg_restrict=1 needs CAP_SYSLOG)"
        return False, f"{path}: {exc.strerror}{hint}"
    try:
        why_not = not_a_kmsg_device(fd, path)
    finally:
        os.close(fd)
    if why_not:
        return False, why_not
    return True, f"{path} is readable"


def not_a_kmsg_device(fd: int, path: str) -> str | None:
    """Why the open ``fd`` cannot be the kernel's log (/dev/kmsg is a character device: a
    regular file, a FIFO or a directory would never wake epoll, or be refused by it), or None.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISCHR(mode):
        return None
    kind = {
        stat.S_IFREG: "a regular file",
        stat.S_IFDIR: "a directory",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFBLK: "a block device",
    }.get(stat.S_IFMT(mode), "not a device")
    return (
        f"kills.kmsg.path: {path} is {kind}, not a character device like /dev/kmsg "
        "(the kernel's log)"
    )


ReadFn = Callable[[int, int], bytes]


class KmsgReader:
    """Non-blocking /dev/kmsg reader (a KillSource): register ``fds()`` for EPOLLIN, then
    ``read()``.

    Starts after the newest record (SEEK_END) unless ``replay``: then every record still in
    the kernel's buffer is read once, with its time estimated from its timestamp. With
    ``since_usec`` (a kmsg timestamp: microseconds of the kernel's clock since boot) only the
    records from then on are replayed: the daemon passes its own start, so a kill while it was
    starting (imports, arming hundreds of cgroups) is still reported.
    The ``read`` argument is the read(2) to use; tests pass one that raises EPIPE, which
    cannot be forced on the real device without flooding the machine's log.
    """

    name = SOURCE_KMSG
    poll_interval: float | None = None

    def __init__(
        self,
        path: str = "/dev/kmsg",
        replay: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        read: ReadFn = os.read,
        since_usec: int | None = None,
    ) -> None:
        self.path = path
        self.replay = replay
        self._clock = clock
        self._wall = wall_clock
        self._read = read
        self.parser = KmsgOomParser()
        self.overruns = 0
        self.errors = 0
        self.malformed = 0
        self.records_read = 0
        self._since = None if replay else since_usec
        self._replaying = replay or since_usec is not None
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._why_not = not_a_kmsg_device(self._fd, path)
        if self._why_not:
            # inactive from the start, with the reason (KillSources.add keeps only that)
            os.close(self._fd)
            self._fd = -1
            return
        if not self._replaying:
            try:
                os.lseek(self._fd, 0, os.SEEK_END)
            except OSError:
                os.close(self._fd)
                raise

    @property
    def status(self) -> tuple[bool, str]:
        if self._why_not:
            return False, self._why_not
        if self._fd < 0:
            return False, f"{self.path}: closed"
        return True, f"reading {self.path}" + (" (replaying)" if self.replay else "")

    def fds(self) -> list[int]:
        return [self._fd] if self._fd >= 0 else []

    @property
    def lost(self) -> int:
        """Records overwritten before they could be read."""
        return self.parser.gaps

    @property
    def problems(self) -> dict[str, int]:
        return {
            "lost": self.lost,
            "overrun": self.overruns,
            "read_error": self.errors,
            "malformed": self.malformed,
        }

    def read(self) -> list[KillRecord]:
        """Drain every record ready now; kills found among them."""
        out: list[KillRecord] = []
        while self._fd >= 0:
            try:
                data = self._read(self._fd, KMSG_READ_SIZE)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # dev-kmsg: our position was overwritten; the next read goes on from the
                # oldest record left, and the sequence gap counts what was lost
                self.overruns += 1
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                # not one of the documented outcomes: say so once per drain, keep the daemon
                self.errors += 1
                log.warning("%s: read failed: %s", self.path, exc.strerror)
                break
            if not data:
                break
            rec = parse_kmsg_record(data)
            if rec is None:
                self.malformed += 1
                continue
            if self._since is not None and rec.usec < self._since:
                continue  # before the daemon started: not ours to report
            self.records_read += 1
            now, wall = self._clock(), self._wall()
            if self._replaying:
                now, wall = self._estimate_past(rec, now, wall)
            for kill in self.parser.feed(rec, time=now, wall=wall):
                out.append(kill)
        self._replaying = False
        self._since = None
        return out

    @staticmethod
    def _estimate_past(rec: KmsgRecord, now: float, wall: float) -> tuple[float, float]:
        # printk stamps records with local_clock(), close to CLOCK_MONOTONIC; only a
        # replayed record needs it (live ones are stamped when read: the two clocks drift)
        age = max(0.0, time.clock_gettime(time.CLOCK_MONOTONIC) - rec.usec / 1e6)
        return now - age, wall - age

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
