"""The daemon's Kubernetes pieces driven directly, without a daemon: the pod cache (list, watch,
resume, re-list on 410), the k8s-event and evict actions, and the node and sidecar sources
(their cgroup trees made of files naming the pods made here), against the real API server with a
token of the chart's own node-mode ServiceAccount (Events and eviction on).

Each test has a namespace and a node name of its own, so the session's other pods are not
seen. Every request the client sends is recorded (method, URL, status) for the assertions that
count API calls.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.evict import EvictAction
from pressured.actions.k8s_event import K8sEventAction
from pressured.errors import ActionError, KubernetesError
from pressured.k8s.client import Forbidden, KubeClient
from pressured.k8s.podcache import PodCache, PodInfo
from pressured.model import Identity, Overrides
from pressured.sources.base import TargetSpec
from pressured.sources.cluster import SOURCE_K8S_EVENT, SOURCE_K8S_STATUS, ClusterSource
from pressured.sources.node import NodeSource
from pressured.sources.sidecar import SidecarSource
from tests.k8s_real.conftest import Lane, api_error
from tests.k8s_real.kubelet import (
    MERGE_PATCH,
    Container,
    chart_kubeconfig,
    container_id,
    create_pod,
    new_namespace,
    pod_events,
    report_running,
    token_kubeconfig,
)
from tests.k8s_real.test_chart_rbac import forbidden_of, record_requests, request_token
from tests.k8s_real.test_evict_e2e import forbidding_budget
from tests.support.events import oom_kill_event as oom_kill
from tests.support.events import pressure_event as pressure
from tests.support.podtrees import (
    BATCH_WORKER,
    SIDECAR,
    STRANGER,
    STRANGER_UID,
    WEB_APP,
    WEB_ENVOY,
    cgroup_root,
    fake_proc,
    mk_cgroup,
    systemd_tree,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.k8s_real
MiB = 1 << 20


@dataclass
class Parts:
    lane: Lane
    kube: KubeClient
    ns: str
    node: str
    kubeconfig: Path
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    """(method, url, status) of every request the client sent."""

    def requests(self, method: str, path_suffix: str, **query: str) -> list[dict[str, str]]:
        """The query of each request of ``method`` whose path ends with ``path_suffix`` and
        whose query has ``query``'s items."""
        out = []
        for m, url, _ in self.seen:
            parts = urlsplit(url)
            q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if m == method and parts.path.endswith(path_suffix) and query.items() <= q.items():
                out.append(q)
        return out

    def pod_watches(self) -> list[dict[str, str]]:
        return self.requests("GET", "/api/v1/pods", watch="true")

    def pod_lists(self) -> list[dict[str, str]]:
        return [q for q in self.requests("GET", "/api/v1/pods") if "watch" not in q]


def parts_on(lane: Lane, where: Path, mode: str = "node") -> Parts:
    path = chart_kubeconfig(lane, where / "kubeconfig", mode=mode, eviction=True)
    node = f"parts-{uuid.uuid4().hex[:6]}"
    kube = KubeClient.from_config({"kubeconfig": str(path), "node_name": node}, environ={})
    parts = Parts(lane, kube, new_namespace(lane, "parts"), node, path)
    record_requests(kube, parts.seen)
    return parts


@pytest.fixture
def parts(k8s_lane: Lane, tmp_path: Path) -> Iterator[Parts]:
    p = parts_on(k8s_lane, tmp_path)
    try:
        yield p
    finally:
        p.kube.close()


def one_pod(p: Parts, name: str, *containers: Container, **kw: Any) -> dict[str, Any]:
    return create_pod(p.lane, p.ns, name, containers or [app()], node=p.node, **kw)


def app(name: str = "app", mib: int = 64) -> Container:
    return Container(name, mib * MiB, container_id())


def delete_pod(lane: Lane, ns: str, name: str) -> None:
    r = lane.admin_http.delete(
        f"/api/v1/namespaces/{ns}/pods/{name}", params={"gracePeriodSeconds": 0}
    )
    assert r.status_code == 200, api_error(r)


# ---------------------------------------------------------------- the pod cache
@pytest.fixture
def caches() -> Iterator[Callable[..., PodCache]]:
    made: list[PodCache] = []

    def make(p: Parts, **kw: Any) -> PodCache:
        kw = {"retry_seconds": 0.05, "server_timeout": 2, **kw}
        cache = PodCache(p.kube, field_selector=f"spec.nodeName={p.node}", **kw)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        # A blocked read ends at the server's timeout (2 s) at the latest.
        cache.close(timeout=30)
        assert not cache.running


def test_pod_cache_lists_the_nodes_pods_and_finds_them_by_container_id(
    parts: Parts, caches: Callable[..., PodCache]
) -> None:
    web_app, envoy = app("app", 256), app("envoy", 128)
    web = one_pod(
        parts,
        "web",
        web_app,
        envoy,
        labels={"app": "web"},
        annotations={"pressured.io/warn-percent": "60"},
    )
    other = create_pod(parts.lane, parts.ns, "elsewhere", [app()], node="another-node")
    cache = caches(parts)
    cache.start()
    (listing,) = parts.pod_lists()
    assert listing["fieldSelector"] == f"spec.nodeName={parts.node}"
    assert {p.name for p in cache.pods()} == {"web"}
    assert cache.by_uid(other["metadata"]["uid"]) is None

    info = cache.by_container_id(web_app.id)
    assert info is not None
    assert (info.name, info.namespace, info.uid, info.pod_ip, info.node_name) == (
        "web",
        parts.ns,
        web["metadata"]["uid"],
        "10.244.0.17",
        parts.node,
    )
    assert info.qos == "burstable"  # the server's own status.qosClass: memory limits only
    assert info.labels["app"] == "web"
    assert info.annotations["pressured.io/warn-percent"] == "60"
    assert info.containers["app"].limits_memory_bytes == 256 * MiB
    assert info.containers["envoy"].limits_memory_bytes == 128 * MiB
    assert info.containers["envoy"].id == envoy.id
    # The runtime prefix is accepted on lookup too.
    assert cache.by_container_id(f"containerd://{web_app.id}") is info


