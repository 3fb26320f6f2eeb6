"""Sidecar mode: every container of the sidecar's own pod.

The pod is named by the Downward API (POD_UID, POD_NAME, POD_NAMESPACE, or the
``kubernetes.pod_*`` keys). Its containers' cgroups are found one of two ways:

- cgroupfs: the node's cgroup root mounted into the sidecar (a hostPath of /sys/fs/cgroup at
  ``source.cgroup.path``); the pod directory is the one whose name carries the pod UID
  (``pod<uid>`` or ``kubepods-...-pod<uid_>.slice``) and its children are the containers.
- proc: with ``shareProcessNamespace: true`` every process of the pod is visible under
  ``source.proc_root``. ``<proc>/<pid>/cgroup`` names each process's container (its last
  component, ``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope`` or a bare
  id, is readable even through a cgroup namespace) and ``<proc>/<pid>/root/sys/fs/cgroup`` is
  that container's own cgroup mount. Its cgroup.procs numbers pids in the sidecar's own PID
  namespace (the kernel translates them for the reader), so signals go through the sidecar's
  /proc like any other.

``auto`` tries cgroupfs first and falls back to proc. With API access (a Role allowing get/list/
watch on its own pod), container names, annotations and overrides come from a one-pod watch;
without it the identity holds what the Downward API and the cgroup paths give.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pressured.errors import CgroupError, ConfigError, KubernetesError
from pressured.k8s.client import SERVICE_ACCOUNT_DIR, KubeClient
from pressured.k8s.identity import (
    Driver,
    PodCgroup,
    parse_cgroup_path,
    parse_container_dir,
    pod_uid_forms,
)
from pressured.k8s.podcache import PodCache, PodInfo
from pressured.kernel import procfs
from pressured.kernel.cgroupfs import CgroupRef, Layout, detect_layout, read_limit, resolve
from pressured.model import Identity
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

log = logging.getLogger("pressured.sources.sidecar")

Discovery = Literal["auto", "cgroupfs", "proc"]


@dataclass(frozen=True)
class _Found:
    ref: CgroupRef
    pod: PodCgroup


class SidecarSource(Source):
    mode = "sidecar"

    def __init__(
        self,
        *,
        pod_uid: str,
        pod_name: str | None = None,
        pod_namespace: str | None = None,
        node_name: str | None = None,
        kube: KubeClient | None = None,
        cgroup_path: str = DEFAULT_CGROUP_ROOT,
        proc_root: str = "/proc",
        discovery: Discovery = "auto",
        cache: PodCache | None = None,
        owns_kube: bool = False,
    ) -> None:
        super().__init__()
        self.kube = kube
        """The API client actions use too (ActionContext.kube); None without credentials."""
        self._owns_kube = owns_kube
        self.pod_uid = pod_uid.replace("_", "-")
        self.pod_name = pod_name
        self.pod_namespace = pod_namespace
        self.node_name = node_name
        self._proc_root = proc_root
        self._discovery = discovery
        self._cgroup_path = cgroup_path
        if cache is None and kube is not None and pod_name and pod_namespace:
            cache = PodCache(
                kube, namespace=pod_namespace, field_selector=f"metadata.name={pod_name}"
            )
        self._cache = cache
        self._annotations = AnnotationChecker(kube)
        if cache is not None:
            cache.add_listener(self._pod_changed)
        self._pod_dir: str | None = None
        self._layout: Layout | None = None
        self._used: str = "none"
        self._problems: list[str] = []
        self._self_id = self._own_container_id()

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        kube: KubeClient | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str = SERVICE_ACCOUNT_DIR,
    ) -> SidecarSource:
        """From ``kubernetes.pod_*`` (or POD_UID, POD_NAME, POD_NAMESPACE), ``source.cgroup.path``
        and ``source.proc_root``. Without a client given, one is built when credentials exist
        (a kubeconfig, or the pod's service account); without any, the sidecar runs without
        the API."""
        env = os.environ if environ is None else environ
        values = downward_api(config, ["pod_uid", "pod_name", "pod_namespace", "node_name"], env)
        k8s = config.get("kubernetes") or {}
        uid = values["pod_uid"]
        if not uid:
            raise ConfigError(
                "kubernetes.pod_uid: required in sidecar mode (set POD_UID from the Downward "
                "API: fieldRef metadata.uid)"
            )
        source = config.get("source") or {}
        proc_root = source.get("proc_root", "/proc") if isinstance(source, Mapping) else "/proc"
        if not isinstance(proc_root, str) or not proc_root:
            raise ConfigError(f"source.proc_root: expected a directory path (got {proc_root!r})")
        cgroup_path = cgroup_path_option(config)
        owns = False
        if kube is None:
            in_pod = bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
                os.path.join(service_account_dir, "token")
            )
            if k8s.get("kubeconfig") or env.get("KUBECONFIG") or in_pod:
                kube = KubeClient.from_config(
                    k8s, "kubernetes", service_account_dir=service_account_dir, environ=env
                )
                owns = True
            else:
                log.info("sidecar: no Kubernetes credentials; running without the API")
        return cls(
            pod_uid=uid,
            pod_name=values["pod_name"],
            pod_namespace=values["pod_namespace"],
            node_name=values["node_name"],
            kube=kube,
            cgroup_path=cgroup_path,
            proc_root=proc_root,
            owns_kube=owns,
        )

    @property
    def cache(self) -> PodCache | None:
        return self._cache

    # ---- lifecycle
    def start(self) -> None:
        if self._cache is None:
            return
        try:
            self._cache.start()
        except KubernetesError as exc:
            # The sidecar still watches every container without API access; it only loses
            # container names and annotations.
            log.warning(
                "sidecar: pod %s/%s not readable through the API (%s); container "
                "names and annotations will be missing",
                self.pod_namespace,
                self.pod_name,
                exc,
            )
            self._cache = None

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._owns_kube and self.kube is not None:
            self.kube.close()

    def watch_dirs(self) -> list[str]:
        if self._used == "cgroupfs" and self._pod_dir is not None:
            return [self._pod_dir]
        return []

    # ---- discovery
    def targets(self) -> list[TargetSpec]:
        self._changed.clear()
        self._problems = []
        found: list[_Found] = []
        if self._discovery in ("auto", "cgroupfs"):
            found = self._from_cgroupfs()
            if found or self._discovery == "cgroupfs":
                self._used = "cgroupfs"
        if not found and self._discovery in ("auto", "proc"):
            found = self._from_proc()
            self._used = "proc" if found else "none"
        info = self._cache.by_uid(self.pod_uid) if self._cache is not None else None
        out: list[TargetSpec] = []
        for f in found:
            if f.pod.container_id == self._self_id:
                continue
            if info is not None and info.container_by_id(f.pod.container_id or "") is None:
                continue  # the sandbox (pause) container, or one already replaced
            spec = target_spec(f.ref, f.pod, info, self.node_name)
            if info is None:
                spec = TargetSpec(
                    spec.key,
                    spec.ref,
                    Identity(
                        namespace=self.pod_namespace,
                        pod_name=self.pod_name,
                        pod_uid=self.pod_uid,
                        container_id=f.pod.container_id,
                        node_name=self.node_name,
                    ),
                )
            out.append(spec)
        return out

    def _from_cgroupfs(self) -> list[_Found]:
        try:
            layout, base = locate_hierarchy(self._cgroup_path)
        except ConfigError as exc:
            self._problems.append(str(exc))
            return []
        self._layout = layout
        pod_dir = self._pod_dir if self._pod_dir and os.path.isdir(self._pod_dir) else None
        if pod_dir is None:
            pod_dir = self._find_pod_dir(base)
            self._pod_dir = pod_dir
        if pod_dir is None:
            return []
        out: list[_Found] = []
        try:
            names = sorted(os.listdir(pod_dir))
        except OSError as exc:
            self._problems.append(f"{pod_dir}: {exc.strerror}")
            return []
        for name in names:
            path = os.path.join(pod_dir, name)
            if not os.path.isdir(path):
                continue
            try:
                ref = resolve(path, layout)
            except CgroupError:
                continue
            pod = parse_cgroup_path(ref.relpath)
            if pod is None or pod.is_pod_level or pod.pod_uid != self.pod_uid:
                continue
            if self._limited(ref):
                out.append(_Found(ref, pod))
        return out

    def _find_pod_dir(self, base: str) -> str | None:
        dash, under = pod_uid_forms(self.pod_uid)
        for top in find_kubepods(base):
            for dirpath, dirnames, _ in os.walk(top):
                if dirpath[len(top) :].count("/") >= 2:
                    dirnames[:] = []
                for d in dirnames:
                    if d in (f"pod{dash}", f"pod{under}") or d.endswith(f"-pod{under}.slice"):
                        return os.path.join(dirpath, d)
        return None

    def _from_proc(self) -> list[_Found]:
        try:
            pids = procfs.pids(self._proc_root)
        except OSError as exc:
            self._problems.append(f"{self._proc_root}: {exc.strerror}")
            return []
        seen: set[str] = set()
        out: list[_Found] = []
        for pid in pids:
            cg = procfs.memory_cgroup(pid, self._proc_root)
            if cg is None:
                continue
            parsed = parse_container_dir(os.path.basename(cg.rstrip("/")))
            if parsed is None:
                continue
            cid, runtime = parsed
            if cid in seen or cid == self._self_id:
                continue
            # The lowest PID of a container is its init, which lives as long as it does.
            seen.add(cid)
            root = os.path.join(self._proc_root, str(pid), "root")
            mount = os.path.join(root, "sys", "fs", "cgroup")
            try:
                layout = detect_layout(mount)
                if layout.memory_root is None:
                    raise CgroupError(f"{mount}: no memory controller visible")
                ref = resolve(layout.memory_root, layout)
            except (CgroupError, OSError) as exc:
                self._problems.append(f"pid {pid}: {exc}")
                continue
            full = parse_cgroup_path(cg)
            if full is not None and full.container_id == cid:
                pod = full
            else:  # seen through a cgroup namespace: "/../<container dir>"
                driver: Driver = "systemd" if cg.rstrip("/").endswith(".scope") else "cgroupfs"
                pod = PodCgroup(self.pod_uid, None, driver, cid, runtime)
            if pod.pod_uid != self.pod_uid:
                continue
            if self._limited(ref):
                out.append(_Found(ref, pod))
        return out

    def _limited(self, ref: CgroupRef) -> bool:
        try:
            return read_limit(ref) is not None
        except CgroupError as exc:
            self._problems.append(str(exc))
            return False

    def _own_container_id(self) -> str | None:
        cg = procfs.memory_cgroup("self", self._proc_root)
        if cg is None:
            return None
        parsed = parse_container_dir(os.path.basename(cg.rstrip("/")))
        return parsed[0] if parsed else None

    def _pod_changed(self, kind: str, new: PodInfo | None, old: PodInfo | None) -> None:
        if new is not None:
            self._annotations.check(new)
            if old is not None and relevant(old) == relevant(new):
                return
        elif kind == "RELIST" and self._cache is not None:
            for pod in self._cache.pods():
                self._annotations.check(pod)
        self.mark_changed()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "pod": f"{self.pod_namespace}/{self.pod_name}",
            "pod_uid": self.pod_uid,
            "discovery": self._used,
            "pod_dir": self._pod_dir,
            "problems": list(self._problems),
        }
        if self._cache is not None:
            out["pod_cache"] = self._cache.status()
        return out
