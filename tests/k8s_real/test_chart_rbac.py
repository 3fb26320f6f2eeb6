"""The chart's RBAC is sufficient and least, proved against real helm and a real API server.

The table of every request each mode makes is pressured/k8s/access.py (tests/k8s/test_access.py
holds it to the code). Here:
- helm renders each mode with each combination of the action toggles, and the rules bound to
  the chart's ServiceAccount grant exactly the mode's calls: none missing, none extra;
- the chart's RBAC objects are created in the API server, a token of its ServiceAccount is
  requested through the TokenRequest API and handed to pressured as in a pod (the in-cluster
  credentials: token, ca.crt, namespace, KUBERNETES_SERVICE_HOST), and the mode's own code (its
  source's pod list and watch, the annotation warning Event and its patch, the k8s-event and
  evict actions) runs
  with it: every request it sends is one of the table's and none is refused;
- with one rule taken out of the ClusterRole, the refused call fails with an error that names
  the verb, the resource, the namespace and the ServiceAccount.

No kubelet runs: cluster mode's nodes/proxy request reaches the API server's authorizer (a 404
for a node that does not exist, never a 403), which is what RBAC is about.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount

from pressured.actions.base import ActionContext
from pressured.actions.evict import EvictAction
from pressured.actions.k8s_event import K8sEventAction
from pressured.k8s import access
from pressured.k8s.client import Forbidden, KubeClient
from pressured.model import Identity, PressureEvent
from pressured.sources.cluster import ClusterSource
from pressured.sources.node import NodeSource
from pressured.sources.sidecar import SidecarSource
from tests.k8s_real.conftest import ROOT, Lane, api_error
from tests.k8s_real.test_lane import MODES, Api, Manifest, apply_all, render
from tests.support.wait import wait_for

pytestmark = pytest.mark.k8s_real

Doc = dict[str, Any]
Grant = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)"""
TOGGLES = [(events, eviction) for events in (False, True) for eviction in (False, True)]
SIDECAR_EXAMPLE = ROOT / "deploy" / "examples" / "sidecar-pod.yaml"
BAD_ANNOTATION = "pressured.io/warn-percent"


# ---------------------------------------------------------------- rules of a render