def test_pod_cache_follows_added_modified_deleted_through_its_watch(
    parts: Parts, caches: Callable[..., PodCache]
) -> None:
    first = one_pod(parts, "first")
    seen: list[tuple[str, str | None]] = []

    def listener(kind: str, new: PodInfo | None, old: PodInfo | None) -> None:
        pod = new or old
        seen.append((kind, pod.name if pod else None))

    cache = caches(parts)
    cache.add_listener(listener)
    cache.start()
    generation = cache.generation

    added = app()
    one_pod(parts, "added", added)
    info = wait_for(lambda: cache.by_container_id(added.id), 30, "the ADDED pod")
    assert info.name == "added"
    assert cache.generation > generation
    watch = parts.pod_watches()[0]
    assert watch["fieldSelector"] == f"spec.nodeName={parts.node}"

    r = parts.lane.admin_http.patch(
        f"/api/v1/namespaces/{parts.ns}/pods/first",
        json={"metadata": {"annotations": {"pressured.io/warn-percent": "50"}}},
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)
    uid = first["metadata"]["uid"]

    def annotated() -> bool:
        pod = cache.by_uid(uid)
        return pod is not None and pod.annotations.get("pressured.io/warn-percent") == "50"

    wait_for(annotated, 30, "the MODIFIED pod")
    delete_pod(parts.lane, parts.ns, "first")
    wait_for(lambda: cache.by_uid(uid) is None, 30, "the DELETED pod")

    # A pod of another node never shows: the server applies the selector.
    stranger = app()
    create_pod(parts.lane, parts.ns, "stranger", [stranger], node="another-node")
    marker = app()
    one_pod(parts, "marker", marker)
    wait_for(lambda: cache.by_container_id(marker.id), 30, "the marker pod")
    assert cache.by_container_id(stranger.id) is None
    assert {("ADDED", "added"), ("MODIFIED", "first"), ("DELETED", "first")} <= set(seen), seen
    assert len(parts.pod_lists()) == 1  # no API call per change


def test_pod_cache_resumes_from_its_resource_version_when_the_server_ends_the_watch(
    parts: Parts, caches: Callable[..., PodCache]
) -> None:
    """The server ends each watch at timeoutSeconds (2 s here): the next one starts at the
    resourceVersion the cache has seen, with no re-list."""
    cache = caches(parts)
    cache.start()
    early = app()
    pod = one_pod(parts, "early", early)
    wait_for(lambda: cache.by_container_id(early.id), 30, "the first pod")
    seen_rv = int(pod["metadata"]["resourceVersion"])
    n = len(parts.pod_watches())
    wait_for(lambda: len(parts.pod_watches()) > n, 30, "a watch after the server ended one")
    resumed = parts.pod_watches()[n]
    assert int(resumed["resourceVersion"]) >= seen_rv, (resumed, seen_rv)
    late = app()
    one_pod(parts, "late", late)
    wait_for(lambda: cache.by_container_id(late.id), 30, "a pod after the resume")
    assert cache.relists == 1
    assert len(parts.pod_lists()) == 1


def test_pod_cache_start_fails_loudly_when_the_api_refuses(parts: Parts, tmp_path: Path) -> None:
    kube = nobodys_client(parts, tmp_path)
    cache = PodCache(kube, field_selector=f"spec.nodeName={parts.node}")
    try:
        with pytest.raises(Forbidden) as info:
            cache.start()
    finally:
        kube.close()
    assert (
        f"GET {kube.server}/api/v1/pods?fieldSelector=spec.nodeName%3D{parts.node}: HTTP 403"
    ) in str(info.value)
    assert not cache.running


def test_pod_cache_relists_on_410_and_reports_a_pod_gone_between_the_lists(
    own_lane: Callable[..., Lane], tmp_path: Path, caches: Callable[..., PodCache]
) -> None:
    """The watch thread is held in a listener while the API server restarts (its watch cache
    then starts at etcd's revision: 410 for any older resourceVersion, as
    tests/k8s_real/test_faults.py measures) and a pod is deleted: only the re-list can tell of
    that pod, reported as DELETED before the RELIST."""
    lane = own_lane()
    p = parts_on(lane, tmp_path)
    cache = caches(p)
    held, release = threading.Event(), threading.Event()
    try:
        doomed = one_pod(p, "doomed")
        seen: list[tuple[str, str | None]] = []

        def listener(kind: str, new: PodInfo | None, old: PodInfo | None) -> None:
            pod = new or old
            seen.append((kind, pod.name if pod else None))
            if pod is not None and pod.name == "gate":
                held.set()
                release.wait(120)

        cache.add_listener(listener)
        cache.start()
        one_pod(p, "gate")
        wait_for(held.is_set, 30, "the watch thread held")
        # A write the watch does not see (another node's pod): etcd's revision moves past the
        # cache's resourceVersion, which the restarted server's watch cache then refuses.
        create_pod(lane, p.ns, "elsewhere", [app()], node="another-node")
        lane.stop_apiserver()
        lane.start_apiserver()
        delete_pod(lane, p.ns, "doomed")
        release.set()
        wait_for(lambda: cache.relists >= 2, 60, "a re-list after 410")
        assert cache.by_uid(doomed["metadata"]["uid"]) is None
        gone = seen.index(("DELETED", "doomed"))
        assert ("RELIST", None) in seen[gone:], seen
        after = app()
        one_pod(p, "after", after)
        wait_for(lambda: cache.by_container_id(after.id), 30, "a pod after the re-list")
    finally:
        release.set()
        cache.close(timeout=30)
        p.kube.close()


# ---------------------------------------------------------------- the k8s-event action
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def identity_of(p: Parts, pod: dict[str, Any], container: str = "app") -> Identity:
    meta = pod["metadata"]
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == container]
    return Identity(
        namespace=meta["namespace"],
        pod_name=meta["name"],
        pod_uid=meta["uid"],
        container_name=container,
        container_id=status["containerID"].split("://", 1)[1],
        node_name=p.node,
        pod_ip=pod["status"]["podIP"],
    )


