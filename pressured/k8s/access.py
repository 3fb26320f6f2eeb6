"""Every request pressured makes of the API server, per mode: the one table its RBAC follows.

Each ``ApiCall`` is one (verb, apiGroup, resource, subresource) that a ``KubeClient`` method
sends, with whether the request is made inside one namespace (a Role there could grant it) or
across namespaces or at cluster scope (only a ClusterRole can), and the chart value that grants
it when it is not always needed. ``CALLS`` lists, per mode, every call the code of that mode
makes. The chart's Role rules are checked against it (sufficient: every call granted; least:
nothing else), and so are the requests a real run sends (tests/k8s_real/test_chart_rbac.py).

``request_of`` reads back (verb, group, resource, subresource, namespace) from a request the
way the API server's own RequestInfo does, so that a refusal (403) can name what was refused
and by which grant it would be allowed (``forbidden_message``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlsplit

from pressured.errors import quote

ALWAYS: Final = ""
"""``ApiCall.grant`` of a call the mode always makes: the chart's Role has it unconditionally."""
EVENTS: Final = "actions.events"
EVICTION: Final = "actions.eviction"


@dataclass(frozen=True)
class ApiCall:
    method: str
    """The KubeClient method that sends it."""
    verb: str
    resource: str
    subresource: str = ""
    group: str = ""
    namespaced: bool = False
    """True when the request names one namespace, the watcher's own, so a Role there grants
    it; False when it spans namespaces or is cluster-scoped (a ClusterRole is needed)."""
    grant: str = ALWAYS
    """The chart value that grants it (``actions.events``...), or ALWAYS."""
    why: str = ""

    @property
    def rbac_resource(self) -> str:
        """The resource as an RBAC rule names it: ``pods``, ``pods/eviction``."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_EVENT_WHY = (
    "the k8s-event action (an Event, then a patch of its count on repeats), and the "
    "InvalidPressuredAnnotation warning (without the grant it is only logged)"
)


def _events(namespaced: bool) -> tuple[ApiCall, ...]:
    return tuple(
        ApiCall("record_event", verb, "events", namespaced=namespaced, grant=EVENTS, why=_EVENT_WHY)
        for verb in ("create", "patch")
    )


def _evict(namespaced: bool) -> ApiCall:
    return ApiCall(
        "evict",
        "create",
        "pods",
        "eviction",
        namespaced=namespaced,
        grant=EVICTION,
        why="the evict action (policy/v1 Eviction, which honours PodDisruptionBudgets)",
    )


CALLS: Final[dict[str, tuple[ApiCall, ...]]] = {
    "node": (
        ApiCall("list_pods", "list", "pods", why="the pods of this node (spec.nodeName)"),
        ApiCall("watch_pods", "watch", "pods", why="...kept current by one watch"),
        *_events(namespaced=False),
        _evict(namespaced=False),
    ),
    "cluster": (
        ApiCall("list_pods", "list", "pods", why="every pod: names, limits, annotations, status"),
        ApiCall(
            "node_summary",
            "get",
            "nodes",
            "proxy",
            why="each kubelet's /stats/summary through the API server",
        ),
        ApiCall("list_events", "list", "events", why="the kubelet's OOMKilling Events"),
        *_events(namespaced=False),
        _evict(namespaced=False),
    ),
    "sidecar": (
        ApiCall("list_pods", "list", "pods", namespaced=True, why="its own pod (metadata.name)"),
        ApiCall("watch_pods", "watch", "pods", namespaced=True, why="...kept current"),
        *_events(namespaced=True),
        _evict(namespaced=True),
    ),
}

MODES: Final = tuple(CALLS)

VIEWER: Final = "viewer.subjects"
VIEWER_CALLS: Final = (
    ApiCall(
        "list_pods",
        "list",
        "pods",
        namespaced=True,
        grant=VIEWER,
        why="`pressured diagnose --cluster`: the pressured pods of the namespace (by label)",
    ),
    ApiCall(
        "pod_proxy_json",
        "get",
        "pods",
        "proxy",
        namespaced=True,
        grant=VIEWER,
        why="...and each one's /v1/state through the API server's pods proxy",
    ),
)
"""The calls of a person running `pressured diagnose --cluster` with their own credentials,
granted by the chart's viewer Role (templates/viewer-rbac.yaml) once bound to them."""

