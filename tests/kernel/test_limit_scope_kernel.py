"""Which limit killed, on real kills of this host: a container-shaped cgroup with its own limit
under a pod-shaped parent (kubepods/burstable/pod<uid>/<container id>), once with the pod's
limit the smaller one and once with the container's. The kernel names the cgroup whose limit
it hit (kmsg's oom_memcg); the event and the log must say which level that was."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cgroups import Child, leaker_argv, own_memory_cgroup
from tests.support.daemon import running
from tests.support.events import wait_for_events

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def _limit(child: Child, limit: int) -> None:
    name = "memory.max" if child.v2 else "memory.limit_in_bytes"
    with open(os.path.join(child.path, name), "w") as f:
        f.write(str(limit))


@pytest.fixture
def pod_tree() -> Iterator[list[tuple[Child, Child]]]:
    """Builds kubepods/burstable/pod<uid>/<64-hex id> trees under a test directory; returns
    (pod, container) pairs made by ``make``; every level is removed afterwards."""
    base, why = own_memory_cgroup()
    if base is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    top = f"pressured-limits-{os.getpid()}"
    made: list[Child] = []
    for rel in (top, f"{top}/kubepods", f"{top}/kubepods/burstable"):
        made.append(Child(rel, None))
    pairs: list[tuple[Child, Child]] = []
    yield pairs
    for pod, container in reversed(pairs):
        container.remove()
        pod.remove()
    for child in reversed(made):
        child.remove()


def _make_pod(pairs: list[tuple[Child, Child]], pod_limit: int, container_limit: int) -> None:
    top = f"pressured-limits-{os.getpid()}/kubepods/burstable"
    pod = Child(f"{top}/pod{uuid.uuid4()}", None)
    _limit(pod, pod_limit)
    # a 64-hex container id, as containerd and docker name the directory under cgroupfs
    container = Child(f"{top}/{os.path.basename(pod.path)}/{uuid.uuid4().hex * 2}", None)
    _limit(container, container_limit)
    pairs.append((pod, container))


def test_the_event_and_the_log_name_the_limit_that_killed(
    pod_tree: list[tuple[Child, Child]], tmp_path: Path
) -> None:
    _make_pod(pod_tree, pod_limit=48 * MiB, container_limit=96 * MiB)  # the pod's limit kills
    _make_pod(pod_tree, pod_limit=96 * MiB, container_limit=48 * MiB)  # the container's
    (pod_small, in_small_pod), (pod_large, in_large_pod) = pod_tree
    events = tmp_path / "events.jsonl"
    args = ["run", "--no-metrics", "--events-out", str(events)]
    for _pod, container in pod_tree:
        args += ["--cgroup", container.path]
    with running(args) as daemon:
        victims = {}
        for _pod, container in pod_tree:
            proc = container.spawn(leaker_argv("--rate-mib", "0", "--max-mib", "200"))
            assert proc.wait(timeout=30) == -9, "the allocator must die of the OOM killer"
            victims[proc.pid] = container

        def both(docs: list[dict[str, object]]) -> bool:
            return {d.get("pid") for d in docs if d["event_type"] == "oom_killed"} >= set(victims)

        docs = wait_for_events(events, both, 30)
        assert daemon.stop() == 0, daemon.stderr.text()
        log = daemon.stderr.text()
    kills = {d["pid"]: d for d in docs if d["event_type"] == "oom_killed"}
    assert set(kills) >= set(victims), docs
    by_container = {victims[pid].path: kills[pid] for pid in victims}

    pod_kill = by_container[in_small_pod.path]
    assert pod_kill["limit_scope"] == "pod", pod_kill
    relpod = pod_kill["limit"]["cgroup"]
    assert pod_small.path.endswith(relpod), (pod_small.path, relpod)
    assert pod_kill["limit"]["limit_bytes"] == 48 * MiB
    assert pod_kill["limit"]["container_limit_bytes"] == 96 * MiB
    words = "killed by the pod's limit of 48Mi, not the container's 96Mi"
    assert pod_kill["limit"]["text"] == words
    assert words in log

    container_kill = by_container[in_large_pod.path]
    assert container_kill["limit_scope"] == "container", container_kill
    assert in_large_pod.path.endswith(container_kill["limit"]["cgroup"])
    assert container_kill["limit"]["limit_bytes"] == 48 * MiB
    assert container_kill["limit"]["pod_limit_bytes"] == 96 * MiB
    words = "killed by the container's limit of 48Mi, not the pod's 96Mi"
    assert container_kill["limit"]["text"] == words
    assert words in log
    assert pod_large.path in in_large_pod.path
