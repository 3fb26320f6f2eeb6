"""The pipe between the daemon and its Lua worker: frames, each a JSON object and a blob.

    frame = json_len (u32, big-endian) | blob_len (u32) | JSON object (UTF-8) | blob

Lua strings are bytes: the one byte string a message carries (storage data) travels as the blob,
everything else as JSON. The daemon's end (``Channel``) never waits past a deadline: its file
descriptors are non-blocking and it waits in poll(2), which releases the GIL, so a worker that
is stuck or dead never holds the daemon. It also refuses a frame larger than ``max_frame``. The
worker's end (``WorkerChannel``) blocks: the worker has nothing else to do.

Messages (``op``):

    daemon -> worker   init, load, run, exit; reply (to a storage call)
    worker -> daemon   done (ends init, load and run), log, storage (a call the daemon answers)

A failure the daemon hands back for a storage call crosses as ``error_info`` and is raised in
the worker again by ``raise_error``, the same class where it can be.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Mapping
from typing import IO, Any, NoReturn

from pressured import errors

HEADER = struct.Struct(">II")
_READ_CHUNK = 1 << 20


class ChannelClosed(Exception):
    """The other end closed the pipe: the worker died, or the daemon went away."""


class ChannelTimeout(Exception):
    """The deadline passed before the frame was sent or received in full."""


class ProtocolError(Exception):
    """A frame that is too big, or not a JSON object."""


def _plain(value: Any) -> Any:
    """JSON for what json does not know: any Mapping, sets, tuples; anything else as text."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _encode(msg: dict[str, Any], blob: bytes) -> bytes:
    data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, default=_plain).encode()
    return HEADER.pack(len(data), len(blob)) + data


def _decode(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        msg = json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"expected a JSON object, got {type(msg).__name__}")
    return msg


class Channel:
    """The daemon's end: ``rfd`` reads the worker's frames, ``wfd`` writes to it."""

    def __init__(self, rfd: int, wfd: int, max_frame: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.max_frame = max_frame
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self._buf = bytearray()

    def send(self, msg: dict[str, Any], blob: bytes, deadline: float) -> None:
        for part in (_encode(msg, blob), blob):
            view = memoryview(part)
            while view:
                try:
                    n = os.write(self.wfd, view)
                except BlockingIOError:
                    self._wait(self.wfd, select.POLLOUT, deadline)
                    continue
                except (BrokenPipeError, ConnectionResetError) as exc:
                    raise ChannelClosed("the worker closed its end of the pipe") from exc
                view = view[n:]

    def recv(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            self._wait(self.rfd, select.POLLIN, deadline)
            try:
                chunk = os.read(self.rfd, _READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                raise ChannelClosed("the worker closed its end of the pipe")
            self._buf += chunk

    def _frame(self) -> tuple[dict[str, Any], bytes] | None:
        if len(self._buf) < HEADER.size:
            return None
        json_len, blob_len = HEADER.unpack_from(self._buf)
        if json_len + blob_len > self.max_frame:
            raise ProtocolError(
                f"a frame of {json_len + blob_len} bytes (at most {self.max_frame} allowed)"
            )
        end = HEADER.size + json_len + blob_len
        if len(self._buf) < end:
            return None
        view = memoryview(self._buf)
        try:
            msg = _decode(view[HEADER.size : HEADER.size + json_len])
            blob = bytes(view[HEADER.size + json_len : end])
        finally:
            view.release()
        del self._buf[:end]
        return msg, blob

    @staticmethod
    def _wait(fd: int, events: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChannelTimeout
        poller = select.poll()
        poller.register(fd, events)
        poller.poll(max(1, int(left * 1000) + 1))


class WorkerChannel:
    """The worker's end, blocking: it reads requests and replies from ``rfile`` and writes its
    answers, log records and calls to ``wfile``."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self.rfile = rfile
        self.wfile = wfile

    def send(self, msg: dict[str, Any], blob: bytes = b"") -> None:
        try:
            self.wfile.write(_encode(msg, blob))
            if blob:
                self.wfile.write(blob)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError) as exc:
            raise ChannelClosed("the daemon closed its end of the pipe") from exc

    def recv(self) -> tuple[dict[str, Any], bytes]:
        header = self._read(HEADER.size)
        json_len, blob_len = HEADER.unpack(header)
        msg = _decode(self._read(json_len))
        return msg, self._read(blob_len) if blob_len else b""

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ChannelClosed("the daemon closed its end of the pipe")
        return data


def error_info(exc: BaseException) -> dict[str, Any]:
    """What crosses the pipe of a failure: its class name, text and, for an OSError, errno."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno is not None:
        info["errno"] = exc.errno
        info["strerror"] = exc.strerror
        if exc.filename is not None:
            info["filename"] = str(exc.filename)
    return info


def raise_error(info: Any) -> NoReturn:
    """Raise again, in the worker, a failure ``error_info`` described: an OSError with its errno
    (so its subclass and text are the same), a pressured error of the same class, else a
    StorageError naming the class."""
    if not isinstance(info, dict):
        raise errors.StorageError(f"storage failed: {str(info)[:200]}")
    message = str(info.get("message", ""))
    errno = info.get("errno")
    if isinstance(errno, int):
        filename = info.get("filename")
        strerror = str(info.get("strerror"))
        if filename is None:
            raise OSError(errno, strerror)
        raise OSError(errno, strerror, str(filename))
    cls = getattr(errors, str(info.get("type")), None)
    if isinstance(cls, type) and issubclass(cls, errors.PressuredError):
        try:
            exc = cls(message)
        except TypeError:  # a class with another signature
            exc = errors.StorageError(message)
        raise exc
    raise errors.StorageError(f"{info.get('type')}: {message}")
