"""`pressured diagnose --cluster`: one table for the whole cluster, gathered from the pressured
pods themselves.

Each pressured pod serves its live state read-only at /v1/state on its metrics port
(daemon/state.py). This lists the pressured pods of a namespace by label and reads that
endpoint of each through the API server's pods proxy (``pods/NAME:PORT/proxy``; RBAC: pods list,
pods/proxy get, granted by the chart's viewer Role), so it needs nothing but the user's
kubeconfig: no port-forward, no route to the pod network. A pod that cannot be read is listed
with why; the others still make the table.

The table: every target of every node sorted by headroom (least first), and the kills of the
last ``since`` seconds with the pod, container, victim and how long before the kill pressured
had warned.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from pressured.daemon.state import STATE_PATH
from pressured.errors import KubernetesError, PressuredError
from pressured.k8s.access import VIEWER
from pressured.k8s.client import Forbidden, KubeClient
from pressured.model import parse_time

DEFAULT_SELECTOR: Final = "app.kubernetes.io/name=pressured"
"""The chart's selector label (templates/_helpers.tpl pressured.selectorLabels)."""
DEFAULT_PORT: Final = 9000
PORT_NAME: Final = "metrics"
MAX_PODS: Final = 5000
PARALLEL: Final = 8
"""Pods read at once: the API server proxies each; a large cluster is not read one by one."""


@dataclass
class ClusterView:
    targets: list[dict[str, Any]] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    """One per pressured pod: node, pod, ok, and the error or the daemon's own health."""

    def as_json(self) -> dict[str, Any]:
        return {"targets": self.targets, "kills": self.kills, "nodes": self.nodes}


def metrics_port(pod: Mapping[str, Any], default: int = DEFAULT_PORT) -> int:
    """The pod's container port named ``metrics`` (the API server's proxy wants a number)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return default


def _age_seconds(kill: Mapping[str, Any], now: float) -> float | None:
    t = parse_time(kill.get("time"))
    return None if t is None else max(0.0, now - t)


_CHART_HINT = "; the chart grants it with"


def viewer_hint(exc: Forbidden) -> Forbidden:
    """A refusal of the viewer's calls (access.VIEWER_CALLS): the grant is the viewer Role."""
    text = str(exc).split(_CHART_HINT, 1)[0]
    return Forbidden(
        f"{text}; the chart's viewer Role (templates/viewer-rbac.yaml) grants it once bound "
        f"to you: {VIEWER}, e.g. --set {VIEWER}[0].kind=User,{VIEWER}[0].name=YOU"
    )


def _read_one(
    kube: KubeClient, pod: Mapping[str, Any], port: int | None
) -> tuple[Mapping[str, Any], dict[str, Any] | str]:
    meta = pod.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase != "Running" or not status.get("podIP"):
        return pod, f"not running (phase {phase or 'unknown'}, no pod IP yet)"
    try:
        state = kube.pod_proxy_json(name, namespace, port or metrics_port(pod), STATE_PATH)
    except Forbidden as exc:
        return pod, str(viewer_hint(exc))
    except PressuredError as exc:
        return pod, str(exc)
    if not isinstance(state.get("targets"), list):
        return pod, f"{STATE_PATH}: not a pressured state (no targets list)"
    return pod, state


def gather(
    kube: KubeClient,
    *,
    namespace: str | None = None,
    selector: str = DEFAULT_SELECTOR,
    port: int | None = None,
    since: float = 3600.0,
    now: float | None = None,
) -> ClusterView:
    """Read every pressured pod's state; KubernetesError when the pods cannot be listed."""
    ns = namespace or kube.namespace
    try:
        pods = kube.list_pods(namespace=ns, label_selector=selector).items[:MAX_PODS]
    except Forbidden as exc:
        raise viewer_hint(exc) from exc
    if not pods:
        raise KubernetesError(
            f"no pressured pods in namespace {ns!r} with labels {selector!r} "
            "(--namespace and --selector say where to look)"
        )
    now = time.time() if now is None else now
    view = ClusterView()
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(pods))) as pool:
        results = list(pool.map(lambda p: _read_one(kube, p, port), pods))
    for pod, got in results:
        meta = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        entry: dict[str, Any] = {"node": node, "pod": meta.get("name"), "ok": isinstance(got, dict)}
        if isinstance(got, str):
            entry["error"] = got
            view.nodes.append(entry)
            continue
        node = got.get("node") or node
        entry["node"] = node
        own_raw = got.get("self")
        own = own_raw if isinstance(own_raw, dict) else {}
        entry["degraded"] = list(own.get("degraded") or [])
        view.nodes.append(entry)
        for row in _dicts(got.get("targets")):
            view.targets.append({"node": node, **row})
        view.kills.extend(recent_kills(got, node, since=since, now=now))
    view.targets.sort(key=_headroom_key)
    view.kills.sort(key=lambda k: k["age_seconds"] if k["age_seconds"] is not None else 1e18)
    view.nodes.sort(key=lambda n: (n["ok"], str(n["node"])))
    return view


