"""The evict action against the real Eviction API (policy/v1), from `pressured run` in node mode
with the chart's own rules (actions.eviction and actions.events on).

A process holds about 90 % of its container's 128 MiB limit: critical, repeated every second
(pressured.io/cooldown-seconds 1). With a PodDisruptionBudget that allows no disruption the API
server answers 429, which is reported once and then left alone for the back-off however often
the critical repeats; without one the pod is evicted, gone from the API server, and an Event on
it says who evicted it and why.

No disruption controller runs here: the budget's status is written as it would write it
(observedGeneration caught up, disruptionsAllowed 0), so the refusal is the API server's real
"would violate the pod's disruption budget", not "still being processed".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.k8s_real.conftest import Lane, api_error
from tests.k8s_real.kubelet import (
    MERGE_PATCH,
    NODE,
    Container,
    Kubepods,
    chart_kubeconfig,
    container_id,
    create_pod,
    daemon_config,
    hold_argv,
    new_namespace,
    pod_events,
    wait_process_ready,
)
from tests.support.daemon import running
from tests.support.events import kind, read_events
from tests.support.wait import wait_for

pytestmark = [pytest.mark.k8s_real, pytest.mark.kernel]
MiB = 1 << 20
EVICT = {"type": "evict", "grace_period_seconds": 0, "refused_backoff_seconds": 600}
REFUSED = "refused by a PodDisruptionBudget"


def critical_pod(lane: Lane, tree: Kubepods, ns: str, name: str) -> tuple[dict[str, Any], Any]:
    app = Container("app", 128 * MiB, container_id())
    pod = create_pod(
        lane,
        ns,
        name,
        [app],
        labels={"app": name},
        annotations={"pressured.io/cooldown-seconds": "1"},
    )
    cgroup = tree.container(pod["metadata"]["uid"], app)
    holder = cgroup.spawn(hold_argv(100), stdout=-1, text=True)
    wait_process_ready(holder)
    wait_for(lambda: cgroup.usage() >= 0.8 * app.limit_bytes, 30, "the critical usage held")
    return pod, holder


def evict_daemon(lane: Lane, tree: Kubepods, tmp_path: Path) -> list[str]:
    kubeconfig = chart_kubeconfig(lane, tmp_path / "kubeconfig", eviction=True)
    cfg = daemon_config(
        tmp_path / "pressured.yaml",
        mode="node",
        cgroup_path=tree.base,
        kubeconfig=kubeconfig,
        kubernetes={"node_name": NODE},
        actions=[{"type": "log"}, EVICT],
    )
    return ["run", "-c", str(cfg), "--events-out", str(tmp_path / "events.jsonl")]


def forbidding_budget(lane: Lane, ns: str, app: str) -> None:
    http = lane.admin_http
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": app, "namespace": ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
    }
    r = http.post(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", json=pdb)
    assert r.status_code == 201, api_error(r)
    status = {
        "status": {
            "observedGeneration": r.json()["metadata"]["generation"],
            "disruptionsAllowed": 0,
            "currentHealthy": 1,
            "desiredHealthy": 1,
            "expectedPods": 1,
        }
    }
    r = http.patch(
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{app}/status",
        json=status,
        headers=MERGE_PATCH,
    )
    assert r.status_code == 200, api_error(r)


def test_a_budget_refuses_the_eviction_and_the_back_off_holds(
    k8s_lane: Lane, kubepods: Kubepods, tmp_path: Path
) -> None:
    ns = new_namespace(k8s_lane, "pdb")
    forbidding_budget(k8s_lane, ns, "guarded")
    pod, _holder = critical_pod(k8s_lane, kubepods, ns, "guarded")
    events_out = tmp_path / "events.jsonl"

    def criticals() -> int:
        return sum(1 for d in read_events(events_out) if kind(d) == "critical")

    with running(evict_daemon(k8s_lane, kubepods, tmp_path)) as daemon:
        refusal = daemon.wait_for_log(REFUSED + r".*", 60).group(0)
        seen = criticals()
        # Three more criticals, each one an eviction the back-off must hold back.
        wait_for(lambda: criticals() >= seen + 3, 30, "the critical repeating")
        log = daemon.stderr.text()
    assert log.count(REFUSED) == 1, log
    assert "HTTP 429" in refusal and "disruption budget" in refusal, refusal
    assert "not retried for 600s" in refusal, refusal
    r = k8s_lane.admin_http.get(f"/api/v1/namespaces/{ns}/pods/guarded")
    assert r.status_code == 200 and r.json()["metadata"]["uid"] == pod["metadata"]["uid"]
    assert "deletionTimestamp" not in r.json()["metadata"]
    assert pod_events(k8s_lane, ns, pod["metadata"]["uid"], "Evicted") == []


def test_without_a_budget_the_pod_is_evicted(
    k8s_lane: Lane, kubepods: Kubepods, tmp_path: Path
) -> None:
    ns = new_namespace(k8s_lane, "evict")
    pod, _holder = critical_pod(k8s_lane, kubepods, ns, "free")
    uid = pod["metadata"]["uid"]

    def gone() -> bool:
        return k8s_lane.admin_http.get(f"/api/v1/namespaces/{ns}/pods/free").status_code == 404

    with running(evict_daemon(k8s_lane, kubepods, tmp_path)) as daemon:
        daemon.wait_for_log(rf"evicted pod {re.escape(ns)}/free \(critical", 60)
        wait_for(gone, 30, "the evicted pod gone from the API server")
        (event,) = wait_for(lambda: pod_events(k8s_lane, ns, uid, "Evicted"), 30, "the Event")
        log = daemon.stderr.text()
    assert event["type"] == "Warning"
    assert event["message"].startswith("Evicted by pressured: memory critical "), event
    assert event["involvedObject"]["uid"] == uid
    assert event["reportingComponent"] == "pressured"
    assert log.count("evicted pod") == 1, log  # never twice
    assert REFUSED not in log
