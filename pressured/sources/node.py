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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pressured.errors import CgroupError, ConfigError
from pressured.k8s.client import SERVICE_ACCOUNT_DIR, KubeClient
from pressured.k8s.identity import PodCgroup, parse_cgroup_path
from pressured.k8s.podcache import PodCache, PodInfo
from pressured.kernel.cgroupfs import CgroupRef, Layout, read_limit, resolve
from pressured.sources.base import Source, TargetSpec
from pressured.sources.pod import (
    DEFAULT_CGROUP_ROOT,
    AnnotationChecker,
    cgroup_path_option,
    downward_api,
    find_kubepods,
    locate_hierarchy,
    relevant,
    target_spec,
)

log = logging.getLogger("pressured.sources.node")

NODE_NAME_REQUIRED = (
    "kubernetes.node_name: required in node mode (set NODE_NAME from the Downward API: "
    "fieldRef spec.nodeName)"
)


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
        node_name = downward_api(config, ["node_name"], env)["node_name"]
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


__all__ = ["NODE_NAME_REQUIRED", "NodeSource", "ScannedCgroup", "scan_kubepods"]
