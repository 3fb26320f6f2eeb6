"""`pressured diagnose --cluster` against the real API server, with two real `pressured run`
processes in node mode standing in for the pressured pods of two nodes.

No kubelet runs in the lane, so what a kubelet would do is done here: a workload pod per node,
bound to it, its status patched to Running with its container's id, and that container's cgroup
made the way the kubelet's cgroupfs driver names it (kubepods/burstable/pod<uid>/<id>, a real
v1 memory cgroup with a real limit); each daemon finds its node's pods through the API server and
names its target after the pod. The pressured pods are registered the same way, Running with a
pod IP. The API server's
pods proxy dials ``status.podIP`` and refuses any address that is not global unicast
(loopback 127.0.0.0/8 and link-local are "address not allowed"), so each stand-in node gets a
private address of its own on the loopback interface (ip addr add 10.250.N.1/32 dev lo),
removed afterwards; the daemons listen on every address. The user is a ServiceAccount bound by
the chart's own viewer-rbac.yaml and nothing else: the Role the chart ships is what is proved
sufficient. One node's cgroup leaks into a real OOM kill, after pressured warned; that node's
daemon is then killed and started again on the same state_dir, and the kill is still listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from lightkube.types import PatchType

from pressured.k8s.access import VIEWER_CALLS
from tests.k8s_real.conftest import FIELD_MANAGER, ROOT, Lane, api_error
from tests.support.cgroups import leaker_argv, own_memory_cgroup
from tests.support.daemon import PressuredProcess, environ
from tests.support.wait import wait_for

pytestmark = pytest.mark.k8s_real

MiB = 1024 * 1024
CHART = ROOT / "charts" / "pressured"
NODES = {"node-a": "10.250.17.1", "node-b": "10.250.18.1"}
"""Stand-in node -> its pod's IP, added to lo for the test."""


@pytest.fixture
def node_addresses() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("adding addresses to lo needs root")
    ip = shutil.which("ip")
    if ip is None:
        pytest.fail("no `ip` command (iproute2): scripts/bootstrap --dev installs it")
    added: list[str] = []
    try:
        for addr in NODES.values():
            have = subprocess.run(
                [ip, "-o", "addr", "show", "to", addr], capture_output=True, check=False
            )
            if have.stdout.strip():
                pytest.fail(f"{addr} is already on this host; the test needs it free")
            subprocess.run([ip, "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
            added.append(addr)
        yield NODES
    finally:
        for addr in added:
            subprocess.run([ip, "addr", "del", f"{addr}/32", "dev", "lo"], check=False)


@dataclass
class NodeTree:
    """<own memory cgroup>/pressured-view-PID-NODE/kubepods/burstable/pod<uid>/<id>: the
    cgroups a node's kubelet would make for one container, with a real limit."""

    base: Path
    container: Path


@pytest.fixture
def node_trees() -> Iterator[Callable[[str, str, str, int], NodeTree]]:
    own, why = own_memory_cgroup()
    if own is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    if os.path.exists(os.path.join(own, "cgroup.controllers")):
        pytest.skip("the kubepods tree is built on the hybrid host's v1 memory hierarchy")
    made: list[Path] = []

    def make(node: str, uid: str, container_id: str, limit: int) -> NodeTree:
        base = Path(own) / f"pressured-view-{os.getpid()}-{node}"
        path = base
        for part in ("", "kubepods", "burstable", f"pod{uid}", container_id):
            path = path / part if part else path
            if not path.is_dir():
                path.mkdir()
                made.append(path)
        (path / "memory.limit_in_bytes").write_text(str(limit))
        return NodeTree(base, path)

    try:
        yield make
    finally:
        for path in reversed(made):
            _empty_and_remove(path)


def _empty_and_remove(path: Path) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


# moves itself into the cgroup directory argv[1], then execs the rest of its arguments
ENTER = (
    "import os,sys\n"
    "with open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w') as f: f.write(str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def _workload(lane: Lane, ns: str, node: str, name: str) -> tuple[str, str]:
    """A pod of ``node`` with one container "app", Running as its kubelet would report it;
    (its uid, the container's id)."""
    pod = lane.client.create(
        Pod.from_dict(
            {
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "app", "image": "shop/app:1"}],
                },
            }
        ),
        namespace=ns,
    )
    assert pod.metadata is not None and pod.metadata.uid is not None
    container_id = secrets.token_hex(32)
    lane.client.patch(
        Pod.Status,
        name,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [_running("app", "shop/app:1", container_id)],
            }
        },
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    return pod.metadata.uid, container_id


def _port_of(daemon: PressuredProcess) -> int:
    m = daemon.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics")
    return int(m.group(1))


