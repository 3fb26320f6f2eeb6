"""A cache of pods kept current by one watch (no API call per pressure event).

One background thread lists the pods once, then watches from the list's resourceVersion; a
dropped stream resumes from the last version seen, and 410 Gone (the version was compacted
away) re-lists from scratch, as client-go's reflector does. Lookups by container ID and by pod
UID are dictionary reads under a lock. Listeners hear about every change on the watch thread;
the node source uses that to mark itself changed so annotations are re-read.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from pressured.errors import KubernetesError
from pressured.k8s.client import KubeClient, ResourceExpired
from pressured.k8s.identity import split_container_id

log = logging.getLogger("pressured.k8s.podcache")

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
)
_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("512Mi", "1G", "1e9", "1500m") as whole bytes, rounded
    up as the API server does for memory. ValueError names the text."""
    m = _QUANTITY.match(text.strip())
    if m is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        scale = _SUFFIX[suffix] if suffix in _SUFFIX else Decimal(10) ** int(suffix[1:])
        value = Decimal(number) * scale
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from exc
    if value < 0:
        raise ValueError(f"negative quantity: {text!r}")
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str | None
    """Runtime container ID without the "containerd://" prefix; None before it started."""
    limits_memory_bytes: int | None
    restart_count: int = 0
    init: bool = False


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod_ip: str | None = None
    node_name: str | None = None
    containers: Mapping[str, ContainerInfo] = field(default_factory=dict)
    qos: str | None = None
    """status.qosClass lower-cased: guaranteed, burstable, besteffort."""
    resource_version: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def container_by_id(self, container_id: str) -> ContainerInfo | None:
        for c in self.containers.values():
            if c.id == container_id:
                return c
        return None


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """A PodInfo from a v1 Pod object (plain JSON data). Malformed parts are skipped, so a pod
    with an odd limit still gets an identity; KeyError only without metadata.name/uid."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    limits: dict[str, int | None] = {}
    init_names: set[str] = set()
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind) or []:
            name = c.get("name")
            if not isinstance(name, str):
                continue
            if kind != "containers":
                init_names.add(name)
            raw_limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            limit: int | None = None
            if raw_limit is not None:
                try:
                    limit = parse_quantity(str(raw_limit))
                except ValueError:
                    log.warning(
                        "pod %s/%s container %s: memory limit %r is not a quantity; "
                        "treating it as unlimited",
                        meta.get("namespace"),
                        meta.get("name"),
                        name,
                        raw_limit,
                    )
            limits[name] = limit
    containers: dict[str, ContainerInfo] = {}
    statuses: dict[str, Mapping[str, Any]] = {}
    for kind in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(kind) or []:
            if isinstance(cs.get("name"), str):
                statuses[cs["name"]] = cs
    for name, limit in limits.items():
        cs = statuses.get(name) or {}
        raw_id = cs.get("containerID")
        cid = split_container_id(raw_id)[0] if isinstance(raw_id, str) and raw_id else None
        restarts = cs.get("restartCount")
        containers[name] = ContainerInfo(
            name=name,
            id=cid,
            limits_memory_bytes=limit,
            restart_count=restarts if isinstance(restarts, int) else 0,
            init=name in init_names,
        )
    qos = status.get("qosClass")
    return PodInfo(
        name=meta["name"],
        namespace=meta.get("namespace") or "default",
        uid=meta["uid"],
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        pod_ip=status.get("podIP") or None,
        node_name=spec.get("nodeName") or None,
        containers=containers,
        qos=qos.lower() if isinstance(qos, str) else None,
        resource_version=str(meta.get("resourceVersion") or ""),
        raw=pod,
    )


Listener = Callable[[str, PodInfo | None, PodInfo | None], None]
"""listener(kind, new, old): kind is ADDED, MODIFIED, DELETED or RELIST (new and old None)."""


class PodCache:
    """Pods of one selection (a node, a namespace, one pod) by container ID and by UID.

    ``start()`` lists synchronously (so the first ``targets()`` already has identities, and an
    unusable API fails at start) and then watches on a daemon thread.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        retry_seconds: float = 5.0,
        server_timeout: int = 290,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._field_selector = field_selector
        self._label_selector = label_selector
        self._retry_seconds = retry_seconds
        self._server_timeout = server_timeout
        self._lock = threading.Lock()
        self._by_uid: dict[str, PodInfo] = {}
        self._by_container: dict[str, PodInfo] = {}
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resource_version: str | None = None
        self.generation = 0
        """Bumped on every change; a reader compares it to skip work when nothing changed."""
        self.relists = 0
        self.last_error: str | None = None
        self.synced = threading.Event()

    # ---- reading
    def by_container_id(self, container_id: str) -> PodInfo | None:
        with self._lock:
            return self._by_container.get(split_container_id(container_id)[0])

    def by_uid(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._by_uid.get(uid)

    def pods(self) -> list[PodInfo]:
        with self._lock:
            return list(self._by_uid.values())

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # ---- lifecycle
    def start(self) -> None:
        """List once (raises KubernetesError if the API cannot be used), then watch."""
        self._relist()
        self._thread = threading.Thread(target=self._run, name="pressured-podwatch", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the watch. A read blocked on a quiet stream ends at the server's timeout at
        the latest; the thread is a daemon thread, so shutdown does not wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        with self._lock:
            n = len(self._by_uid)
        return {
            "pods": n,
            "resource_version": self._resource_version,
            "relists": self.relists,
            "watching": self.running,
            "last_error": self.last_error,
        }

    # ---- the watch loop
    def _relist(self) -> None:
        listing = self._kube.list_pods(
            namespace=self._namespace,
            field_selector=self._field_selector,
            label_selector=self._label_selector,
        )
        infos: dict[str, PodInfo] = {}
        for pod in listing.items:
            info = self._info(pod)
            if info is not None:
                infos[info.uid] = info
        with self._lock:
            old = self._by_uid
            self._by_uid = infos
            self._by_container = {
                c.id: p for p in infos.values() for c in p.containers.values() if c.id
            }
            self._resource_version = listing.resource_version
            self.generation += 1
        self.relists += 1
        if self.relists > 1:
            log.info(
                "pod watch: re-listed %d pod(s) at resourceVersion %s",
                len(infos),
                listing.resource_version,
            )
        self.last_error = None
        self.synced.set()
        for uid in old.keys() - infos.keys():
            self._notify("DELETED", None, old[uid])
        self._notify("RELIST", None, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._resource_version is None:
                    self._relist()
                self._watch()
            except ResourceExpired as exc:
                log.info(
                    "pod watch: resourceVersion %s expired (410: %s); re-listing",
                    self._resource_version,
                    exc,
                )
                self._resource_version = None
            except KubernetesError as exc:
                if self._stop.is_set():
                    return
                # An API server away for minutes fails the same way every few seconds: said
                # once as a warning, the repeats at debug level, until it works again.
                again = self.last_error == str(exc)
                self.last_error = str(exc)
                log.log(
                    logging.DEBUG if again else logging.WARNING,
                    "pod watch: %s; retrying in %.0f s%s",
                    exc,
                    self._retry_seconds,
                    " (again)" if again else "",
                )
                self._stop.wait(self._retry_seconds)

    def _watch(self) -> None:
        assert self._resource_version is not None
        since = self._resource_version
        stream = self._kube.watch_pods(
            namespace=self._namespace,
            field_selector=self._field_selector,
            label_selector=self._label_selector,
            resource_version=since,
            server_timeout=self._server_timeout,
        )
        try:
            for kind, pod in stream:
                if self._stop.is_set():
                    return
                if self.last_error is not None:
                    # The first event after a failure: the watch carries on from where it was,
                    # with nothing missed in between (no re-list needed).
                    log.info(
                        "pod watch: resumed from resourceVersion %s after: %s",
                        since,
                        self.last_error,
                    )
                    self.last_error = None
                self.apply(kind, pod)
        finally:
            stream.close()

    def apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED, BOOKMARK)."""
        rv = (pod.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self._resource_version = str(rv)
            return
        info = self._info(pod)
        if info is None:
            return
        with self._lock:
            old = self._by_uid.get(info.uid)
            if old is not None:
                for c in old.containers.values():
                    if c.id and self._by_container.get(c.id) is old:
                        del self._by_container[c.id]
            if kind == "DELETED":
                self._by_uid.pop(info.uid, None)
            else:
                self._by_uid[info.uid] = info
                for c in info.containers.values():
                    if c.id:
                        self._by_container[c.id] = info
            if rv:
                self._resource_version = str(rv)
            self.generation += 1
        self._notify(kind, None if kind == "DELETED" else info, old)

    @staticmethod
    def _info(pod: Mapping[str, Any]) -> PodInfo | None:
        try:
            return pod_info(pod)
        except (KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "pod object without usable metadata skipped (%s: %s)", type(exc).__name__, exc
            )
            return None

    def _notify(self, kind: str, new: PodInfo | None, old: PodInfo | None) -> None:
        for listener in self._listeners:
            try:
                listener(kind, new, old)
            except Exception:
                log.exception("pod cache listener failed on %s", kind)
