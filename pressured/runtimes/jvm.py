"""HotSpot JVM heap capture with no JDK tool: pressured speaks the attach protocol itself.

The client (pressured.runtimes.hotspot) runs in a helper process with the JVM's effective uid
and gid, read from /proc/PID/status, because HotSpot admits on its attach socket only a peer
with its own. The JVM is addressed by its pid in its own namespace (the last NSpid field) and
through ``/proc/PID/root``, so a JVM in a container is reached from the node. It is held from
before /proc said it is a JVM (detect.hold: a pidfd), and the helper is given that pidfd for
its SIGQUIT: a JVM gone since is signalled nowhere, never the process that took its pid.

Every capture stores ``GC.class_histogram`` (live objects after a full GC, a few hundred KiB)
as ``<stem>.histo.txt`` and puts its top classes into ``heap_top``: [{name, bytes,
instances}]. A full ``GC.heap_dump`` follows only with ``full_dump: always``, or ``auto`` when
the cgroup's headroom (limit - usage) exceeds the heap in use (the histogram's total) and the
heap fits in max_bytes: the .hprof is written inside the container, where it is charged to the
pod's memory (tmpfs) or page cache, so a dump must never be what kills the pod. The event
says when it was skipped and why (``full_dump_skipped``). The .hprof is written under the
JVM's /tmp, streamed into storage as ``<stem>.hprof`` and removed there.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pressured.errors import ActionError, PprofError, StorageError, quote
from pressured.runtimes import CaptureOptions, RuntimeCapture, Target, helper
from pressured.runtimes.detect import hold

log = logging.getLogger("pressured.runtimes.jvm")

_HOTSPOT_SOURCE = Path(__file__).with_name("hotspot.py")
_ROW = re.compile(r"\s*(\d+):\s+(\d+)\s+(\d+)\s+(\S+)(?:\s+\(.*\))?\s*")
_TOTAL = re.compile(r"Total\s+(\d+)\s+(\d+)\s*")
_HEADER = re.compile(r"\s*num\s+#instances\s+#bytes\s+class name")
_CODE_LINE_MAX = 32


class JvmCaptureError(ActionError):
    pass


@dataclass(frozen=True)
class JvmProcess:
    pid: int
    nspid: int
    uid: int
    gid: int
    pidfd: int | None = None
    """The daemon's pidfd on the JVM (detect.hold), passed to the helper for its SIGQUIT;
    None where the kernel has none (the helper signals the pid, just checked by the daemon)."""


@dataclass(frozen=True)
class ClassRow:
    name: str
    bytes: int
    instances: int


@dataclass(frozen=True)
class Histogram:
    rows: list[ClassRow]
    total_bytes: int
    total_instances: int

    def top(self, n: int) -> list[dict[str, Any]]:
        return [{"name": r.name, "bytes": r.bytes, "instances": r.instances} for r in self.rows[:n]]


def class_growth(before: Histogram, after: Histogram, n: int) -> list[dict[str, Any]]:
    """The ``n`` classes whose live bytes grew most from ``before`` to ``after`` (two class
    histograms of one JVM): [{name, bytes_grown, instances_grown, bytes}], largest first; a
    class new in ``after`` grew by all of it."""
    old = {r.name: r for r in before.rows}
    grown = []
    for r in after.rows:
        prev = old.get(r.name)
        delta = r.bytes - (prev.bytes if prev else 0)
        if delta > 0:
            grown.append((delta, r, r.instances - (prev.instances if prev else 0)))
    grown.sort(key=lambda g: -g[0])
    return [
        {"name": r.name, "bytes_grown": d, "instances_grown": i, "bytes": r.bytes}
        for d, r, i in grown[:n]
    ]


def identify(pid: int, proc_root: str = "/proc") -> JvmProcess:
    """The JVM's namespace pid and effective uid/gid, from /proc/PID/status."""
    path = f"{proc_root}/{pid}/status"
    fields: dict[str, list[str]] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Uid", "Gid", "NSpid"):
                    fields[name] = rest.split()
    except OSError as exc:
        raise JvmCaptureError(f"pid {pid}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        # Uid/Gid: real, effective, saved, filesystem; NSpid: outermost namespace first
        nspid = int(fields["NSpid"][-1]) if fields.get("NSpid") else pid
        return JvmProcess(pid, nspid, int(fields["Uid"][1]), int(fields["Gid"][1]))
    except (KeyError, IndexError, ValueError) as exc:
        raise JvmCaptureError(f"pid {pid}: {path} has no usable Uid/Gid/NSpid lines") from exc


def parse_histogram(text: str, what: str) -> Histogram:
    """GC.class_histogram's table; PprofError naming ``what`` when it is not one, or is cut."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines[:5]) if _HEADER.match(line)), None)
    if start is None:
        first = lines[0] if lines else ""
        raise PprofError(f"{what}: not a class histogram (first line {quote(first)})")
    rows: list[ClassRow] = []
    # a last line without its newline was cut mid-row: the histogram is truncated there
    cut = len(lines) - 1 if text and not text.endswith("\n") else -1
    for i, line in enumerate(lines[start + 1 :], start + 1):
        if not line.strip() or set(line.strip()) == {"-"}:
            continue
        total = _TOTAL.fullmatch(line)
        if total:
            return Histogram(rows, int(total.group(2)), int(total.group(1)))
        row = _ROW.fullmatch(line)
        if i == cut and (row is None or int(row.group(1)) != len(rows) + 1):
            break
        if row is None or int(row.group(1)) != len(rows) + 1:
            raise PprofError(
                f"{what}: malformed row {len(rows) + 1} of the class histogram: {quote(line)}"
            )
        rows.append(ClassRow(row.group(4), int(row.group(3)), int(row.group(2))))
    raise PprofError(
        f"{what}: truncated class histogram: no Total line after {len(rows)} rows"
        + (f" (last: {quote(lines[-1])})" if lines else "")
    )


def full_dump_decision(
    mode: str, heap_bytes: int, target: Target, max_bytes: int
) -> tuple[bool, str]:
    """(take the dump?, why not) for full_dump ``mode``."""
    if mode == "never":
        return False, "full_dump is never"
    if mode == "always":
        return True, ""
    if target.limit_bytes is None or target.usage_bytes is None:
        return False, "the cgroup has no memory limit, so its headroom is unknown"
    headroom = target.limit_bytes - target.usage_bytes
    if headroom <= heap_bytes:
        return False, (
            f"headroom {_mib(headroom)} (limit {_mib(target.limit_bytes)} - usage "
            f"{_mib(target.usage_bytes)}) does not exceed the heap in use {_mib(heap_bytes)}"
        )
    if heap_bytes > max_bytes:
        return False, f"the heap in use {_mib(heap_bytes)} exceeds max_bytes {_mib(max_bytes)}"
    return True, ""


def capture(target: Target, storage: Any, stem: str, options: CaptureOptions) -> RuntimeCapture:
    # SIGQUIT ends a process that is not a JVM: held, then asked once more, then sent through
    # the handle only (a JVM gone since is signalled nowhere, whoever holds its pid by then)
    process = hold(target.pid, target.proc_root, "jvm", "SIGQUIT", JvmCaptureError)
    try:
        jvm = dataclasses.replace(identify(target.pid, target.proc_root), pidfd=process.pidfd)
        if not process.alive():
            raise JvmCaptureError(f"pid {target.pid} is gone; no SIGQUIT sent")
        return _capture(jvm, target, storage, stem, options)
    finally:
        process.close()


def _capture(
    jvm: JvmProcess, target: Target, storage: Any, stem: str, options: CaptureOptions
) -> RuntimeCapture:
    what = f"JVM pid {jvm.pid} (uid {jvm.uid})"
    histo_key = stem + ".histo.txt"
    text = _jcmd_into(jvm, target, options, "GC.class_histogram", storage, key=histo_key, keep=True)
    size = len(text)
    result = RuntimeCapture(
        "jvm", histo_key, size, info={"key": histo_key, "bytes": size, "pid": jvm.pid}
    )
    try:
        histogram = parse_histogram(
            text.decode("utf-8", "replace"), f"GC.class_histogram of {what}"
        )
    except PprofError as exc:
        result.extra["heap_top_error"] = str(exc)
        result.notes.append(f"stored, but not analysed: {exc}")
        result.extra["full_dump_skipped"] = "no heap size known: the histogram was not usable"
        return result
    result.extra["heap_top"] = histogram.top(options.top_n)
    result.info["heap_bytes"] = histogram.total_bytes
    heap = histogram.total_bytes
    take, why = full_dump_decision(options.full_dump, heap, target, options.max_bytes)
    if not take:
        result.extra["full_dump_skipped"] = why
        return result
    try:
        key, dumped = _heap_dump(jvm, target, options, storage, stem + ".hprof")
    except ActionError as exc:
        result.extra["full_dump_error"] = str(exc)
        result.notes.append(f"full heap dump failed: {exc}")
        return result
    result.info["full_dump_key"] = key
    result.info["full_dump_bytes"] = dumped
    return result


# ------------------------------------------------------------------------------------------


def _helper_argv(jvm: JvmProcess, proc_root: str, *command: str) -> list[str]:
    # -I -S: the standard library only, nothing from the environment or our virtualenv
    source = _HOTSPOT_SOURCE.read_text()
    ids = ["--as", str(jvm.uid), str(jvm.gid)]
    where = ["--jvm", proc_root, str(jvm.pid), str(jvm.nspid)]
    pidfd = ["--pidfd", str(-1 if jvm.pidfd is None else jvm.pidfd)]
    return [sys.executable, "-I", "-S", "-c", source, *ids, *where, *pidfd, *command]


def _run_as_jvm(
    jvm: JvmProcess, target: Target, options: CaptureOptions, what: str, sink: Any, *args: str
) -> int:
    return helper.run(
        _helper_argv(jvm, target.proc_root, *args),
        what=what,
        deadline_s=options.timeout_s + 1.0,  # the helper keeps timeout_s itself; 1 s to start
        # a reply's result-code line comes on top of its output, which its sink caps exactly
        max_bytes=options.max_bytes + (_CODE_LINE_MAX if args[0] == "jcmd" else 0),
        sink=sink,
        pass_fds=() if jvm.pidfd is None else (jvm.pidfd,),
    )


def _jcmd_into(
    jvm: JvmProcess,
    target: Target,
    options: CaptureOptions,
    line: str,
    storage: Any,
    *,
    key: str | None,
    keep: bool,
) -> bytes:
    """Run ``line`` in the JVM; its output goes to ``key`` (None: nowhere) and is returned
    when ``keep``. The result code line is checked and not stored."""
    what = f"{line} in JVM pid {jvm.pid}"
    reply = _Reply(what)
    writer = None
    kept = bytearray()

    stored = 0

    def sink(chunk: bytes) -> None:
        nonlocal writer, stored
        body = reply.feed(chunk)
        if not body:
            return
        stored += len(body)
        if stored > options.max_bytes:
            raise helper.TooLarge(f"{what}: more than max_bytes {options.max_bytes}; aborted")
        if keep or key is None:
            kept.extend(body)
        if key is not None:
            if writer is None:
                writer = storage.open_write(key)
            writer.write(body)

    args = ("jcmd", str(options.timeout_s), line)
    try:
        _run_as_jvm(jvm, target, options, what, sink, *args)
        reply.finish(bytes(kept))
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if isinstance(exc, StorageError):
            raise JvmCaptureError(f"{what}: storing {key} failed: {exc}") from exc
        raise
    if key is not None:
        if writer is None:  # an empty but successful reply still makes the file
            writer = storage.open_write(key)
        try:
            writer.close()
        except StorageError as exc:
            raise JvmCaptureError(f"{what}: storing {key} failed: {exc}") from exc
    return bytes(kept)


def _heap_dump(
    jvm: JvmProcess, target: Target, options: CaptureOptions, storage: Any, key: str
) -> tuple[str, int]:
    stamp = _dt.datetime.now(tz=_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    inside = f"/tmp/pressured-{jvm.nspid}-{stamp}.hprof"  # the JVM's own /tmp
    try:
        line = f"GC.heap_dump {inside}"
        said = _jcmd_into(jvm, target, options, line, storage, key=None, keep=True)
        writer = storage.open_write(key)
        try:
            size = _run_as_jvm(
                jvm,
                target,
                options,
                f"reading {inside} of JVM pid {jvm.pid}",
                writer.write,
                "take",
                inside,
            )
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, helper.HelperFailed) and "No such file" in str(exc):
                reply = said.decode("utf-8", "replace").strip()
                raise JvmCaptureError(
                    f"GC.heap_dump in JVM pid {jvm.pid} wrote no {inside}: {quote(reply)}"
                ) from exc
            raise
        writer.close()
    except StorageError as exc:
        raise JvmCaptureError(f"storing {key} failed: {exc}") from exc
    finally:
        _remove(jvm, target, options, inside)
    return key, size


def _remove(jvm: JvmProcess, target: Target, options: CaptureOptions, path: str) -> None:
    try:
        _run_as_jvm(jvm, target, options, f"removing {path}", lambda _: None, "remove", path)
    except ActionError as exc:
        log.warning("heapdump: %s", exc)


class _Reply:
    """Splits the attach reply's result-code line from the command's output."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.head = bytearray()
        self.code: int | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.code is not None:
            return chunk
        self.head += chunk
        line, sep, rest = bytes(self.head).partition(b"\n")
        if not sep:
            if len(self.head) > _CODE_LINE_MAX:
                head = quote(bytes(self.head))
                raise JvmCaptureError(f"{self.what}: not an attach reply: {head}")
            return b""
        try:
            self.code = int(line.strip())
        except ValueError as exc:
            raise JvmCaptureError(f"{self.what}: not an attach reply: {quote(line)}") from exc
        return rest

    def finish(self, body: bytes) -> None:
        if self.code is None:
            raise JvmCaptureError(f"{self.what}: the JVM closed the attach socket without a reply")
        if self.code != 0:
            text = body.decode("utf-8", "replace").strip()
            raise JvmCaptureError(
                f"{self.what}: the JVM answered error {self.code}: {quote(text, 200)}"
            )


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"
