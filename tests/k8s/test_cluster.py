"""The Kubernetes client's configuration (kubeconfig, in-cluster over real TLS) and cluster mode:
pods and kubelet summaries through the fake API server, kills from Events and lastState."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pressured.errors import ConfigError, KubernetesError
from pressured.k8s.client import KubeClient
from pressured.model import KillRecord
from pressured.sources.cluster import SOURCE_K8S_EVENT, SOURCE_K8S_STATUS, ClusterSource
from tests.k8s.conftest import write_kubeconfig
from tests.k8s.fake_apiserver import FakeKube

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
BATCH_UID = "9b2e4c6a-1f3d-4e5b-8a7c-0d1e2f3a4b5c"
CACHE_UID = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
WEB_APP_ID = "a7a1d1b1b26d8785d3cae7a3b8b137b8f08991a2412713846e58baaba5683a4c"
START = dt.datetime(2026, 3, 2, 10, 16, 0, tzinfo=dt.UTC).timestamp()
"""The fixtures were recorded around 2026-03-02T10:15Z; the source 'starts' a minute later."""


# ---------------------------------------------------------------- TLS for the in-cluster test
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A CA and a server certificate for 127.0.0.1: (server context, CA file)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fake-kubernetes-ca"))
        .issuer_name(_name("fake-kubernetes-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = tmp / "server.crt", tmp / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, ca_file


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[tuple[FakeKube, Path]]:
    ctx, ca_file = make_tls(tmp_path)
    fake = FakeKube(tls=ctx, token="sa-token-1")
    try:
        yield fake, ca_file
    finally:
        fake.close()


def service_account_dir(tmp: Path, ca_file: Path, token: str) -> Path:
    sa = tmp / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "namespace").write_text("pressured")
    (sa / "ca.crt").write_bytes(ca_file.read_bytes())
    return sa


# ---------------------------------------------------------------- client configuration
def test_in_cluster_credentials_over_tls(tls_api: tuple[FakeKube, Path], tmp_path: Path) -> None:
    fake, ca_file = tls_api
    sa = service_account_dir(tmp_path, ca_file, "sa-token-1")
    port = fake.url.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    kube = KubeClient.from_config(None, service_account_dir=str(sa), environ=env)
    try:
        assert kube.credentials == "in-cluster"
        assert kube.server == f"https://127.0.0.1:{port}"
        assert kube.list_pods().items == []
        assert fake.requests[-1].headers["authorization"] == "Bearer sa-token-1"
        # Projected tokens rotate: the server starts refusing the old one, the file changes,
        # and the client re-reads it on the 401.
        fake.token = "sa-token-2"
        (sa / "token").write_text("sa-token-2")
        assert kube.list_pods().items == []
        assert fake.requests[-1].headers["authorization"] == "Bearer sa-token-2"
    finally:
        kube.close()


def test_in_cluster_with_a_foreign_ca_fails_naming_the_url(
    tls_api: tuple[FakeKube, Path], tmp_path: Path
) -> None:
    fake, _ = tls_api
    (tmp_path / "other").mkdir()
    _, other_ca = make_tls(tmp_path / "other")
    sa = service_account_dir(tmp_path, other_ca, "sa-token-1")
    port = fake.url.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    kube = KubeClient.from_config(None, service_account_dir=str(sa), environ=env)
    try:
        with pytest.raises(KubernetesError, match=rf"GET https://127\.0\.0\.1:{port}/api/v1/pods"):
            kube.list_pods()
    finally:
        kube.close()


def test_kubeconfig_from_the_environment(
    fake_api: FakeKube, tmp_path: Path, no_service_account: str
) -> None:
    path = write_kubeconfig(tmp_path / "kc", fake_api.url)
    kube = KubeClient.from_config(
        {},
        service_account_dir=no_service_account,
        environ={"KUBECONFIG": str(path), "NODE_NAME": "node-7"},
    )
    try:
        assert kube.credentials == str(path)
        assert kube.node_name == "node-7"
        assert len(kube.list_pods(namespace="shop").items) == 3
        assert fake_api.requests[-1].path == "/api/v1/namespaces/shop/pods"
    finally:
        kube.close()


def test_explicit_kubeconfig_wins_over_in_cluster(
    kubeconfig: Path, tls_api: tuple[FakeKube, Path], tmp_path: Path
) -> None:
    _, ca_file = tls_api
    sa = service_account_dir(tmp_path, ca_file, "x")
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


def test_wrong_token_is_an_error_naming_the_request(fake_api: FakeKube, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", fake_api.url, token="wrong")
    kube = KubeClient.from_config({"kubeconfig": str(path)}, environ={})
    try:
        with pytest.raises(
            KubernetesError, match=r"/api/v1/events\?fieldSelector=reason%3DOOMKilling: HTTP 401"
        ):
            kube.list_events(field_selector="reason=OOMKilling")
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


def test_kills_recent_ones_once_the_first_included(kube: KubeClient, fake_api: FakeKube) -> None:
    src = cluster(kube)
    first = src.poll(100.0).kills
    status = kills_by_source(first, SOURCE_K8S_STATUS)
    # web/app was OOMKilled at 10:14:39, a minute before start: reported. batch/worker's kill
    # at 08:00:58 is history.
    assert len(status) == 1
    k = status[0]
    assert k.extra["key"] == f"{WEB_UID}/app"
    assert k.extra["identity"].pod_name == "web-7d4b9c-x2x9q"
    assert k.extra["restart_count"] == 2
    assert k.extra["exit_code"] == 137
    assert k.wall == dt.datetime(2026, 3, 2, 10, 14, 39, tzinfo=dt.UTC).timestamp()
    assert k.time == 100.0
    events = kills_by_source(first, SOURCE_K8S_EVENT)
    assert [(e.pid, e.comm, e.count_delta, e.extra["node_name"]) for e in events] == [
        (41807, "python3", 1, "node-1")
    ]
    ev_requests = fake_api.requests_to("GET", "/api/v1/events")
    assert ev_requests[-1].query["fieldSelector"] == "reason=OOMKilling"

    assert src.poll(110.0).kills == []  # nothing new: nothing reported twice

    def oom_again(pod: dict[str, Any]) -> None:
        cs = pod["status"]["containerStatuses"][0]
        # Killed again, not yet restarted: the kill shows in state.terminated ...
        cs["lastState"], cs["state"] = (
            cs["state"],
            {
                "terminated": {
                    "exitCode": 137,
                    "reason": "OOMKilled",
                    "finishedAt": "2026-03-02T10:20:00Z",
                }
            },
        )

    fake_api.modify_pod(WEB_UID, oom_again)
    with fake_api.cond:
        event = fake_api.events[("default", "node-1.17f8a1c2d3e4f5a6")]
        event["count"], event["lastTimestamp"] = 3, "2026-03-02T10:20:01Z"
    third = src.poll(120.0).kills
    assert [k.extra["restart_count"] for k in kills_by_source(third, SOURCE_K8S_STATUS)] == [3]
    assert [k.count_delta for k in kills_by_source(third, SOURCE_K8S_EVENT)] == [2]

    def restarted(pod: dict[str, Any]) -> None:
        cs = pod["status"]["containerStatuses"][0]
        cs["lastState"], cs["state"] = (
            cs["state"],
            {"running": {"startedAt": "2026-03-02T10:20:05Z"}},
        )
        cs["restartCount"] = 3

    # ... and, after the restart, in lastState with the restart count one higher: same kill.
    fake_api.modify_pod(WEB_UID, restarted)
    assert src.poll(130.0).kills == []


def test_namespace_filter_and_url_encoded_label_selector(
    kube: KubeClient, fake_api: FakeKube
) -> None:
    src = ClusterSource.from_config(
        {
            "source": {
                "kubelet": {
                    "poll_interval_ms": 2500,
                    "namespace_filter": " shop, jobs ,shop",
                    "label_selector": "app in (web,batch),tier!=db",
                }
            }
        },
        kube,
    )
    src.start()
    polled = src.poll(0.0)
    assert src.interval == 2.5
    paths = [r.path for r in fake_api.requests_to("GET", r"/api/v1/(namespaces/[^/]+/)?pods")]
    assert paths == ["/api/v1/namespaces/shop/pods", "/api/v1/namespaces/jobs/pods"]
    req = fake_api.requests_to("GET", "/api/v1/namespaces/shop/pods")[0]
    assert req.query["labelSelector"] == "app in (web,batch),tier!=db"
    for raw in (" ", "(", ")", ","):
        assert raw not in req.raw_query.split("labelSelector=", 1)[1]
    assert {spec.identity.pod_name for spec, _ in polled.samples} == {
        "web-7d4b9c-x2x9q",
        "batch-worker-0",
    }


def test_a_node_without_summary_does_not_stop_the_others(
    kube: KubeClient, fake_api: FakeKube
) -> None:
    del fake_api.summaries["node-2"]
    src = cluster(kube)
    got = by_key(src.poll(0.0))
    assert f"{CACHE_UID}/redis" not in got
    assert f"{WEB_UID}/app" in got
    assert "summary:node-2" in src.status()["errors"]
    assert "no endpoints available" in src.status()["errors"]["summary:node-2"]


def test_api_errors_are_reported_not_raised(kube: KubeClient, fake_api: FakeKube) -> None:
    fake_api.forced[("GET", "/api/v1/pods")] = 403
    fake_api.forced[("GET", "/api/v1/events")] = 403
    src = cluster(kube)
    polled = src.poll(0.0)
    assert polled.samples == []
    assert polled.kills == []
    assert set(src.status()["errors"]) == {"pods:*", "events"}


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


def test_cluster_builds_and_owns_its_client(kubeconfig: Path, fake_api: FakeKube) -> None:
    src = ClusterSource.from_config({"kubernetes": {"kubeconfig": str(kubeconfig)}}, environ={})
    src.start()
    assert len(src.poll(0.0).samples) == 4
    assert src.kube.server == fake_api.url
    assert not src.kube.closed
    src.close()
    assert src.kube.closed


def test_a_failed_listing_does_not_make_old_kills_new(kube: KubeClient, fake_api: FakeKube) -> None:
    src = ClusterSource(kube, namespaces=["shop", "jobs"], wall_clock=lambda: START)
    src.start()
    assert len(kills_by_source(src.poll(0.0).kills, SOURCE_K8S_STATUS)) == 1
    fake_api.forced[("GET", "/api/v1/namespaces/shop/pods")] = 500
    assert kills_by_source(src.poll(10.0).kills, SOURCE_K8S_STATUS) == []
    del fake_api.forced[("GET", "/api/v1/namespaces/shop/pods")]
    assert kills_by_source(src.poll(20.0).kills, SOURCE_K8S_STATUS) == []
    assert "pods:shop" not in src.status()["errors"]


def test_reread_reads_the_node_summary_again(kube: KubeClient, fake_api: FakeKube) -> None:
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