def ctx_for(p: Parts, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(mode="node", node_name=p.node, kube=p.kube, dry_run=dry_run)


@pytest.fixture
def web(parts: Parts) -> Identity:
    """A Running pod "web" of one container "app" on the test's node, as an Identity."""
    return identity_of(parts, one_pod(parts, "web", app("app", 256)))


def events_on(p: Parts, who: Identity, reason: str | None = None) -> list[dict[str, Any]]:
    assert who.pod_uid is not None
    return pod_events(p.lane, p.ns, who.pod_uid, reason)


def event_posts(p: Parts) -> list[dict[str, str]]:
    return p.requests("POST", f"/api/v1/namespaces/{p.ns}/events")


def event_patches(p: Parts) -> list[str]:
    return [
        url for m, url, _ in p.seen if m == "PATCH" and f"/api/v1/namespaces/{p.ns}/events/" in url
    ]


def test_k8s_event_warning_then_repeats_aggregated(parts: Parts, web: Identity) -> None:
    clock = Clock()
    action = K8sEventAction({"min_interval_seconds": 30}, ctx_for(parts), "actions[0]", clock=clock)
    action.run(pressure(web, "warn"))
    (ev,) = events_on(parts, web)
    assert ev["reason"] == "MemoryPressureWarning"
    assert ev["type"] == "Warning"
    assert ev["count"] == 1
    assert ev["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web",
        "namespace": parts.ns,
        "uid": web.pod_uid,
        "fieldPath": "spec.containers{app}",
    }
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-03-02T10:16:00Z"
    assert "200.0Mi working set" in ev["message"]
    assert "of 256.0Mi limit (78.1% by working_set)" in ev["message"]
    assert "ETA 42s" in ev["message"]
    assert ev["source"] == {"component": "pressured", "host": parts.node}

    # Within the interval: no API call, the repeats are folded into the next write.
    clock.now += 10
    action.run(pressure(web, "warn"))
    action.run(pressure(web, "warn"))
    assert event_patches(parts) == []
    clock.now += 30
    action.run(pressure(web, "warn", eta=7.0))
    assert len(event_patches(parts)) == 1
    (ev,) = events_on(parts, web)  # aggregated, like kubectl's "x4 over 40s"
    assert ev["count"] == 4
    assert "ETA 7s" in ev["message"]
    assert len(event_posts(parts)) == 1


def test_k8s_event_each_severity_has_its_reason(parts: Parts, web: Identity) -> None:
    action = K8sEventAction({}, ctx_for(parts), "actions[0]")
    action.run(pressure(web, "warn"))
    action.run(pressure(web, "critical"))
    action.run(oom_kill(web))
    action.run(pressure(web, "recovered"))  # no Event of its own
    events = events_on(parts, web)
    assert sorted(e["reason"] for e in events) == [
        "MemoryPressureCritical",
        "MemoryPressureWarning",
        "OOMKillConfirmed",
    ]
    (oom,) = [e for e in events if e["reason"] == "OOMKillConfirmed"]
    assert oom["message"] == (
        "OOM kill confirmed in container app: python3 (pid 41807) killed, 12s after the first "
        "warning"
    )


def test_k8s_event_severities_option_filters(parts: Parts, web: Identity) -> None:
    action = K8sEventAction({"severities": ["oom_killed"]}, ctx_for(parts), "actions[0]")
    action.run(pressure(web, "critical"))
    assert events_on(parts, web) == []
    assert event_posts(parts) == []
    action.run(oom_kill(web))
    assert [e["reason"] for e in events_on(parts, web)] == ["OOMKillConfirmed"]


def test_k8s_event_message_carries_the_top_allocator_the_limit_and_the_throttle(
    parts: Parts, web: Identity
) -> None:
    """What the analyses found reaches the stored Event: pprof's top allocator on a critical,
    which limit killed on an OOMKillConfirmed, the throttle evidence as MemoryThrottled."""
    top = [
        {
            "function": "main.(*leakyCache).grow",
            "flat": 17301504,
            "flat_pct": 98.24,
            "cum": 17301504,
            "cum_pct": 98.24,
            "unit": "bytes",
            "sample_type": "inuse_space",
        },
        {
            "function": "main.churnBuffers",
            "flat": 65630,
            "flat_pct": 0.37,
            "cum": 65630,
            "cum_pct": 0.37,
            "unit": "bytes",
            "sample_type": "inuse_space",
        },
    ]
    words = "killed by the pod's limit of 512Mi, not the container's 1Gi"
    evidence = {
        "memory_high_bytes": 48 * MiB,
        "high_events_delta": 5230,
        "psi_full_avg10": 41.5,
        "full_stall_us": 12_400_000,
        "held_seconds": 31.2,
    }
    action = K8sEventAction({}, ctx_for(parts), "actions[0]")
    action.run(pressure(web, "critical", extra={"pprof_top": top}))
    action.run(oom_kill(web, {"limit_scope": "pod", "limit": {"cgroup": "/x", "text": words}}))
    throttled = replace(
        pressure(web, "warn", extra={"throttle": evidence}), event_type="memory_throttled"
    )
    action.run(throttled)

    (critical,) = events_on(parts, web, "MemoryPressureCritical")
    assert critical["message"].endswith("; top allocator: main.(*leakyCache).grow 16.50MB (98.24%)")
    assert "churnBuffers" not in critical["message"]
    (oom,) = events_on(parts, web, "OOMKillConfirmed")
    assert oom["message"].endswith("12s after the first warning; " + words)
    (throttle,) = events_on(parts, web, "MemoryThrottled")
    assert throttle["message"].endswith(
        "; held at memory.high 48.0Mi for 31s: memory.events high +5230, "
        "memory PSI full avg10 41.5%, 12.4s fully stalled"
    )
    assert events_on(parts, web, "MemoryPressureWarning") == []


def test_k8s_event_rate_limit_folds_instead_of_dropping(parts: Parts, web: Identity) -> None:
    clock = Clock()
    action = K8sEventAction(
        {"max_per_minute": 2, "min_interval_seconds": 0}, ctx_for(parts), "a", clock=clock
    )
    for _ in range(4):
        action.run(pressure(web, "warn"))
    assert action.suppressed == 2
    (ev,) = events_on(parts, web)
    assert ev["count"] == 2
    clock.now += 30  # one token back
    action.run(pressure(web, "warn"))
    (ev,) = events_on(parts, web)
    assert ev["count"] == 5  # the two held back plus this one
    assert len(event_posts(parts)) + len(event_patches(parts)) == 3


def test_k8s_event_gone_from_the_server_is_created_again(parts: Parts, web: Identity) -> None:
    clock = Clock()
    action = K8sEventAction({}, ctx_for(parts), "a", clock=clock)
    action.run(pressure(web, "warn"))
    (ev,) = events_on(parts, web)
    # As the API server does at the Event's TTL.
    r = parts.lane.admin_http.delete(
        f"/api/v1/namespaces/{parts.ns}/events/{ev['metadata']['name']}"
    )
    assert r.status_code == 200, api_error(r)
    clock.now += 100
    action.run(pressure(web, "warn"))
    (ev,) = events_on(parts, web)
    assert ev["count"] == 1
    assert len(event_posts(parts)) == 2


def test_k8s_event_without_a_pod_or_in_a_dry_run_sends_nothing(
    parts: Parts, web: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pressured.actions")
    K8sEventAction({}, ctx_for(parts), "a").run(pressure(Identity(pod_uid=web.pod_uid), "critical"))
    K8sEventAction({}, ctx_for(parts, dry_run=True), "a").run(pressure(web, "critical"))
    K8sEventAction({}, ctx_for(parts), "a").run(pressure(web, "critical", dry_run=True))
    assert event_posts(parts) == []
    assert events_on(parts, web) == []
    assert "dry run: would record Event MemoryPressureCritical on pod " in caplog.text


def nobodys_client(p: Parts, where: Path) -> KubeClient:
    """A client with the token of a ServiceAccount no role is bound to: every call is the API
    server's 403."""
    r = p.lane.admin_http.post(
        f"/api/v1/namespaces/{p.ns}/serviceaccounts",
        json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
    )
    assert r.status_code == 201, api_error(r)
    token = request_token(p.lane, p.ns, "nobody")
    path = token_kubeconfig(p.lane, where / "nobody-kubeconfig", token)
    return KubeClient.from_config({"kubeconfig": str(path)}, environ={})


def test_k8s_event_refused_by_rbac_is_an_action_error_and_not_held(
    parts: Parts, web: Identity, tmp_path: Path
) -> None:
    """A ServiceAccount no role is bound to: the API server's 403 is the action's error, and
    it is not held (retrying a refusal would only repeat it)."""
    kube = nobodys_client(parts, tmp_path)
    try:
        ctx = ActionContext(mode="node", node_name=parts.node, kube=kube)
        action = K8sEventAction({"min_interval_seconds": 0}, ctx, "actions[1]")
        with pytest.raises(ActionError) as err:
            action.run(pressure(web, "warn"))
        text = str(err.value)
        assert text.startswith(f"actions[1]: Event MemoryPressureWarning on pod {parts.ns}/web: ")
        assert f"POST {kube.server}/api/v1/namespaces/{parts.ns}/events: HTTP 403" in text
        assert "held" not in text
        assert (action.unposted, action.dropped) == (1, 1)
        with pytest.raises(ActionError):
            action.run(pressure(web, "warn"))  # tried again: nothing was held for it to join
        action.close()
    finally:
        kube.close()
    assert events_on(parts, web) == []


# ---------------------------------------------------------------- the evict action
def evictions(p: Parts) -> list[dict[str, str]]:
    return [
        {"path": urlsplit(url).path, "status": str(status)}
        for m, url, status in p.seen
        if m == "POST" and urlsplit(url).path.endswith("/eviction")
    ]


def stored(p: Parts, name: str) -> dict[str, Any] | None:
    r = p.lane.admin_http.get(f"/api/v1/namespaces/{p.ns}/pods/{name}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, api_error(r)
    pod: dict[str, Any] = r.json()
    return pod


def test_evict_only_a_growing_critical_close_to_its_limit_and_once(
    parts: Parts, web: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pressured.actions")
    action = EvictAction(
        {"max_eta_seconds": 30, "grace_period_seconds": 10}, ctx_for(parts), "actions[0]"
    )
    action.run(pressure(web, "warn", eta=5))  # not critical
    action.run(pressure(web, "critical", eta=None))  # not growing
    action.run(pressure(web, "critical", eta=45))  # not close enough
    action.run(oom_kill(web))  # already dead
    assert evictions(parts) == []
    action.run(pressure(web, "critical", eta=12))
    (req,) = evictions(parts)
    assert req["path"] == f"/api/v1/namespaces/{parts.ns}/pods/web/eviction"
    assert req["status"] == "201"
    # The pod is being deleted with the grace period asked for.
    pod = stored(parts, "web")
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == 10, pod
    assert f"evicted pod {parts.ns}/web (critical 78.1%, ETA 12s)" in caplog.text
    action.run(pressure(web, "critical", eta=3))
    assert len(evictions(parts)) == 1  # not twice


def test_evict_refused_by_a_budget_is_asked_again_only_after_the_back_off(parts: Parts) -> None:
    pod = one_pod(parts, "guarded", app(), labels={"app": "guarded"})
    who = identity_of(parts, pod)
    forbidding_budget(parts.lane, parts.ns, "guarded")
    clock = Clock()
    action = EvictAction(
        {"refused_backoff_seconds": 120}, ctx_for(parts), "actions[4]", clock=clock
    )
    with pytest.raises(ActionError) as info:
        action.run(pressure(who, "critical"))
    text = str(info.value)
    assert (
        f"actions[4]: eviction of pod {parts.ns}/guarded refused by a PodDisruptionBudget" in text
    )
    assert "HTTP 429" in text and "disruption budget" in text, text
    for _ in range(5):
        clock.now += 10
        action.run(pressure(who, "critical"))  # within the back-off: not asked again
    assert len(evictions(parts)) == 1
    r = parts.lane.admin_http.delete(
        f"/apis/policy/v1/namespaces/{parts.ns}/poddisruptionbudgets/guarded"
    )
    assert r.status_code == 200, api_error(r)
    clock.now += 100
    action.run(pressure(who, "critical"))
    assert [e["status"] for e in evictions(parts)] == ["429", "201"]
    gone = stored(parts, "guarded")
    assert gone is None or "deletionTimestamp" in gone["metadata"]


def test_evict_dry_run_and_a_missing_pod(
    parts: Parts, web: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pressured.actions")
    EvictAction({}, ctx_for(parts, dry_run=True), "a").run(pressure(web, "critical"))
    assert evictions(parts) == []
    assert f"dry run: would evict pod {parts.ns}/web" in caplog.text
    pod = stored(parts, "web")
    assert pod is not None and "deletionTimestamp" not in pod["metadata"]

    ghost = Identity(namespace=parts.ns, pod_name="gone-0", pod_uid=str(uuid.uuid4()))
    with pytest.raises(ActionError, match=rf"eviction of pod {parts.ns}/gone-0 failed: .*HTTP 404"):
        EvictAction({}, ctx_for(parts), "a").run(pressure(ghost, "critical"))


# ---------------------------------------------------------------- the node and sidecar sources
# Their cgroup and /proc trees are plain files (tests/support/podtrees.py) naming the pods made
# here; the pods and their changes are the real API server's.
def shop(p: Parts) -> tuple[str, str]:
    """The web pod (app, envoy; warn-percent 60) and batch-worker-0 (worker; a bad
    critical-percent) on the test's node: their uids."""
    web = one_pod(
        p,
        "web",
        Container("app", 256 * MiB, WEB_APP),
        Container("envoy", 128 * MiB, WEB_ENVOY),
        annotations={"pressured.io/warn-percent": "60", "pressured.io/pprof-enabled": "true"},
    )
    batch = one_pod(
        p,
        "batch-worker-0",
        Container("worker", 1 << 30, BATCH_WORKER),
        annotations={"pressured.io/critical-percent": "ninety"},
    )
    return web["metadata"]["uid"], batch["metadata"]["uid"]


def by_container(specs: list[TargetSpec]) -> dict[str | None, TargetSpec]:
    return {s.identity.container_id: s for s in specs}


@pytest.fixture
def sources() -> Iterator[Callable[[NodeSource | SidecarSource], Any]]:
    made: list[NodeSource | SidecarSource] = []
    yield made.append
    for src in made:
        src.close()


@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_node_source_targets_enriched_from_the_pod_cache(
    parts: Parts, sources: Callable[[Any], None], tmp_path: Path, version: int
) -> None:
    web_uid, batch_uid = shop(parts)
    root, mem = cgroup_root(tmp_path, version)
    paths = systemd_tree(mem, version, web_uid, batch_uid)
    src = NodeSource.from_config(
        {
            "source": {"mode": "node", "cgroup": {"path": str(root)}},
            "kubernetes": {"node_name": parts.node},
        },
        parts.kube,
        environ={},
    )
    sources(src)
    src.start()
    assert src.changed()
    specs = by_container(src.targets())
    assert not src.changed()
    # Targets: the web pod's two containers, the batch worker and the container of a pod the
    # API does not know. Not: the sandbox, conmon, the mount unit, the unlimited one.
    assert set(specs) == {WEB_APP, WEB_ENVOY, BATCH_WORKER, STRANGER}
    app_spec = specs[WEB_APP]
    assert app_spec.key == str(paths["app"])
    assert app_spec.ref is not None
    assert app_spec.ref.path == str(paths["app"])
    assert app_spec.ref.relpath.startswith("/kubepods.slice/kubepods-burstable.slice/")
    ident = app_spec.identity
    assert (ident.namespace, ident.pod_name, ident.pod_uid, ident.container_name) == (
        parts.ns,
        "web",
        web_uid,
        "app",
    )
    assert (ident.container_id, ident.node_name, ident.pod_ip) == (
        WEB_APP,
        parts.node,
        "10.244.0.17",
    )
    assert app_spec.overrides == Overrides(warn_percent=60.0)
    assert app_spec.annotations["pressured.io/pprof-enabled"] == "true"
    assert specs[WEB_ENVOY].identity.container_name == "envoy"
    worker = specs[BATCH_WORKER]
    assert worker.identity.container_name == "worker"
    assert worker.overrides == Overrides()  # "ninety" is not a percentage: the default
    stranger = specs[STRANGER].identity
    assert (stranger.pod_uid, stranger.container_id, stranger.node_name, stranger.pod_name) == (
        STRANGER_UID,
        STRANGER,
        parts.node,
        None,
    )
    status = src.status()
    assert (status["unlimited"], status["not_in_pod"], status["unknown_pod"]) == (1, 1, 1)
    # The bad annotation: one Warning Event on its pod, however often the targets are read.
    src.targets()
    (bad,) = wait_for(
        lambda: events_on(parts, worker.identity, "InvalidPressuredAnnotation"), 30, "the Event"
    )
    assert bad["count"] == 1 and bad["type"] == "Warning"
    assert "pressured.io/critical-percent='ninety' ignored: not a number" in bad["message"]
    dirs = set(src.watch_dirs())
    assert {
        str(paths["kubepods"]),
        str(paths["burstable"]),
        str(paths["web"]),
        str(paths["batch"]),
    } <= dirs
    assert str(paths["app"]) not in dirs


def bind(p: Parts, name: str, c: Container) -> None:
    """What the scheduler and then the kubelet do to a pending pod: bind it to the test's node
    (the pods/binding subresource), then report it Running with its container."""
    http = p.lane.admin_http
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": p.node},
    }
    r = http.post(f"/api/v1/namespaces/{p.ns}/pods/{name}/binding", json=binding)
    assert r.status_code == 201, api_error(r)
    report_running(p.lane, p.ns, name, [c], pod_ip="10.244.0.18")


def test_node_source_follows_pod_changes(
    parts: Parts, sources: Callable[[Any], None], tmp_path: Path
) -> None:
    web_uid, batch_uid = shop(parts)
    # A pod not yet scheduled: its uid is known, it is on no node, so not in the cache.
    newcomer = Container("app", 64 * MiB, container_id())
    r = parts.lane.admin_http.post(
        f"/api/v1/namespaces/{parts.ns}/pods",
        json={
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "newcomer-0"},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
        },
    )
    assert r.status_code == 201, api_error(r)
    newcomer_uid = r.json()["metadata"]["uid"]
    root, mem = cgroup_root(tmp_path, 2)
    paths = systemd_tree(mem, 2, web_uid, batch_uid)
    newcomer_pod = mk_cgroup(
        paths["burstable"] / f"kubepods-burstable-pod{newcomer_uid.replace('-', '_')}.slice",
        2,
        None,
    )
    mk_cgroup(newcomer_pod / f"cri-containerd-{newcomer.id}.scope", 2, 64 << 20)
    src = NodeSource(kube=parts.kube, node_name=parts.node, cgroup_path=str(root))
    sources(src)
    src.start()
    assert by_container(src.targets())[newcomer.id].identity.pod_name is None
    assert not src.changed()

    patch = {"pressured.io/warn-percent": "45", "pressured.io/cooldown-seconds": "600"}
    r = parts.lane.admin_http.patch(
        f"/api/v1/namespaces/{parts.ns}/pods/web",
        json={"metadata": {"annotations": patch}},
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)
    wait_for(src.changed, 30, "the source marked changed by the annotation")
    app_spec = by_container(src.targets())[WEB_APP]
    assert app_spec.overrides == Overrides(warn_percent=45.0, cooldown_seconds=600.0)

    # The pod is scheduled here: its container gets the full identity.
    bind(parts, "newcomer-0", newcomer)
    wait_for(src.changed, 30, "the source marked changed by the newcomer")

    def named() -> TargetSpec | None:
        # The binding and the status patch come as two watch events: until the second, the
        # pod is known and its container not (skipped).
        spec = by_container(src.targets()).get(newcomer.id)
        return spec if spec is not None and spec.identity.pod_name else None

    ident = wait_for(named, 30, "the newcomer's container with its pod").identity
    assert (ident.pod_name, ident.pod_uid, ident.pod_ip) == (
        "newcomer-0",
        newcomer_uid,
        "10.244.0.18",
    )

    # A new container cgroup is noticed through the directory watch (the daemon's inotify);
    # the pod is known, the container not: skipped.
    mk_cgroup(paths["web"] / f"cri-containerd-{'9' * 64}.scope", 2, 64 << 20)
    src.notify_fs_change()
    assert src.changed()
    assert "9" * 64 not in by_container(src.targets())


def test_node_source_ignores_status_only_updates(
    parts: Parts, sources: Callable[[Any], None], tmp_path: Path
) -> None:
    web_uid, batch_uid = shop(parts)
    root, mem = cgroup_root(tmp_path, 2)
    systemd_tree(mem, 2, web_uid, batch_uid)
    src = NodeSource(kube=parts.kube, node_name=parts.node, cgroup_path=str(root))
    sources(src)
    src.start()
    src.targets()
    assert src.cache is not None
    generation = src.cache.generation
    pod = stored(parts, "web")
    assert pod is not None
    statuses = pod["status"]["containerStatuses"]
    for c in statuses:
        c["ready"] = False
    r = parts.lane.admin_http.patch(
        f"/api/v1/namespaces/{parts.ns}/pods/web/status",
        json={"status": {"containerStatuses": statuses}},
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)
    cache = src.cache
    wait_for(lambda: cache.generation > generation, 30, "the MODIFIED pod")
    assert not src.changed()


def test_node_source_on_a_cgroupfs_driver_v1_tree(
    parts: Parts, sources: Callable[[Any], None], tmp_path: Path
) -> None:
    web_uid, _ = shop(parts)
    root, mem = cgroup_root(tmp_path, 1)
    kp = mk_cgroup(mem / "kubepods", 1, None)
    pod = mk_cgroup(mk_cgroup(kp / "burstable", 1, None) / f"pod{web_uid}", 1, None)
    mk_cgroup(pod / WEB_APP, 1, 256 << 20)
    mk_cgroup(pod / f"crio-{WEB_ENVOY}", 1, 128 << 20)
    src = NodeSource(kube=parts.kube, node_name=parts.node, cgroup_path=str(root))
    sources(src)
    src.start()
    specs = by_container(src.targets())
    assert {k: s.identity.container_name for k, s in specs.items()} == {
        WEB_APP: "app",
        WEB_ENVOY: "envoy",
    }


def test_sidecar_source_through_a_hostpath_cgroup_mount(
    parts: Parts, sources: Callable[[Any], None], tmp_path: Path
) -> None:
    web_uid, batch_uid = shop(parts)
    root, mem = cgroup_root(tmp_path, 2)
    paths = systemd_tree(mem, 2, web_uid, batch_uid)
    mk_cgroup(paths["web"] / f"cri-containerd-{SIDECAR}.scope", 2, 64 << 20)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(f"0::/../cri-containerd-{SIDECAR}.scope\n")
    src = SidecarSource(
        pod_uid=web_uid,
        pod_name="web",
        pod_namespace=parts.ns,
        kube=parts.kube,
        cgroup_path=str(root),
        proc_root=str(proc),
    )
    sources(src)
    src.start()
    specs = by_container(src.targets())
    assert {k: s.identity.container_name for k, s in specs.items()} == {
        WEB_APP: "app",
        WEB_ENVOY: "envoy",
    }
    assert specs[WEB_APP].key == str(paths["app"])
    assert specs[WEB_APP].overrides.warn_percent == 60.0
    assert src.watch_dirs() == [str(paths["web"])]
    assert src.status()["discovery"] == "cgroupfs"
    requests = parts.requests("GET", f"/api/v1/namespaces/{parts.ns}/pods")
    (listing,) = [q for q in requests if "watch" not in q]
    assert listing["fieldSelector"] == "metadata.name=web"
    assert all(q["fieldSelector"] == "metadata.name=web" for q in requests)


def test_sidecar_source_without_api_access_still_watches(
    parts: Parts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    web_uid, _ = shop(parts)
    kube = nobodys_client(parts, tmp_path)
    src = SidecarSource(
        pod_uid=web_uid,
        pod_name="web",
        pod_namespace=parts.ns,
        kube=kube,
        proc_root=str(fake_proc(tmp_path, web_uid)),
        discovery="proc",
    )
    try:
        src.start()
        assert WEB_APP in by_container(src.targets())
        assert "not readable through the API" in caplog.text
        assert "HTTP 403" in caplog.text
    finally:
        src.close()
        kube.close()


def test_sources_build_and_own_their_client(parts: Parts, tmp_path: Path) -> None:
    web_uid, batch_uid = shop(parts)
    root, mem = cgroup_root(tmp_path, 2)
    systemd_tree(mem, 2, web_uid, batch_uid)
    cfg: dict[str, Any] = {
        "source": {"cgroup": {"path": str(root)}},
        "kubernetes": {"kubeconfig": str(parts.kubeconfig), "node_name": parts.node},
    }
    node = NodeSource.from_config(cfg, environ={})
    assert node.kube is not None
    try:
        node.start()
        assert WEB_APP in by_container(node.targets())
    finally:
        node.close()
    assert node.kube.closed

    cfg["kubernetes"].update(pod_uid=web_uid, pod_name="web", pod_namespace=parts.ns)
    sidecar = SidecarSource.from_config(cfg, environ={})
    assert sidecar.kube is not None
    try:
        sidecar.start()
        assert {s.identity.container_name for s in sidecar.targets()} == {"app", "envoy"}
    finally:
        sidecar.close()
    assert sidecar.kube.closed


def test_a_403_on_a_cluster_scoped_call_names_the_service_account(
    parts: Parts, tmp_path: Path
) -> None:
    kube = nobodys_client(parts, tmp_path)
    try:
        with pytest.raises(Forbidden) as info:
            kube.node_summary(parts.node)
    finally:
        kube.close()
    text = str(info.value)
    assert f"GET {kube.server}/api/v1/nodes/{parts.node}/proxy/stats/summary: HTTP 403: " in text
    assert (
        f"RBAC does not let ServiceAccount {parts.ns}/nobody get nodes/proxy (apiGroup '') "
        "at cluster scope"
    ) in text


# ---------------------------------------------------------------- the client's configuration
def test_kubeconfig_from_the_environment(parts: Parts) -> None:
    one_pod(parts, "web")
    kube = KubeClient.from_config(
        {},
        service_account_dir=str(parts.kubeconfig.parent / "no-serviceaccount"),
        environ={"KUBECONFIG": str(parts.kubeconfig), "NODE_NAME": "node-7"},
    )
    try:
        assert kube.credentials == str(parts.kubeconfig)
        assert kube.node_name == "node-7"
        names = [pod["metadata"]["name"] for pod in kube.list_pods(namespace=parts.ns).items]
        assert names == ["web"]
    finally:
        kube.close()


def in_cluster_dir(where: Path, token: str, ca: bytes, namespace: str) -> Path:
    where.mkdir(parents=True)
    (where / "token").write_text(token)
    (where / "ca.crt").write_bytes(ca)
    (where / "namespace").write_text(namespace)
    return where


def in_cluster_environ(lane: Lane) -> dict[str, str]:
    server = urlsplit(lane.server)
    return {
        "KUBERNETES_SERVICE_HOST": server.hostname or "",
        "KUBERNETES_SERVICE_PORT": str(server.port),
    }


def test_in_cluster_credentials_follow_a_rotated_token(parts: Parts, tmp_path: Path) -> None:
    """Projected tokens rotate: the API server refuses the old one (here: the Secret it was
    bound to is deleted), the kubelet writes the new one, and the client re-reads the file."""
    lane, ns, http = parts.lane, parts.ns, parts.lane.admin_http
    for path, body in (
        ("serviceaccounts", {"metadata": {"name": "rotating"}}),
        ("secrets", {"metadata": {"name": "first"}}),
        (
            "roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        ),
        (
            "rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "rotating-pod-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "rotating", "namespace": ns}],
            },
        ),
    ):
        api = "/apis/rbac.authorization.k8s.io/v1" if path.startswith("role") else "/api/v1"
        r = http.post(f"{api}/namespaces/{ns}/{path}", json=body)
        assert r.status_code == 201, api_error(r)
    secret_uid = http.get(f"/api/v1/namespaces/{ns}/secrets/first").json()["metadata"]["uid"]
    r = http.post(
        f"/api/v1/namespaces/{ns}/serviceaccounts/rotating/token",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": "first",
                    "uid": secret_uid,
                },
            },
        },
    )
    assert r.status_code == 201, api_error(r)
    first = r.json()["status"]["token"]
    sa = in_cluster_dir(tmp_path / "sa", first, (lane.pki / "ca.crt").read_bytes(), ns)
    kube = KubeClient.from_config(
        None, service_account_dir=str(sa), environ=in_cluster_environ(lane)
    )
    try:
        assert kube.credentials == "in-cluster"
        assert kube.server == lane.server

        # The authorizer follows RBAC objects through its informers: a moment after the binding.
        def listed() -> bool:
            return forbidden_of(lambda: kube.list_pods(namespace=ns)) is None

        wait_for(listed, 15, "the pod-reader role to apply")

        r = http.delete(f"/api/v1/namespaces/{ns}/secrets/first")
        assert r.status_code == 200, api_error(r)
        with lane.token_http(first) as old:
            wait_for(
                lambda: old.get(f"/api/v1/namespaces/{ns}/pods").status_code == 401,
                30,
                "the old token refused",
            )
        (sa / "token").write_text(request_token(lane, ns, "rotating"))
        assert kube.list_pods(namespace=ns).items == []
    finally:
        kube.close()


