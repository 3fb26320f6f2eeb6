"""Node mode (DaemonSet): every container cgroup of the node, enriched from the pod cache.

The kubelet's cgroups live under a ``kubepods`` directory of the memory hierarchy (v1 memory,
v2, or v1 memory on a hybrid host); KERNEL.md "Kubelet cgroup paths" gives the shapes. Each
container-level cgroup with a memory limit is a target; its identity comes from the path (pod
UID, container ID) and, through the pod cache (one watch on spec.nodeName, no API call per
event), from its pod: names, IP, annotations and the pressured.io/* overrides.

Containers the cache does not know yet are still watched with the identity the path gives;
the cache's change callback marks the source changed, and the next ``targets()`` fills the
rest in. A cgroup whose pod is known but whose container is not among the pod's statuses is
the sandbox (pause) container or a container already gone: skipped.

``source.cgroup.path`` is the cgroup root (``/sys/fs/cgroup``), or any directory of the memory
hierarchy that contains the kubepods tree; the layout (v1, v2, hybrid) is taken from the
highest cgroup root above it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pressured.errors import CgroupError, ConfigError, KubernetesError
from pressured.k8s.annotations import PREFIX, event_annotations, parse_annotations
from pressured.k8s.client import SERVICE_ACCOUNT_DIR, KubeClient
from pressured.k8s.identity import PodCgroup, parse_cgroup_path
from pressured.k8s.podcache import PodCache, PodInfo
from pressured.kernel.cgroupfs import CgroupRef, Layout, detect_layout, read_limit, resolve
from pressured.model import Identity
from pressured.sources.base import Source, TargetSpec

log = logging.getLogger("pressured.sources.node")

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
INVALID_ANNOTATION_REASON = "InvalidPressuredAnnotation"
NODE_NAME_REQUIRED = (
    "kubernetes.node_name: required in node mode (set NODE_NAME from the Downward API: "
    "fieldRef spec.nodeName)"
)


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


@dataclass(frozen=True)
class ScannedCgroup:
    ref: CgroupRef
    pod: PodCgroup
    limit: int | None


def scan_kubepods(
    kubepods_dirs: list[str], layout: Layout
) -> tuple[list[ScannedCgroup], list[str]]:
    """Container-level cgroups under the kubepods dirs, and the directories whose new
    children may be new targets (kubepods, QoS and pod levels)."""
    out: list[ScannedCgroup] = []
    dirs: list[str] = []
    for top in kubepods_dirs:
        for dirpath, dirnames, _ in os.walk(top):
            depth = dirpath[len(top) :].count("/")
            if depth >= 3:
                dirnames[:] = []
            dirnames.sort()
            try:
                ref = resolve(dirpath, layout)
            except CgroupError:
                dirnames[:] = []
                continue
            pod = parse_cgroup_path(ref.relpath)
            if pod is None:
                if depth < 2:
                    dirs.append(dirpath)  # kubepods or a QoS level
                continue
            if pod.is_pod_level:
                dirs.append(dirpath)
                continue
            dirnames[:] = []  # a container's own sub-cgroups (crun's "container") are its own
            try:
                limit = read_limit(ref)
            except CgroupError as exc:
                log.debug("%s: skipped: %s", dirpath, exc)
                continue
            out.append(ScannedCgroup(ref, pod, limit))
    return out, dirs


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
    pids_root: str | None = None,
    key: str | None = None,
) -> TargetSpec:
    """A TargetSpec for one container cgroup, from the path and (when known) its pod."""
    if info is None:
        identity = Identity(
            pod_uid=pod_cgroup.pod_uid,
            container_id=pod_cgroup.container_id,
            node_name=node_name,
        )
        return TargetSpec(key or ref.path, ref, identity, pids_root=pids_root)
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
        pids_root=pids_root,
    )


class NodeSource(Source):
    mode = "node"

    def __init__(
        self,
        *,
        kube: KubeClient | None,
        node_name: str | None,
        cgroup_path: str = DEFAULT_CGROUP_ROOT,
        cache: PodCache | None = None,
        owns_kube: bool = False,
    ) -> None:
        super().__init__()
        self.node_name = node_name
        self.kube = kube
        """The API client actions use too (ActionContext.kube)."""
        self._owns_kube = owns_kube
        self._layout, self._base = locate_hierarchy(cgroup_path)
        if cache is None and kube is not None:
            if not node_name:
                raise ConfigError(NODE_NAME_REQUIRED)
            cache = PodCache(kube, field_selector=f"spec.nodeName={node_name}")
        self._cache = cache
        self._annotations = AnnotationChecker(kube)
        if cache is not None:
            cache.add_listener(self._pod_changed)
        self._watch_dirs: list[str] = [self._base]
        self._counts: dict[str, int] = {}

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        kube: KubeClient | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str = SERVICE_ACCOUNT_DIR,
    ) -> NodeSource:
        """From the whole config: ``source.cgroup.path``, ``kubernetes.node_name`` (or the
        NODE_NAME variable) and, unless a client is given, the ``kubernetes`` credentials."""
        env = os.environ if environ is None else environ
        path = cgroup_path_option(config)
        k8s = config.get("kubernetes") or {}
        node_name = k8s.get("node_name") if isinstance(k8s, Mapping) else None
        if node_name is not None and not isinstance(node_name, str):
            raise ConfigError(f"kubernetes.node_name: expected a string (got {node_name!r})")
        node_name = node_name or env.get("NODE_NAME") or None
        if not node_name:
            raise ConfigError(NODE_NAME_REQUIRED)
        locate_hierarchy(path)  # a bad path fails before a client is built
        owns = kube is None
        if kube is None:
            kube = KubeClient.from_config(
                k8s, "kubernetes", service_account_dir=service_account_dir, environ=env
            )
        try:
            return cls(kube=kube, node_name=node_name, cgroup_path=path, owns_kube=owns)
        except BaseException:
            if owns:
                kube.close()
            raise

    @property
    def cache(self) -> PodCache | None:
        return self._cache

    def start(self) -> None:
        if self._cache is not None:
            self._cache.start()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._owns_kube and self.kube is not None:
            self.kube.close()

    def watch_dirs(self) -> list[str]:
        return list(self._watch_dirs)

    def targets(self) -> list[TargetSpec]:
        self._changed.clear()
        kubepods = find_kubepods(self._base)
        scanned, dirs = scan_kubepods(kubepods, self._layout)
        self._watch_dirs = [self._base, *dirs] if not kubepods else dirs
        counts = {"containers": 0, "unlimited": 0, "not_in_pod": 0, "unknown_pod": 0}
        out: list[TargetSpec] = []
        for item in scanned:
            counts["containers"] += 1
            if item.limit is None:
                # Nothing to take a percentage of (BestEffort, or no limit set).
                counts["unlimited"] += 1
                continue
            info = self._lookup(item.pod)
            if info is None and self._cache is not None:
                if self._cache.by_uid(item.pod.pod_uid) is not None:
                    counts["not_in_pod"] += 1
                    continue
                counts["unknown_pod"] += 1
            out.append(target_spec(item.ref, item.pod, info, self.node_name))
        self._counts = counts
        return out

    def _lookup(self, pod: PodCgroup) -> PodInfo | None:
        if self._cache is None or pod.container_id is None:
            return None
        info = self._cache.by_container_id(pod.container_id)
        if info is not None and info.uid != pod.pod_uid:
            log.warning(
                "container %s is in pod %s by its cgroup but in pod %s by the API",
                pod.container_id[:12],
                pod.pod_uid,
                info.uid,
            )
        return info

    def _pod_changed(self, kind: str, new: PodInfo | None, old: PodInfo | None) -> None:
        if kind == "RELIST" and self._cache is not None:
            for pod in self._cache.pods():
                self._annotations.check(pod)
        elif new is not None:
            self._annotations.check(new)
            if old is not None and relevant(old) == relevant(new):
                return  # a status update (readiness, conditions): targets stay as they are
        elif old is not None:
            self._annotations.forget(old.uid)
        self.mark_changed()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "node_name": self.node_name,
            "layout": self._layout.kind,
            "search_base": self._base,
            "kubepods": find_kubepods(self._base),
            **self._counts,
        }
        if self._cache is not None:
            out["pod_cache"] = self._cache.status()
        return out


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


__all__ = [
    "AnnotationChecker",
    "NodeSource",
    "ScannedCgroup",
    "cgroup_path_option",
    "find_kubepods",
    "locate_hierarchy",
    "scan_kubepods",
    "target_spec",
]
