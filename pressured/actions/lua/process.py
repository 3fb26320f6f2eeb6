"""The daemon's side of one Lua worker (worker.py): start it, send it a request, serve its
storage calls and log records while it works, and kill it when it does not answer in time.

Every wait is bounded (protocol.Channel): a request is given ``timeout_s``; time the daemon
spends on the worker's storage calls is added to it (the worker waits meanwhile, and its own
budget already counts it). When the time is up the worker is killed (SIGKILL) and reaped; when
it dies or breaks the protocol it is reaped too. Either way ``request`` raises, and the caller
(LuaScripts) starts a new worker for the next call.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import IO, Any

import pressured
from pressured.actions.lua.budget import MIB
from pressured.actions.lua.protocol import (
    Channel,
    ChannelClosed,
    ChannelTimeout,
    ProtocolError,
    error_info,
)
from pressured.errors import PressuredError, StorageError
from pressured.storage.base import Storage, Writer, validate_key

log = logging.getLogger("pressured.lua")

MAX_HANDLES = 64
"""Storage handles a worker may hold open at once."""
_PASS_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONHOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)
"""What the worker keeps of the daemon's environment besides PRESSURED_* and env_allow: what
Python, the C library and httpx read (locale, time zone, proxies, CA files)."""


class WorkerGone(Exception):
    """The worker died, broke the protocol, or was killed; ``str`` says which. ``delivered``
    is False when it was gone before it could read the request (then nothing of it ran)."""

    def __init__(self, message: str, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


class WorkerTimeout(WorkerGone):
    """The worker did not answer in time and was killed."""


def worker_env(env_allow: Collection[str]) -> dict[str, str]:
    """The worker's environment (see _PASS_ENV), with PYTHONPATH leading to this pressured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _PASS_ENV or k.startswith("PRESSURED_") or k in env_allow
    }
    home = str(Path(pressured.__file__).resolve().parent.parent)
    paths = [home, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class StorageServer:
    """The storage calls of one worker, answered from the daemon's storage."""

    def __init__(self, factory: Callable[[], Any] | None, max_read: int) -> None:
        self.factory = factory
        self.max_read = max_read
        self._storage: Storage | None = None
        self._handles: dict[int, Writer | IO[bytes]] = {}
        self._next = 1

    def storage(self) -> Storage:
        if self._storage is None:
            if self.factory is None:
                raise StorageError("storage is not configured")
            self._storage = self.factory()
        return self._storage

    def call(self, msg: Mapping[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        fn = str(msg.get("fn"))
        args = msg.get("args")
        try:
            value, data = self._call(fn, args if isinstance(args, list) else [], blob)
        except Exception as exc:
            if not isinstance(exc, PressuredError | OSError):
                log.exception("lua: storage.%s for the worker failed", fn)
            return {"op": "reply", "ok": False, "error": error_info(exc)}, b""
        return {"op": "reply", "ok": True, "value": value}, data

    def _call(self, fn: str, args: list[Any], blob: bytes) -> tuple[Any, bytes]:
        if fn in ("read", "write_chunk", "close", "abort"):
            return self._handle_call(fn, args, blob)
        storage = self.storage()
        keys = [validate_key(a) if isinstance(a, str) else _not_a_key(a) for a in args]
        if fn == "write" and len(keys) == 1:
            storage.write(keys[0], blob)
            return True, b""
        if fn == "exists" and len(keys) == 1:
            return storage.exists(keys[0]), b""
        if fn == "remove" and len(keys) == 1:
            storage.remove(keys[0])
            return True, b""
        if fn == "rename" and len(keys) == 2:
            storage.rename(keys[0], keys[1])
            return True, b""
        if fn in ("open_read", "open_write") and len(keys) == 1:
            if len(self._handles) >= MAX_HANDLES:
                raise StorageError(f"more than {MAX_HANDLES} storage handles open at once")
            handle = (
                storage.open_read(keys[0]) if fn == "open_read" else storage.open_write(keys[0])
            )
            hid = self._next
            self._next += 1
            self._handles[hid] = handle
            return hid, b""
        raise StorageError(f"storage.{fn}{tuple(args)!r}: not a storage call")

    def _handle_call(self, fn: str, args: list[Any], blob: bytes) -> tuple[Any, bytes]:
        hid = args[0] if args and isinstance(args[0], int) else 0
        handle = self._handles.get(hid)
        if handle is None:
            if fn in ("close", "abort"):
                return True, b""
            raise StorageError("storage handle is closed")
        if fn == "read":
            size = args[1] if len(args) > 1 and isinstance(args[1], int) else -1
            if isinstance(handle, Writer):
                raise StorageError("read on a handle opened for writing")
            size = self.max_read if size < 0 else min(size, self.max_read)
            return None, handle.read(size)
        if fn == "write_chunk":
            if not isinstance(handle, Writer):
                raise StorageError("write on a handle opened for reading")
            return handle.write(blob), b""
        del self._handles[hid]
        if fn == "abort" and isinstance(handle, Writer):
            handle.abort()
        else:
            handle.close()
        return True, b""

    def close_all(self) -> None:
        """Close what the worker left open: readers closed, writers discarded."""
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            try:
                if isinstance(handle, Writer):
                    handle.abort()
                else:
                    handle.close()
            except (PressuredError, OSError) as exc:
                log.warning("lua: closing a storage handle the worker left open: %s", exc)


class WorkerProcess:
    """One running worker: ``request`` sends it one request and waits for its answer."""

    def __init__(
        self,
        env_allow: Collection[str],
        storage_factory: Callable[[], Any] | None,
        memory_mb: int,
    ) -> None:
        # A frame from the worker is at most a storage write the size of a script's heap, or a
        # log line of that size with every byte escaped in JSON.
        max_frame = 8 * memory_mb * MIB + 16 * MIB
        self.storage = StorageServer(storage_factory, memory_mb * MIB + 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "pressured.actions.lua.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=worker_env(env_allow),
            close_fds=True,
            start_new_session=True,  # the terminal's Ctrl-C is the daemon's to handle
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.channel = Channel(self.proc.stdout.fileno(), self.proc.stdin.fileno(), max_frame)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The worker's ``done`` answer to ``msg``; raises WorkerGone (the worker is then
        reaped) when it does not come within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        sent = False
        try:
            self.channel.send(msg, b"", deadline)
            sent = True
            while True:
                reply, blob = self.channel.recv(deadline)
                op = reply.get("op")
                if op == "done":
                    return reply
                if op == "log":
                    _relog(reply)
                elif op == "storage":
                    started = time.monotonic()
                    answer, data = self.storage.call(reply, blob)
                    deadline += time.monotonic() - started
                    self.channel.send(answer, data, deadline)
                else:
                    raise ProtocolError(f"unexpected message {str(reply)[:200]}")
        except ChannelTimeout:
            self.kill()
            raise WorkerTimeout(f"no answer within {timeout_s * 1000:.0f} ms") from None
        except ChannelClosed:
            raise WorkerGone(self.reap(), delivered=sent) from None
        except ProtocolError as exc:
            self.kill()
            raise WorkerGone(f"killed: it broke the protocol: {exc}") from None
        finally:
            self.storage.close_all()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.reap()

    def reap(self) -> str:
        """Wait for the worker's end, close the pipe; says how it ended."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.storage.close_all()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = ", its CPU time limit" if -code == signal.SIGXCPU else ""
            return f"killed by {name}{why}"
        return f"exited with status {code}"

    def close(self) -> None:
        """Ask the worker to end; kill it if it does not within a second."""
        if self.proc.returncode is not None:
            return
        try:
            self.channel.send({"op": "exit"}, b"", time.monotonic() + 1)
            self.proc.wait(1)
        except (ChannelClosed, ChannelTimeout, subprocess.TimeoutExpired):
            pass
        self.kill()


def _not_a_key(value: Any) -> str:
    raise StorageError(f"invalid storage key {value!r}: not a string")


def _relog(record: Mapping[str, Any]) -> None:
    """A log record of the worker, logged here under the same logger."""
    name = str(record.get("name") or "pressured.lua")
    level = record.get("level")
    logger = logging.getLogger(name)
    if isinstance(level, int) and logger.isEnabledFor(level):
        logger.log(level, "%s", record.get("msg"))


def levels() -> dict[str, int]:
    """The daemon's effective log levels the worker copies."""
    return {
        name: logging.getLogger(name or None).getEffectiveLevel()
        for name in ("", "pressured", "pressured.lua")
    }
