"""Node.js heap capture through the inspector: a sampling heap profile, as profile.proto.

1. The inspector: when nothing answers on ``127.0.0.1:<inspector_port>`` (9229, Node's
   default) pressured sends SIGUSR1, on which Node opens it there, and waits for it. The
   signal goes through a handle on the process (detect.hold: a pidfd, opened before /proc
   said it is Node), so it never reaches a process that took the pid since.
2. ``/json/list`` names the target's WebSocket URL; only its path is used, on the same
   127.0.0.1 port (a reply cannot send pressured elsewhere).
3. Over the DevTools protocol (the ``websockets`` library, every message at most max_bytes):
   HeapProfiler.startSampling, ``sample_seconds`` of the program running, then
   getSamplingProfile (the sampled allocations still live) and stopSampling.
4. When pressured opened the inspector it closes it again: ``process._debugEnd()`` from a timer
   (CLOSE_DELAY_MS), once pressured's session is gone. Called from inside the session's own
   Runtime.evaluate it crashed Node.js 20 (SIGSEGV) in 3 of 12 runs on this project's machine;
   deferred, in none of 30.

The profile is converted to profile.proto with sample types ``samples/count`` and
``space/bytes`` (V8's estimate of the live bytes each stack allocated; the default), one
location per call frame, so pprof_top, ``pressured pprof top`` and Lua read it as they read
a Go heap profile.

127.0.0.1 is the pod's own loopback: in node mode (a DaemonSet in the host's network
namespace) the conversation runs in a helper process that first enters the target's network
namespace (``setns`` on /proc/PID/ns/net, which needs CAP_SYS_ADMIN); in sidecar mode the
daemon already shares it and talks directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import importlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from pressured import httpget
from pressured.errors import ActionError, HttpGetError, PprofError, StorageError, quote
from pressured.kernel.pidfd import ProcessHandle
from pressured.kernel.procfs import namespace_pids
from pressured.runtimes import CaptureOptions, RuntimeCapture, Target, helper
from pressured.runtimes.detect import hold

SAMPLING_INTERVAL = 32768  # bytes between samples: V8's and Chrome DevTools' default
LIST_MAX_BYTES = 1024 * 1024
MAX_DEPTH = 4096
CLONE_NEWNET = 0x40000000
CLOSE_DELAY_MS = 500  # this session closes within it (a local WebSocket close: ~1 ms)
CLOSE_LATER = f"setTimeout(() => process._debugEnd(), {CLOSE_DELAY_MS}), undefined"


class NodeCaptureError(ActionError):
    pass


def capture(target: Target, storage: Any, stem: str, options: CaptureOptions) -> RuntimeCapture:
    data = sample(target, options) if _same_netns(target) else _sample_in_netns(target, options)
    key = stem + ".pb.gz"
    try:
        storage.write(key, data)
    except StorageError as exc:
        raise NodeCaptureError(f"Node.js pid {target.pid}: storing {key} failed: {exc}") from exc
    info = {"key": key, "bytes": len(data), "pid": target.pid, "port": options.inspector_port}
    return RuntimeCapture("node", key, len(data), info=info, profile=data)


def sample(target: Target, options: CaptureOptions) -> bytes:
    """The gzipped profile.proto of a sampling heap profile of ``target`` (in our netns)."""
    pid, port = target.pid, options.inspector_port
    what = f"Node.js pid {pid} inspector on 127.0.0.1:{port}"
    deadline = time.monotonic() + options.timeout_s + options.sample_seconds
    # SIGUSR1 terminates a process that is not Node: held, then asked once more right before
    process = hold(pid, target.proc_root, "node", "SIGUSR1", NodeCaptureError)
    try:
        fields = namespace_pids(pid, target.proc_root)
        if fields is None or not process.alive():
            raise NodeCaptureError(f"pid {pid} is gone")
        nspid = int(fields[-1]) if fields else pid
        opened = False
        if not _listening(port):
            send_sigusr1(process, what)
            opened = True
            _wait_listening(port, deadline, what, options.timeout_s)
    finally:
        process.close()  # the signal is sent: the rest is the inspector's conversation
    ws_path = _websocket_path(port, deadline, what)
    try:
        raw = _sampling_profile(
            f"ws://127.0.0.1:{port}{ws_path}",
            deadline,
            options,
            what,
            close_after=opened,
            target_nspid=nspid,
        )
    finally:
        if opened:
            _wait_closed(port, deadline)
    return gzip.compress(to_pprof(raw, what, SAMPLING_INTERVAL))


# ------------------------------------------------------------------------------ the inspector


def send_sigusr1(process: ProcessHandle, what: str) -> None:
    """SIGUSR1 to the held ``process``, through its pidfd where it has one: to that process or,
    once it is gone, to nobody. A NodeCaptureError says why none was sent."""
    why = process.refusal()
    if why is not None:
        raise NodeCaptureError(f"pid {process.pid} {why}; no SIGUSR1 sent")
    try:
        process.send(signal.SIGUSR1)
    except ProcessLookupError as exc:
        raise NodeCaptureError(f"pid {process.pid} is gone; no SIGUSR1 sent") from exc
    except OSError as exc:
        raise NodeCaptureError(f"{what}: SIGUSR1: {exc.strerror or exc}") from exc


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_listening(port: int, deadline: float, what: str, timeout_s: float) -> None:
    pause = 0.01
    # Node opens the port from its own thread a few ms after SIGUSR1; nothing to wait on
    while not _listening(port):
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeCaptureError(
                f"{what}: not open {timeout_s:g} s after SIGUSR1 (inspector on another port, "
                "--inspect-port?, or SIGUSR1 handled by the program)"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.2)


def _wait_closed(port: int, deadline: float) -> None:
    pause = 0.01
    while _listening(port) and time.monotonic() < deadline + 1.0:
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _websocket_path(port: int, deadline: float, what: str) -> str:
    url = f"http://127.0.0.1:{port}/json/list"
    try:
        reply = httpget.get(
            url,
            deadline_s=max(0.1, deadline - time.monotonic()),
            max_bytes=LIST_MAX_BYTES,
            trust_env=False,
        )
        targets = json.loads(reply.body)
    except HttpGetError as exc:
        raise NodeCaptureError(f"{what}: {exc}") from exc
    except ValueError as exc:
        raise NodeCaptureError(f"{what}: GET {url}: not JSON ({exc})") from exc
    if isinstance(targets, list):
        for entry in targets:
            ws = entry.get("webSocketDebuggerUrl") if isinstance(entry, dict) else None
            prefix = f"ws://127.0.0.1:{port}/"
            if isinstance(ws, str) and ws.startswith(prefix) and ws.isprintable():
                return "/" + ws[len(prefix) :]
    raise NodeCaptureError(
        f"{what}: GET {url} names no webSocketDebuggerUrl on that port: {quote(targets)}"
    )


def _sampling_profile(
    url: str,
    deadline: float,
    options: CaptureOptions,
    what: str,
    *,
    close_after: bool,
    target_nspid: int,
) -> Mapping[str, Any]:
    try:
        sync_client: Any = importlib.import_module("websockets.sync.client")
        ws_exceptions: Any = importlib.import_module("websockets.exceptions")
    except ImportError as exc:
        raise NodeCaptureError(
            f"{what}: the websockets library is not installed (pip install 'pressured[node]')"
        ) from exc
    session = _Session(what, deadline)
    try:
        with sync_client.connect(
            url,
            open_timeout=max(0.1, deadline - time.monotonic()),
            close_timeout=1.0,
            max_size=options.max_bytes,
            proxy=None,
            compression=None,
            ping_interval=None,
        ) as ws:
            session.ws = ws
            _check_pid(session, target_nspid)
            session.call("HeapProfiler.enable")
            session.call("HeapProfiler.startSampling", {"samplingInterval": SAMPLING_INTERVAL})
            time.sleep(options.sample_seconds)  # the sampling window: allocations made in it
            result = session.call("HeapProfiler.getSamplingProfile")
            session.call("HeapProfiler.stopSampling")
            session.call("HeapProfiler.disable")
            if close_after:
                session.call(
                    "Runtime.evaluate",
                    {"expression": CLOSE_LATER},
                )
    except (OSError, TimeoutError, ws_exceptions.WebSocketException) as exc:
        raise NodeCaptureError(f"{what}: {session.doing}: {type(exc).__name__}: {exc}") from exc
    profile = result.get("profile")
    if not isinstance(profile, dict):
        raise NodeCaptureError(f"{what}: getSamplingProfile returned no profile")
    return profile


def _check_pid(session: _Session, nspid: int) -> None:
    """The inspector on the port is the target's: another process of the pod (or, in local
    mode, of the machine) may hold it."""
    reply = session.call("Runtime.evaluate", {"expression": "process.pid", "returnByValue": True})
    value = reply.get("result", {}).get("value") if isinstance(reply.get("result"), dict) else None
    if value != nspid:
        raise NodeCaptureError(
            f"{session.what}: that inspector belongs to pid {quote(value)}, not {nspid}"
        )


class _Session:
    def __init__(self, what: str, deadline: float) -> None:
        self.what = what
        self.deadline = deadline
        self.ws: Any = None
        self.next_id = 0
        self.doing = "connecting"

    def send(self, method: str, params: Mapping[str, Any] | None = None) -> int:
        self.next_id += 1
        self.doing = method
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        return self.next_id

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        wanted = self.send(method, params)
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise NodeCaptureError(f"{self.what}: no reply to {method} in time")
            try:
                message = json.loads(self.ws.recv(timeout=left))
            except ValueError as exc:
                raise NodeCaptureError(f"{self.what}: {method}: not JSON ({exc})") from exc
            if not isinstance(message, dict) or message.get("id") != wanted:
                continue  # an event (no id), e.g. HeapProfiler.heapStatsUpdate
            if "error" in message:
                raise NodeCaptureError(f"{self.what}: {method}: {quote(message['error'], 200)}")
            result = message.get("result")
            return result if isinstance(result, dict) else {}


# ------------------------------------------------------------------------------- conversion


def to_pprof(profile: Mapping[str, Any], what: str, interval: int) -> bytes:
    """A DevTools SamplingHeapProfile as a serialized profile.proto message.

    PprofError naming ``what`` for a shape that is not one: the reply is the program's.
    """
    pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")
    msg = pb2.Profile()
    strings: dict[str, int] = {}

    def s(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings)
            msg.string_table.append(text.encode())
        return strings[text]

    s("")
    msg.sample_type.add(type=s("samples"), unit=s("count"))
    msg.sample_type.add(type=s("space"), unit=s("bytes"))
    msg.default_sample_type = s("space")
    msg.period_type.type = s("space")
    msg.period_type.unit = s("bytes")
    msg.period = interval
    msg.time_nanos = time.time_ns()

    head = profile.get("head")
    if not isinstance(head, dict):
        raise PprofError(f"{what}: sampling heap profile has no head node")
    counts: dict[int, int] = {}
    for sample in profile.get("samples") or []:
        node_id = sample.get("nodeId") if isinstance(sample, dict) else None
        if isinstance(node_id, int):
            counts[node_id] = counts.get(node_id, 0) + 1

    functions: dict[tuple[str, str, int], int] = {}
    # (node, parent's stack of location ids, innermost first); iterative: any depth
    pending: list[tuple[dict[str, Any], tuple[int, ...]]] = [(head, ())]
    while pending:
        node, parents = pending.pop()
        frame = node.get("callFrame")
        if not isinstance(frame, dict):
            raise PprofError(f"{what}: a node without a callFrame: {quote(node)}")
        name = frame.get("functionName")
        url = frame.get("url", "")
        line = frame.get("lineNumber", -1)
        self_size = node.get("selfSize", 0)
        children = node.get("children") or []
        if (
            not isinstance(name, str)
            or not isinstance(url, str)
            or not isinstance(line, int)
            or not isinstance(self_size, int | float)
            or self_size < 0
            or not isinstance(children, list)
        ):
            raise PprofError(f"{what}: malformed node {quote(node)}")
        if node is head and name == "(root)":
            stack: tuple[int, ...] = ()
        else:
            key = (name or "(anonymous)", url, line + 1)
            if key not in functions:
                fid = len(functions) + 1
                functions[key] = fid
                msg.function.add(
                    id=fid, name=s(key[0]), system_name=s(key[0]), filename=s(url), start_line=0
                )
                loc = msg.location.add(id=fid)
                loc.line.add(function_id=fid, line=max(0, key[2]))
            stack = (functions[key], *parents)
            if len(stack) > MAX_DEPTH:
                raise PprofError(f"{what}: call stack deeper than {MAX_DEPTH} frames")
        if self_size > 0:
            node_id = node.get("id")
            count = counts.get(node_id, 0) if isinstance(node_id, int) else 0
            msg.sample.add(location_id=list(stack), value=[count, int(self_size)])
        for child in children:
            if not isinstance(child, dict):
                raise PprofError(f"{what}: malformed child node {quote(child)}")
            pending.append((child, stack))
    return bytes(msg.SerializeToString())


# -------------------------------------------------------------------- another network namespace


def _same_netns(target: Target) -> bool:
    try:
        theirs = os.stat(f"{target.proc_root}/{target.pid}/ns/net")
        ours = os.stat("/proc/self/ns/net")
    except OSError as exc:
        raise NodeCaptureError(
            f"Node.js pid {target.pid}: cannot read its network namespace: {exc.strerror or exc}"
        ) from exc
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


_BOOT = (
    "import sys; sys.path.append(sys.argv.pop(1)); "
    "from pressured.runtimes.node import main; sys.exit(main(sys.argv[1:]))"
)


def _sample_in_netns(target: Target, options: CaptureOptions) -> bytes:
    from pressured.pprof.worker import _package_root, worker_env  # noqa: PLC0415

    request = {
        "pid": target.pid,
        "proc_root": target.proc_root,
        "timeout_s": options.timeout_s,
        "max_bytes": options.max_bytes,
        "sample_seconds": options.sample_seconds,
        "inspector_port": options.inspector_port,
    }
    out = bytearray()
    helper.run(
        [sys.executable, "-P", "-c", _BOOT, _package_root(), json.dumps(request)],
        what=f"Node.js pid {target.pid} (in its network namespace)",
        deadline_s=options.timeout_s + options.sample_seconds + 5.0,  # + start and close
        max_bytes=options.max_bytes,
        sink=out.extend,
        env=worker_env(),
    )
    return bytes(out)


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)} (needs CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """The helper: enter the target's network namespace, sample, profile on stdout."""
    try:
        request = json.loads(argv[0])
        target = Target(pid=int(request["pid"]), proc_root=str(request["proc_root"]))
        options = CaptureOptions(
            timeout_s=float(request["timeout_s"]),
            max_bytes=int(request["max_bytes"]),
            sample_seconds=float(request["sample_seconds"]),
            inspector_port=int(request["inspector_port"]),
        )
        _enter_netns(f"{target.proc_root}/{target.pid}/ns/net")
        data = sample(target, options)
    except (ActionError, PprofError, OSError, ValueError, KeyError, IndexError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0