def bound_rules(docs: list[Doc], sa_name: str, sa_namespace: str) -> list[tuple[str, Doc]]:
    """(binding kind, rule) of every rule the render binds to the ServiceAccount."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    out: list[tuple[str, Doc]] = []
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == sa_name
            and s.get("namespace", binding["metadata"].get("namespace")) == sa_namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"])]
        out.extend((binding["kind"], rule) for rule in role.get("rules") or [])
    return out


def grants_of_rules(rules: list[Doc]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in rules:
        # A wildcard, a name restriction or a non-resource URL would escape the comparison.
        assert not rule.get("resourceNames"), rule
        assert not rule.get("nonResourceURLs"), rule
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), rule
        out |= {
            (group, resource, verb)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return out


def needed(mode: str, grants: set[str]) -> set[Grant]:
    return {(c.group, c.rbac_resource, c.verb) for c in access.calls(mode, grants)}


def config_actions(docs: list[Doc]) -> list[str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    return [a["type"] for a in yaml.safe_load(cm["data"]["config.yaml"]).get("actions", [])]


@pytest.mark.parametrize(("events", "eviction"), TOGGLES, ids=lambda v: str(v).lower())
@pytest.mark.parametrize("mode", MODES)
def test_rendered_rbac_is_exactly_the_calls_of_the_mode(
    k8s_lane: Lane, mode: str, events: bool, eviction: bool
) -> None:
    manifests = render(
        k8s_lane,
        "rbac",
        "watchers",
        "--set",
        f"mode={mode}",
        "--set",
        f"actions.events={str(events).lower()}",
        "--set",
        f"actions.eviction={str(eviction).lower()}",
        *(["--set-json", 'config.actions=[{"type":"log"},{"type":"evict"}]'] if eviction else []),
    )
    docs = [m.doc for m in manifests]
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    grants = {g for g, on in ((access.EVENTS, events), (access.EVICTION, eviction)) if on}
    # The config the chart renders asks for what it is granted, no more and no less.
    assert access.grants_of(config_actions(docs)) == grants

    rules = bound_rules(docs, sa["metadata"]["name"], sa["metadata"]["namespace"])
    assert grants_of_rules([rule for _, rule in rules]) == needed(mode, grants)
    # The mode asks across namespaces: only a ClusterRole bound cluster-wide can grant that.
    if not all(c.namespaced for c in access.calls(mode, grants)):
        assert {kind for kind, _ in rules} == {"ClusterRoleBinding"}


def test_rbac_without_rbac_create_binds_nothing(k8s_lane: Lane) -> None:
    docs = [m.doc for m in render(k8s_lane, "rbac", "watchers", "--set", "rbac.create=false")]
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert bound_rules(docs, sa["metadata"]["name"], sa["metadata"]["namespace"]) == []
    # ...while the same render with it binds rules: the check above can see them.
    docs = [m.doc for m in render(k8s_lane, "rbac", "watchers")]
    assert bound_rules(docs, sa["metadata"]["name"], sa["metadata"]["namespace"])


# ---------------------------------------------------------------- a real run with the SA's token


@dataclass
class Deployed:
    """The chart's (or the example's) RBAC objects in the server, and a KubeClient with a token
    of its ServiceAccount, built from in-cluster credentials as in the pod."""

    lane: Lane
    namespace: str
    sa: str
    kube: KubeClient
    roles: list[Doc]
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    """(method, url, status) of every request the client sent."""

    def requests(self) -> list[tuple[access.Request, str, int]]:
        out = []
        for method, url, status in self.seen:
            req = access.request_of(method, url)
            assert req is not None, f"{method} {url} is not a resource request"
            out.append((req, url, status))
        return out


def request_token(lane: Lane, namespace: str, sa: str) -> str:
    requested = lane.client.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=3600)
        ),
        name=sa,
        namespace=namespace,
    )
    assert requested.status is not None
    token: str = requested.status.token
    return token


def in_cluster_client(lane: Lane, namespace: str, sa: str, where: Path) -> KubeClient:
    where.mkdir(parents=True, exist_ok=True)
    (where / "token").write_text(request_token(lane, namespace, sa))
    (where / "ca.crt").write_bytes((lane.pki / "ca.crt").read_bytes())
    (where / "namespace").write_text(namespace)
    server = urlsplit(lane.server)
    environ = {
        "KUBERNETES_SERVICE_HOST": server.hostname or "",
        "KUBERNETES_SERVICE_PORT": str(server.port),
    }
    kube = KubeClient.from_config(None, environ=environ, service_account_dir=str(where))
    assert kube.credentials == "in-cluster"
    return kube


def record_requests(kube: KubeClient, seen: list[tuple[str, str, int]]) -> None:
    """Every response the client's own httpx session gets, as (method, url, status)."""
    http: httpx.Client = kube._client._client._client

    def on_response(response: httpx.Response) -> None:
        req = response.request
        seen.append((req.method, str(req.url), response.status_code))

    hooks = http.event_hooks
    hooks["response"] = [*hooks["response"], on_response]
    http.event_hooks = hooks