def _state(port: int) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}/v1/state", timeout=10, trust_env=False)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _register_pod(lane: Lane, ns: str, node: str, ip: str, port: int) -> tuple[str, str]:
    """The pressured pod of ``node`` as the kubelet would leave it: bound, Running, an IP, its
    container's id; (its uid, that id)."""
    name = f"pressured-{node}"
    pod = Pod.from_dict(
        {
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/name": "pressured",
                    "app.kubernetes.io/instance": "t",
                },
            },
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "pressured",
                        "image": "pressured:test",
                        "ports": [{"name": "metrics", "containerPort": port}],
                    }
                ],
            },
        }
    )
    created = lane.client.create(pod, namespace=ns)
    assert created.metadata is not None and created.metadata.uid is not None
    container_id = secrets.token_hex(32)
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": ip,
        "containerStatuses": [_running("pressured", "pressured:test", container_id)],
    }
    lane.client.patch(
        Pod.Status, name, {"status": status}, namespace=ns, patch_type=PatchType.MERGE
    )
    return created.metadata.uid, container_id


def _running(name: str, image: str, container_id: str) -> dict[str, Any]:
    return {
        "name": name,
        "containerID": f"containerd://{container_id}",
        "image": image,
        "imageID": "",
        "ready": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
    }


def _apply_viewer_rbac(lane: Lane, ns: str, subject: str) -> None:
    """The chart's viewer-rbac.yaml, rendered by helm for this namespace, created as is."""
    rendered = lane.helm(
        "template",
        "t",
        str(CHART),
        "--namespace",
        ns,
        "--show-only",
        "templates/viewer-rbac.yaml",
        "--set",
        f"viewer.subjects[0].kind=ServiceAccount,viewer.subjects[0].name={subject}",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding"], rendered
    for doc in docs:
        plural = "roles" if doc["kind"] == "Role" else "rolebindings"
        r = lane.admin_http.post(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}",
            params={"fieldValidation": "Strict", "fieldManager": FIELD_MANAGER},
            json=doc,
        )
        assert r.status_code == 201, api_error(r)


def _kubeconfig_for(lane: Lane, ns: str, account: str, path: Path) -> Path:
    lane.client.create(ServiceAccount(metadata=ObjectMeta(name=account)), namespace=ns)
    req = lane.client.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=3600)
        ),
        name=account,
        namespace=ns,
    )
    assert req.status is not None
    path.write_text(
        yaml.safe_dump(
            {
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
                "users": [{"name": account, "user": {"token": req.status.token}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "lane", "user": account, "namespace": ns}}
                ],
                "current-context": "c",
            }
        )
    )
    return path


