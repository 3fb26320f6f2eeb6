"""cgroup v1, v2 and hybrid hierarchies: what each cgroup offers, and its memory readings.

Every root is a parameter: tests build fake trees, kernel tests pass the
real /sys/fs/cgroup. Layouts:

- v2:     <root>/cgroup.controllers lists "memory"; memory.current, memory.max, memory.pressure
- v1:     <root>/memory/ holds memory.usage_in_bytes, memory.limit_in_bytes, memory.oom_control
- hybrid: v1 memory plus a v2 mount at <root>/unified with PSI files but no controllers;
          a v1 cgroup's PSI is read from the v2 cgroup at the same relative path
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import parse
from pressured.model import Psi

Version = Literal[1, 2]


def read_text(path: str) -> str:
    """A whole small file; a missing or unreadable file raises CgroupFileError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        raise CgroupFileError(path, "missing") from None
    except OSError as exc:
        raise CgroupFileError(path, f"cannot read: {exc.strerror}") from exc


@dataclass(frozen=True)
class Layout:
    """Where the hierarchies are mounted under one cgroup root."""

    root: str
    v1_memory: str | None
    v2: str | None
    v2_memory: bool

    @property
    def kind(self) -> str:
        if self.v2_memory:
            return "v2"
        if self.v1_memory and self.v2:
            return "hybrid"
        if self.v1_memory:
            return "v1"
        return "none"

    @property
    def memory_root(self) -> str | None:
        return self.v2 if self.v2_memory else self.v1_memory


def detect_layout(root: str = "/sys/fs/cgroup") -> Layout:
    root = os.path.abspath(root)
    v2: str | None = None
    v2_memory = False
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        v2 = root
    elif os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
        v2 = os.path.join(root, "unified")
    if v2 is not None:
        try:
            v2_memory = "memory" in read_text(os.path.join(v2, "cgroup.controllers")).split()
        except CgroupFileError:
            v2_memory = False
    v1_memory = os.path.join(root, "memory")
    has_v1 = os.path.exists(os.path.join(v1_memory, "memory.usage_in_bytes"))
    return Layout(root, v1_memory if has_v1 else None, v2, v2_memory)


@dataclass(frozen=True)
class CgroupRef:
    """A cgroup that can be watched: its memory directory and where its PSI lives."""

    path: str
    version: Version
    relpath: str
    psi_dir: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/")) or "/"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def usage_file(self) -> str:
        return self.file("memory.current" if self.version == 2 else "memory.usage_in_bytes")

    @property
    def limit_file(self) -> str:
        return self.file("memory.max" if self.version == 2 else "memory.limit_in_bytes")

    def psi_file(self, resource: str) -> str | None:
        if self.psi_dir is None:
            return None
        path = os.path.join(self.psi_dir, f"{resource}.pressure")
        return path if os.path.exists(path) else None


def resolve(path: str, layout: Layout) -> CgroupRef:
    """Turn an absolute cgroup directory (v1 memory or v2) into a CgroupRef, or say why not."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CgroupError(f"{path}: no such cgroup directory")
    if os.path.exists(os.path.join(path, "memory.current")):
        rel = _relative(path, layout.v2) if layout.v2 else "/"
        return CgroupRef(
            path, 2, rel, path if os.path.exists(os.path.join(path, "memory.pressure")) else None
        )
    if os.path.exists(os.path.join(path, "memory.usage_in_bytes")):
        rel = _relative(path, layout.v1_memory) if layout.v1_memory else "/"
        psi_dir = None
        if layout.v2 is not None:
            candidate = os.path.join(layout.v2, rel.lstrip("/"))
            if os.path.exists(os.path.join(candidate, "memory.pressure")):
                psi_dir = candidate
        return CgroupRef(path, 1, rel, psi_dir)
    if os.path.exists(os.path.join(path, "cgroup.controllers")):
        raise CgroupError(
            f"{path}: a cgroup v2 directory without the memory controller "
            "(memory.current is missing; on a hybrid host give the v1 memory cgroup instead)"
        )
    raise CgroupError(
        f"{path}: not a memory cgroup (neither memory.current nor memory.usage_in_bytes)"
    )


def _relative(path: str, mount: str | None) -> str:
    if mount is None:
        return "/"
    rel = os.path.relpath(path, mount)
    if rel.startswith(".."):
        return "/" + path.lstrip("/")
    return "/" if rel == "." else "/" + rel


@dataclass(frozen=True)
class MemoryReading:
    usage_bytes: int
    working_set_bytes: int
    limit_bytes: int | None
    stat: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class KillCounters:
    """OOM counters of one cgroup. ``oom_kill_local`` counts kills of this cgroup only (v2
    memory.events.local); on v1 memory.oom_control's oom_kill is already local."""

    oom: int | None
    oom_kill: int
    oom_kill_local: int | None
    under_oom: bool = False
    oom_group_kill: int | None = None
    """v2 with memory.oom.group (kubelet >= 1.28): group kills, local where the kernel has it."""
    high: int | None = None
    """v2 memory.events "high" (hierarchical): throttled over memory.high, here or below."""

    @property
    def oom_kill_count(self) -> int:
        """The kills to count for this cgroup: its own where the kernel says (oom_kill_local),
        else oom_kill (a v2 kernel without memory.events.local counts its children's too)."""
        return self.oom_kill_local if self.oom_kill_local is not None else self.oom_kill


