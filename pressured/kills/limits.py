"""Which limit killed: the scope of the memory limit behind an OOM kill, and its words.

The kernel says which cgroup's limit was hit, and the victim's own cgroup, in its report
(mm/oom_kill.c, 4.19+): ``oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=<path>,
task_memcg=<path>,...``; ``constraint=CONSTRAINT_NONE`` with ``global_oom`` for a machine out of
memory. Older kernels print ``Task in <task> killed as a result of limit of <oom>``. The bcc
kprobe gives the id of the limited cgroup (``oc->memcg``, absent for a global OOM), which is
the inode of its directory. With memory.oom.group the kernel then kills every process of the
group (``Tasks in <path> are going to be killed due to memory.oom.group set``).

The scope is where ``oom_memcg`` sits on the victim's path (pressured.k8s.identity names the
levels of a kubelet's tree):

    container  the container's own cgroup (or, outside Kubernetes, the victim's own cgroup)
    pod        the pod's cgroup, whose limit is the sum of its containers' (plus overhead)
    node       kubepods or a QoS level above the pod: node allocatable
    group      the victim was one of a memory.oom.group kill
    global     no cgroup limit: the machine (or a cpuset / memory policy) ran out of memory
    ancestor   outside Kubernetes, a parent of the victim's cgroup (a systemd slice, ...)
    unknown    the sources did not say (a rate-limited report, counters only), or said
               something that does not fit; ``text`` says which

Nothing here raises on what a kill record holds: a bad or missing field is scope "unknown"
with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pressured.errors import CgroupFileError
from pressured.k8s.identity import parse_cgroup_path
from pressured.kernel import cgroupfs

Scope = Literal["container", "pod", "node", "group", "global", "ancestor", "unknown"]
SCOPES: Final = ("container", "pod", "node", "group", "global", "ancestor", "unknown")

NO_CGROUP_CONSTRAINTS: Final = {
    "CONSTRAINT_NONE": "the node ran out of memory (a global OOM)",
    "CONSTRAINT_CPUSET": "the memory nodes of its cpuset ran out of memory",
    "CONSTRAINT_MEMORY_POLICY": "the memory nodes of its memory policy ran out of memory",
}
"""enum oom_constraint (include/linux/oom.h) other than CONSTRAINT_MEMCG."""

_PATH_MAX: Final = 4096


@dataclass(frozen=True)
class LimitScope:
    """The verdict for one kill: the scope, the limited cgroup and its limit, the limit of
    the victim's container (to say which one it was not), and the whole of it in words."""

    scope: Scope
    text: str
    cgroup: str | None = None
    limit_bytes: int | None = None
    container_limit_bytes: int | None = None
    pod_limit_bytes: int | None = None

    def as_event_fields(self) -> dict[str, Any]:
        return {
            "limit_scope": self.scope,
            "limit": {
                "cgroup": self.cgroup,
                "limit_bytes": self.limit_bytes,
                "container_limit_bytes": self.container_limit_bytes,
                "pod_limit_bytes": self.pod_limit_bytes,
                "text": self.text,
            },
        }


class CgroupTree:
    """The memory hierarchy the kernel's paths are relative to: limits and directory inodes.

    ``mount`` is the directory of the hierarchy's root (v2: the unified mount; v1: the memory
    controller's), None when there is none here (cluster mode): then nothing is read.
    """

    def __init__(self, mount: str | None, version: cgroupfs.Version = 2) -> None:
        self.mount = mount
        self.version = version

    @classmethod
    def from_root(cls, root: str) -> CgroupTree:
        layout = cgroupfs.detect_layout(root)
        if layout.v2_memory:
            return cls(layout.v2, 2)
        return cls(layout.v1_memory, 1)

    def directory(self, path: str) -> str | None:
        if self.mount is None:
            return None
        return os.path.join(self.mount, path.strip("/"))

    def limit(self, path: str) -> tuple[bool, int | None]:
        """(known, limit bytes or None for no limit) of the cgroup at kernel path ``path``."""
        directory = self.directory(path)
        if directory is None:
            return False, None
        ref = cgroupfs.CgroupRef(directory, self.version, path)
        try:
            return True, cgroupfs.read_limit(ref)
        except CgroupFileError:
            return False, None  # gone with its container, or not a memory cgroup

    def inode(self, path: str) -> int | None:
        directory = self.directory(path)
        if directory is None:
            return None
        try:
            return os.stat(directory).st_ino
        except OSError:
            return None


