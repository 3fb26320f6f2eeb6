"""The pod cache against the fake API server: list, watch (ADDED/MODIFIED/DELETED), resume
from the last resourceVersion, re-list on 410, selectors; and quantity parsing."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from pressured.errors import KubernetesError
from pressured.k8s.client import KubeClient
from pressured.k8s.podcache import PodCache, PodInfo, parse_quantity, pod_info
from tests.k8s.conftest import pod_named, stop_cache
from tests.k8s.fake_apiserver import FakeKube
from tests.support.wait import wait_for

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
BATCH_UID = "9b2e4c6a-1f3d-4e5b-8a7c-0d1e2f3a4b5c"
CACHE_UID = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
WEB_APP_ID = "a7a1d1b1b26d8785d3cae7a3b8b137b8f08991a2412713846e58baaba5683a4c"
BATCH_ID = "dd4680cdcd113bcd22342799213fc821b058a12bb38922bea46da3485c799839"


def new_pod(name: str, uid: str, node: str, container_id: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod_named("web-7d4b9c-x2x9q"))
    pod["metadata"].update(name=name, uid=uid, annotations={})
    pod["spec"]["nodeName"] = node
    pod["status"]["containerStatuses"] = [
        {
            "name": "app",
            "containerID": f"containerd://{container_id}",
            "restartCount": 0,
            "ready": True,
            "image": "x",
            "imageID": "y",
            "state": {"running": {}},
        }
    ]
    pod["spec"]["containers"] = pod["spec"]["containers"][:1]
    return pod


@pytest.fixture
def cache(kube: KubeClient, fake_api: FakeKube) -> Iterator[PodCache]:
    c = PodCache(kube, field_selector="spec.nodeName=node-1", retry_seconds=0.05, server_timeout=2)
    try:
        yield c
    finally:
        stop_cache(c, fake_api)


def watch_requests(fake: FakeKube) -> list[Any]:
    return [r for r in fake.requests_to("GET", "/api/v1/pods") if r.query.get("watch") == "true"]


def list_requests(fake: FakeKube) -> list[Any]:
    return [r for r in fake.requests_to("GET", "/api/v1/pods") if "watch" not in r.query]


def test_initial_list_by_node_and_lookups(cache: PodCache, fake_api: FakeKube) -> None:
    cache.start()
    lists = list_requests(fake_api)
    assert len(lists) == 1
    assert lists[0].query["fieldSelector"] == "spec.nodeName=node-1"
    assert lists[0].headers["authorization"] == "Bearer pressured-test-token"
    assert {p.name for p in cache.pods()} == {"web-7d4b9c-x2x9q", "batch-worker-0"}
    assert cache.by_uid(CACHE_UID) is None  # on node-2

    web = cache.by_container_id(WEB_APP_ID)
    assert web is not None
    assert (web.name, web.namespace, web.uid, web.pod_ip, web.node_name, web.qos) == (
        "web-7d4b9c-x2x9q",
        "shop",
        WEB_UID,
        "10.244.1.17",
        "node-1",
        "burstable",
    )
    assert web.labels["app"] == "web"
    assert web.annotations["pressured.io/warn-percent"] == "60"
    assert web.containers["app"].limits_memory_bytes == 256 * 1024**2
    assert web.containers["envoy"].limits_memory_bytes == 128 * 1024**2
    assert web.containers["app"].id == WEB_APP_ID
    # The runtime prefix is accepted on lookup too, and CRI-O ids are stripped the same way.
    assert cache.by_container_id(f"containerd://{WEB_APP_ID}") is web
    batch = cache.by_container_id(BATCH_ID)
    assert batch is not None
    assert batch.qos == "guaranteed"
    assert batch.containers["worker"].limits_memory_bytes == 1024**3


def test_watch_added_modified_deleted(cache: PodCache, fake_api: FakeKube) -> None:
    seen: list[tuple[str, str | None]] = []

    def listener(kind: str, new: PodInfo | None, old: PodInfo | None) -> None:
        pod = new or old
        seen.append((kind, pod.name if pod else None))

    cache.add_listener(listener)
    cache.start()
    generation = cache.generation

    new_id = "1" * 64
    fake_api.add_pod(new_pod("api-0", "11111111-2222-4333-8444-555555555555", "node-1", new_id))
    info = wait_for(lambda: cache.by_container_id(new_id), what="ADDED pod")
    assert info.name == "api-0"
    assert cache.generation > generation
    first_watch = watch_requests(fake_api)[0]
    # The watch starts where the list ended: the fixture's four pods took versions 1001-1004.
    assert first_watch.query["resourceVersion"] == "1004"
    assert first_watch.query["fieldSelector"] == "spec.nodeName=node-1"

    def annotate(pod: dict[str, Any]) -> None:
        pod["metadata"]["annotations"]["pressured.io/warn-percent"] = "50"

    fake_api.modify_pod(WEB_UID, annotate)
    wait_for(
        lambda: cache.by_uid(WEB_UID).annotations.get("pressured.io/warn-percent") == "50",  # type: ignore[union-attr]
        what="MODIFIED pod",
    )

    fake_api.delete_pod(BATCH_UID)
    wait_for(lambda: cache.by_uid(BATCH_UID) is None, what="DELETED pod")
    assert cache.by_container_id(BATCH_ID) is None

    # A pod of another node never shows: the selector is applied by the server.
    fake_api.add_pod(
        new_pod("elsewhere", "99999999-2222-4333-8444-555555555555", "node-2", "2" * 64)
    )
    fake_api.add_pod(new_pod("marker", "88888888-2222-4333-8444-555555555555", "node-1", "3" * 64))
    wait_for(lambda: cache.by_container_id("3" * 64), what="marker pod")
    assert cache.by_container_id("2" * 64) is None
    assert ("ADDED", "api-0") in seen
    assert ("MODIFIED", "web-7d4b9c-x2x9q") in seen
    assert ("DELETED", "batch-worker-0") in seen
    assert len(list_requests(fake_api)) == 1  # no API call per change


def test_resume_from_last_resource_version_after_the_stream_ends(
    cache: PodCache, fake_api: FakeKube
) -> None:
    cache.start()
    fake_api.add_pod(new_pod("a-0", "11111111-2222-4333-8444-000000000001", "node-1", "4" * 64))
    wait_for(lambda: cache.by_container_id("4" * 64), what="first pod")
    last_rv = cache.status()["resource_version"]
    n = len(watch_requests(fake_api))
    fake_api.kick_watches()
    wait_for(lambda: len(watch_requests(fake_api)) > n, what="a new watch")
    resumed = watch_requests(fake_api)[n]
    assert resumed.query["resourceVersion"] == last_rv
    fake_api.add_pod(new_pod("a-1", "11111111-2222-4333-8444-000000000002", "node-1", "5" * 64))
    wait_for(lambda: cache.by_container_id("5" * 64), what="pod after resume")
    assert cache.relists == 1


def test_410_gone_relists(cache: PodCache, fake_api: FakeKube) -> None:
    cache.start()
    seen: list[str] = []
    cache.add_listener(lambda kind, new, old: seen.append(kind))
    # Changes the client never sees through the watch: they are compacted away, then the
    # watch gets ERROR 410 and only a fresh list can bring them in.
    fake_api.kick_watches()
    with fake_api.cond:
        del fake_api.pods[BATCH_UID]
    fake_api.expire()
    wait_for(lambda: cache.relists >= 2, what="a re-list after 410")
    assert cache.by_uid(BATCH_UID) is None
    assert "RELIST" in seen
    assert "DELETED" in seen  # the pod gone between the lists is reported as deleted
    assert len(list_requests(fake_api)) >= 2
    fake_api.add_pod(
        new_pod("after-410", "11111111-2222-4333-8444-000000000003", "node-1", "6" * 64)
    )
    wait_for(lambda: cache.by_container_id("6" * 64), what="pod after the re-list")


def test_start_fails_loudly_when_the_api_refuses(kube: KubeClient, fake_api: FakeKube) -> None:
    fake_api.forced[("GET", "/api/v1/pods")] = 403
    c = PodCache(kube, field_selector="spec.nodeName=node-1")
    with pytest.raises(
        KubernetesError,
        match=r"GET http://127\.0\.0\.1:\d+/api/v1/pods"
        r"\?fieldSelector=spec\.nodeName%3Dnode-1: HTTP 403",
    ):
        c.start()
    assert not c.running


def test_watch_errors_are_retried_from_the_same_version(
    cache: PodCache, fake_api: FakeKube
) -> None:
    cache.start()
    n = len(watch_requests(fake_api))
    fake_api.forced[("GET", "/api/v1/pods")] = 500
    fake_api.kick_watches()
    wait_for(lambda: cache.last_error is not None, what="a failed watch")
    assert "HTTP 500" in (cache.last_error or "")
    del fake_api.forced[("GET", "/api/v1/pods")]
    fake_api.add_pod(new_pod("late", "11111111-2222-4333-8444-000000000004", "node-1", "7" * 64))
    wait_for(lambda: cache.by_container_id("7" * 64), what="pod after the error")
    assert cache.relists == 1  # a 500 is not a 410: no re-list
    assert len(watch_requests(fake_api)) > n


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256Mi", 256 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("500M", 500 * 10**6),
        ("128974848", 128974848),
        ("129e6", 129 * 10**6),
        ("1.5Gi", 3 * 2**29),
        ("0.5Ki", 512),
        ("1500m", 2),  # milli-bytes round up
        ("12k", 12000),
        ("1Ei", 2**60),
    ],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "Mi", "1.2.3", "12 Mi", "-1Gi", "1MB", "0x10"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_pod_info_survives_a_bad_limit() -> None:
    pod = pod_named("web-7d4b9c-x2x9q")
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    info = pod_info(pod)
    assert info.containers["app"].limits_memory_bytes is None
    assert info.containers["envoy"].limits_memory_bytes == 128 * 2**20


def test_bookmark_moves_the_resource_version_only(kube: KubeClient) -> None:
    c = PodCache(kube)
    generation = c.generation
    c.apply("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "777"}})
    assert c.status()["resource_version"] == "777"
    assert c.generation == generation
    assert c.pods() == []
