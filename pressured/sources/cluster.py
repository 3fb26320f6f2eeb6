"""Cluster mode: pods through the API server, memory from each node's kubelet summary.

No cgroups here: every ``source.kubelet.poll_interval_ms`` the source lists the pods
(``namespace_filter``: a comma list, empty for all; ``label_selector`` as kubectl takes it,
sent URL-encoded), reads ``/stats/summary`` of each node that runs one of them through the API
server's ``nodes/{name}/proxy`` subresource, and returns one Sample per container keyed
"<pod uid>/<container>": working set and usage from the summary, the limit from the pod spec.

Kills come from the API too: Events with reason OOMKilling (node-problem-detector's, on the
Node; they name the pid and command) and containers whose ``lastState.terminated.reason`` is
OOMKilled (or whose current state is, before the restart). Each is reported once: a container
kill by (pod uid, container, restart count), an Event by (uid, count). Kills that ended more
than ``STARTUP_LOOKBACK_SECONDS`` before the source started are history and are not reported;
more recent ones are, the very first poll included.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from pressured.errors import ConfigError, KubernetesError
from pressured.k8s.annotations import event_annotations, parse_annotations
from pressured.k8s.client import SERVICE_ACCOUNT_DIR, KubeClient
from pressured.k8s.identity import split_container_id
from pressured.k8s.podcache import PodInfo, pod_info
from pressured.model import Identity, KillRecord, Sample, parse_time
from pressured.sources.base import Polled, Source, TargetSpec
from pressured.sources.pod import AnnotationChecker

log = logging.getLogger("pressured.sources.cluster")

STARTUP_LOOKBACK_SECONDS = 300.0
SOURCE_K8S_EVENT = "k8s:event"
SOURCE_K8S_STATUS = "k8s:status"
OOM_EVENT_REASON = "OOMKilling"
KUBELET_KEYS = frozenset({"poll_interval_ms", "namespace_filter", "label_selector"})
_KILLED = re.compile(r"Killed process (\d+) \(([^)]*)\)")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _kubelet_options(config: Mapping[str, Any]) -> tuple[float, list[str], str | None]:
    where = "source.kubelet"
    source = config.get("source") or {}
    section = source.get("kubelet") if isinstance(source, Mapping) else None
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a mapping (got {section!r})")
    problems = [
        f"{where}.{k}: unknown key (known: {', '.join(sorted(KUBELET_KEYS))})"
        for k in sorted(set(section) - KUBELET_KEYS)
    ]
    interval = section.get("poll_interval_ms", 10000)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        problems.append(f"{where}.poll_interval_ms: expected a positive number (got {interval!r})")
        interval = 10000
    raw_ns = section.get("namespace_filter", "") or ""
    namespaces: list[str] = []
    if isinstance(raw_ns, list):
        raw_ns = ",".join(str(n) for n in raw_ns)
    if not isinstance(raw_ns, str):
        problems.append(f"{where}.namespace_filter: expected a comma list (got {raw_ns!r})")
    else:
        for ns in (n.strip() for n in raw_ns.split(",")):
            if not ns:
                continue
            if not _NAMESPACE.match(ns):
                problems.append(f"{where}.namespace_filter: not a namespace name (got {ns!r})")
            elif ns not in namespaces:
                namespaces.append(ns)
    selector = section.get("label_selector", "") or None
    if selector is not None and not isinstance(selector, str):
        problems.append(f"{where}.label_selector: expected a string (got {selector!r})")
        selector = None
    if problems:
        raise ConfigError(problems)
    return float(interval) / 1000.0, namespaces, (selector.strip() or None) if selector else None


class ClusterSource(Source):
    mode = "cluster"

    def __init__(
        self,
        kube: KubeClient,
        *,
        interval_seconds: float = 10.0,
        namespaces: list[str] | None = None,
        label_selector: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.kube: KubeClient = kube
        """The API client actions use too (ActionContext.kube)."""
        self._owns_kube = False
        self.interval = interval_seconds
        self.namespaces = list(namespaces or [])
        self.label_selector = label_selector
        self._wall = wall_clock
        self._start_wall: float | None = None
        self._next = 0.0
        self._reported: set[tuple[str, str, int]] = set()
        self._event_counts: dict[str, int] = {}
        self._annotations = AnnotationChecker(kube)
        self._last: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self._listed_all = False
        self._located: dict[str, tuple[str, int | None]] = {}

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        kube: KubeClient | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str = SERVICE_ACCOUNT_DIR,
    ) -> ClusterSource:
        """From ``source.kubelet`` and, unless a client is given, the ``kubernetes``
        credentials (ConfigError when there are none)."""
        interval, namespaces, selector = _kubelet_options(config)
        owns = kube is None
        if kube is None:
            kube = KubeClient.from_config(
                config.get("kubernetes"),
                "kubernetes",
                service_account_dir=service_account_dir,
                environ=environ,
            )
        src = cls(kube, interval_seconds=interval, namespaces=namespaces, label_selector=selector)
        src._owns_kube = owns
        return src

    def start(self) -> None:
        self._start_wall = self._wall()

    def targets(self) -> list[TargetSpec]:
        # Samples come with their TargetSpecs from poll(); there is nothing to arm.
        self._changed.clear()
        return []

    def next_poll(self) -> float | None:
        return self._next

    def poll(self, now: float) -> Polled:
        self._next = now + self.interval
        if self._start_wall is None:
            self._start_wall = self._wall()
        pods = self._list_pods()
        samples: list[tuple[TargetSpec, Sample]] = []
        kills: list[KillRecord] = []
        by_node: dict[str, list[PodInfo]] = {}
        for raw, info in pods:
            self._annotations.check(info)
            kills.extend(self._status_kills(raw, info, now))
            if info.node_name and (raw.get("status") or {}).get("phase") == "Running":
                by_node.setdefault(info.node_name, []).append(info)
        for node, infos in sorted(by_node.items()):
            try:
                summary = self.kube.node_summary(node)
            except KubernetesError as exc:
                self._error(f"summary:{node}", str(exc))
                continue
            self._errors.pop(f"summary:{node}", None)
            samples.extend(self._samples(summary, infos, now))
        kills.extend(self._event_kills(now))
        if self._listed_all:
            # Forget what belongs to pods that are gone (uids are never reused).
            alive = {info.uid for _, info in pods}
            self._reported = {k for k in self._reported if k[0] in alive}
            self._annotations.retain(alive)
            self._located = {k: v for k, v in self._located.items() if k.split("/")[0] in alive}
        self._last = {"pods": len(pods), "nodes": len(by_node), "samples": len(samples)}
        return Polled(samples=samples, kills=kills)

    # ---- pods and samples
    def _list_pods(self) -> list[tuple[dict[str, Any], PodInfo]]:
        raw: list[dict[str, Any]] = []
        selection: list[str | None] = list(self.namespaces) or [None]
        self._listed_all = True
        for ns in selection:
            try:
                raw.extend(
                    self.kube.list_pods(namespace=ns, label_selector=self.label_selector).items
                )
            except KubernetesError as exc:
                self._listed_all = False
                self._error(f"pods:{ns or '*'}", str(exc))
                continue
            self._errors.pop(f"pods:{ns or '*'}", None)
        out: list[tuple[dict[str, Any], PodInfo]] = []
        for pod in raw:
            try:
                out.append((pod, pod_info(pod)))
            except (KeyError, TypeError, AttributeError) as exc:
                log.warning("pod without usable metadata skipped (%s: %s)", type(exc).__name__, exc)
        return out

    def _samples(
        self, summary: Mapping[str, Any], infos: list[PodInfo], now: float
    ) -> list[tuple[TargetSpec, Sample]]:
        stats: dict[str, dict[str, Mapping[str, Any]]] = {}
        for p in summary.get("pods") or []:
            if not isinstance(p, Mapping):
                continue
            uid = (p.get("podRef") or {}).get("uid")
            if not isinstance(uid, str):
                continue
            stats[uid] = {
                c["name"]: c.get("memory") or {}
                for c in p.get("containers") or []
                if isinstance(c, Mapping) and isinstance(c.get("name"), str)
            }
        out: list[tuple[TargetSpec, Sample]] = []
        for info in infos:
            containers = stats.get(info.uid)
            if containers is None:
                continue
            settings = parse_annotations(info.annotations, f"{info.namespace}/{info.name}")
            for name, c in info.containers.items():
                if c.init or name not in containers:
                    continue
                key = f"{info.uid}/{name}"
                sample = _sample(key, containers[name], c.limits_memory_bytes, now)
                if sample is None:
                    continue
                if info.node_name:
                    self._located[key] = (info.node_name, c.limits_memory_bytes)
                spec = TargetSpec(
                    key,
                    None,
                    _identity(info, name, c.id),
                    annotations=event_annotations(info.annotations),
                    overrides=settings.overrides,
                )
                out.append((spec, sample))
        return out

    def reread(self, key: str, now: float) -> Sample | None:
        """A fresh Sample of one "<pod uid>/<container>" target (its node's summary, read now),
        for the re-check before a destructive action; None when it cannot be had."""
        located = self._located.get(key)
        if located is None:
            return None
        node, limit = located
        uid, _, container = key.partition("/")
        try:
            summary = self.kube.node_summary(node)
        except KubernetesError as exc:
            log.info("re-read of %s failed: %s", key, exc)
            return None
        for p in summary.get("pods") or []:
            if isinstance(p, Mapping) and (p.get("podRef") or {}).get("uid") == uid:
                for c in p.get("containers") or []:
                    if isinstance(c, Mapping) and c.get("name") == container:
                        return _sample(key, c.get("memory") or {}, limit, now)
        return None

    # ---- kills
    def _recent(self, wall: float | None) -> bool:
        assert self._start_wall is not None
        return wall is not None and wall >= self._start_wall - STARTUP_LOOKBACK_SECONDS

    def _status_kills(self, raw: Mapping[str, Any], info: PodInfo, now: float) -> list[KillRecord]:
        out: list[KillRecord] = []
        status = raw.get("status") or {}
        for kind in ("initContainerStatuses", "containerStatuses"):
            for cs in status.get(kind) or []:
                if not isinstance(cs, Mapping) or not isinstance(cs.get("name"), str):
                    continue
                raw_restarts = cs.get("restartCount")
                restarts = raw_restarts if isinstance(raw_restarts, int) else 0
                name: str = cs["name"]
                # A termination shows in state.terminated until the restart, then in
                # lastState.terminated with restartCount one higher: one kill, one key.
                for field, count in (("lastState", restarts), ("state", restarts + 1)):
                    term = (cs.get(field) or {}).get("terminated") or {}
                    if term.get("reason") != "OOMKilled":
                        continue
                    key = (info.uid, name, count)
                    if key in self._reported:
                        continue
                    self._reported.add(key)
                    wall = parse_time(term.get("finishedAt"))
                    if not self._recent(wall):
                        continue
                    assert wall is not None
                    raw_id = cs.get("containerID")
                    cid = split_container_id(raw_id)[0] if isinstance(raw_id, str) else None
                    out.append(
                        KillRecord(
                            source=SOURCE_K8S_STATUS,
                            time=now,
                            wall=wall,
                            extra={
                                "key": f"{info.uid}/{name}",
                                "identity": _identity(info, cs["name"], cid),
                                "restart_count": count,
                                "exit_code": term.get("exitCode"),
                            },
                        )
                    )
        return out

    def _event_kills(self, now: float) -> list[KillRecord]:
        try:
            events = self.kube.list_events(field_selector=f"reason={OOM_EVENT_REASON}")
        except KubernetesError as exc:
            self._error("events", str(exc))
            return []
        self._errors.pop("events", None)
        out: list[KillRecord] = []
        listed: set[str] = set()
        for ev in events:
            meta = ev.get("metadata") or {}
            uid = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
            if ev.get("reason") != OOM_EVENT_REASON:
                continue
            raw_count = ev.get("count")
            count = raw_count if isinstance(raw_count, int) and raw_count > 0 else 1
            listed.add(uid)
            seen = self._event_counts.get(uid)
            self._event_counts[uid] = max(count, seen or 0)
            wall = (
                parse_time(ev.get("lastTimestamp"))
                or parse_time(ev.get("eventTime"))
                or parse_time(ev.get("firstTimestamp"))
            )
            if seen is None:
                if not self._recent(wall):
                    continue
                delta = 1  # the latest occurrence; earlier repeats carry no time of their own
            else:
                delta = count - seen
                if delta <= 0:
                    continue
            message = str(ev.get("message") or "")
            m = _KILLED.search(message)
            involved = ev.get("involvedObject") or {}
            node = (ev.get("source") or {}).get("host") or (
                involved.get("name") if involved.get("kind") == "Node" else None
            )
            out.append(
                KillRecord(
                    source=SOURCE_K8S_EVENT,
                    time=now,
                    wall=wall if wall is not None else self._wall(),
                    pid=int(m.group(1)) if m else None,
                    comm=m.group(2) if m else None,
                    count_delta=delta,
                    extra={"node_name": node, "message": message[:512], "event": uid},
                )
            )
        # Events expire (the API server's --event-ttl); so does what we know of them.
        self._event_counts = {u: c for u, c in self._event_counts.items() if u in listed}
        return out

    def _error(self, what: str, message: str) -> None:
        if self._errors.get(what) != message:
            log.warning("cluster poll: %s", message)
        self._errors[what] = message

    def close(self) -> None:
        if self._owns_kube:
            self.kube.close()

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "server": self.kube.server,
            "interval_seconds": self.interval,
            "namespaces": self.namespaces or "all",
            "label_selector": self.label_selector,
            "errors": dict(self._errors),
            **self._last,
        }


def _sample(key: str, memory: Mapping[str, Any], limit: int | None, now: float) -> Sample | None:
    ws = memory.get("workingSetBytes")
    usage = memory.get("usageBytes", ws)
    if not isinstance(ws, int) or not isinstance(usage, int):
        return None
    return Sample(key, now, usage, ws, limit)


def _identity(info: PodInfo, container: str, container_id: str | None) -> Identity:
    return Identity(
        namespace=info.namespace,
        pod_name=info.name,
        pod_uid=info.uid,
        container_name=container,
        container_id=container_id,
        node_name=info.node_name,
        pod_ip=info.pod_ip,
    )
