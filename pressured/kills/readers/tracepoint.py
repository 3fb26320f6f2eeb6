"""oom:mark_victim through perf_event_open: kills without BPF.

The tracepoint fires once per task the OOM killer marks as its victim. Its fields (tracefs
``events/oom/mark_victim/format``): ``pid`` always; from 6.9 (backported to 6.6) also
``comm`` (a ``__data_loc`` string), total_vm, anon_rss, file_rss, shmem_rss, pgtables (kB),
uid and oom_score_adj. The native core opens one PERF_TYPE_TRACEPOINT event per CPU with a
small ring and hands back each sample's raw record; the layout is decoded here from the
format file, so new or missing fields need no code change.

The victim's cgroup is not in the tracepoint: it is read from /proc/<pid>/cgroup right
away. A victim already reaped yields cgroup None and the reconciler matches it by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pressured import native
from pressured.errors import KernelFeatureError
from pressured.kernel import procfs
from pressured.model import SOURCE_TRACEPOINT, KillRecord

log = logging.getLogger("pressured.kills.readers.tracepoint")

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KB_FIELDS = ("total_vm", "anon_rss", "file_rss", "shmem_rss", "pgtables")


class TracepointUnavailable(KernelFeatureError):
    """The tracepoint cannot be read here; the message says why."""


def _is_tracefs(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "events"))


def _mount_tracefs(target: str) -> str | None:
    """mount -t tracefs nodev <target>; None on success, else why not.

    Through libc rather than the mount(8) binary, which slim daemon images do not ship.
    """
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError as exc:
        return f"cannot load libc to mount tracefs: {exc}"
    rc = libc.mount(b"nodev", os.fsencode(target), b"tracefs", ctypes.c_ulong(0), None)
    if rc != 0:
        code = ctypes.get_errno()
        return f"mount -t tracefs nodev {target}: {os.strerror(code)}"
    return None


def find_tracefs(
    candidates: Sequence[str] = TRACEFS_CANDIDATES, mount: bool = True
) -> tuple[str | None, str]:
    """(path, note): a mounted tracefs, mounting it at the first candidate when allowed.

    The path is None when there is none; the note then says why (not mounted, mount refused,
    kernel without tracefs).
    """
    for path in candidates:
        if _is_tracefs(path):
            return path, f"tracefs at {path}"
    if not mount:
        return None, f"tracefs is not mounted (looked at {', '.join(candidates)})"
    reasons = []
    for path in candidates:
        # the kernel creates /sys/kernel/tracing as an empty mount point when it has tracefs
        if not os.path.isdir(path):
            continue
        why = _mount_tracefs(path)
        if why is None and _is_tracefs(path):
            log.info("mounted tracefs at %s", path)
            return path, f"tracefs mounted at {path}"
        reasons.append(why or f"{path}: mounted but has no events/")
        break
    if not reasons:
        return None, f"no tracefs mount point ({', '.join(candidates)}): kernel without tracefs?"
    return None, "tracefs is not mounted and " + "; ".join(reasons)


@dataclass(frozen=True)
class Field:
    offset: int
    size: int
    signed: bool
    type: str

    @property
    def data_loc(self) -> bool:
        return self.type.startswith("__data_loc")

    @property
    def rel_loc(self) -> bool:
        return self.type.startswith("__rel_loc")


@dataclass(frozen=True)
class TracepointFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field]

    def decode(self, raw: bytes) -> dict[str, int | str]:
        """Every non-common field of one raw record; strings decoded, short records skipped."""
        out: dict[str, int | str] = {}
        for name, f in self.fields.items():
            if name.startswith("common_") or f.offset + f.size > len(raw):
                continue
            if f.data_loc or f.rel_loc:
                (loc,) = struct.unpack_from("<I", raw, f.offset)
                start, length = loc & 0xFFFF, loc >> 16
                if f.rel_loc:
                    start += f.offset + f.size  # relative to the end of the field
                out[name] = _cstr(raw[start : start + length])
            elif "char" in f.type and "[" in f.type:
                out[name] = _cstr(raw[f.offset : f.offset + f.size])
            elif f.size in (1, 2, 4, 8):
                out[name] = int.from_bytes(
                    raw[f.offset : f.offset + f.size], "little", signed=f.signed
                )
        return out


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_format(text: str, system: str, name: str, path: str = "format") -> TracepointFormat:
    """A tracefs ``format`` file: ``ID: n`` and ``field:<decl>; offset:n; size:n; signed:n;``."""
    tp_id: int | None = None
    fields: dict[str, Field] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("ID:"):
            try:
                tp_id = int(line[3:].strip())
            except ValueError:
                raise TracepointUnavailable(f"{path}: bad ID line {line!r}") from None
            continue
        if not line.startswith("field:"):
            continue
        parts = {}
        decl = ""
        for raw_item in line.split(";"):
            item = raw_item.strip()
            if item.startswith("field:"):
                decl = item[len("field:") :].strip()
            elif ":" in item:
                k, _, v = item.partition(":")
                parts[k.strip()] = v.strip()
        try:
            offset, size = int(parts["offset"]), int(parts["size"])
            signed = parts.get("signed", "0") == "1"
        except (KeyError, ValueError):
            raise TracepointUnavailable(f"{path}: bad field line {line!r}") from None
        tokens = decl.split()
        if not tokens:
            continue
        fname = tokens[-1]
        ftype = " ".join(tokens[:-1])
        if "[" in fname:  # "char comm[16]": the array bound belongs to the type
            fname, _, bound = fname.partition("[")
            ftype = f"{ftype}[{bound}"
        fields[fname] = Field(offset, size, signed, ftype)
    if tp_id is None:
        raise TracepointUnavailable(f"{path}: no ID line")
    return TracepointFormat(system, name, tp_id, fields)


def read_format(tracefs: str, system: str = "oom", name: str = "mark_victim") -> TracepointFormat:
    path = os.path.join(tracefs, "events", system, name, "format")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise TracepointUnavailable(
            f"{path}: missing (kernel without the {system}:{name} tracepoint)"
        ) from None
    except OSError as exc:
        raise TracepointUnavailable(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_format(text, system, name, path)


def online_cpus(sysfs: str = "/sys/devices/system/cpu") -> list[int]:
    """CPUs from ``online`` ("0-3,6"); falls back to 0..cpu_count-1."""
    try:
        with open(os.path.join(sysfs, "online"), encoding="ascii") as f:
            spec = f.read().strip()
        return parse_cpu_list(spec)
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


def parse_cpu_list(spec: str) -> list[int]:
    out: list[int] = []
    for raw_part in spec.split(","):
        part = raw_part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not out:
        raise ValueError(f"empty CPU list {spec!r}")
    return out


def pid_cgroup(pid: int, proc: str = "/proc") -> str | None:
    """The victim's memory cgroup path from /proc/<pid>/cgroup (v1 memory line, else v2).

    A dying task can already read as the root cgroup ("/", seen here under load); that says
    nothing about where it was killed, so it counts as unknown and the kill is matched by pid."""
    path = procfs.memory_cgroup(pid, proc)
    return None if path in (None, "", "/") else path


def _kb(value: int | str | None) -> int | None:
    return value * 1024 if isinstance(value, int) else None


def record_from_fields(
    values: dict[str, int | str],
    *,
    source: str,
    time: float,
    wall: float,
    cgroup: str | None,
) -> KillRecord | None:
    pid = values.get("pid")
    if not isinstance(pid, int):
        return None
    comm = values.get("comm")
    rss = {k: b for k in KB_FIELDS if (b := _kb(values.get(k))) is not None}
    uid = values.get("uid")
    adj = values.get("oom_score_adj")
    return KillRecord(
        source=source,
        time=time,
        wall=wall,
        cgroup=cgroup,
        pid=pid,
        comm=comm if isinstance(comm, str) and comm else None,
        rss=rss,
        uid=uid if isinstance(uid, int) else None,
        oom_score_adj=adj if isinstance(adj, int) else None,
    )


class MarkVictimSource:
    """oom:mark_victim on every online CPU (a KillSource): register ``fds()`` for EPOLLIN,
    then ``read()``.

    Every online CPU, not only this process's affinity: the tracepoint fires on the CPU of
    the task that ran out of memory. CPUs brought online later are not covered.
    ``open_ring(tracepoint_id, cpu, ring_pages)`` opens one CPU's ring (tests pass fakes).
    """

    name = SOURCE_TRACEPOINT
    poll_interval: float | None = None

    def __init__(
        self,
        tracefs: str,
        cpus: Iterable[int] | None = None,
        *,
        proc: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ring_pages: int = 8,
        open_ring: Callable[[int, int, int], native.PerfTracepoint] = native.PerfTracepoint,
    ) -> None:
        self.tracefs = tracefs
        self.format = read_format(tracefs, "oom", "mark_victim")
        self._proc = proc
        self._clock = clock
        self._wall = wall_clock
        self._readers: list[native.PerfTracepoint] = []
        self.decode_errors = 0
        self.ring_errors = 0
        for cpu in online_cpus() if cpus is None else cpus:
            try:
                self._readers.append(open_ring(self.format.id, cpu, ring_pages))
            except OSError as exc:
                self.close()
                hint = ""
                if exc.errno in (errno.EACCES, errno.EPERM):
                    hint = " (needs CAP_PERFMON or CAP_SYS_ADMIN, or perf_event_paranoid <= -1)"
                raise TracepointUnavailable(
                    f"perf_event_open(oom:mark_victim, cpu {cpu}): {exc.strerror}{hint}"
                ) from exc

    @property
    def status(self) -> tuple[bool, str]:
        if not self._readers:
            return False, "oom:mark_victim: closed"
        return True, (
            f"oom:mark_victim via perf_event_open on {len(self._readers)} CPUs ({self.tracefs})"
        )

    def fds(self) -> list[int]:
        return [r.fd for r in self._readers]

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self._readers)

    @property
    def problems(self) -> dict[str, int]:
        return {"lost": self.lost, "read_error": self.ring_errors, "malformed": self.decode_errors}

    def read(self) -> list[KillRecord]:
        out: list[KillRecord] = []
        for reader in self._readers:
            samples, err = reader.samples()
            if err is not None:
                # the samples before the fault are kills all the same; the other rings are
                # not affected
                self.ring_errors += 1
                log.warning(
                    "oom:mark_victim ring on cpu %d: %s; kept the %d samples read before it",
                    reader.cpu,
                    err.strerror,
                    len(samples),
                )
            for raw in samples:
                rec = self._decode(raw)
                if rec is not None:
                    out.append(rec)
        return out

    def _decode(self, raw: bytes) -> KillRecord | None:
        values = self.format.decode(raw)
        pid = values.get("pid")
        cgroup = pid_cgroup(pid, self._proc) if isinstance(pid, int) else None
        rec = record_from_fields(
            values,
            source=SOURCE_TRACEPOINT,
            time=self._clock(),
            wall=self._wall(),
            cgroup=cgroup,
        )
        if rec is None:
            self.decode_errors += 1
        return rec

    def close(self) -> None:
        for r in self._readers:
            with contextlib.suppress(OSError):
                r.close()
        self._readers = []


def open_mark_victim(
    tracefs: str = TRACEFS_CANDIDATES[0],
    *,
    mount: bool = True,
    proc: str = "/proc",
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> MarkVictimSource:
    """Find (or mount) tracefs, preferring ``tracefs``, and open the source on every CPU."""
    candidates = [tracefs] + [c for c in TRACEFS_CANDIDATES if c != tracefs]
    path, why = find_tracefs(candidates, mount=mount)
    if path is None:
        raise TracepointUnavailable(why)
    return MarkVictimSource(path, proc=proc, clock=clock, wall_clock=wall_clock)