def make_namespace(lane: Lane, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    lane.client.create(Namespace(metadata=ObjectMeta(name=name, labels=labels)))
    # Pods need the namespace's default ServiceAccount (no controller-manager makes it here).
    lane.client.create(ServiceAccount(metadata=ObjectMeta(name="default")), namespace=name)
    return name


def rbac_manifests(manifests: list[Manifest]) -> list[Manifest]:
    kinds = ("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    return [m for m in manifests if m.doc["kind"] in kinds]


@pytest.fixture
def deploy_chart(k8s_lane: Lane, tmp_path: Path) -> Iterator[Callable[[str], Deployed]]:
    made: list[Deployed] = []

    def deploy(mode: str) -> Deployed:
        ns = make_namespace(k8s_lane, f"rbac-{mode}")
        release = f"r{uuid.uuid4().hex[:6]}"
        manifests = render(
            k8s_lane,
            release,
            ns,
            "--set",
            f"mode={mode}",
            "--set",
            "actions.eviction=true",
            "--set-json",
            'config.actions=[{"type":"log"},{"type":"evict"}]',
        )
        rbac = rbac_manifests(manifests)
        apply_all(Api(k8s_lane), rbac, ns)
        (sa,) = [m.doc["metadata"]["name"] for m in rbac if m.doc["kind"] == "ServiceAccount"]
        kube = in_cluster_client(k8s_lane, ns, sa, tmp_path / f"sa-{release}")
        # the daemon's roles: those bound to its ServiceAccount (not the viewer Role, which
        # is for people running `pressured diagnose --cluster`)
        bound = {
            (b.doc["roleRef"]["kind"], b.doc["roleRef"]["name"])
            for b in rbac
            if b.doc["kind"] in ("RoleBinding", "ClusterRoleBinding")
            and any(s.get("name") == sa for s in b.doc.get("subjects") or [])
        }
        roles = [m.doc for m in rbac if (m.doc["kind"], m.doc["metadata"]["name"]) in bound]
        deployed = Deployed(k8s_lane, ns, sa, kube, roles)
        record_requests(kube, deployed.seen)
        made.append(deployed)
        return deployed

    yield deploy
    for d in made:
        d.kube.close()


def make_pod(lane: Lane, namespace: str, name: str, node: str, **annotations: str) -> Doc:
    pod = Pod.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "resources": {"limits": {"memory": "64Mi"}},
                    }
                ],
            },
        }
    )
    created = lane.client.create(pod, namespace=namespace)
    out: Doc = created.to_dict()
    return out


def annotate(lane: Lane, namespace: str, name: str, value: str) -> None:
    lane.client.patch(
        Pod, name, {"metadata": {"annotations": {BAD_ANNOTATION: value}}}, namespace=namespace
    )


def set_running(lane: Lane, namespace: str, name: str) -> None:
    """The status a kubelet would write: Running, with the container's status."""
    r = lane.admin_http.patch(
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        json={
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                        "containerID": "containerd://" + "a" * 64,
                    }
                ],
            }
        },
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, api_error(r)


def events_in(lane: Lane, namespace: str, reason: str | None = None) -> list[Doc]:
    params = {"fieldSelector": f"reason={reason}"} if reason else {}
    r = lane.admin_http.get(f"/api/v1/namespaces/{namespace}/events", params=params)
    assert r.status_code == 200, api_error(r)
    items: list[Doc] = r.json()["items"]
    return items


def annotation_events(lane: Lane, namespace: str) -> list[Doc]:
    return events_in(lane, namespace, "InvalidPressuredAnnotation")


def critical_event(identity: Identity) -> PressureEvent:
    return PressureEvent(
        time=time.time(),
        severity="critical",
        previous_severity="warn",
        cgroup="/kubepods/burstable/pod" + (identity.pod_uid or ""),
        usage_bytes=60 * 2**20,
        working_set_bytes=60 * 2**20,
        limit_bytes=64 * 2**20,
        usage_percent=93.75,
        growth_bytes_per_s=2**20,
        eta_seconds=4.0,
        psi_some_avg10=None,
        psi_full_avg10=None,
        rule="critical_percent>=85",
        key="/sys/fs/cgroup/kubepods/burstable/pod" + (identity.pod_uid or ""),
        identity=identity,
    )


def wait_event_count(lane: Lane, namespace: str, count: int) -> None:
    wait_for(
        lambda: [e["count"] for e in annotation_events(lane, namespace)] == [count],
        30.0,
        f"one InvalidPressuredAnnotation Event in {namespace} with count {count}",
        poll=0.1,
    )


def assert_every_call_made_and_allowed(d: Deployed, mode: str, grants: set[str]) -> None:
    table = access.calls(mode, grants)
    made: set[Grant] = set()
    for req, url, status in d.requests():
        matching = [c for c in table if req.matches(c)]
        assert matching, f"{req.verb} {req.rbac_resource} ({url}) is not in the {mode} table"
        if all(c.namespaced for c in matching):
            assert req.namespace == d.namespace, url
        assert status != 403, f"{req.verb} {req.rbac_resource} refused: {url}"
        made.add((req.group, req.rbac_resource, req.verb))
    assert made == needed(mode, grants), "a call of the table was not exercised"