def test_in_cluster_with_a_foreign_ca_fails_naming_the_url(parts: Parts, tmp_path: Path) -> None:
    import certifi

    foreign = Path(certifi.where()).read_bytes()  # public CAs: none signed the lane's server
    sa = in_cluster_dir(tmp_path / "sa", "x", foreign, parts.ns)
    kube = KubeClient.from_config(
        None, service_account_dir=str(sa), environ=in_cluster_environ(parts.lane)
    )
    try:
        with pytest.raises(KubernetesError, match=rf"GET {re.escape(kube.server)}/api/v1/pods"):
            kube.list_pods()
    finally:
        kube.close()


def test_a_wrong_token_is_an_error_naming_the_request(parts: Parts, tmp_path: Path) -> None:
    path = token_kubeconfig(parts.lane, tmp_path / "wrong", "wrong")
    kube = KubeClient.from_config({"kubeconfig": str(path)}, environ={})
    try:
        with pytest.raises(
            KubernetesError, match=r"/api/v1/events\?fieldSelector=reason%3DOOMKilling: HTTP 401"
        ):
            kube.list_events(field_selector="reason=OOMKilling")
    finally:
        kube.close()


# ---------------------------------------------------------------- cluster mode
# No kubelet runs here: each node's /stats/summary is the server's 404 (no such node), so these
# tests look at pods, Events and kills; samples from summaries are on the fake
# (tests/k8s/test_cluster.py).
START = 1772446560.0  # 2026-03-02T10:16:00Z


