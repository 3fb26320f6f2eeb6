"""Fixtures for the Kubernetes tests that need a fault a real API server cannot give on demand
(tests/k8s/fake_apiserver.py says which): the fake on loopback, a kubeconfig pointing at it,
and a real KubeClient (lightkube over httpx) built from that kubeconfig."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pressured.k8s.client import KubeClient
from pressured.k8s.podcache import PodCache
from tests.k8s.fake_apiserver import FakeKube
from tests.support.wait import wait_for

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "pressured-test-token"
"""The fake server's bearer token."""


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def pods_fixture() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = load("pods.json")["items"]
    return copy.deepcopy(items)


def pod_named(name: str) -> dict[str, Any]:
    for p in pods_fixture():
        if p["metadata"]["name"] == name:
            return p
    raise KeyError(name)


def write_kubeconfig(path: Path, server: str, token: str | None = TOKEN, **cluster: Any) -> Path:
    user: dict[str, Any] = {"token": token} if token else {}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "tester", "user": user}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def stop_cache(cache: PodCache, fake: FakeKube) -> None:
    """Stop a cache's watch thread: flag it, then end streams until the thread is gone (a
    watch opened just before the flag would otherwise run to its server timeout)."""
    cache.close(timeout=0)

    def ended() -> bool:
        fake.kick_watches()
        return not cache.running

    wait_for(ended, what="the pod watch thread to end")


@pytest.fixture
def fake_api() -> Iterator[FakeKube]:
    fake = FakeKube(token=TOKEN)
    for pod in pods_fixture():
        fake.add_pod(pod)
    fake.summaries = {n: load(f"summary_{n}.json") for n in ("node-1", "node-2")}
    for event in load("events.json")["items"]:
        fake.add_event(event)
    try:
        yield fake
    finally:
        fake.close()
    assert fake.handler_errors == []


@pytest.fixture
def kubeconfig(fake_api: FakeKube, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[KubeClient]:
    client = KubeClient.from_config(
        {"kubeconfig": str(kubeconfig), "node_name": "node-1"}, environ={}
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def no_service_account(tmp_path: Path) -> str:
    """A service-account directory that does not exist (not in a pod)."""
    return os.path.join(tmp_path, "no-serviceaccount")
