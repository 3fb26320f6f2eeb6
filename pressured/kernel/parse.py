"""Pure parsers of cgroup and proc file contents. Each error names the file it came from."""

from __future__ import annotations

from dataclasses import dataclass

from pressured.errors import CgroupFileError
from pressured.model import Psi

V1_UNLIMITED_MIN = 9223372036854771712
"""cgroup v1 reports "unlimited" as PAGE_COUNTER_MAX pages in bytes (mm/page_counter.c)."""


def parse_int(text: str, path: str) -> int:
    s = text.strip()
    try:
        value = int(s)
    except ValueError:
        raise CgroupFileError(path, f"expected an integer, got {s[:40]!r}") from None
    if value < 0:
        raise CgroupFileError(path, f"expected a non-negative integer, got {value}")
    return value


def parse_limit(text: str, path: str) -> int | None:
    """memory.max / memory.limit_in_bytes: None for unlimited ("max" or the v1 sentinel)."""
    s = text.strip()
    if s == "max":
        return None
    value = parse_int(s, path)
    if value >= V1_UNLIMITED_MIN:
        return None
    return value


def parse_flat_keyed(text: str, path: str) -> dict[str, int]:
    """'key value' lines (memory.stat, memory.events, memory.oom_control, cgroup.events)."""
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CgroupFileError(path, f"line {lineno}: expected 'key value', got {line[:60]!r}")
        key, raw = parts
        try:
            out[key] = int(raw)
        except ValueError:
            raise CgroupFileError(
                path, f"line {lineno}: value of {key!r} is not an integer: {raw[:40]!r}"
            ) from None
    return out


def parse_psi(text: str, path: str) -> Psi:
    """psi.rst format: 'some avg10=0.00 avg60=0.00 avg300=0.00 total=0' and a 'full' line.

    The cpu file has no 'full' line before 5.13; it then reads as zeros.
    """
    fields: dict[str, float] = {}
    seen = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            raise CgroupFileError(path, f"line {lineno}: expected 'some' or 'full', got {kind!r}")
        seen.add(kind)
        for item in rest.split():
            name, eq, raw = item.partition("=")
            if not eq or name not in ("avg10", "avg60", "avg300", "total"):
                raise CgroupFileError(path, f"line {lineno}: unexpected field {item[:40]!r}")
            try:
                fields[f"{kind}_{name}"] = float(raw) if name != "total" else int(raw)
            except ValueError:
                raise CgroupFileError(
                    path, f"line {lineno}: {name} is not a number: {raw[:40]!r}"
                ) from None
    if "some" not in seen:
        raise CgroupFileError(path, "no 'some' line")
    return Psi(
        some_avg10=fields.get("some_avg10", 0.0),
        some_avg60=fields.get("some_avg60", 0.0),
        some_avg300=fields.get("some_avg300", 0.0),
        some_total=int(fields.get("some_total", 0)),
        full_avg10=fields.get("full_avg10", 0.0),
        full_avg60=fields.get("full_avg60", 0.0),
        full_avg300=fields.get("full_avg300", 0.0),
        full_total=int(fields.get("full_total", 0)),
    )


def parse_meminfo(text: str, path: str) -> dict[str, int]:
    """/proc/meminfo in bytes ('MemTotal:  16303384 kB')."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        if not colon:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            raise CgroupFileError(path, f"{name}: not a number: {parts[0][:40]!r}") from None
        out[name] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    for needed in ("MemTotal", "MemAvailable"):
        if needed not in out:
            raise CgroupFileError(path, f"no {needed} line")
    return out


@dataclass(frozen=True)
class ProcCgroups:
    """The cgroups /proc/PID/cgroup names for a process's memory."""

    v1_memory: str | None
    """The path on the v1 line whose controllers include "memory"."""
    unified: str | None
    """The path on the v2 line ("0::<path>")."""

    @property
    def memory(self) -> str | None:
        """Where the process's memory is charged: its v1 memory cgroup, else its v2 cgroup."""
        return self.v1_memory if self.v1_memory is not None else self.unified


def parse_proc_cgroups(text: str) -> ProcCgroups:
    """/proc/PID/cgroup: "<hierarchy id>:<controllers>:<path>" lines; v1 has one line per
    hierarchy, v2 the one line "0::<path>". Lines of another shape are skipped."""
    v1_memory: str | None = None
    unified: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if v1_memory is None and "memory" in controllers.split(","):
            v1_memory = path
        elif hierarchy == "0" and controllers == "":
            unified = path
    return ProcCgroups(v1_memory, unified)
