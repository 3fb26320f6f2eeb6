"""Node mode end to end: `pressured run` against the real API server, with real cgroups and
real OOM kills on this host.

The pods are real API objects bound to a test node, their status patched as a kubelet reports
it (tests/k8s_real/kubelet.py); their containers are kubepods-shaped cgroups made on this
host with real processes in them. The daemon runs as a subprocess with a token of the chart's
own ServiceAccount, so every call it makes is one the chart's node-mode rules allow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.k8s_real.conftest import Lane, api_error
from tests.k8s_real.kubelet import (
    NODE,
    Container,
    Kubepods,
    chart_kubeconfig,
    container_id,
    create_pod,
    daemon_config,
    hold_argv,
    new_namespace,
    patch_annotations,
    pod_events,
    wait_process_ready,
)
from tests.support.cgroups import leaker_argv
from tests.support.daemon import running
from tests.support.events import kind, read_events, wait_for_events
from tests.support.wait import wait_for

pytestmark = [pytest.mark.k8s_real, pytest.mark.kernel]
MiB = 1 << 20

EVENT_ACTION: dict[str, Any] = {"type": "k8s-event", "min_interval_seconds": 0}
LOG = {"type": "log"}  # writes the --events-out lines


def one_event(lane: Lane, ns: str, uid: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    """The single Event of ``reason`` on pod ``uid``, once there is one; more than one is a
    failure (repeats must aggregate into it)."""
    events = wait_for(lambda: pod_events(lane, ns, uid, reason), timeout, f"a {reason} Event")
    assert len(events) == 1, events
    event: dict[str, Any] = events[0]
    return event


def kills_of(docs: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The oom_killed events of pod ``uid`` (other kills on this shared host are reported too:
    node mode reports every kill of the node)."""
    return [d for d in docs if d["event_type"] == "oom_killed" and d.get("pod_uid") == uid]


def node_daemon(
    tmp_path: Path, tree: Kubepods, kubeconfig: Path, actions: list[dict[str, Any]]
) -> list[str]:
    cfg = daemon_config(
        tmp_path / "pressured.yaml",
        mode="node",
        cgroup_path=tree.base,
        kubeconfig=kubeconfig,
        kubernetes={"node_name": NODE},
        actions=actions,
    )
    return ["run", "-c", str(cfg), "--events-out", str(tmp_path / "events.jsonl")]


def test_a_leak_gives_aggregated_pressure_events_then_a_confirmed_kill(
    k8s_lane: Lane, kubepods: Kubepods, tmp_path: Path
) -> None:
    ns = new_namespace(k8s_lane, "leak")
    app = Container("app", 128 * MiB, container_id())
    # cooldown 1 s: a held severity repeats every second, so the Events have repeats to fold.
    pod = create_pod(
        k8s_lane, ns, "leaky", [app], annotations={"pressured.io/cooldown-seconds": "1"}
    )
    uid = pod["metadata"]["uid"]
    cgroup = kubepods.container(uid, app)
    kubeconfig = chart_kubeconfig(k8s_lane, tmp_path / "kubeconfig")
    events_out = tmp_path / "events.jsonl"
    with running(node_daemon(tmp_path, kubepods, kubeconfig, [LOG, EVENT_ACTION])):
        leak = cgroup.spawn(leaker_argv("--rate-mib", "8", "--max-mib", "400"))
        assert leak.wait(timeout=90) == -9, "the leak should end in a real OOM kill"
        docs = wait_for_events(events_out, lambda d: bool(kills_of(d, uid)), 30)
        (kill,) = kills_of(docs, uid)
        oom = one_event(k8s_lane, ns, uid, "OOMKillConfirmed")

    kinds = [kind(d) for d in docs]
    assert "warn" in kinds and "critical" in kinds, kinds
    # each event names the pod as the API server has it: its IP (from the status the kubelet
    # reported) and its pressured.io annotations
    first_warn = next(d for d in docs if kind(d) == "warn")
    assert first_warn["pod_uid"] == uid and first_warn["pod_ip"] == "10.244.0.17", first_warn
    assert first_warn["annotations"] == {"pressured.io/cooldown-seconds": "1"}, first_warn
    assert kill["pid"] == leak.pid and kill["pod_name"] == "leaky", kill
    warn = one_event(k8s_lane, ns, uid, "MemoryPressureWarning")
    critical = one_event(k8s_lane, ns, uid, "MemoryPressureCritical")
    for event in (warn, critical, oom):
        assert event["involvedObject"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "leaky",
            "namespace": ns,
            "uid": uid,
            "fieldPath": "spec.containers{app}",
        }
        assert event["type"] == "Warning"
        assert event["reportingComponent"] == "pressured"
        assert event["reportingInstance"] == NODE
        assert event["source"] == {"component": "pressured", "host": NODE}
    # The critical severity was held past several cooldowns: its repeats are one Event's count.
    repeats = sum(1 for k in kinds if k == "critical")
    assert repeats >= 2, kinds
    assert critical["count"] == repeats, (critical, kinds)
    assert critical["lastTimestamp"] >= critical["firstTimestamp"]
    assert "of 128.0Mi limit" in critical["message"], critical["message"]

    # The kill: the container, the victim and its pid, how long after the first warning.
    message = oom["message"]
    assert kill["comm"].startswith("python"), kill
    assert f"container app: {kill['comm']} (pid {leak.pid}) killed" in message, message
    assert f"{kill['warned_seconds_before']:.0f}s after the first warning" in message, message
    assert kill["warned_seconds_before"] > 0

    # The same Event as events.k8s.io/v1 sees it: reportingController is pressured.
    r = k8s_lane.admin_http.get(
        f"/apis/events.k8s.io/v1/namespaces/{ns}/events/{oom['metadata']['name']}"
    )
    assert r.status_code == 200, api_error(r)
    assert r.json()["reportingController"] == "pressured"
    assert r.json()["regarding"]["uid"] == uid


