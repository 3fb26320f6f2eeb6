"""The Kubernetes client's configuration errors, and what only the fake API server can give:
the kubelet's /stats/summary behind nodes/{name}/proxy (no kubelet runs here) for cluster mode's
samples, and answers chosen by the test (a 500 on one listing, a 1 MiB Status message).
In-cluster credentials over TLS, token rotation, pods, Events and kills from a real API server
are in tests/k8s_real/test_parts.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pressured.errors import ConfigError, KubernetesError
from pressured.k8s.client import KubeClient
from pressured.model import KillRecord
from pressured.sources.cluster import SOURCE_K8S_STATUS, ClusterSource
from tests.k8s.conftest import write_kubeconfig
from tests.k8s.fake_apiserver import FakeKube

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
BATCH_UID = "9b2e4c6a-1f3d-4e5b-8a7c-0d1e2f3a4b5c"
CACHE_UID = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
WEB_APP_ID = "a7a1d1b1b26d8785d3cae7a3b8b137b8f08991a2412713846e58baaba5683a4c"
START = dt.datetime(2026, 3, 2, 10, 16, 0, tzinfo=dt.UTC).timestamp()
"""The fixtures were recorded around 2026-03-02T10:15Z; the source 'starts' a minute later."""


# ---------------------------------------------------------------- TLS for the in-cluster test
def service_account_dir(tmp: Path, ca_file: Path, token: str) -> Path:
    sa = tmp / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "namespace").write_text("pressured")
    (sa / "ca.crt").write_bytes(ca_file.read_bytes())
    return sa


# ---------------------------------------------------------------- client configuration
def test_explicit_kubeconfig_wins_over_in_cluster(kubeconfig: Path, tmp_path: Path) -> None:
    import certifi

    sa = service_account_dir(tmp_path, Path(certifi.where()), "x")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}
    kube = KubeClient.from_config(
        {"kubeconfig": str(kubeconfig)}, service_account_dir=str(sa), environ=env
    )
    try:
        assert kube.credentials == str(kubeconfig)
    finally:
        kube.close()


def test_missing_kubeconfig_names_key_and_path(tmp_path: Path, no_service_account: str) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"kubernetes\.kubeconfig: .*nope\.yaml"):
        KubeClient.from_config(
            {"kubeconfig": missing}, service_account_dir=no_service_account, environ={}
        )


def test_garbage_kubeconfig(tmp_path: Path, no_service_account: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: 12\n")
    with pytest.raises(ConfigError, match=r"kubernetes\.kubeconfig: not a usable kubeconfig"):
        KubeClient.from_config(
            {"kubeconfig": str(bad)}, service_account_dir=no_service_account, environ={}
        )


def test_no_credentials_at_all(
    tmp_path: Path, no_service_account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    with pytest.raises(ConfigError, match=r"kubernetes: no Kubernetes credentials"):
        KubeClient.from_config(None, service_account_dir=no_service_account, environ={})


def test_section_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        KubeClient.from_config({"kubeconfg": "/x", "node_name": 3}, environ={})
    text = str(info.value)
    assert "kubernetes.kubeconfg: unknown key" in text
    assert "kubernetes.node_name: expected a string (got 3)" in text


def test_unreachable_server_names_the_url(tmp_path: Path, no_service_account: str) -> None:
    dead = FakeKube()
    url = dead.url
    dead.close()
    path = write_kubeconfig(tmp_path / "kc", url)
    kube = KubeClient.from_config(
        {"kubeconfig": str(path)}, service_account_dir=no_service_account, environ={}
    )
    try:
        with pytest.raises(KubernetesError, match=rf"GET {url}/api/v1/pods.*ConnectError"):
            kube.list_pods()
        with pytest.raises(
            KubernetesError, match=rf"GET {url}/api/v1/nodes/n1/proxy/stats/summary"
        ):
            kube.node_summary("n1")
    finally:
        kube.close()


@pytest.mark.parametrize(
    ("code", "method", "path", "call"),
    [
        # lightkube's ApiError
        (403, "GET", "/api/v1/namespaces/shop/pods/web-0", lambda k: k.get_pod("web-0", "shop")),
        # plain httpx
        (
            403,
            "GET",
            "/api/v1/nodes/node-1/proxy/stats/summary",
            lambda k: k.node_summary("node-1"),
        ),
        # EvictionRefused
        (
            429,
            "POST",
            "/api/v1/namespaces/shop/pods/web-0/eviction",
            lambda k: k.evict("web-0", "shop"),
        ),
    ],
    ids=["api-error", "httpx", "eviction"],
)
def test_a_huge_api_reply_is_quoted_briefly(
    kube: KubeClient,
    fake_api: FakeKube,
    code: int,
    method: str,
    path: str,
    call: Callable[[KubeClient], object],
) -> None:
    """Fault: a 1 MiB Status message on a chosen request."""
    fake_api.forced[(method, path)] = code
    fake_api.forced_message[(method, path)] = "denied: " + "x" * (1 << 20)
    with pytest.raises(KubernetesError) as info:
        call(kube)
    text = str(info.value)
    assert f"{path}: HTTP {code}: 'denied: xxx" in text
    assert "characters)" in text
    assert len(text) < 500, text[:600]


# ---------------------------------------------------------------- cluster mode
def cluster(kube: KubeClient, **kw: Any) -> ClusterSource:
    src = ClusterSource(kube, wall_clock=lambda: START, **kw)
    src.start()
    return src


def by_key(polled: Any) -> dict[str, Any]:
    return {spec.key: (spec, sample) for spec, sample in polled.samples}


def test_samples_from_kubelet_summaries(kube: KubeClient, fake_api: FakeKube) -> None:
    """Needs the kubelet's /stats/summary behind nodes/{name}/proxy: no kubelet runs here."""
    src = cluster(kube)
    polled = src.poll(100.0)
    got = by_key(polled)
    assert set(got) == {
        f"{WEB_UID}/app",
        f"{WEB_UID}/envoy",
        f"{BATCH_UID}/worker",
        f"{CACHE_UID}/redis",
    }
    spec, sample = got[f"{WEB_UID}/app"]
    assert spec.ref is None
    assert (sample.key, sample.time) == (spec.key, 100.0)
    assert (sample.working_set_bytes, sample.usage_bytes, sample.limit_bytes) == (
        231735296,
        251658240,
        256 * 2**20,
    )
    ident = spec.identity
    assert (ident.namespace, ident.pod_name, ident.pod_uid, ident.container_name) == (
        "shop",
        "web-7d4b9c-x2x9q",
        WEB_UID,
        "app",
    )
    assert (ident.container_id, ident.node_name, ident.pod_ip) == (
        WEB_APP_ID,
        "node-1",
        "10.244.1.17",
    )
    assert spec.overrides.warn_percent == 60.0
    assert spec.annotations["pressured.io/pprof-port"] == "6060"
    assert "kubectl.kubernetes.io/last-applied-configuration" not in spec.annotations
    assert got[f"{CACHE_UID}/redis"][1].limit_bytes is None  # BestEffort
    assert got[f"{BATCH_UID}/worker"][1].limit_bytes == 2**30
    summaries = fake_api.requests_to("GET", r"/api/v1/nodes/[^/]+/proxy/stats/summary")
    assert sorted(r.path for r in summaries) == [
        "/api/v1/nodes/node-1/proxy/stats/summary",
        "/api/v1/nodes/node-2/proxy/stats/summary",
    ]
    assert src.next_poll() == 110.0
    assert src.targets() == []