def test_node_mode_runs_with_the_chart_service_account(
    k8s_lane: Lane, deploy_chart: Callable[[str], Deployed]
) -> None:
    d = deploy_chart("node")
    node = f"node-{uuid.uuid4().hex[:6]}"
    work = make_namespace(k8s_lane, "work")
    uid = make_pod(k8s_lane, work, "web", node, **{BAD_ANNOTATION: "lots"})["metadata"]["uid"]
    make_pod(k8s_lane, work, "elsewhere", "another-node")

    src = NodeSource(kube=d.kube, node_name=node)
    src.start()
    try:
        cache = src.cache
        assert cache is not None
        # The list: this node's pod only (the field selector), and its bad annotation posted.
        assert [p.name for p in cache.pods()] == ["web"]
        wait_event_count(k8s_lane, work, 1)
        # The watch: a new bad value arrives through it and patches the same Event.
        annotate(k8s_lane, work, "web", "more")
        wait_event_count(k8s_lane, work, 2)
    finally:
        src.close()
    # The two actions that call the API, as the runner calls them on a critical event.
    ctx = ActionContext(mode="node", node_name=node, kube=d.kube)
    event = critical_event(Identity(namespace=work, pod_name="web", pod_uid=uid, node_name=node))
    K8sEventAction({}, ctx, "actions[1]").run(event)
    EvictAction({}, ctx, "actions[2]").run(event)
    reasons = {e["reason"] for e in events_in(k8s_lane, work)}
    assert "MemoryPressureCritical" in reasons, reasons
    gone = k8s_lane.client.get(Pod, "web", namespace=work).metadata
    assert gone is not None and gone.deletionTimestamp is not None, "the pod was not evicted"
    assert_every_call_made_and_allowed(d, "node", {access.EVENTS, access.EVICTION})


def test_cluster_mode_runs_with_the_chart_service_account(
    k8s_lane: Lane, deploy_chart: Callable[[str], Deployed]
) -> None:
    d = deploy_chart("cluster")
    work = make_namespace(k8s_lane, "work")
    make_pod(k8s_lane, work, "web", f"node-{uuid.uuid4().hex[:6]}", **{BAD_ANNOTATION: "lots"})
    set_running(k8s_lane, work, "web")

    src = ClusterSource(d.kube)
    src.start()
    src.poll(time.monotonic())
    wait_event_count(k8s_lane, work, 1)
    annotate(k8s_lane, work, "web", "more")
    src.poll(time.monotonic())
    wait_event_count(k8s_lane, work, 2)
    # The summary was asked for and authorized: the server looked for the node (404).
    proxied = [status for req, _, status in d.requests() if req.rbac_resource == "nodes/proxy"]
    assert proxied and all(status == 404 for status in proxied), proxied
    d.kube.evict("web", work)
    assert_every_call_made_and_allowed(d, "cluster", {access.EVENTS, access.EVICTION})


def test_sidecar_runs_with_the_example_role(k8s_lane: Lane, tmp_path: Path) -> None:
    """The sidecar has no chart: its Role is deploy/examples/sidecar-pod.yaml's, created in a
    namespace of its own with the pod, and the sidecar's code runs with its token."""
    docs = [d for d in yaml.safe_load_all(SIDECAR_EXAMPLE.read_text()) if d]
    ns = f"sidecar-{uuid.uuid4().hex[:6]}"
    manifests = []
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = ns
        else:
            doc["metadata"]["namespace"] = ns
        for subject in doc.get("subjects", []):
            subject["namespace"] = ns
        manifests.append(Manifest(yaml.safe_dump(doc), doc))
    api = Api(k8s_lane)
    # The namespace, then what the pod refers to, then the pod (a dry run needs them stored).
    for kinds in (("Namespace",), ("ServiceAccount", "Role", "RoleBinding", "ConfigMap"), ("Pod",)):
        apply_all(api, [m for m in manifests if m.doc["kind"] in kinds], ns)
    assert {m.doc["kind"] for m in manifests} <= {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Pod",
    }
    (pod,) = [m.doc for m in manifests if m.doc["kind"] == "Pod"]
    (sa,) = [m.doc["metadata"]["name"] for m in manifests if m.doc["kind"] == "ServiceAccount"]
    uid = k8s_lane.client.get(Pod, pod["metadata"]["name"], namespace=ns).metadata.uid
    kube = in_cluster_client(k8s_lane, ns, sa, tmp_path / "sa")
    seen: list[tuple[str, str, int]] = []
    record_requests(kube, seen)
    d = Deployed(k8s_lane, ns, sa, kube, [])
    d.seen = seen
    src = SidecarSource(pod_uid=uid, pod_name=pod["metadata"]["name"], pod_namespace=ns, kube=kube)
    src.start()
    try:
        assert src.cache is not None, "the sidecar could not read its own pod"
        annotate(k8s_lane, ns, pod["metadata"]["name"], "lots")
        wait_event_count(k8s_lane, ns, 1)
        annotate(k8s_lane, ns, pod["metadata"]["name"], "more")
        wait_event_count(k8s_lane, ns, 2)
    finally:
        src.close()
        kube.close()
    (cm,) = [m.doc for m in manifests if m.doc["kind"] == "ConfigMap"]
    types = [a["type"] for a in yaml.safe_load(cm["data"]["config.yaml"])["actions"]]
    assert_every_call_made_and_allowed(d, "sidecar", access.grants_of(types))