def read_usage(ref: CgroupRef) -> int:
    return parse.parse_int(read_text(ref.usage_file), ref.usage_file)


def read_limit(ref: CgroupRef) -> int | None:
    return parse.parse_limit(read_text(ref.limit_file), ref.limit_file)


def read_stat(ref: CgroupRef) -> dict[str, int]:
    path = ref.file("memory.stat")
    return parse.parse_flat_keyed(read_text(path), path)


def working_set(usage: int, stat: dict[str, int], version: Version) -> int:
    """kubelet/cAdvisor: usage - inactive_file, floored at 0 (total_inactive_file on v1)."""
    inactive = stat.get("inactive_file" if version == 2 else "total_inactive_file")
    if inactive is None and version == 1:
        inactive = stat.get("inactive_file", 0)
    return max(0, usage - (inactive or 0))


def read_memory(ref: CgroupRef) -> MemoryReading:
    usage = read_usage(ref)
    stat = read_stat(ref)
    return MemoryReading(usage, working_set(usage, stat, ref.version), read_limit(ref), stat)


def read_kill_counters(ref: CgroupRef) -> KillCounters:
    if ref.version == 2:
        path = ref.file("memory.events")
        events = parse.parse_flat_keyed(read_text(path), path)
        local: int | None = None
        group = events.get("oom_group_kill")
        local_path = ref.file("memory.events.local")
        if os.path.exists(local_path):
            local_events = parse.parse_flat_keyed(read_text(local_path), local_path)
            local = local_events.get("oom_kill", 0)
            group = local_events.get("oom_group_kill", group)
        return KillCounters(
            events.get("oom"),
            events.get("oom_kill", 0),
            local,
            oom_group_kill=group,
            high=events.get("high"),
        )
    path = ref.file("memory.oom_control")
    ctl = parse.parse_flat_keyed(read_text(path), path)
    if "oom_kill" not in ctl:
        raise CgroupFileError(path, "no oom_kill counter (kernel older than 4.13?)")
    return KillCounters(None, ctl["oom_kill"], ctl["oom_kill"], bool(ctl.get("under_oom", 0)))


def read_high(ref: CgroupRef) -> int | None:
    """memory.high (v2) in bytes; None when it is "max" or the cgroup has none (v1, root)."""
    path = ref.file("memory.high")
    if ref.version != 2 or not os.path.exists(path):
        return None
    return parse.parse_limit(read_text(path), path)


def read_psi_file(path: str) -> Psi:
    return parse.parse_psi(read_text(path), path)


def read_psi(ref: CgroupRef, resource: str = "memory") -> Psi | None:
    path = ref.psi_file(resource)
    return None if path is None else read_psi_file(path)


def read_pids(ref: CgroupRef) -> list[int]:
    return read_procs(ref.path)


def read_procs(cgroup_dir: str) -> list[int]:
    """The processes of a cgroup directory (its cgroup.procs), numbered in the reader's PID
    namespace. CgroupFileError when it cannot be read (the cgroup is gone) or holds a non-pid."""
    path = os.path.join(cgroup_dir, "cgroup.procs")
    out = []
    for line in read_text(path).split():
        try:
            out.append(int(line))
        except ValueError:
            raise CgroupFileError(path, f"not a pid: {line[:40]!r}") from None
    return out


def list_limited(base: str, layout: Layout, max_depth: int = 8) -> list[CgroupRef]:
    """Every memory cgroup under ``base`` (inclusive) that has a memory limit."""
    out: list[CgroupRef] = []
    base = os.path.abspath(base)
    base_depth = base.rstrip("/").count("/")
    for dirpath, dirnames, _ in os.walk(base):
        if dirpath.count("/") - base_depth >= max_depth:
            dirnames[:] = []
        try:
            ref = resolve(dirpath, layout)
            if read_limit(ref) is not None:
                out.append(ref)
        except (CgroupError, OSError):
            continue
    return out
