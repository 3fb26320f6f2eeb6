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
    """A whole small file; a missing or unreadable file raises CgroupFileError naming it.

    Plain system calls, no file object: an event reads a dozen cgroup and /proc files on the
    way from a crossing to its signal, and io.open costs a third of each read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")
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


@dataclass(frozen=True, slots=True)
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
class Unreclaimable:
    """What the kernel cannot reclaim from a cgroup short of an OOM kill, term by term (bytes).

    The kernel reclaims page cache before it kills (cgroup-v2.rst, "memory.high"/"memory.max":
    "the OOM killer is invoked ... if the cgroup ... can't be reduced by reclaim"), so a cgroup
    full of page cache is not at risk; these terms are what reclaim cannot drop. Swap is not
    counted as relief: Kubernetes nodes mostly run without it, and a container's may be 0.
    """

    anon: int = 0
    """Anonymous memory (heap, stacks, MAP_ANONYMOUS). Lazily freed pages (MADV_FREE) count
    too, though the kernel may drop them: telling them apart takes LRU arithmetic that a
    lagging counter could turn into a missed warning."""
    shmem: int = 0
    """shmem, tmpfs, SysV shm, shared anonymous mappings: swap-backed, never dropped."""
    file_locked: int = 0
    """File pages off the evictable file LRUs: mlocked (mlock(2)) and ramfs pages."""
    kernel: int = 0
    """Kernel memory charged to the cgroup that reclaim cannot free (stacks, page tables,
    percpu, socket buffers, unreclaimable slab, pipe buffers, ...)."""

    @property
    def total(self) -> int:
        return self.anon + self.shmem + self.file_locked + self.kernel

    def as_dict(self) -> dict[str, int]:
        return {
            "anon": self.anon,
            "shmem": self.shmem,
            "file_locked": self.file_locked,
            "kernel": self.kernel,
        }


_V2_KERNEL_PARTS = (
    # cgroup-v2.rst memory.stat, before the "kernel" total (5.18):
    "kernel_stack",  # "Amount of memory allocated to kernel stacks."
    "pagetables",  # "Amount of memory allocated for page tables."
    "sec_pagetables",  # "Amount of memory allocated for secondary page tables" (KVM, IOMMU)
    "percpu",  # "Amount of memory used for storing per-cpu kernel data structures."
    "vmalloc",  # "Amount of memory used for vmap backed memory."
    "slab_unreclaimable",  # "Part of "slab" that cannot be reclaimed on memory pressure."
)


def unreclaimable(
    stat: dict[str, int], version: Version, *, usage: int, kmem: int | None = None
) -> Unreclaimable:
    """The OOM-risk terms of a cgroup from its memory.stat (``usage``: its charge; ``kmem``:
    memory.kmem.usage_in_bytes on v1, None where absent)."""
    if version == 2:
        # cgroup-v2.rst, memory.stat:
        #   anon  "Amount of memory used in anonymous mappings such as brk(), sbrk(), and
        #          mmap(MAP_ANONYMOUS)"
        #   file  "Amount of memory used to cache filesystem data, including tmpfs and shared
        #          memory."
        #   shmem "Amount of cached filesystem data that is swap-backed, such as tmpfs, shm
        #          segments, shared anonymous mmap()s"
        #   active_file, inactive_file "on the internal memory management lists used by the
        #          page reclaim algorithm. ... shmem pages are on anon memory management lists"
        anon, file, shmem = stat.get("anon", 0), stat.get("file", 0), stat.get("shmem", 0)
        lru_file = stat.get("active_file", 0) + stat.get("inactive_file", 0)
        if "kernel" in stat:
            # "kernel": "Amount of total kernel memory, including (kernel_stack, pagetables,
            # percpu, vmalloc, slab) in addition to other kernel memory use cases" (5.18+);
            # less slab_reclaimable ("Part of "slab" that might be reclaimed, such as dentries
            # and inodes"); plus "sock" ("Amount of memory used in network transmission
            # buffers"), charged to memory.current apart from kernel memory (MEMCG_SOCK)
            kernel = stat["kernel"] - stat.get("slab_reclaimable", 0) + stat.get("sock", 0)
        else:
            kernel = sum(stat.get(k, 0) for k in _V2_KERNEL_PARTS) + stat.get("sock", 0)
    else:
        # cgroup-v1/memory.rst 5.2 (memory.stat; the total_ forms include the hierarchy below):
        #   rss   "# of bytes of anonymous and swap cache memory (includes transparent
        #          hugepages)"
        #   cache "# of bytes of page cache memory." (tmpfs and shmem included; memory.stat
        #          also prints shmem on its own since 4.x, not in the doc's table)
        #   inactive_file "# of bytes of file-backed memory and MADV_FREE anonymous memory
        #          (LazyFree pages) on inactive LRU list."; active_file alike;
        #   unevictable "# of bytes of memory that cannot be reclaimed (mlocked etc)."
        def total(key: str) -> int:
            return stat.get(f"total_{key}", stat.get(key, 0))

        anon, file, shmem = total("rss"), total("cache"), total("shmem")
        lru_file = total("active_file") + total("inactive_file")
        # memory.rst 2.7: kernel memory is charged to memory.usage_in_bytes too, and counted
        # apart in memory.kmem.usage_in_bytes; v1's memory.stat has no slab split, so
        # reclaimable slab (dentries, inodes) counts here: it errs towards a warning
        kernel = kmem if kmem is not None else usage - anon - file
    # Page cache off the evictable file LRUs is locked (mlock, ramfs). (The file LRUs may also
    # hold MADV_FREE anonymous pages, which makes this smaller, never larger, than it is.)
    #
    # Dirty and writeback file pages are not counted: they stay on the file LRUs, so the
    # difference below leaves them out. cgroup-v2.rst, memory.stat: file_dirty "Amount of
    # cached filesystem data that was modified but not yet written back to disk",
    # file_writeback "... and is currently being written back to disk" (v1 memory.rst 5.2:
    # dirty "# of bytes that are waiting to get written back to the disk", writeback "# of
    # bytes of file/anon cache that are queued for syncing to disk"). Writeback cleans them
    # and reclaim then drops them, and their share is bounded: cgroup-v2.rst "Writeback":
    # "Both system-wide and per-cgroup dirty memory states are examined and the more
    # restrictive of the two is enforced" (balance_dirty_pages throttles the writer). On v1,
    # where a memcg is no dirty domain, memcg reclaim waits for writeback instead of declaring
    # OOM (mm/vmscan.c, shrink_page_list: "memcg does not have any dirty pages throttling so
    # we could easily OOM just because too many pages are in writeback and there is nothing
    # else to reclaim. Wait for the writeback to complete.").
    # The dirty pages writeback cannot free are those with nowhere to be written: tmpfs and
    # shmem (counted in shmem; never in file_dirty) and ramfs (unevictable: file_locked).
    # Counting file_dirty would warn every large buffered writer whose pages the kernel frees
    # once written; a device too slow to take them shows as memory and io stall (PSI), which
    # the thrash and throttle rules read.
    return Unreclaimable(
        anon=max(0, anon),
        shmem=max(0, shmem),
        file_locked=max(0, file - shmem - lru_file),
        kernel=max(0, kernel),
    )


@dataclass(frozen=True)
class MemoryReading:
    usage_bytes: int
    working_set_bytes: int
    limit_bytes: int | None
    stat: dict[str, int] = field(default_factory=dict)
    oom_risk: Unreclaimable = field(default_factory=Unreclaimable)

    @property
    def unreclaimable_bytes(self) -> int:
        return self.oom_risk.total

    @property
    def refault_file(self) -> int | None:
        """cgroup-v2.rst "workingset_refault_file: Number of refaults of previously evicted
        file pages" (5.9+; "workingset_refault" before, which counted anon too); v1 kernels
        print it in memory.stat as well (6.x)."""
        for key in ("total_workingset_refault_file", "workingset_refault_file"):
            if key in self.stat:
                return self.stat[key]
        return self.stat.get("workingset_refault")


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


def read_kmem(ref: CgroupRef) -> int | None:
    """v1 memory.kmem.usage_in_bytes, None on v2 or where the kernel has none (nokmem)."""
    if ref.version == 2:
        return None
    path = ref.file("memory.kmem.usage_in_bytes")
    try:
        return parse.parse_int(read_text(path), path)
    except CgroupFileError:
        if os.path.exists(path):
            raise
        return None


def read_memory(ref: CgroupRef) -> MemoryReading:
    usage = read_usage(ref)
    stat = read_stat(ref)
    risk = unreclaimable(stat, ref.version, usage=usage, kmem=read_kmem(ref))
    return MemoryReading(usage, working_set(usage, stat, ref.version), read_limit(ref), stat, risk)


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
