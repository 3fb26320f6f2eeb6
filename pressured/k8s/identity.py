"""Pod and container identity from a kubelet cgroup path alone (cgroupfs and systemd drivers).

    systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _>.slice/
              cri-containerd-<id>.scope        (crio-<id>.scope, docker-<id>.scope)
              Guaranteed: kubepods.slice/kubepods-pod<uid, _>.slice/<container>
    cgroupfs: kubepods/burstable/pod<uid>/<id> (or crio-<id>, docker-<id>, cri-containerd-<id>)
              Guaranteed: kubepods/pod<uid>/<id>

A kubelet started with ``--cgroup-root`` (kind uses ``/kubelet``) prefixes the slice names:
``kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...``; those parse too.
CRI-O's ``crio-conmon-<id>.scope`` holds the monitor process, not the container, and systemd
``*.mount`` units are noise: neither is a container. The sandbox (pause) container looks like any
other container here; only the pod's container statuses tell it apart (see the node source).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Runtime = Literal["containerd", "cri-o", "docker"]
Qos = Literal["guaranteed", "burstable", "besteffort"]
Driver = Literal["systemd", "cgroupfs"]

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
"""A pod UID: an RFC 4122 UUID, or a static pod's 32-hex config hash (mirror pods)."""
_CONTAINER_ID = r"[0-9a-f]{64}"

_KUBEPODS_SLICE = re.compile(r"^(?:[\w.-]+-)?kubepods\.slice$")
_QOS_SLICE = re.compile(r"^(?:[\w.-]+-)?kubepods-(burstable|besteffort)\.slice$")
_POD_SLICE = re.compile(rf"^(?:[\w.-]+-)?kubepods-(?:(burstable|besteffort)-)?pod({_UID})\.slice$")
_POD_DIR = re.compile(rf"^pod({_UID})$")
_SCOPE = re.compile(rf"^(cri-containerd|crio|docker)-({_CONTAINER_ID})\.scope$")
_CGROUPFS_CONTAINER = re.compile(rf"^(?:(cri-containerd|crio|docker)-)?({_CONTAINER_ID})$")

_RUNTIMES: dict[str, Runtime] = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
}
_ID_PREFIXES: dict[str, Runtime] = {
    "containerd://": "containerd",
    "cri-o://": "cri-o",
    "docker://": "docker",
}


@dataclass(frozen=True)
class PodCgroup:
    """What a kubelet cgroup path says about its pod and container."""

    pod_uid: str
    qos: Qos | None
    """None only when the path was seen from inside a cgroup namespace (no QoS level)."""
    driver: Driver
    container_id: str | None = None
    runtime: Runtime | None = None
    """None with the cgroupfs driver when the directory is the bare id (containerd, docker)."""

    @property
    def is_pod_level(self) -> bool:
        """The pod cgroup itself, not one of its containers."""
        return self.container_id is None


def parse_cgroup_path(path: str) -> PodCgroup | None:
    """Identity of a pod or container cgroup path (absolute, relative, or a full
    /sys/fs/cgroup/... directory), or None for anything else: QoS and kubepods levels,
    conmon scopes, mount units, sub-cgroups inside a container, foreign paths."""
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if _KUBEPODS_SLICE.match(part):
            return _parse_systemd(parts[i + 1 :])
        if part == "kubepods":
            return _parse_cgroupfs(parts[i + 1 :])
    return None


def _parse_systemd(rest: list[str]) -> PodCgroup | None:
    qos: Qos = "guaranteed"
    if rest and (m := _QOS_SLICE.match(rest[0])):
        qos = "burstable" if m.group(1) == "burstable" else "besteffort"
        rest = rest[1:]
    if not rest:
        return None
    m = _POD_SLICE.match(rest[0])
    if m is None:
        return None
    slice_qos = m.group(1)
    # A pod slice must sit under its own QoS slice: kubepods-burstable-pod* in kubepods-burstable.
    if (slice_qos or "guaranteed") != qos:
        return None
    uid = m.group(2).replace("_", "-")
    if len(rest) == 1:
        return PodCgroup(uid, qos, "systemd")
    if len(rest) != 2:
        return None
    c = _SCOPE.match(rest[1])
    if c is None:
        return None
    return PodCgroup(uid, qos, "systemd", c.group(2), _RUNTIMES[c.group(1)])


def _parse_cgroupfs(rest: list[str]) -> PodCgroup | None:
    qos: Qos = "guaranteed"
    if rest and rest[0] in ("burstable", "besteffort"):
        qos = "burstable" if rest[0] == "burstable" else "besteffort"
        rest = rest[1:]
    if not rest:
        return None
    m = _POD_DIR.match(rest[0])
    if m is None:
        return None
    uid = m.group(1).replace("_", "-")
    if len(rest) == 1:
        return PodCgroup(uid, qos, "cgroupfs")
    if len(rest) != 2:
        return None
    c = _CGROUPFS_CONTAINER.match(rest[1])
    if c is None:
        return None
    runtime = _RUNTIMES[c.group(1)] if c.group(1) else None
    return PodCgroup(uid, qos, "cgroupfs", c.group(2), runtime)


def parse_container_dir(name: str) -> tuple[str, Runtime | None] | None:
    """(container id, runtime) of one directory name (``cri-containerd-<id>.scope``,
    ``crio-<id>``, a bare 64-hex id), or None: the last component of a path seen from inside a
    cgroup namespace (``0::/../crio-<id>.scope``), where the pod part is out of sight."""
    m = _SCOPE.match(name) or _CGROUPFS_CONTAINER.match(name)
    if m is None:
        return None
    return m.group(2), (_RUNTIMES[m.group(1)] if m.group(1) else None)


def split_container_id(raw: str) -> tuple[str, Runtime | None]:
    """A containerStatuses[].containerID ("containerd://<id>") as (id, runtime)."""
    for prefix, runtime in _ID_PREFIXES.items():
        if raw.startswith(prefix):
            return raw[len(prefix) :], runtime
    _, sep, rest = raw.partition("://")
    return (rest, None) if sep else (raw, None)


def pod_uid_forms(uid: str) -> tuple[str, str]:
    """The two spellings of a pod UID in cgroup names: cgroupfs (-) and systemd (_)."""
    return uid.replace("_", "-"), uid.replace("-", "_")
