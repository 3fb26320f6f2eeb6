"""Pod and container identity from a kubelet cgroup path alone (cgroupfs and systemd drivers).

    systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _>.slice/
              cri-containerd-<id>.scope        (crio-<id>.scope, docker-<id>.scope)
              Guaranteed: kubepods.slice/kubepods-pod<uid, _>.slice/<container>
    cgroupfs: kubepods/burstable/pod<uid>/<id> (or crio-<id>, docker-<id>, cri-containerd-<id>)
              Guaranteed: kubepods/pod<uid>/<id>

Also (each gives the container, or the pod where only the pod can be named):

- ``kubepods/kubepods/besteffort/pod<uid>/<id>``: the kubepods level twice (a nested kubelet);
- a container's sub-cgroup (``.../crio-<id>.scope/container``, crun's leaf on cgroup v2, where
  an OOM victim's task_memcg points; ``.../pod<uid>/<id>/kube-proxy``): the container;
- containerd's ``.../containerd.service/kubepods-burstable-pod<uid, _>.slice:cri-containerd:<id>``
  (a systemd-form cgroupsPath placed literally);
- ``cri-containerd-<id>`` without ``.scope``, ``crio-<id>.scope`` under cgroupfs, and a
  UUID-shaped container id;
- a path read inside a cgroup namespace: ``/../../kubepods-besteffort-pod<uid, _>.slice/
  docker-<id>.scope`` (the slice name says the QoS), ``/../pod<uid>/<id>`` (QoS None);
- a pod's cgroup that is no container (CRI-O's ``crio-conmon-<id>.scope`` monitor, systemd
  ``*.mount`` units, an unknown runtime's directory): the pod alone, container_id None.

A kubelet started with ``--cgroup-root`` (kind uses ``/kubelet``) prefixes the slice names:
``kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...``; those parse too.
The sandbox (pause) container looks like any other container here; only the pod's container
statuses tell it apart (see the node source). Paths that name no pod give None: the kubepods
and QoS levels themselves, system and user slices, docker outside the kubelet's tree.
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
_CONTAINER_ID = r"[0-9a-f]{64}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""A container ID: 64 hex (containerd, CRI-O, docker), or UUID-shaped (some runtimes)."""
_PREFIX = r"cri-containerd|crio|docker"

_KUBEPODS_SLICE = re.compile(r"^(?:[\w.-]+-)?kubepods\.slice$")
_QOS_SLICE = re.compile(r"^(?:[\w.-]+-)?kubepods-(burstable|besteffort)\.slice$")
_POD_SLICE = re.compile(
    rf"^(?:[\w.-]+-)?kubepods-(?:(burstable|besteffort)-)?pod({_UID})\.slice"
    rf"(?::({_PREFIX}):({_CONTAINER_ID}))?$"
)
"""A pod slice, or containerd's ``<pod slice>:cri-containerd:<id>`` (a cgroupsPath in systemd
form that runc placed literally, as one directory under containerd's own cgroup)."""
_POD_DIR = re.compile(rf"^pod({_UID})$")
_CONTAINER = re.compile(rf"^(?:({_PREFIX})-({_CONTAINER_ID})(?:\.scope)?|({_CONTAINER_ID}))$")
"""A container directory under either driver: ``<prefix>-<id>.scope``, ``<prefix>-<id>``
(cgroupfs, or containerd's scope without the suffix), or the bare id."""
_QOS_DIRS: dict[str, Qos] = {"burstable": "burstable", "besteffort": "besteffort"}

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
    """None when the path does not say: a cgroupfs pod directory seen from inside a cgroup
    namespace (``/../../pod<uid>/<id>``). A systemd pod slice names its QoS class itself."""
    driver: Driver
    container_id: str | None = None
    runtime: Runtime | None = None
    """None with the cgroupfs driver when the directory is the bare id (containerd, docker)."""

    @property
    def is_pod_level(self) -> bool:
        """The pod cgroup itself (or a cgroup in it that is no container), not a container."""
        return self.container_id is None


def parse_cgroup_path(path: str) -> PodCgroup | None:
    """Identity of a pod or container cgroup path (absolute, relative, or a full
    /sys/fs/cgroup/... directory), or None for a path that names no pod: kubepods and QoS
    levels, system and user slices, foreign paths.

    A container's sub-cgroups (crun's ``container`` leaf, a process's own child cgroup) give
    the container; a pod's cgroups that are no container (CRI-O's conmon scope, mount units,
    an unknown runtime's directory) give the pod alone (``container_id`` None)."""
    parts = [p for p in path.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        if (m := _POD_SLICE.match(part)) is not None:
            pod = _systemd_pod(m, parts[:i])
        elif (m := _POD_DIR.match(part)) is not None:
            pod = _cgroupfs_pod(m, parts[:i])
        else:
            continue
        if pod is None or ".." in parts[i + 1 :]:
            return None
        if pod.container_id is not None or i + 1 == len(parts):
            return pod
        c = _CONTAINER.match(parts[i + 1])
        if c is None:
            return pod
        return _with_container(pod, c)
    return None


def _with_container(pod: PodCgroup, c: re.Match[str]) -> PodCgroup:
    if c.group(3):
        return PodCgroup(pod.pod_uid, pod.qos, pod.driver, c.group(3), None)
    return PodCgroup(pod.pod_uid, pod.qos, pod.driver, c.group(2), _RUNTIMES[c.group(1)])


def _systemd_pod(m: re.Match[str], above: list[str]) -> PodCgroup | None:
    qos: Qos = _QOS_DIRS[m.group(1)] if m.group(1) else "guaranteed"
    # Slice names spell out their parents: whatever of them the path shows must agree.
    parent = above[-1] if above else ""
    if (q := _QOS_SLICE.match(parent)) is not None:
        if q.group(1) != qos:
            return None
    elif _KUBEPODS_SLICE.match(parent) and qos != "guaranteed":
        return None
    uid = m.group(2).replace("_", "-")
    runtime = _RUNTIMES[m.group(3)] if m.group(3) else None
    return PodCgroup(uid, qos, "systemd", m.group(4), runtime)


def _cgroupfs_pod(m: re.Match[str], above: list[str]) -> PodCgroup | None:
    """A ``pod<uid>`` directory counts only under kubepods (directly or in a QoS directory),
    or at the top of a path seen from inside a cgroup namespace (``/../..``)."""
    qos: Qos | None = "guaranteed"
    if above and above[-1] in _QOS_DIRS:
        qos = _QOS_DIRS[above[-1]]
        above = above[:-1]
    if not above:
        return None
    if above[-1] == "..":
        if qos == "guaranteed":
            qos = None  # a pod directory right under the namespace root: its level is unseen
    elif above[-1] != "kubepods":
        return None
    return PodCgroup(m.group(1).replace("_", "-"), qos, "cgroupfs")


def parse_container_dir(name: str) -> tuple[str, Runtime | None] | None:
    """(container id, runtime) of one directory name (``cri-containerd-<id>.scope``,
    ``crio-<id>``, a bare 64-hex id), or None: the last component of a path seen from inside a
    cgroup namespace (``0::/../crio-<id>.scope``), where the pod part is out of sight."""
    if (p := _POD_SLICE.match(name)) is not None and p.group(4):
        return p.group(4), _RUNTIMES[p.group(3)]
    m = _CONTAINER.match(name)
    if m is None:
        return None
    if m.group(3):
        return m.group(3), None
    return m.group(2), _RUNTIMES[m.group(1)]


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
