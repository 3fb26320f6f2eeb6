"""The table of API calls per mode (pressured/k8s/access.py) against the code that makes them,
and the error a refused (403) call gives.

The chart's rules are compared with the table by real helm in tests/k8s_real/test_chart_rbac.py,
and a real run's requests with it there too; here the code itself is read: every call of a
KubeClient request method in the modules each mode runs is in that mode's table, and the
table lists nothing the code does not call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pressured.k8s import access
from pressured.k8s.access import CALLS, EVENTS, EVICTION, calls, grants_of, request_of
from pressured.k8s.client import KubeClient

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "pressured"
# What runs in each mode and may talk to the API server: its source, the pod helpers, the pod
# cache, and the two actions that call the API (available in every mode with a client).
SHARED = ["sources/pod.py", "actions/k8s_event.py", "actions/evict.py"]
MODE_MODULES = {
    "node": ["sources/node.py", "k8s/podcache.py", *SHARED],
    "cluster": ["sources/cluster.py", *SHARED],
    "sidecar": ["sources/sidecar.py", "k8s/podcache.py", *SHARED],
}
DAEMON_PACKAGES = ("sources", "actions", "k8s", "daemon", "kills")


def request_methods() -> set[str]:
    """KubeClient's methods that send a request: those whose body enters ``self._calling``."""
    tree = ast.parse((PKG / "k8s" / "client.py").read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeClient"]
    out = set()
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
            continue
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_calling"
            ):
                out.add(fn.name)
    return out


def called(path: Path, methods: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in methods
    }


def test_request_methods_are_found() -> None:
    methods = request_methods()
    assert {"list_pods", "watch_pods", "record_event", "evict", "node_summary"} <= methods
    assert all(callable(getattr(KubeClient, m)) for m in methods)


@pytest.mark.parametrize("mode", sorted(MODE_MODULES))
def test_each_mode_table_is_what_its_modules_call(mode: str) -> None:
    methods = request_methods()
    used = set().union(*(called(PKG / m, methods) for m in MODE_MODULES[mode]))
    assert used == {c.method for c in CALLS[mode]}


def test_no_other_daemon_module_calls_the_api() -> None:
    """A new caller must join a mode's modules above, and its calls the table."""
    methods = request_methods()
    listed = {PKG / m for ms in MODE_MODULES.values() for m in ms} | {
        PKG / "k8s" / "client.py",
        PKG / VIEWER_MODULE,
    }
    strays = {
        str(path.relative_to(ROOT)): sorted(found)
        for package in DAEMON_PACKAGES
        for path in sorted((PKG / package).rglob("*.py"))
        if path not in listed and (found := called(path, methods))
    }
    assert strays == {}


VIEWER_MODULE = "k8s/cluster_view.py"
"""`pressured diagnose --cluster`: a person's calls, not a mode's (access.VIEWER_CALLS)."""


def test_the_viewer_calls_are_the_cluster_views() -> None:
    used = called(PKG / VIEWER_MODULE, request_methods())
    assert used == {c.method for c in access.VIEWER_CALLS}
    # a Role in the release namespace grants them: every one is asked inside it
    assert all(c.namespaced and c.grant == access.VIEWER for c in access.VIEWER_CALLS)


def test_modes_are_the_daemons_kubernetes_modes() -> None:
    assert set(CALLS) == set(MODE_MODULES) == {"node", "cluster", "sidecar"}


def test_calls_by_grant() -> None:
    node_min = {(c.verb, c.rbac_resource) for c in calls("node")}
    assert node_min == {("list", "pods"), ("watch", "pods")}
    node_all = {(c.verb, c.rbac_resource) for c in calls("node", {EVENTS, EVICTION})}
    assert node_all - node_min == {
        ("create", "events"),
        ("patch", "events"),
        ("create", "pods/eviction"),
    }
    assert grants_of(["log", "k8s-event"]) == {EVENTS}
    assert grants_of(["evict", "webhook"]) == {EVICTION}
    # The sidecar asks only inside its own namespace: a Role is enough.
    assert all(c.namespaced for c in CALLS["sidecar"])
    assert not any(c.namespaced for c in CALLS["node"] + CALLS["cluster"])


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "https://h/api/v1/pods?fieldSelector=x", ("list", "", "pods", "", None, None)),
        ("WATCH", "https://h/api/v1/pods?watch=true", ("watch", "", "pods", "", None, None)),
        ("GET", "https://h/api/v1/pods?watch=1", ("watch", "", "pods", "", None, None)),
        (
            "GET",
            "https://h/api/v1/namespaces/shop/pods/web",
            ("get", "", "pods", "", "shop", "web"),
        ),
        (
            "POST",
            "https://h/api/v1/namespaces/shop/pods/web/eviction",
            ("create", "", "pods", "eviction", "shop", "web"),
        ),
        (
            "PATCH",
            "https://h/api/v1/namespaces/shop/events/e1",
            ("patch", "", "events", "", "shop", "e1"),
        ),
        (
            "GET",
            "https://h/api/v1/nodes/n1/proxy/stats/summary",
            ("get", "", "nodes", "proxy", None, "n1"),
        ),
        (
            "DELETE",
            "https://h/apis/apps/v1/namespaces/x/deployments",
            ("deletecollection", "apps", "deployments", "", "x", None),
        ),
        ("GET", "https://h/api/v1/namespaces/shop", ("get", "", "namespaces", "", None, "shop")),
    ],
)
def test_request_of_reads_a_request_as_the_authorizer_does(
    method: str, url: str, expected: tuple[object, ...]
) -> None:
    req = request_of(method, url)
    assert req is not None
    got = (req.verb, req.group, req.resource, req.subresource, req.namespace, req.name)
    assert got == expected


def test_request_of_a_non_resource_path_is_none() -> None:
    assert request_of("GET", "https://h/version") is None
    assert request_of("GET", "https://h/healthz") is None


def test_a_403_of_a_user_on_a_cluster_scoped_call() -> None:
    """A person's credentials (not a ServiceAccount's) on a cluster-scoped call; the real
    server's 403s to a ServiceAccount are in tests/k8s_real (test_chart_rbac, test_parts)."""
    text = access.forbidden_message(
        "GET https://h/api/v1/nodes/node-1/proxy/stats/summary",
        'nodes "node-1" is forbidden: User "alice" ...',
    )
    assert "RBAC does not let user 'alice' get nodes/proxy (apiGroup '') at cluster scope" in text


def test_a_403_without_a_user_in_the_reply_still_names_the_call() -> None:
    text = access.forbidden_message("WATCH https://h/api/v1/pods?watch=true", "no")
    assert "RBAC does not let these credentials watch pods (apiGroup '') in all namespaces" in text