def kills_by_source(kills: list[KillRecord], source: str) -> list[KillRecord]:
    return [k for k in kills if k.source == source]


def test_a_node_without_summary_does_not_stop_the_others(
    kube: KubeClient, fake_api: FakeKube
) -> None:
    """Fault: one node's kubelet summary unavailable (503) while another's answers."""
    del fake_api.summaries["node-2"]
    src = cluster(kube)
    got = by_key(src.poll(0.0))
    assert f"{CACHE_UID}/redis" not in got
    assert f"{WEB_UID}/app" in got
    assert "summary:node-2" in src.status()["errors"]
    assert "no endpoints available" in src.status()["errors"]["summary:node-2"]


@pytest.mark.parametrize(
    ("kubelet", "message"),
    [
        (
            {"poll_interval_ms": 0},
            "source.kubelet.poll_interval_ms: expected a positive number (got 0)",
        ),
        ({"poll_interval_ms": True}, "source.kubelet.poll_interval_ms"),
        (
            {"namespace_filter": "shop,Bad_NS"},
            "source.kubelet.namespace_filter: not a namespace name (got 'Bad_NS')",
        ),
        ({"label_selector": 5}, "source.kubelet.label_selector: expected a string (got 5)"),
        ({"interval": 5}, "source.kubelet.interval: unknown key"),
    ],
)
def test_cluster_config_errors(kube: KubeClient, kubelet: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ClusterSource.from_config({"source": {"kubelet": kubelet}}, kube)


def test_cluster_needs_credentials(
    tmp_path: Path, no_service_account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"kubernetes: no Kubernetes credentials"):
        ClusterSource.from_config({}, service_account_dir=no_service_account, environ={})


def test_a_failed_listing_does_not_make_old_kills_new(kube: KubeClient, fake_api: FakeKube) -> None:
    """Fault: HTTP 500 on one namespace's pod listing, then a normal answer."""
    src = ClusterSource(kube, namespaces=["shop", "jobs"], wall_clock=lambda: START)
    src.start()
    assert len(kills_by_source(src.poll(0.0).kills, SOURCE_K8S_STATUS)) == 1
    fake_api.forced[("GET", "/api/v1/namespaces/shop/pods")] = 500
    assert kills_by_source(src.poll(10.0).kills, SOURCE_K8S_STATUS) == []
    del fake_api.forced[("GET", "/api/v1/namespaces/shop/pods")]
    assert kills_by_source(src.poll(20.0).kills, SOURCE_K8S_STATUS) == []
    assert "pods:shop" not in src.status()["errors"]


def test_reread_reads_the_node_summary_again(kube: KubeClient, fake_api: FakeKube) -> None:
    """The kubelet's /stats/summary changing between reads: no kubelet runs here."""
    src = cluster(kube)
    assert src.reread(f"{WEB_UID}/app", 5.0) is None  # not polled yet: unknown
    src.poll(0.0)
    fake_api.summaries["node-1"]["pods"][0]["containers"][0]["memory"]["workingSetBytes"] = 12345
    sample = src.reread(f"{WEB_UID}/app", 7.0)
    assert sample is not None
    assert (sample.key, sample.time, sample.working_set_bytes, sample.limit_bytes) == (
        f"{WEB_UID}/app",
        7.0,
        12345,
        256 * 2**20,
    )
    del fake_api.summaries["node-1"]
    assert src.reread(f"{WEB_UID}/app", 8.0) is None
