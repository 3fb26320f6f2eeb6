"""The Lua worker: the process the scripts of one ``lua`` action run in.

``python -P -m pressured.actions.lua.worker``, started by the daemon (process.py), holds one
Sandbox per script and runs one request at a time, read from its stdin (protocol.py); it
answers on the stdout it had at start (its fd 1 then points at stderr, so a stray print cannot
corrupt the pipe):

    init  {scripts, timeout_ms, memory_mb, env_allow, config, storage, levels}
          -> done {pid, address_space} | done {error}     (limits set, nothing loaded yet)
    load  {index, levels}            -> done {error?}      compile and run the top level
    run   {index, event, ctx, levels} -> done {failure?}   call on_event
    exit                             -> the worker ends

While a request runs, the worker sends ``log`` records (the daemon logs them under the same
logger) and ``storage`` calls, which the daemon answers from the storage it configured: one
storage object per daemon (one spool, one S3 client, no credentials here), and what tests give
as a factory. HTTP runs here (pressured.httpget): its deadlines come from the script's budget,
and http.stream calls back into Lua for every chunk.

Limits, set at init before any script code runs (``limits``):

    RLIMIT_AS    the address space: what the worker uses once lupa and httpx are imported, plus
                 every script's memory_mb, plus 3 x memory_mb for the data the host holds while
                 it hands it to the script (an HTTP body, a storage read), plus HEADROOM
    RLIMIT_CPU   re-armed for each request: the CPU seconds used so far plus the request's
                 timeout, KILL_GRACE and CPU_SLACK; over it the kernel kills the worker
                 (SIGXCPU), even if the daemon is gone
    RLIMIT_CORE  0: a killed worker leaves no core file
    oom_score_adj 1000: when memory runs out the kernel's OOM killer takes the worker first, not
                 the daemon (which lowers its own to -900) nor a tenant's container

The environment is the daemon's minus everything but what Python and httpx need (PATH, locale,
TZ, proxies, CA files), ``PRESSURED_*`` and the names in env_allow (process.py), so ctx.getenv
reads os.environ here and a credential the scripts are not given is not in this process at all.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
from collections.abc import Iterator, Mapping
from typing import IO, Any, cast

from pressured.actions.lua.budget import CPU_SLACK_S, KILL_GRACE_MS, MIB
from pressured.actions.lua.host import ScriptMistake
from pressured.actions.lua.protocol import ChannelClosed, WorkerChannel, raise_error
from pressured.actions.lua.sandbox import Sandbox, ScriptFailure, ScriptSource, load_lupa
from pressured.errors import LuaError, StorageError
from pressured.storage.base import Storage, Writer

log = logging.getLogger("pressured.lua")

HEADROOM = 256 * MIB
"""Address space on top of the worker's own and the scripts' caps: Python objects of the host,
TLS, DNS and the interpreters' own structures."""


class RemoteStorage(Storage):
    """The daemon's storage, called through the pipe (process.py: StorageServer)."""

    name = "storage"

    def __init__(self, channel: WorkerChannel) -> None:
        self.channel = channel

    def call(self, fn: str, *args: Any, blob: bytes = b"") -> tuple[Any, bytes]:
        self.channel.send({"op": "storage", "fn": fn, "args": list(args)}, blob)
        reply, data = self.channel.recv()
        if reply.get("op") != "reply":
            raise StorageError(f"storage.{fn}: unexpected answer {str(reply)[:200]}")
        if not reply.get("ok"):
            raise_error(reply.get("error"))
        return reply.get("value"), data

    def open_write(self, key: str) -> Writer:
        hid, _ = self.call("open_write", key)
        return RemoteWriter(self, int(hid))

    def open_read(self, key: str) -> IO[bytes]:
        hid, _ = self.call("open_read", key)
        return cast(IO[bytes], RemoteReader(self, int(hid)))

    def exists(self, key: str) -> bool:
        value, _ = self.call("exists", key)
        return value is True

    def remove(self, key: str) -> None:
        self.call("remove", key)

    def rename(self, src: str, dst: str) -> None:
        self.call("rename", src, dst)

    def write(self, key: str, data: bytes) -> None:
        self.call("write", key, blob=bytes(data))

    def list(self, prefix: str = "") -> Iterator[str]:
        raise StorageError("storage.list is not available to Lua scripts")


class RemoteWriter(Writer):
    def __init__(self, storage: RemoteStorage, hid: int) -> None:
        self.storage = storage
        self.hid = hid

    def write(self, data: bytes) -> int:
        self.storage.call("write_chunk", self.hid, blob=bytes(data))
        return len(data)

    def close(self) -> None:
        self.storage.call("close", self.hid)

    def abort(self) -> None:
        self.storage.call("abort", self.hid)