ACTION_GRANTS: Final = {"k8s-event": EVENTS, "evict": EVICTION}
"""The action types whose calls are not always made, and the chart value that grants them."""


def grants_of(action_types: list[str] | set[str]) -> set[str]:
    """The chart values a config with these action types needs (``{"actions.events"}``)."""
    return {ACTION_GRANTS[t] for t in action_types if t in ACTION_GRANTS}


def calls(mode: str, granted: frozenset[str] | set[str] = frozenset()) -> list[ApiCall]:
    """The calls of ``mode`` that a deployment with the chart values ``granted`` (e.g.
    {"actions.events"}) makes and must be allowed."""
    return [c for c in CALLS[mode] if c.grant == ALWAYS or c.grant in granted]


# ---------------------------------------------------------------- reading a request back

_METHOD_VERBS: Final = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str | None
    name: str | None

    @property
    def rbac_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def matches(self, call: ApiCall) -> bool:
        return (self.verb, self.group, self.resource, self.subresource) == (
            call.verb,
            call.group,
            call.resource,
            call.subresource,
        )


def request_of(method: str, url: str) -> Request | None:
    """What the API server's authorizer sees in ``method url`` (WATCH counts as GET with
    ?watch): None for a path that is not a resource (``/version``, ``/healthz``)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2 and segments[0] == "api":
        group, rest = "", segments[2:]
    elif len(segments) >= 3 and segments[0] == "apis":
        group, rest = segments[1], segments[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else ""
    method = method.upper()
    query = parse_qs(parts.query)
    if method == "WATCH" or query.get("watch", [""])[0] in ("true", "1"):
        verb = "watch"
    elif method == "GET":
        verb = "get" if name else "list"
    elif method == "DELETE" and not name:
        verb = "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    return Request(verb, group, resource, subresource, namespace, name)


_USER = re.compile(r'User "([^"]+)"')


def _who(server_message: str) -> str:
    found = _USER.search(server_message)
    if not found:
        return "these credentials"
    user = found.group(1)
    if user.startswith("system:serviceaccount:"):
        namespace, _, name = user.removeprefix("system:serviceaccount:").partition(":")
        return f"ServiceAccount {namespace}/{name}"
    return f"user {user!r}"


def forbidden_message(what: str, server_message: str) -> str:
    """A 403's message: the API server's words, then who may not do what where, and the chart
    value that grants it. ``what`` is "METHOD URL" as KubeClient names its requests."""
    method, _, url = what.partition(" ")
    req = request_of(method, url)
    text = f"{what}: HTTP 403: {quote(server_message, 200)}"
    if req is None:
        return text
    if req.namespace:
        where = f"in namespace {req.namespace!r}"
    elif req.resource in ("nodes", "namespaces"):
        where = "at cluster scope"
    else:
        where = "in all namespaces"
    grants = sorted(
        {c.grant for cs in CALLS.values() for c in cs if req.matches(c) and c.grant != ALWAYS}
    )
    hint = f"{' or '.join(grants)}=true" if grants else "rbac.create=true"
    return (
        f"{text}: RBAC does not let {_who(server_message)} {req.verb} {req.rbac_resource} "
        f"(apiGroup {req.group!r}) {where}; the chart grants it with {hint}"
    )


__all__ = [
    "ACTION_GRANTS",
    "ALWAYS",
    "CALLS",
    "EVENTS",
    "EVICTION",
    "MODES",
    "VIEWER",
    "VIEWER_CALLS",
    "ApiCall",
    "Request",
    "calls",
    "forbidden_message",
    "grants_of",
    "request_of",
]