def human_size(n: int) -> str:
    """Bytes as a Kubernetes quantity would say them: 512Mi, 1.5Gi, 100000."""
    value = float(n)
    for unit in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if value < 1024 or unit == "Pi":
            if unit == "":
                return str(n)
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)  # pragma: no cover - the loop returns


class _BadField(ValueError):
    """A record field of a shape no kernel prints: the verdict is "unknown", for this reason."""


def _path(fields: Mapping[str, Any], key: str, name: str) -> str | None:
    """The kernel cgroup path in ``fields[key]``, None when absent."""
    value = fields.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > _PATH_MAX
        or any(p == ".." for p in value.split("/"))
    ):
        raise _BadField(f"{name} is not a cgroup path: {str(value)[:80]!r}")
    return "/" + value.strip("/") if value.strip("/") else "/"


def _within(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or below it, component-wise."""
    return outer in ("/", inner) or inner.startswith(outer + "/")


def _levels(task: str) -> tuple[str | None, str | None]:
    """(pod cgroup, container cgroup) on the victim's path; outside Kubernetes (None, the
    victim's own cgroup). A container's sub-cgroups (crun's ``container`` leaf) belong to it."""
    parts = [p for p in task.split("/") if p]
    pod: str | None = None
    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        parsed = parse_cgroup_path(prefix)
        if parsed is None:
            continue
        if parsed.container_id is not None:
            return pod, prefix
        if pod is None:
            pod = prefix
            continue
        return pod, prefix  # a pod's cgroup that names no container: a runtime's own layout
    if pod is not None:
        return pod, None
    return None, task


def _unknown(why: str, cgroup: str | None = None) -> LimitScope:
    return LimitScope("unknown", f"which limit killed is unknown: {why}", cgroup)


def _limited(oom: str, task: str | None, tree: CgroupTree | None) -> LimitScope:
    """The scope of a kill under the limit of ``oom`` (victim in ``task``, when known)."""
    if task is not None and not _within(task, oom):
        return _unknown(
            f"the limited cgroup {oom} is neither the victim's cgroup {task} nor above it", oom
        )
    pod, container = _levels(task if task is not None else oom)
    if task is None and pod is None:
        return _unknown(f"the report names the limited cgroup {oom} but not the victim's", oom)

    def limit_of(path: str | None) -> int | None:
        if path is None or tree is None:
            return None
        _known, value = tree.limit(path)
        return value

    limit = limit_of(oom)
    container_limit = None if container is None or container == oom else limit_of(container)
    pod_limit = None if pod is None or pod == oom else limit_of(pod)
    at = f" of {human_size(limit)}" if limit is not None else ""

    if container is not None and _within(oom, container):
        scope: Scope = "container"
        text = f"killed by the container's limit{at}"
        if pod is None:
            text = f"killed by the limit of its own cgroup {oom}{at}"
        elif pod_limit is not None:
            text += f", not the pod's {human_size(pod_limit)}"
    elif pod is not None and oom == pod:
        scope = "pod"
        text = f"killed by the pod's limit{at}"
        if container_limit is not None:
            text += f", not the container's {human_size(container_limit)}"
        elif container is not None and tree is not None and tree.limit(container) == (True, None):
            text += ", the container has no limit of its own"
    elif pod is not None:
        scope = "node"
        text = f"killed by the node's allocatable limit ({oom}){at}, not the pod's"
        if pod_limit is not None:
            text += f" {human_size(pod_limit)}"
        if container_limit is not None:
            text += f" or the container's {human_size(container_limit)}"
    else:
        scope = "ancestor"
        text = f"killed by the limit of {oom}{at}, a parent of its own cgroup {container}"
        if container_limit is not None:
            text += f" (limit {human_size(container_limit)})"
    return LimitScope(scope, text, oom, limit, container_limit, pod_limit)


def _find_by_inode(task: str, inode: int, tree: CgroupTree) -> str | None:
    """The cgroup on the victim's path (itself or a parent) whose directory is ``inode``."""
    parts = [p for p in task.split("/") if p]
    for i in range(len(parts), -1, -1):
        path = "/" + "/".join(parts[:i])
        if tree.inode(path) == inode:
            return path
    return None


def which_limit(fields: Mapping[str, Any], tree: CgroupTree | None = None) -> LimitScope:
    """The verdict for a kill from what its records said (an OomKill's ``extra``: constraint,
    oom_memcg, kernel_cgroup, oom_group, memcg_id, totalpages) and the cgroup tree."""
    try:
        return _which_limit(fields, tree)
    except _BadField as exc:
        return _unknown(str(exc))
    except (TypeError, ValueError, OSError) as exc:  # a field of a shape no source writes
        return _unknown(f"unreadable kill record ({exc})")


def _which_limit(fields: Mapping[str, Any], tree: CgroupTree | None) -> LimitScope:
    oom = _path(fields, "oom_memcg", "oom_memcg")
    task = _path(fields, "kernel_cgroup", "task_memcg")
    group = _path(fields, "oom_group", "the memory.oom.group cgroup")
    constraint = fields.get("constraint")
    if constraint is not None and not isinstance(constraint, str):
        return _unknown(f"constraint is not a name: {str(constraint)[:80]!r}")

    if group is not None:
        what = f"killed with every process of {group} (memory.oom.group)"
        if oom is not None:
            within = _limited(oom, task, tree)
            limited = f"{within.scope} limit" if within.scope != "unknown" else "limit"
            at = f" of {human_size(within.limit_bytes)}" if within.limit_bytes else ""
            what += f", after {oom} hit its {limited}{at}"
            return LimitScope("group", what, oom, within.limit_bytes)
        return LimitScope("group", what, group)

    if constraint is not None and constraint != "CONSTRAINT_MEMCG":
        why = NO_CGROUP_CONSTRAINTS.get(constraint)
        if why is None:
            return _unknown(f"constraint {constraint[:40]!r} is none the kernel prints")
        if oom is not None:
            return _unknown(f"constraint {constraint} names no cgroup, yet oom_memcg={oom}")
        return LimitScope("global", f"killed because {why}, not by a cgroup limit")

    if oom is None:
        memcg_id = fields.get("memcg_id")
        if isinstance(memcg_id, int) and not isinstance(memcg_id, bool) and memcg_id > 0:
            if task is None or tree is None:
                return _unknown(f"the limited cgroup's id {memcg_id} cannot be looked up here")
            found = _find_by_inode(task, memcg_id, tree)
            if found is None:
                return _unknown(
                    f"no cgroup on the victim's path {task} has the limited cgroup's id "
                    f"{memcg_id} (removed already?)"
                )
            oom = found
        elif memcg_id is not None:
            return _unknown(f"memcg_id is not a cgroup id: {str(memcg_id)[:40]!r}")
        elif "totalpages" in fields and constraint is None:
            # the kprobe read oom_control and found no memcg: a global OOM
            return LimitScope(
                "global",
                f"killed because {NO_CGROUP_CONSTRAINTS['CONSTRAINT_NONE']}, not by a cgroup limit",
            )
        elif constraint == "CONSTRAINT_MEMCG":
            return _unknown("the report says a cgroup limit but not which cgroup")
        else:
            return _unknown(
                "no kill source said which limit was hit (the kernel's report was "
                "rate-limited, or only the oom_kill counter or the tracepoint saw the kill)"
            )
    return _limited(oom, task, tree)
