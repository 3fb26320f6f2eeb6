"""What a kubelet would do for the end-to-end tests, done by hand against the real API server and
this host's real cgroups (no kubelet can run here).

- ``create_pod``: a pod bound to a node (spec.nodeName set, as the scheduler would), then its
  status patched as a kubelet reports it: phase Running, a pod IP, containerStatuses with
  ``containerd://<id>`` container IDs.
- ``Kubepods``: the cgroupfs driver's tree, ``kubepods/burstable/pod<uid>/<id>``, made under this
  process's own memory cgroup (the real kernel: limits, usage, OOM kills), one child per
  container, with real processes started in it.
- ``chart_kubeconfig``: the daemon's credentials, a token of the chart's own ServiceAccount
  (TokenRequest API) bound to the rules the chart renders for node mode.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import codecs
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from tests.k8s_real.conftest import ROOT, Lane, api_error
from tests.support.cgroups import Child, own_memory_cgroup

NODE = "pressured-e2e-node"
CHART = ROOT / "charts" / "pressured"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def new_namespace(lane: Lane, prefix: str) -> str:
    """A namespace with its default ServiceAccount (no controller-manager makes it here, and
    the ServiceAccount admission plugin refuses pods without it). Never deleted: nothing would
    finalize it, and the lane is thrown away with the session."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    lane.client.create(Namespace(metadata=ObjectMeta(name=name)))
    lane.client.create(ServiceAccount(metadata=ObjectMeta(name="default")), namespace=name)
    return name


def container_id() -> str:
    return secrets.token_hex(32)


@dataclass(frozen=True)
class Container:
    name: str
    limit_bytes: int
    id: str


def create_pod(
    lane: Lane,
    namespace: str,
    name: str,
    containers: Sequence[Container],
    *,
    node: str = NODE,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod bound to ``node`` and reported Running with each container's ID; the stored pod."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": annotations or {},
            "labels": labels or {},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": c.name,
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {"memory": str(c.limit_bytes)}},
                }
                for c in containers
            ],
        },
    }
    http = lane.admin_http
    r = http.post(f"/api/v1/namespaces/{namespace}/pods", json=body)
    assert r.status_code == 201, api_error(r)
    return report_running(lane, namespace, name, containers)


def report_running(
    lane: Lane,
    namespace: str,
    name: str,
    containers: Sequence[Container],
    *,
    pod_ip: str = "10.244.0.17",
) -> dict[str, Any]:
    """What a kubelet reports of a started pod: Running and Ready, its IP, each container's
    ID; the stored pod."""
    status = {
        "status": {
            "phase": "Running",
            "podIP": pod_ip,
            "hostIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": c.name,
                    "image": "registry.k8s.io/pause:3.10",
                    "imageID": "",
                    "containerID": f"containerd://{c.id}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
                for c in containers
            ],
        }
    }
    r = lane.admin_http.patch(
        f"/api/v1/namespaces/{namespace}/pods/{name}/status", json=status, headers=MERGE_PATCH
    )
    assert r.status_code == 200, api_error(r)
    pod: dict[str, Any] = r.json()
    return pod


def patch_annotations(lane: Lane, namespace: str, name: str, annotations: dict[str, Any]) -> None:
    r = lane.admin_http.patch(
        f"/api/v1/namespaces/{namespace}/pods/{name}",
        json={"metadata": {"annotations": annotations}},
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)


def pod_events(
    lane: Lane, namespace: str, uid: str, reason: str | None = None
) -> list[dict[str, Any]]:
    """core/v1 Events whose involvedObject is the pod ``uid`` (and of ``reason``)."""
    selector = f"involvedObject.uid={uid}" + (f",reason={reason}" if reason else "")
    r = lane.admin_http.get(
        f"/api/v1/namespaces/{namespace}/events", params={"fieldSelector": selector}
    )
    assert r.status_code == 200, api_error(r)
    items: list[dict[str, Any]] = r.json()["items"]
    return items


class Kubepods:
    """kubepods/burstable/pod<uid>/<container id> cgroups (cgroupfs driver) under this
    process's memory cgroup, below ``base``: the directory the daemon's source.cgroup.path
    names."""

    def __init__(self, name: str) -> None:
        own, why = own_memory_cgroup()
        if own is None:
            pytest.skip(f"no writable memory cgroup here: {why}")
        self.name = name
        self.base = str(Path(own) / name)
        self.children: list[Child] = []

    def container(self, pod_uid: str, c: Container) -> Child:
        child = Child(f"{self.name}/kubepods/burstable/pod{pod_uid}/{c.id}", c.limit_bytes)
        self.children.append(child)
        return child

    def remove(self) -> None:
        for child in reversed(self.children):
            child.remove()
        self.children.clear()


def chart_kubeconfig(lane: Lane, path: Path, *, mode: str = "node", eviction: bool = False) -> Path:
    """A kubeconfig whose user is a token of the chart's own ServiceAccount, with the
    ClusterRole and binding `helm template` renders for ``mode`` (Events on; the evict action's
    rule when ``eviction``) applied to the lane. Each call is a release of its own."""
    release = f"e2e{uuid.uuid4().hex[:6]}"
    namespace = new_namespace(lane, "pressured")
    rendered = lane.helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        f"mode={mode}",
        "--set",
        "actions.events=true",
        "--set",
        f"actions.eviction={str(eviction).lower()}",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ).stdout
    sa_name = ""
    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        if doc["kind"] == "ServiceAccount":
            sa_name = doc["metadata"]["name"]
        lane.client.create(codecs.from_dict(doc), namespace=namespace)
    assert sa_name, rendered
    token = lane.client.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=3600)
        ),
        sa_name,
        namespace=namespace,
    )
    assert token.status is not None
    return token_kubeconfig(lane, path, token.status.token)


def token_kubeconfig(lane: Lane, path: Path, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lane",
                "cluster": {
                    "server": lane.server,
                    "certificate-authority": str(lane.pki / "ca.crt"),
                },
            }
        ],
        "users": [{"name": "pressured", "user": {"token": token}}],
        "contexts": [{"name": "lane", "context": {"cluster": "lane", "user": "pressured"}}],
        "current-context": "lane",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def daemon_config(
    path: Path,
    *,
    mode: str,
    cgroup_path: str,
    kubeconfig: Path,
    actions: list[dict[str, Any]],
    kubernetes: dict[str, str] | None = None,
    thresholds: dict[str, Any] | None = None,
) -> Path:
    config = {
        "source": {"mode": mode, "cgroup": {"path": cgroup_path}},
        "kubernetes": {"kubeconfig": str(kubeconfig), **(kubernetes or {})},
        "thresholds": {"metric": "usage", "warn_percent": 60, "critical_percent": 80}
        | (thresholds or {}),
        "actions": actions,
        "metrics": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def hold_argv(mib: int) -> list[str]:
    """A process that touches ``mib`` MiB once and then sleeps (pressured.demo.leaker --hold)."""
    from tests.support.cgroups import leaker_argv

    return leaker_argv("--rate-mib", str(mib * 8), "--max-mib", str(mib), "--hold")


def wait_process_ready(proc: subprocess.Popen[str]) -> None:
    """Until the leaker says READY on stdout (its handlers are in, it is in its cgroup)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", line