def test_annotations_change_thresholds_live_and_bad_values_fall_back(
    k8s_lane: Lane, kubepods: Kubepods, tmp_path: Path
) -> None:
    """A process holds 24 MiB (with its interpreter, about 30 % of the 128 MiB limit): below
    the configured 60 % warning. Annotating the pod with warn-percent 15 makes it a warning,
    without a restart; a bad value gives an InvalidPressuredAnnotation Event and the default
    again (the warning recovers), and the daemon runs on."""
    ns = new_namespace(k8s_lane, "annot")
    app = Container("app", 128 * MiB, container_id())
    pod = create_pod(k8s_lane, ns, "tuned", [app])
    uid = pod["metadata"]["uid"]
    cgroup = kubepods.container(uid, app)
    holder = cgroup.spawn(hold_argv(24), stdout=-1, text=True)
    wait_process_ready(holder)
    wait_for(lambda: cgroup.usage() >= 24 * MiB, 30, "24 MiB held in the cgroup")
    kubeconfig = chart_kubeconfig(k8s_lane, tmp_path / "kubeconfig")
    events_out = tmp_path / "events.jsonl"

    def severities() -> list[str]:
        return [kind(d) for d in read_events(events_out) if d.get("pod_name") == "tuned"]

    with running(node_daemon(tmp_path, kubepods, kubeconfig, [LOG, EVENT_ACTION])) as daemon:
        daemon.wait_for_log(r"watching \S+" + app.id, 30)
        assert cgroup.usage() < 0.5 * app.limit_bytes
        assert severities() == [], "below the configured 60 % warning"

        patch_annotations(k8s_lane, ns, "tuned", {"pressured.io/warn-percent": "15"})
        wait_for(lambda: "warn" in severities(), 30, "a warning after the annotation")
        warn = one_event(k8s_lane, ns, uid, "MemoryPressureWarning")
        assert warn["involvedObject"]["fieldPath"] == "spec.containers{app}"

        mark = daemon.log_mark()
        patch_annotations(k8s_lane, ns, "tuned", {"pressured.io/warn-percent": "lots"})
        bad = one_event(k8s_lane, ns, uid, "InvalidPressuredAnnotation")
        assert "pressured.io/warn-percent" in bad["message"] and "lots" in bad["message"], bad
        assert bad["type"] == "Warning" and bad["involvedObject"]["uid"] == uid
        # The default (60 %) again: the warning recovers.
        wait_for(lambda: severities()[-1:] == ["recovered"], 30, "recovery at the default")
        daemon.wait_for_log(r"pressured\.io/warn-percent", 10, start=mark)
        assert daemon.alive()
    assert "Traceback" not in daemon.stderr.text()


def test_pods_of_other_nodes_are_not_watched(
    k8s_lane: Lane, kubepods: Kubepods, tmp_path: Path
) -> None:
    """The pod watch is the node's (spec.nodeName): a pod bound elsewhere gives its cgroup no
    identity, even with the same container cgroup present on this host."""
    ns = new_namespace(k8s_lane, "other")
    here = Container("app", 64 * MiB, container_id())
    there = Container("app", 64 * MiB, container_id())
    mine = create_pod(k8s_lane, ns, "mine", [here], annotations={"pressured.io/warn-percent": "5"})
    theirs = create_pod(
        k8s_lane,
        ns,
        "theirs",
        [there],
        node="another-node",
        annotations={"pressured.io/warn-percent": "5"},
    )
    holders = []
    for pod, c in ((mine, here), (theirs, there)):
        cg = kubepods.container(pod["metadata"]["uid"], c)
        holders.append(cg.spawn(hold_argv(16), stdout=-1, text=True))
    for h in holders:
        wait_process_ready(h)
    kubeconfig = chart_kubeconfig(k8s_lane, tmp_path / "kubeconfig")
    events_out = tmp_path / "events.jsonl"
    with running(node_daemon(tmp_path, kubepods, kubeconfig, [LOG])):
        docs = wait_for_events(events_out, lambda d: any(x.get("pod_name") for x in d), 30)
    named = {d["pod_name"] for d in docs if d.get("pod_name")}
    assert named == {"mine"}, docs