@pytest.fixture
def cluster_parts(k8s_lane: Lane, tmp_path: Path) -> Iterator[Parts]:
    p = parts_on(k8s_lane, tmp_path, mode="cluster")
    try:
        yield p
    finally:
        p.kube.close()


def summaries_asked(p: Parts) -> list[str]:
    return sorted(
        urlsplit(url).path.split("/")[4]
        for m, url, _ in p.seen
        if m == "GET" and urlsplit(url).path.endswith("/proxy/stats/summary")
    )


def test_cluster_namespace_filter_and_url_encoded_label_selector(cluster_parts: Parts) -> None:
    p = cluster_parts
    other_ns = new_namespace(p.lane, "jobs")
    wanted = {"web": "node-web", "batch": "node-batch"}
    create_pod(p.lane, p.ns, "web", [app()], node="node-web", labels={"app": "web"})
    create_pod(p.lane, other_ns, "batch", [app()], node="node-batch", labels={"app": "batch"})
    labels = {"app": "web", "tier": "db"}
    create_pod(p.lane, p.ns, "db", [app()], node="node-db", labels=labels)
    create_pod(p.lane, p.ns, "other", [app()], node="node-other", labels={"app": "other"})
    src = ClusterSource.from_config(
        {
            "source": {
                "kubelet": {
                    "poll_interval_ms": 2500,
                    "namespace_filter": f" {p.ns}, {other_ns} ,{p.ns}",
                    "label_selector": "app in (web,batch),tier!=db",
                }
            }
        },
        p.kube,
    )
    src.start()
    src.poll(0.0)
    assert src.interval == 2.5
    lists = [
        (urlsplit(url).path, urlsplit(url).query)
        for m, url, _ in p.seen
        if m == "GET" and urlsplit(url).path.endswith("/pods")
    ]
    assert [path for path, _ in lists] == [
        f"/api/v1/namespaces/{p.ns}/pods",
        f"/api/v1/namespaces/{other_ns}/pods",
    ]
    query = lists[0][1]
    assert parse_qs(query)["labelSelector"] == ["app in (web,batch),tier!=db"]
    for raw in (" ", "(", ")", ","):
        assert raw not in query.split("labelSelector=", 1)[1]
    # The pods the server selected: their nodes' summaries were asked for.
    assert summaries_asked(p) == sorted(wanted.values())
    assert src.status()["errors"].keys() == {"summary:node-batch", "summary:node-web"}


