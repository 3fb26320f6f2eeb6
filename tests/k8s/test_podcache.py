"""The pod cache: a watch failing with a status code chosen by the test (the fake API server;
list, watch, resume and re-list on 410 are proved against a real one in
tests/k8s_real/test_parts.py); quantity parsing and pod parsing, without a server."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from pressured.k8s.client import KubeClient
from pressured.k8s.podcache import PodCache, parse_quantity, pod_info
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


def test_watch_errors_are_retried_from_the_same_version(
    cache: PodCache, fake_api: FakeKube
) -> None:
    """Fault: HTTP 500 on the watch request, which a real API server gives on no demand."""
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
