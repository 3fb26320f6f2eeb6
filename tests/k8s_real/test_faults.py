"""Faults of the real control plane while `pressured run` watches in node mode: kube-apiserver
restarted under a running watch, etcd compacted past the watch's resourceVersion, the API server
away for 30 s while a real leak ends in a real OOM kill.

Each test has a lane of its own (the ``own_lane`` fixture), whose API server it stops and starts
with scripts/k8s-lane apiserver-stop / apiserver-start and whose etcd it compacts through etcd's
own API.

What a restart does to a watch depends on the API server's watch cache, measured here: with it
(the default, as real clusters run), the restarted server's cache starts at etcd's current
revision, so a watch resuming from any older resourceVersion is answered 410 Gone ("too old
resource version") and the daemon re-lists; without it (--watch-cache=false), etcd serves the
watch from the old revision and the daemon resumes with nothing re-listed, until etcd is
compacted past it, and then it is etcd's 410.

A pod made right after the API server returns is one the daemon can learn of only from its
watch (or its re-list): its annotation (warn-percent 5) turns the pod's held memory into a
warning that names it, so "no pod lost" is seen in the daemon's own events.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.k8s_real.conftest import Lane
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
    pod_events,
    wait_process_ready,
)
from tests.support.cgroups import leaker_argv
from tests.support.daemon import running
from tests.support.events import kind, read_events, wait_for_events
from tests.support.wait import wait_for

pytestmark = [pytest.mark.k8s_real, pytest.mark.kernel]
MiB = 1 << 20
ACTIONS: list[dict[str, Any]] = [{"type": "log"}, {"type": "k8s-event", "min_interval_seconds": 0}]
OUTAGE_SECONDS = 30
WATCH_FAILED = r"pod watch: .*; retrying in"


def node_daemon(lane: Lane, tree: Kubepods, tmp_path: Path) -> list[str]:
    cfg = daemon_config(
        tmp_path / "pressured.yaml",
        mode="node",
        cgroup_path=tree.base,
        kubeconfig=chart_kubeconfig(lane, tmp_path / "kubeconfig"),
        kubernetes={"node_name": NODE},
        actions=ACTIONS,
    )
    return ["run", "-c", str(cfg), "--events-out", str(tmp_path / "events.jsonl")]


def add_pod(
    lane: Lane,
    tree: Kubepods,
    ns: str,
    name: str,
    annotations: dict[str, str],
    hold_mib: int = 16,
) -> str:
    """A pod bound to the node with one container holding ``hold_mib`` MiB of 64; its uid."""
    app = Container("app", 64 * MiB, container_id())
    pod = create_pod(lane, ns, name, [app], annotations=annotations)
    uid: str = pod["metadata"]["uid"]
    holder = tree.container(uid, app).spawn(hold_argv(hold_mib), stdout=-1, text=True)
    wait_process_ready(holder)
    return uid


def killed(docs: list[dict[str, Any]], uid: str) -> bool:
    return any(d["event_type"] == "oom_killed" and d.get("pod_uid") == uid for d in docs)


def warned(events_out: Path, pod_name: str) -> bool:
    return any(kind(d) == "warn" and d.get("pod_name") == pod_name for d in read_events(events_out))


def restart_under_the_watch(
    lane: Lane, tree: Kubepods, tmp_path: Path, *, compact: bool = False
) -> tuple[str, str, str]:
    """A daemon watching; its API server stopped (etcd compacted meanwhile when ``compact``)
    and started again, then at once, before the daemon's next try, a pod only its watch or its
    re-list can tell it of. The daemon's log; the namespace; the uid of a pod with a bad
    annotation, whose one InvalidPressuredAnnotation Event must stay one."""
    ns = new_namespace(lane, "restart")
    steady = add_pod(lane, tree, ns, "steady", {"pressured.io/cooldown-seconds": "soon"})
    events_out = tmp_path / "events.jsonl"
    with running(node_daemon(lane, tree, tmp_path)) as daemon:
        wait_for(lambda: pod_events(lane, ns, steady, "InvalidPressuredAnnotation"), 30, "Event")
        # A write the daemon's watch does not see (another node's pod): etcd's revision moves
        # past the daemon's resourceVersion.
        other = Container("app", 64 * MiB, container_id())
        create_pod(lane, ns, "elsewhere", [other], node="another-node")
        lane.stop_apiserver()
        daemon.wait_for_log(WATCH_FAILED, 30)
        if compact:
            lane.compact_etcd()
        lane.start_apiserver()
        add_pod(lane, tree, ns, "newcomer", {"pressured.io/warn-percent": "5"})
        wait_for(lambda: warned(events_out, "newcomer"), 60, "the newcomer's warning")
        log = daemon.stderr.text()
    (invalid,) = pod_events(lane, ns, steady, "InvalidPressuredAnnotation")
    assert invalid["count"] == 1, invalid
    assert not [d for d in read_events(events_out) if d.get("pod_name") == "steady"]
    assert "Traceback" not in log, log
    return log, ns, steady


RELISTED = r"pod watch: resourceVersion \d+ expired \(410: .*"


def test_api_server_restart_gives_410_and_a_relist_with_the_watch_cache(
    own_lane: Callable[..., Lane], kubepods: Kubepods, tmp_path: Path
) -> None:
    log, _, _ = restart_under_the_watch(own_lane(), kubepods, tmp_path)
    expired = re.search(RELISTED, log)
    assert expired and "too old resource version" in expired.group(0), log  # the cache's words
    assert re.search(r"pod watch: re-listed \d+ pod\(s\)", log), log


def test_api_server_restart_resumes_the_watch_from_etcd(
    own_lane: Callable[..., Lane], kubepods: Kubepods, tmp_path: Path
) -> None:
    log, _, _ = restart_under_the_watch(own_lane("--watch-cache=false"), kubepods, tmp_path)
    assert re.search(r"pod watch: resumed from resourceVersion \d+ after", log), log
    # (the log's own words: a bare "410" also turns up inside a random container id)
    assert not re.search(RELISTED, log) and "re-listed" not in log, log


def test_etcd_compacted_past_the_watch_gives_410_and_a_relist(
    own_lane: Callable[..., Lane], kubepods: Kubepods, tmp_path: Path
) -> None:
    """Without the watch cache a restart alone resumes (above): here the 410 is etcd's own."""
    lane = own_lane("--watch-cache=false")
    log, _, _ = restart_under_the_watch(lane, kubepods, tmp_path, compact=True)
    expired = re.search(RELISTED, log)
    # etcd's ErrCompacted, in the API server's words for it
    assert expired and "The resourceVersion for the provided watch is too old" in expired.group(0)
    assert re.search(r"pod watch: re-listed \d+ pod\(s\)", log), log
    assert "resumed from resourceVersion" not in log, log