def oom_killed(finished: str, started: str | None = None) -> dict[str, Any]:
    terminated = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": finished}
    if started:
        terminated["startedAt"] = started
    return {"terminated": terminated}


def container_status(restarts: int, state: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "app",
        "image": "registry.k8s.io/pause:3.10",
        "imageID": "",
        "containerID": "containerd://" + "a" * 64,
        "ready": "running" in state,
        "restartCount": restarts,
        "state": state,
        "lastState": last,
    }


def set_status(p: Parts, name: str, cs: dict[str, Any]) -> None:
    r = p.lane.admin_http.patch(
        f"/api/v1/namespaces/{p.ns}/pods/{name}/status",
        json={"status": {"containerStatuses": [cs]}},
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)


def node_oom_event(p: Parts, name: str, pid: int, comm: str, at: str) -> str:
    """An OOMKilling Event on the node, as node-problem-detector's kernel monitor writes it
    (in namespace default, as the Events of cluster-scoped objects are): its name."""
    name = f"{p.node}.{name}"
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"kind": "Node", "name": p.node, "uid": p.node, "apiVersion": "v1"},
        "reason": "OOMKilling",
        "message": f"Memory cgroup out of memory: Killed process {pid} ({comm}) "
        "total-vm:1180968kB, anon-rss:262144kB, file-rss:6588kB, shmem-rss:0kB, UID:1000 "
        "pgtables:628kB oom_score_adj:999",
        "source": {"component": "kernel-monitor", "host": p.node},
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
        "type": "Warning",
    }
    r = p.lane.admin_http.post("/api/v1/namespaces/default/events", json=event)
    assert r.status_code == 201, api_error(r)
    return name