def _diagnose(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = environ(KUBECONFIG=str(kubeconfig), COLUMNS="200")
    for var in ("KUBERNETES_SERVICE_HOST", "PRESSURED_CONFIG"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "pressured", "diagnose", "--cluster", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cluster_view_through_the_pods_proxy(
    k8s_lane: Lane,
    node_addresses: dict[str, str],
    node_trees: Callable[[str, str, str, int], NodeTree],
    tmp_path: Path,
) -> None:
    ns = f"pressured-view-{uuid.uuid4().hex[:6]}"
    shop = f"shop-{uuid.uuid4().hex[:6]}"
    for name in (ns, shop):
        k8s_lane.client.create(Namespace(metadata=ObjectMeta(name=name)))
        # the ServiceAccount admission plugin wants the default account (no controller makes it)
        k8s_lane.client.create(ServiceAccount(metadata=ObjectMeta(name="default")), namespace=name)

    # one workload pod on each node, its container's cgroup as the kubelet would make it; and
    # the pressured pods, node-b's daemon running inside its own pod's container cgroup
    ports = {node: _free_port() for node in node_addresses}
    trees: dict[str, NodeTree] = {}
    for node, limit in (("node-a", 64 * MiB), ("node-b", 256 * MiB)):
        uid, container_id = _workload(k8s_lane, shop, node, f"web-{node[-1]}")
        trees[node] = node_trees(node, uid, container_id, limit)
    own: dict[str, tuple[str, NodeTree]] = {}
    for node, ip in node_addresses.items():
        uid, container_id = _register_pod(k8s_lane, ns, node, ip, ports[node])
        own[node] = (uid, node_trees(node, uid, container_id, 512 * MiB))
    with contextlib.ExitStack() as stack:
        daemons: dict[str, PressuredProcess] = {}

        def start(node: str) -> PressuredProcess:
            """The node's daemon, on its own state_dir (the chart's host directory)."""
            cfg = tmp_path / f"{node}.yaml"
            cfg.write_text(
                f"source: {{mode: node, cgroup: {{path: {trees[node].base}}}}}\n"
                f"kubernetes: {{node_name: {node}, kubeconfig: {k8s_lane.kubeconfig}}}\n"
                "thresholds: {warn_percent: 50, critical_percent: 75, metric: usage}\n"
                "actions: [{type: log}]\n"
                f"state_dir: {tmp_path / f'{node}-state'}\n"
            )
            args = ["run", "-c", str(cfg), "--metrics-port", str(ports[node])]
            args += ["--events-out", str(tmp_path / f"{node}.jsonl")]
            uid, own_tree = own[node]
            wrapper = (sys.executable, "-c", ENTER, str(own_tree.container))
            daemon = stack.enter_context(
                PressuredProcess(args, env=environ(POD_UID=uid), wrapper=wrapper)
            )
            daemon.wait_ready()
            return daemon

        for node in trees:
            daemons[node] = start(node)
        wait_for(
            lambda: all(
                {t["pod"] for t in _state(port)["targets"]} >= {f"web-{node[-1]}"}
                for node, port in ports.items()
            ),
            30,
            "each node's workload named after its pod",
        )
        for node, daemon in daemons.items():
            daemon.wait_for_log(r"own cgroup: .*\(this pod's container\)")
            mine = _state(ports[node])["self"]
            assert mine["cgroup"] == str(own[node][1].container), mine
            assert mine["limit_bytes"] == 512 * MiB, mine
        victim = subprocess.Popen(
            [
                sys.executable,
                "-c",
                ENTER,
                str(trees["node-a"].container),
                *leaker_argv("--rate-mib", "16", "--max-mib", "400"),
            ]
        )
        assert victim.wait(timeout=60) == -9, "the leak should end in a real OOM kill"
        wait_for(lambda: _state(ports["node-a"])["kills"], 30, "the kill in node-a's state")

        # a third node's pressured pod, still Pending (no kubelet took it): listed, not read
        k8s_lane.client.create(
            Pod.from_dict(
                {
                    "metadata": {
                        "name": "pressured-node-c",
                        "labels": {"app.kubernetes.io/name": "pressured"},
                    },
                    "spec": {
                        "nodeName": "node-c",
                        "automountServiceAccountToken": False,
                        "containers": [{"name": "pressured", "image": "pressured:test"}],
                    },
                }
            ),
            namespace=ns,
        )
        _apply_viewer_rbac(k8s_lane, ns, "sre")
        viewer = _kubeconfig_for(k8s_lane, ns, "sre", tmp_path / "viewer.kubeconfig")

        done = _diagnose(viewer, "--json", "--since", "10m")
        assert done.returncode == 0, done.stderr
        view = json.loads(done.stdout)
        # the table as a person sees it
        shown = _diagnose(viewer, "--since", "10m")

        # node-a's daemon dies (SIGKILL: a crash, its own OOM) and its pod's next one starts on
        # the same state_dir: the kill it had reported is still listed, once
        daemons["node-a"].proc.kill()
        daemons["node-a"].proc.wait()
        daemons["node-a"] = start("node-a")
        daemons["node-a"].wait_for_log(r": 1 earlier kill\(s\) listed at /v1/state")
        restarted = _diagnose(viewer, "--json", "--since", "10m")
        assert restarted.returncode == 0, restarted.stderr
        after_restart = json.loads(restarted.stdout)

    assert {(n["node"], n["ok"]) for n in view["nodes"]} == {
        ("node-a", True),
        ("node-b", True),
        ("node-c", False),
    }, view["nodes"]
    assert all(n["degraded"] == [] for n in view["nodes"] if n["ok"]), view["nodes"]
    (pending,) = [n for n in view["nodes"] if not n["ok"]]
    assert pending["error"].startswith("not running (phase Pending"), pending
    rows = view["targets"]
    who = [(r["node"], r["namespace"], r["pod"], r["container"]) for r in rows]
    # the least headroom first: web-a (64 MiB), web-b (256 MiB), then the two daemons' own
    # containers (512 MiB each, in either order)
    assert who[:2] == [("node-a", shop, "web-a", "app"), ("node-b", shop, "web-b", "app")], who
    assert set(who[2:]) == {
        ("node-a", ns, "pressured-node-a", "pressured"),
        ("node-b", ns, "pressured-node-b", "pressured"),
    }, who
    headrooms = [r["headroom_bytes"] for r in rows]
    assert headrooms == sorted(headrooms)
    assert rows[0]["limit_bytes"] == 64 * MiB and rows[1]["limit_bytes"] == 256 * MiB
    (kill,) = view["kills"]
    assert (kill["node"], kill["namespace"], kill["pod"], kill["container"]) == (
        "node-a",
        shop,
        "web-a",
        "app",
    )
    assert kill["cgroup"] == str(trees["node-a"].container)
    assert kill["victim"].startswith("python")
    assert kill["pid"] == victim.pid
    assert kill["warned_seconds_before"] is not None and kill["warned_seconds_before"] > 0
    assert kill["limit_scope"] == "container", kill

    def without_age(k: dict[str, Any]) -> dict[str, Any]:
        return {f: v for f, v in k.items() if f != "age_seconds"}

    assert [without_age(k) for k in after_restart["kills"]] == [without_age(kill)]
    assert {(n["node"], n["ok"]) for n in after_restart["nodes"]} >= {("node-a", True)}

    assert shown.returncode == 0, shown.stderr
    assert "node-c (pressured-node-c): not read: not running" in shown.stdout, shown.stdout
    assert f"{shop}/web-a/app" in shown.stdout and f"{shop}/web-b/app" in shown.stdout
    assert re.search(r"recent OOM kills", shown.stdout), shown.stdout


def test_cluster_view_without_the_viewer_role_is_refused(k8s_lane: Lane, tmp_path: Path) -> None:
    ns = f"pressured-view-{uuid.uuid4().hex[:6]}"
    k8s_lane.client.create(Namespace(metadata=ObjectMeta(name=ns)))
    stranger = _kubeconfig_for(k8s_lane, ns, "stranger", tmp_path / "stranger.kubeconfig")
    done = _diagnose(stranger, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "HTTP 403" in done.stderr and "list pods" in done.stderr, done.stderr
    assert "the chart's viewer Role" in done.stderr and "viewer.subjects" in done.stderr
    assert "rbac.create" not in done.stderr, "the daemon's grant is not the viewer's"
    assert "Traceback" not in done.stderr


def test_the_pods_proxy_refuses_a_loopback_pod_ip(k8s_lane: Lane) -> None:
    """Why the stand-in nodes get 10.250.x addresses on lo: a pod IP of 127.0.0.1 is refused."""
    ns = f"pressured-view-{uuid.uuid4().hex[:6]}"
    k8s_lane.client.create(Namespace(metadata=ObjectMeta(name=ns)))
    k8s_lane.client.create(ServiceAccount(metadata=ObjectMeta(name="default")), namespace=ns)
    _register_pod(k8s_lane, ns, "node-lo", "127.0.0.1", 9000)
    r = k8s_lane.admin_http.get(f"/api/v1/namespaces/{ns}/pods/pressured-node-lo:9000/proxy/")
    assert r.status_code == 400, api_error(r)
    assert "address not allowed" in api_error(r)


def _viewer_docs(lane: Lane, *sets: str, check: bool = True) -> list[dict[str, Any]]:
    args = ["template", "t", str(CHART), "--namespace", "mon"]
    args += ["--show-only", "templates/viewer-rbac.yaml"]
    for s in sets:
        args += ["--set", s]
    done = lane.helm(*args, check=check)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_viewer_role_by_default_grants_only_what_the_view_reads(k8s_lane: Lane) -> None:
    (role,) = _viewer_docs(k8s_lane)
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "mon"
    grants = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    # exactly what the view's calls need: sufficient and least
    assert grants == {(c.group, c.rbac_resource, c.verb) for c in VIEWER_CALLS}
    assert role["metadata"]["name"] == "t-pressured-viewer"


def test_the_viewer_role_can_be_left_out_and_its_subjects_are_checked(k8s_lane: Lane) -> None:
    with pytest.raises(AssertionError, match="could not find template"):
        _viewer_docs(k8s_lane, "viewer.create=false")
    with pytest.raises(AssertionError, match="/viewer/subjects/0/kind"):
        _viewer_docs(k8s_lane, "viewer.subjects[0].kind=Robot,viewer.subjects[0].name=x")
    docs = _viewer_docs(k8s_lane, "viewer.subjects[0].kind=User,viewer.subjects[0].name=alice")
    binding = docs[1]
    assert binding["subjects"] == [
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
    ]
    assert binding["roleRef"]["name"] == "t-pressured-viewer"


def test_a_namespace_without_pressured_pods_says_where_it_looked(
    k8s_lane: Lane, tmp_path: Path
) -> None:
    ns = f"pressured-view-{uuid.uuid4().hex[:6]}"
    k8s_lane.client.create(Namespace(metadata=ObjectMeta(name=ns)))
    _apply_viewer_rbac(k8s_lane, ns, "sre")
    viewer = _kubeconfig_for(k8s_lane, ns, "sre", tmp_path / "viewer.kubeconfig")
    done = _diagnose(viewer, "--selector", "app=nothing")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"no pressured pods in namespace '{ns}' with labels 'app=nothing'" in done.stderr