def test_thirty_seconds_without_the_api_server(
    own_lane: Callable[..., Lane], kubepods: Kubepods, tmp_path: Path
) -> None:
    """The kernel side goes on (the leak warned, the kill confirmed, with the pod's identity
    from the cache); the Events the API server could not take are logged, counted and held,
    and posted once it is back; the watch recovers; nothing crashes."""
    lane = own_lane()
    ns = new_namespace(lane, "outage")
    app = Container("app", 128 * MiB, container_id())
    pod = create_pod(lane, ns, "leaky", [app])
    uid = pod["metadata"]["uid"]
    cgroup = kubepods.container(uid, app)
    events_out = tmp_path / "events.jsonl"
    with running(node_daemon(lane, kubepods, tmp_path)) as daemon:
        daemon.wait_for_log(r"watching \S+" + app.id, 30)
        lane.stop_apiserver()
        down_at = time.monotonic()
        leak = cgroup.spawn(leaker_argv("--rate-mib", "16", "--max-mib", "400"))
        assert leak.wait(timeout=90) == -9, "the leak should end in a real OOM kill"
        docs = wait_for_events(
            events_out,
            lambda d: any(x["event_type"] == "oom_killed" and x.get("pod_uid") == uid for x in d),
            30,
        )
        daemon.wait_for_log(r"action k8s-event failed .*Event OOMKillConfirmed on pod .*held", 30)
        # The outage lasts OUTAGE_SECONDS in all: the condition under test, not a wait.
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        assert daemon.alive()
        lane.start_apiserver()
        oom = wait_for(lambda: pod_events(lane, ns, uid, "OOMKillConfirmed"), 60, "the held Event")
        daemon.wait_for_log(r"k8s-event: posted \d+ Event\(s\) held while the API server", 30)
        add_pod(lane, kubepods, ns, "newcomer", {"pressured.io/warn-percent": "5"})
        wait_for(lambda: warned(events_out, "newcomer"), 60, "the newcomer's warning")
        log = daemon.stderr.text()
    mine = [d for d in docs if d.get("pod_uid") == uid]
    kinds = [kind(d) for d in mine]
    assert "warn" in kinds and "critical" in kinds and "oom_killed" in kinds, kinds
    kill = next(d for d in mine if d["event_type"] == "oom_killed")
    assert kill["pid"] == leak.pid and kill["pod_name"] == "leaky", kill
    (event,) = oom
    assert f"(pid {leak.pid}) killed" in event["message"], event
    for reason in ("MemoryPressureWarning", "MemoryPressureCritical"):
        assert len(pod_events(lane, ns, uid, reason)) == 1, reason
    assert "Traceback" not in log, log
    # Each way the watch failed is a warning once (the stream cut, then the refused connection),
    # not one every 5 s for 30 s.
    assert len(re.findall(r"WARNING pressured\.k8s\.podcache", log)) <= 2, log