def test_cluster_reports_recent_kills_once_the_first_included(cluster_parts: Parts) -> None:
    p = cluster_parts
    web = one_pod(p, "web")
    one_pod(p, "batch")
    running = {"running": {"startedAt": "2026-03-02T10:14:41Z"}}
    # web/app was OOMKilled at 10:14:39, a minute before start: reported. batch's kill at
    # 08:00:58 is history.
    set_status(p, "web", container_status(2, running, oom_killed("2026-03-02T10:14:39Z")))
    set_status(p, "batch", container_status(1, running, oom_killed("2026-03-02T08:00:58Z")))
    recent = node_oom_event(p, "recent", 41807, "python3", "2026-03-02T10:14:39Z")
    node_oom_event(p, "old", 20311, "worker", "2026-03-02T08:00:58Z")

    src = ClusterSource(p.kube, namespaces=[p.ns], wall_clock=lambda: START)
    src.start()
    first = src.poll(100.0).kills
    (k,) = [k for k in first if k.source == SOURCE_K8S_STATUS]
    uid = web["metadata"]["uid"]
    assert k.extra["key"] == f"{uid}/app"
    assert k.extra["identity"].pod_name == "web"
    assert k.extra["restart_count"] == 2
    assert k.extra["exit_code"] == 137
    assert k.wall == START - 81
    assert k.time == 100.0
    events = [k for k in first if k.source == SOURCE_K8S_EVENT]
    assert [(e.pid, e.comm, e.count_delta, e.extra["node_name"]) for e in events] == [
        (41807, "python3", 1, p.node)
    ]
    (listing,) = p.requests("GET", "/api/v1/events")
    assert listing["fieldSelector"] == "reason=OOMKilling"

    assert src.poll(110.0).kills == []  # nothing new: nothing reported twice

    # Killed again, not yet restarted: the kill shows in state.terminated ...
    again = oom_killed("2026-03-02T10:20:00Z")
    set_status(p, "web", container_status(2, again, running))
    r = p.lane.admin_http.patch(
        f"/api/v1/namespaces/default/events/{recent}",
        json={"count": 3, "lastTimestamp": "2026-03-02T10:20:01Z"},
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)
    third = src.poll(120.0).kills
    assert [k.extra["restart_count"] for k in third if k.source == SOURCE_K8S_STATUS] == [3]
    assert [k.count_delta for k in third if k.source == SOURCE_K8S_EVENT] == [2]

    # ... and, after the restart, in lastState with the restart count one higher: same kill.
    restarted = {"running": {"startedAt": "2026-03-02T10:20:05Z"}}
    set_status(p, "web", container_status(3, restarted, again))
    assert src.poll(130.0).kills == []


def test_cluster_api_errors_are_reported_not_raised(parts: Parts, tmp_path: Path) -> None:
    """The API server's 403 on the pods and the Events lists (a ServiceAccount without rules)."""
    kube = nobodys_client(parts, tmp_path)
    try:
        src = ClusterSource(kube, wall_clock=lambda: START)
        src.start()
        polled = src.poll(0.0)
    finally:
        kube.close()
    assert polled.samples == []
    assert polled.kills == []
    errors = src.status()["errors"]
    assert set(errors) == {"pods:*", "events"}
    assert all("HTTP 403" in text for text in errors.values()), errors


def test_cluster_builds_and_owns_its_client(cluster_parts: Parts) -> None:
    p = cluster_parts
    one_pod(p, "web")
    src = ClusterSource.from_config(
        {
            "kubernetes": {"kubeconfig": str(p.kubeconfig)},
            "source": {"kubelet": {"namespace_filter": p.ns}},
        },
        environ={},
    )
    src.start()
    src.poll(0.0)
    assert src.kube.server == p.lane.server
    assert src.status()["errors"].keys() == {f"summary:{p.node}"}  # the pod was listed
    assert not src.kube.closed
    src.close()
    assert src.kube.closed