def recent_kills(
    state: Mapping[str, Any], node: str | None, *, since: float, now: float
) -> list[dict[str, Any]]:
    """The kills of one pod's /v1/state answer no older than ``since`` seconds at ``now``, each
    with its node and age (a kill whose time cannot be read is kept, its age None)."""
    out = []
    for kill in _dicts(state.get("kills")):
        age = _age_seconds(kill, now)
        if age is not None and age > since:
            continue
        out.append({"node": node, **kill, "age_seconds": age})
    return out


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return (x for x in value if isinstance(x, dict)) if isinstance(value, list) else ()


def _headroom_key(row: Mapping[str, Any]) -> tuple[bool, float]:
    h = row.get("headroom_bytes")
    return (not isinstance(h, int | float), float(h) if isinstance(h, int | float) else 0.0)


# --------------------------------------------------------------------------- rendering
def _mib(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v / 1048576:.1f}Mi"


def _num(v: Any, fmt: str) -> str:
    return "-" if not isinstance(v, int | float) else format(v, fmt)


def _who(r: Mapping[str, Any]) -> str:
    if r.get("pod"):
        return f"{r.get('namespace')}/{r['pod']}/{r.get('container') or '-'}"
    return str(r.get("cgroup") or r.get("key") or "-")


def render(view: ClusterView, *, limit: int = 50) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    table = Table(title="pressured diagnose --cluster (sorted by headroom)")
    cols = ("node", "pod/container", "working set", "unreclaimable", "limit", "%", "headroom")
    for col in (*cols, "growth/s", "ETA"):
        table.add_column(col, overflow="fold")
    table.add_column("PSI some/full")
    for r in view.targets[:limit]:
        pct = r.get("percent")
        style = None
        if isinstance(pct, int | float):
            style = "red" if pct >= 85 else "yellow" if pct >= 70 else None
        psi = "-"
        if isinstance(r.get("psi_some_avg10"), int | float):
            psi = f"{r['psi_some_avg10']:.2f}/{_num(r.get('psi_full_avg10'), '.2f')}"
        table.add_row(
            str(r.get("node") or "-"),
            _who(r),
            _mib(r.get("working_set_bytes")),
            _mib(r.get("unreclaimable_bytes")),
            _mib(r.get("limit_bytes")),
            _num(pct, ".1f"),
            _mib(r.get("headroom_bytes")),
            _mib(r.get("growth_bytes_per_s")),
            _num(r.get("eta_seconds"), ".0f") + ("s" if r.get("eta_seconds") is not None else ""),
            psi,
            style=style,
        )
    console.print(table)
    if len(view.targets) > limit:
        console.print(f"... and {len(view.targets) - limit} more (--json has them all)")
    kills = Table(title="recent OOM kills")
    for col in ("age", "node", "pod/container", "victim", "warned before"):
        kills.add_column(col, overflow="fold")
    for k in view.kills:
        warned = k.get("warned_seconds_before")
        victim = f"{k.get('victim') or '?'}[{k.get('pid') or '?'}]"
        kills.add_row(
            "-" if k.get("age_seconds") is None else f"{k['age_seconds']:.0f}s ago",
            str(k.get("node") or "-"),
            _who(k),
            victim,
            "unwarned" if not isinstance(warned, int | float) else f"{warned:.1f}s",
            style=None if isinstance(warned, int | float) else "red",
        )
    if view.kills:
        console.print(kills)
    else:
        console.print("no OOM kills in the window")
    for n in view.nodes:
        if not n["ok"]:
            why = f"{n['node'] or '?'} ({n['pod']}): not read: {n['error']}"
            console.print(why, style="red", markup=False)
        elif n.get("degraded"):
            console.print(
                f"{n['node']} ({n['pod']}): degraded: {'; '.join(n['degraded'])}",
                style="yellow",
                markup=False,
            )