class RemoteReader:
    """A read handle; closed only when told (a finalizer calling the daemon in the middle of
    another call would garble the pipe)."""

    def __init__(self, storage: RemoteStorage, hid: int) -> None:
        self.storage = storage
        self.hid = hid
        self.closed = False

    def read(self, size: int | None = -1) -> bytes:
        _, data = self.storage.call("read", self.hid, -1 if size is None else size)
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.storage.call("close", self.hid)

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Worker:
    """What the sandboxes of this worker share (the host.Owner of each), and its requests."""

    def __init__(self, channel: WorkerChannel) -> None:
        self.channel = channel
        self.dry_run = False
        self.env_allow: frozenset[str] = frozenset()
        self.timeout_ms = 0
        self.memory_mb = 0
        self.config: Mapping[str, Any] = {}
        self.sources: list[ScriptSource] = []
        self.sandboxes: dict[int, Sandbox] = {}
        self._storage: RemoteStorage | None = None
        self._http: Any = None

    # -- host.Owner ----------------------------------------------------------------------------
    def http(self) -> Any:
        if self._http is None:
            import httpx  # noqa: PLC0415

            self._http = httpx.Client()
        return self._http

    def storage(self) -> Storage:
        if self._storage is None:
            raise ScriptMistake("storage is not configured")
        return self._storage

    # -- requests ------------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            try:
                msg, _ = self.channel.recv()
            except ChannelClosed:
                return
            op = msg.get("op")
            if op == "exit":
                return
            _set_levels(msg.get("levels"))
            try:
                answer = self.answer(op, msg)
                self.channel.send({"op": "done", **answer})
            except ChannelClosed:
                return

    def answer(self, op: Any, msg: Mapping[str, Any]) -> dict[str, Any]:
        try:
            if op == "init":
                return self.init(msg)
            if op == "load":
                return self.load(int(msg["index"]))
            if op == "run":
                return self.run(int(msg["index"]), msg.get("event") or {}, msg.get("ctx") or {})
        except ChannelClosed:
            raise
        except Exception as exc:  # a bug of the worker: the daemon reports it, the worker goes on
            log.exception("lua worker: %s failed", op)
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}
        return {"error": f"unknown request {op!r}"}

    def init(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        self.timeout_ms = int(msg["timeout_ms"])
        self.memory_mb = int(msg["memory_mb"])
        self.env_allow = frozenset(msg.get("env_allow") or ())
        self.config = msg.get("config") or {}
        self.sources = [ScriptSource.from_json(s) for s in msg["scripts"]]
        if msg.get("storage"):
            self._storage = RemoteStorage(self.channel)
        try:
            load_lupa()
        except LuaError as exc:
            return {"error": str(exc)}
        import httpx  # noqa: PLC0415, F401 - in the address space measured before it is capped

        address_space = limits(len(self.sources), self.memory_mb)
        return {"pid": os.getpid(), "address_space": address_space}

    def _arm_cpu(self) -> None:
        arm_cpu((self.timeout_ms + KILL_GRACE_MS) / 1000 + CPU_SLACK_S)

    def load(self, index: int) -> dict[str, Any]:
        self._arm_cpu()
        try:
            self.sandboxes[index] = Sandbox(self.sources[index], self)
        except LuaError as exc:
            return {"error": str(exc)}
        return {}

    def run(self, index: int, event: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
        box = self.sandboxes.get(index)
        if box is None:
            return {"failure": ScriptFailure(self.sources[index].name, "not loaded").to_json()}
        self._arm_cpu()
        self.dry_run = ctx.get("dry_run") is True
        failure = box.run(event, ctx)
        return {"failure": None if failure is None else failure.to_json()}


def limits(scripts: int, memory_mb: int) -> int:
    """Cap this process (see the module docstring); returns the address space allowed."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # raising it needs no privilege; the worker inherited the daemon's -900
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError as exc:
        log.debug("lua worker: cannot raise its oom_score_adj: %s", exc)
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * page
    allowed = used + (scripts + 3) * memory_mb * MIB + HEADROOM
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        allowed = min(allowed, hard)
    resource.setrlimit(resource.RLIMIT_AS, (allowed, allowed))
    return allowed


def arm_cpu(seconds: float) -> None:
    """Let this process use ``seconds`` more CPU time, then the kernel kills it (SIGXCPU)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    total = used.ru_utime + used.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(total + seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


class _Forward(logging.Handler):
    """Every log record of the worker, sent to the daemon to be logged there."""

    def __init__(self, channel: WorkerChannel) -> None:
        super().__init__()
        self.channel = channel
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg = f"{msg}\n{self._formatter.formatException(record.exc_info)}"
            self.channel.send(
                {"op": "log", "name": record.name, "level": record.levelno, "msg": msg}
            )
        except Exception:  # the daemon is gone: nothing to log to
            self.handleError(record)


def _set_levels(levels: Any) -> None:
    """The daemon's effective levels, so that the worker sends only what would be logged."""
    if not isinstance(levels, Mapping):
        return
    for name, level in levels.items():
        if isinstance(level, int):
            logging.getLogger(str(name) or None).setLevel(level)


def main() -> None:
    # the pipe is the stdin and stdout the worker started with; stray writes to fd 1 now go to
    # stderr, and nothing reads the terminal
    rfile = os.fdopen(os.dup(0), "rb")
    wfile = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    channel = WorkerChannel(rfile, wfile)
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.handlers[:] = [_Forward(channel)]
    Worker(channel).serve()
    # nothing to flush or finalize (storage lives in the daemon): end at once
    os._exit(0)


if __name__ == "__main__":
    main()
