"""What the node and sidecar sources share about the pods of this node (and the cluster
source's annotation checks): the Downward API, where the kubelet's cgroups are, and a
container cgroup turned into a target with its pod's identity and annotations.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pressured.errors import ConfigError, KubernetesError
from pressured.k8s.annotations import PREFIX, event_annotations, parse_annotations
from pressured.k8s.client import KubeClient
from pressured.k8s.identity import PodCgroup
from pressured.k8s.podcache import PodInfo
from pressured.kernel.cgroupfs import CgroupRef, Layout, detect_layout
from pressured.model import Identity
from pressured.sources.base import TargetSpec

log = logging.getLogger("pressured.sources.pod")

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
INVALID_ANNOTATION_REASON = "InvalidPressuredAnnotation"
DOWNWARD_API = {
    "node_name": "NODE_NAME",
    "pod_uid": "POD_UID",
    "pod_name": "POD_NAME",
    "pod_namespace": "POD_NAMESPACE",
}
"""``kubernetes.<key>`` and the variable a pod spec sets from the Downward API for it."""


def downward_api(
    config: Mapping[str, Any],
    keys: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, str | None]:
    """Each of ``keys`` (of DOWNWARD_API) from ``kubernetes.<key>``, else from its variable,
    else None. ConfigError when the section or a value has the wrong type."""
    env = os.environ if environ is None else environ
    k8s = config.get("kubernetes") or {}
    if not isinstance(k8s, Mapping):
        raise ConfigError(f"kubernetes: expected a mapping (got {k8s!r})")
    values: dict[str, str | None] = {}
    for key in keys:
        value = k8s.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"kubernetes.{key}: expected a string (got {value!r})")
        values[key] = value or env.get(DOWNWARD_API[key]) or None
    return values


# ------------------------------------------------------------------------ kubelet cgroups
def locate_hierarchy(path: str, where: str = "source.cgroup.path") -> tuple[Layout, str]:
    """(layout of the highest cgroup root at or above ``path``, the memory-hierarchy
    directory to search). ConfigError when ``path`` is not inside a memory hierarchy."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: no such directory (got {path!r})")
    best: Layout | None = None
    cur = path
    while True:
        layout = detect_layout(cur)
        mem = layout.memory_root
        if mem is not None and (_within(path, mem) or _within(mem, path)):
            best = layout
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    if best is None or best.memory_root is None:
        raise ConfigError(
            f"{where}: not a cgroup root nor a directory of the memory hierarchy "
            f"(no memory controller found at or above it) (got {path!r})"
        )
    base = best.memory_root if _within(best.memory_root, path) else path
    return best, base


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _is_kubepods(name: str) -> bool:
    return name in ("kubepods", "kubepods.slice") or name.endswith("-kubepods.slice")


def find_kubepods(base: str) -> list[str]:
    """kubepods directories at ``base`` or up to two levels below it (a kubelet with
    ``--cgroup-root``, as kind runs it, nests them: kubelet.slice/kubelet-kubepods.slice)."""
    if _is_kubepods(os.path.basename(base.rstrip("/"))):
        return [base]
    found: list[str] = []
    frontier = [base]
    for _ in range(2):
        nxt: list[str] = []
        for d in frontier:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if not e.is_dir(follow_symlinks=False):
                    continue
                if _is_kubepods(e.name):
                    found.append(e.path)
                else:
                    nxt.append(e.path)
        if found:
            return found
        frontier = nxt
    return found


def cgroup_path_option(config: Mapping[str, Any]) -> str:
    source = config.get("source") or {}
    cgroup = source.get("cgroup") if isinstance(source, Mapping) else None
    if cgroup is None:
        cgroup = {}
    if not isinstance(cgroup, Mapping):
        raise ConfigError(f"source.cgroup: expected a mapping (got {cgroup!r})")
    path = cgroup.get("path", DEFAULT_CGROUP_ROOT)
    if not isinstance(path, str) or not path:
        raise ConfigError(f"source.cgroup.path: expected a directory path (got {path!r})")
    return path


# ---------------------------------------------------------------------------------- pods
class AnnotationChecker:
    """Logs, and posts as a Warning Event, each bad pressured.io/* annotation once per value."""

    def __init__(self, kube: KubeClient | None) -> None:
        self._kube = kube
        self._seen: dict[str, tuple[tuple[str, str], ...]] = {}
        self._lock = threading.Lock()

    def check(self, pod: PodInfo) -> None:
        mine = tuple(sorted((k, v) for k, v in pod.annotations.items() if k.startswith(PREFIX)))
        with self._lock:
            if self._seen.get(pod.uid) == mine:
                return
            self._seen[pod.uid] = mine
        warnings = parse_annotations(pod.annotations, f"{pod.namespace}/{pod.name}").warnings
        for w in warnings:
            log.warning("%s", w)
        if warnings and self._kube is not None:
            try:
                self._kube.record_event(
                    namespace=pod.namespace,
                    pod_name=pod.name,
                    pod_uid=pod.uid,
                    reason=INVALID_ANNOTATION_REASON,
                    message="; ".join(warnings)[:1024],
                )
            except KubernetesError as exc:
                log.warning(
                    "could not post the annotation warning for %s/%s: %s",
                    pod.namespace,
                    pod.name,
                    exc,
                )

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)

    def retain(self, uids: set[str]) -> None:
        """Forget every pod but these (the pods a poll still saw)."""
        with self._lock:
            for uid in set(self._seen) - uids:
                del self._seen[uid]


def relevant(pod: PodInfo) -> tuple[Any, ...]:
    """What of a pod shows in its targets: a change elsewhere needs no new ``targets()``."""
    return (
        pod.name,
        pod.namespace,
        pod.pod_ip,
        pod.node_name,
        tuple(sorted(pod.annotations.items())),
        tuple(sorted((c.name, c.id, c.limits_memory_bytes) for c in pod.containers.values())),
    )


def target_spec(
    ref: CgroupRef,
    pod_cgroup: PodCgroup,
    info: PodInfo | None,
    node_name: str | None,
    *,
    key: str | None = None,
) -> TargetSpec:
    """A TargetSpec for one container cgroup, from the path and (when known) its pod."""
    if info is None:
        identity = Identity(
            pod_uid=pod_cgroup.pod_uid,
            container_id=pod_cgroup.container_id,
            node_name=node_name,
        )
        return TargetSpec(key or ref.path, ref, identity)
    container = info.container_by_id(pod_cgroup.container_id or "")
    identity = Identity(
        namespace=info.namespace,
        pod_name=info.name,
        pod_uid=info.uid,
        container_name=container.name if container else None,
        container_id=pod_cgroup.container_id,
        node_name=info.node_name or node_name,
        pod_ip=info.pod_ip,
    )
    settings = parse_annotations(info.annotations, f"{info.namespace}/{info.name}")
    return TargetSpec(
        key or ref.path,
        ref,
        identity,
        annotations=event_annotations(info.annotations),
        overrides=settings.overrides,
    )


__all__ = [
    "DEFAULT_CGROUP_ROOT",
    "DOWNWARD_API",
    "INVALID_ANNOTATION_REASON",
    "AnnotationChecker",
    "cgroup_path_option",
    "downward_api",
    "find_kubepods",
    "locate_hierarchy",
    "relevant",
    "target_spec",
]
