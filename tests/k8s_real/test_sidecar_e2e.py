"""Sidecar mode against the real API server: `pressured run` in a pod's own container cgroup.

The pod ("web": app, envoy and the pressured sidecar) is a real API object with its status
patched as a kubelet reports it; its cgroups are made on this host under
kubepods/burstable/pod<uid>/, with a sandbox (pause) directory beside the containers, as the
runtime makes one. The daemon is started inside the sidecar container's cgroup and told its pod
by the Downward API variables (POD_UID, POD_NAME, POD_NAMESPACE, NODE_NAME); its credentials are
a ServiceAccount token bound to a Role on pods and Events of its namespace (what a sidecar's
own RBAC grants; the chart deploys node and cluster modes only).

(Cluster mode reads the kubelet's /stats/summary, which no kubelet here can serve: its tests stay
on the loopback fake kubelet, tests/k8s/test_cluster.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from tests.k8s_real.conftest import Lane
from tests.k8s_real.kubelet import (
    NODE,
    Container,
    Kubepods,
    container_id,
    create_pod,
    daemon_config,
    hold_argv,
    new_namespace,
    pod_events,
    token_kubeconfig,
    wait_process_ready,
)
from tests.support.daemon import PressuredProcess, environ
from tests.support.events import kind, read_events, wait_for_events
from tests.support.wait import wait_for

pytestmark = [pytest.mark.k8s_real, pytest.mark.kernel]
MiB = 1 << 20


def sidecar_kubeconfig(lane: Lane, ns: str, path: Path) -> Path:
    """A token of ServiceAccount ``pressured`` in ``ns``, bound to a Role on pods (get, list,
    watch) and Events (create, patch) there."""
    client = lane.client
    client.create(ServiceAccount(metadata=ObjectMeta(name="pressured")), namespace=ns)
    client.create(
        Role(
            metadata=ObjectMeta(name="pressured-sidecar"),
            rules=[
                PolicyRule(apiGroups=[""], resources=["pods"], verbs=["get", "list", "watch"]),
                PolicyRule(apiGroups=[""], resources=["events"], verbs=["create", "patch"]),
            ],
        ),
        namespace=ns,
    )
    client.create(
        RoleBinding(
            metadata=ObjectMeta(name="pressured-sidecar"),
            roleRef=RoleRef(
                apiGroup="rbac.authorization.k8s.io", kind="Role", name="pressured-sidecar"
            ),
            subjects=[Subject(kind="ServiceAccount", name="pressured", namespace=ns)],
        ),
        namespace=ns,
    )
    token = client.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=3600)
        ),
        "pressured",
        namespace=ns,
    )
    assert token.status is not None
    return token_kubeconfig(lane, path, token.status.token)


def test_sidecar_names_each_container_of_its_own_pod(
    k8s_lane: Lane, kubepods: Kubepods, tmp_path: Path
) -> None:
    ns = new_namespace(k8s_lane, "sidecar")
    app = Container("app", 128 * MiB, container_id())
    envoy = Container("envoy", 96 * MiB, container_id())
    sidecar = Container("pressured", 512 * MiB, container_id())
    pod = create_pod(
        k8s_lane,
        ns,
        "web",
        [app, envoy, sidecar],
        annotations={"pressured.io/warn-percent": "5"},
    )
    uid = pod["metadata"]["uid"]
    sandbox = Container("sandbox", 64 * MiB, container_id())  # in no containerStatuses
    cgroups = {c.name: kubepods.container(uid, c) for c in (app, envoy, sidecar, sandbox)}
    for name in ("app", "envoy", "sandbox"):
        wait_process_ready(cgroups[name].spawn(hold_argv(16), stdout=-1, text=True))

    cfg = daemon_config(
        tmp_path / "pressured.yaml",
        mode="sidecar",
        cgroup_path=kubepods.base,
        kubeconfig=sidecar_kubeconfig(k8s_lane, ns, tmp_path / "kubeconfig"),
        actions=[{"type": "log"}, {"type": "k8s-event"}],
    )
    events_out = tmp_path / "events.jsonl"
    env = environ(POD_UID=uid, POD_NAME="web", POD_NAMESPACE=ns, NODE_NAME=NODE)
    # The daemon moves itself into the sidecar container's cgroup before it starts, as the
    # runtime would have put it there.
    enter = cgroups["pressured"].entering()
    args = ["run", "-c", str(cfg), "--events-out", str(events_out)]
    with PressuredProcess(args, env=env, wrapper=enter) as daemon:
        daemon.wait_ready()

        def both(docs: list[dict[str, Any]]) -> bool:
            return {d.get("container_name") for d in docs if kind(d) == "warn"} >= {"app", "envoy"}

        docs = wait_for_events(events_out, both, 30)

        def posted() -> set[str]:
            events = pod_events(k8s_lane, ns, uid, "MemoryPressureWarning")
            return {e["involvedObject"].get("fieldPath") for e in events}

        reasons = wait_for(lambda: len(posted()) >= 2 and posted(), 30, "both Events")
        assert daemon.stop() == 0
    warned = {d["container_name"]: d for d in read_events(events_out) if kind(d) == "warn"}
    assert set(warned) == {"app", "envoy"}, docs  # not the sandbox, not the sidecar itself
    for name, c in (("app", app), ("envoy", envoy)):
        d = warned[name]
        assert (d["namespace"], d["pod_name"], d["pod_uid"], d["node_name"]) == (
            ns,
            "web",
            uid,
            NODE,
        ), d
        assert d["limit_bytes"] == c.limit_bytes, d
        assert d["cgroup"] == cgroups[name].path and d["cgroup"].endswith(c.id), d
    assert reasons == {"spec.containers{app}", "spec.containers{envoy}"}, reasons
    assert "Traceback" not in daemon.stderr.text()