# ---------------------------------------------------------------- one rule taken out


def without_rule(lane: Lane, role: Doc, resource: str) -> None:
    """The ClusterRole less its rule for ``resource``, replaced in the server."""
    rules = [r for r in role["rules"] if resource not in r["resources"]]
    assert len(rules) == len(role["rules"]) - 1, role["rules"]
    name = role["metadata"]["name"]
    r = lane.admin_http.patch(
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
        json={"rules": rules},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, api_error(r)


def forbidden_of(call: Callable[[], object]) -> Forbidden | None:
    try:
        call()
    except Forbidden as exc:
        return exc
    return None


def test_a_removed_events_rule_gives_an_error_naming_the_call(
    k8s_lane: Lane, deploy_chart: Callable[[str], Deployed], caplog: pytest.LogCaptureFixture
) -> None:
    d = deploy_chart("node")
    work = make_namespace(k8s_lane, "work")
    (role,) = d.roles
    without_rule(k8s_lane, role, "events")

    def post() -> object:
        return d.kube.record_event(
            namespace=work, pod_name="web", pod_uid=str(uuid.uuid4()), reason="R", message="m"
        )

    # The authorizer follows RBAC objects through its informers: a moment after the change.
    exc = wait_for(lambda: forbidden_of(post), 15.0, "the events rule to be gone", poll=0.1)
    text = str(exc)
    assert f"POST {d.kube.server}/api/v1/namespaces/{work}/events: HTTP 403: " in text
    assert (
        f"RBAC does not let ServiceAccount {d.namespace}/{d.sa} create events (apiGroup '') "
        f"in namespace {work!r}; the chart grants it with actions.events=true"
    ) in text

    # The node source meets it as a warning in the log and goes on watching.
    node = f"node-{uuid.uuid4().hex[:6]}"
    make_pod(k8s_lane, work, "bad", node, **{BAD_ANNOTATION: "lots"})
    src = NodeSource(kube=d.kube, node_name=node)
    with caplog.at_level(logging.WARNING, logger="pressured"):
        src.start()
        try:
            assert src.cache is not None and src.cache.running
        finally:
            src.close()
    assert re.search(
        rf"could not post the annotation warning for {work}/bad: .*HTTP 403: .*RBAC does not "
        rf"let ServiceAccount {d.namespace}/{d.sa} create events",
        caplog.text,
    ), caplog.text


def test_a_removed_pods_rule_stops_the_start_with_an_error_naming_the_call(
    k8s_lane: Lane, deploy_chart: Callable[[str], Deployed]
) -> None:
    d = deploy_chart("node")
    (role,) = d.roles
    without_rule(k8s_lane, role, "pods")
    src = NodeSource(kube=d.kube, node_name="node-x")

    exc = wait_for(lambda: forbidden_of(src.start), 15.0, "the pods rule to be gone", poll=0.1)
    src.close()
    assert (
        f"RBAC does not let ServiceAccount {d.namespace}/{d.sa} list pods (apiGroup '') in all "
        "namespaces; the chart grants it with rbac.create=true"
    ) in str(exc)
