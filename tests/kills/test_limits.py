"""Which limit killed (pressured.kills.limits): real kernel reports (kmsg fixtures) through the
reconciler, kubelet-shaped trees built in a temporary directory (memory.max files), the bcc
kprobe's cgroup id, and every bad or missing field giving scope "unknown" with the reason."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.kills.limits import SCOPES, CgroupTree, human_size, which_limit
from pressured.kills.readers.kmsg_parse import KmsgOomParser, parse_kmsg_record
from pressured.kills.reconciler import Reconciler
from pressured.model import OomKill

from . import fixture_records

MiB = 1024 * 1024
POD = "/kubepods/burstable/pod6e0c7e3c-4e12-4d33-9a54-2b0b8f1f2a10"
CID = "3f2a9c" * 10 + "abcd"
UID_ = "6e0c7e3c_4e12_4d33_9a54_2b0b8f1f2a10"
SYSTEMD_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"


def kills_of(fixture: str) -> list[OomKill]:
    """The fixture's records as the daemon would report them: parsed, then merged."""
    parser = KmsgOomParser()
    rec = Reconciler(5.0, clock=lambda: 0.0)
    for i, raw in enumerate(fixture_records(fixture)):
        record = parse_kmsg_record(raw)
        assert record is not None
        for kill in parser.feed(record, time=0.0, wall=1000.0 + i):
            rec.add(kill, cgroup=kill.cgroup)
    return rec.drain()


def tree(tmp_path: Path, limits: dict[str, int | None]) -> CgroupTree:
    """A v2 hierarchy under tmp_path: each kernel path with its memory.max ("max": None)."""
    for path, limit in limits.items():
        d = tmp_path / path.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text("max\n" if limit is None else f"{limit}\n")
    return CgroupTree(str(tmp_path), 2)


def test_memory_oom_group_kills_say_group() -> None:
    by_pid = {k.pid: k for k in kills_of("linux-6.1-v2-plain-group-burst.kmsg")}
    for pid in (154, 152, 153):  # the victim, then the members of /pk-group
        verdict = which_limit(by_pid[pid].extra)
        assert verdict.scope == "group", (pid, verdict)
        assert verdict.text.startswith("killed with every process of /pk-group (memory.oom.group)")
    # the victim's own report also named the limited cgroup
    assert which_limit(by_pid[154].extra).cgroup == "/pk-group"
    # outside Kubernetes a cgroup's own limit is the container's scope
    plain = which_limit(by_pid[151].extra)
    assert plain.scope == "container"
    assert plain.text == "killed by the limit of its own cgroup /pk-plain"
    # the report was rate-limited away: nothing says which limit it was
    burst = which_limit(by_pid[168].extra)
    assert burst.scope == "unknown"
    assert "rate-limited" in burst.text


def test_a_global_oom_says_global() -> None:
    (kill,) = kills_of("format-5.15-global.kmsg")
    verdict = which_limit(kill.extra)
    assert verdict.scope == "global"
    assert (
        verdict.text
        == "killed because the node ran out of memory (a global OOM), not by a cgroup limit"
    )
    fields = verdict.as_event_fields()
    assert fields["limit_scope"] == "global" and fields["limit"]["cgroup"] is None


def test_a_pod_limit_with_the_limits_read_from_the_tree(tmp_path: Path) -> None:
    (kill,) = kills_of("format-5.4-memcg.kmsg")
    t = tree(tmp_path, {"/kubepods": None, POD: 512 * MiB, POD + "/3f2a9c": 1024 * MiB})
    verdict = which_limit(kill.extra, t)
    assert verdict.scope == "pod"
    assert verdict.text == "killed by the pod's limit of 512Mi, not the container's 1Gi"
    assert (verdict.limit_bytes, verdict.container_limit_bytes) == (512 * MiB, 1024 * MiB)
    # the container has no limit of its own
    (tmp_path / POD.strip("/") / "3f2a9c" / "memory.max").write_text("max\n")
    assert which_limit(kill.extra, t).text == (
        "killed by the pod's limit of 512Mi, the container has no limit of its own"
    )
    # the container's directory is gone already (its runtime removed it): the pod's is read
    (tmp_path / POD.strip("/") / "3f2a9c" / "memory.max").unlink()
    assert which_limit(kill.extra, t).text == "killed by the pod's limit of 512Mi"


def test_container_under_systemd_with_crun_leaf(tmp_path: Path) -> None:
    scope = f"{SYSTEMD_POD}/cri-containerd-{CID}.scope"
    t = tree(tmp_path, {SYSTEMD_POD: 2048 * MiB, scope: 256 * MiB, scope + "/container": None})
    fields = {
        "constraint": "CONSTRAINT_MEMCG",
        "oom_memcg": scope,
        "kernel_cgroup": scope + "/container",
    }
    verdict = which_limit(fields, t)
    assert verdict.scope == "container"
    assert verdict.text == "killed by the container's limit of 256Mi, not the pod's 2Gi"


def test_node_allocatable(tmp_path: Path) -> None:
    t = tree(tmp_path, {"/kubepods": 6 * 1024 * MiB, POD: 512 * MiB, POD + "/" + CID: None})
    fields = {"constraint": "CONSTRAINT_MEMCG", "oom_memcg": "/kubepods"}
    verdict = which_limit({**fields, "kernel_cgroup": f"{POD}/{CID}"}, t)
    assert verdict.scope == "node"
    assert verdict.text == (
        "killed by the node's allocatable limit (/kubepods) of 6Gi, not the pod's 512Mi"
    )


def test_bcc_kprobe_memcg_id_is_looked_up_on_the_victims_path(tmp_path: Path) -> None:
    t = tree(tmp_path, {POD: 512 * MiB, f"{POD}/{CID}": 1024 * MiB})
    pod_inode = os.stat(tmp_path / POD.strip("/")).st_ino
    fields: dict[str, Any] = {"kernel_cgroup": f"{POD}/{CID}", "totalpages": 1, "memcg_id": 0}
    fields["memcg_id"] = pod_inode
    verdict = which_limit(fields, t)
    assert (verdict.scope, verdict.cgroup) == ("pod", POD)
    # the kprobe read oom_control and found no memcg there: a global OOM
    del fields["memcg_id"]
    assert which_limit(fields, t).scope == "global"
    # an id no cgroup on the path has
    fields["memcg_id"] = pod_inode + 12345
    gone = which_limit(fields, t)
    assert gone.scope == "unknown" and "no cgroup on the victim's path" in gone.text


def test_outside_kubernetes_a_parent_is_an_ancestor(tmp_path: Path) -> None:
    t = tree(tmp_path, {"/system.slice": 1024 * MiB, "/system.slice/app.service": None})
    fields = {
        "constraint": "CONSTRAINT_MEMCG",
        "oom_memcg": "/system.slice",
        "kernel_cgroup": "/system.slice/app.service",
    }
    verdict = which_limit(fields, t)
    assert verdict.scope == "ancestor"
    assert verdict.text == (
        "killed by the limit of /system.slice of 1Gi, a parent of its own cgroup "
        "/system.slice/app.service"
    )


def test_bad_and_missing_fields_are_unknown_with_the_reason() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "no kill source said which limit was hit"),
        ({"oom_memcg": "kubepods"}, "oom_memcg is not a cgroup path: 'kubepods'"),
        ({"oom_memcg": "/a/../b"}, "oom_memcg is not a cgroup path"),
        ({"kernel_cgroup": 7}, "task_memcg is not a cgroup path: '7'"),
        ({"constraint": 3}, "constraint is not a name: '3'"),
        ({"constraint": "CONSTRAINT_BOGUS"}, "constraint 'CONSTRAINT_BOGUS' is none the kernel"),
        (
            {"constraint": "CONSTRAINT_NONE", "oom_memcg": "/a"},
            "constraint CONSTRAINT_NONE names no cgroup, yet oom_memcg=/a",
        ),
        ({"constraint": "CONSTRAINT_MEMCG"}, "the report says a cgroup limit but not which"),
        (
            {"oom_memcg": "/a/b", "kernel_cgroup": "/a/c"},
            "the limited cgroup /a/b is neither the victim's cgroup /a/c nor above it",
        ),
        ({"oom_memcg": "/a"}, "names the limited cgroup /a but not the victim's"),
        ({"memcg_id": "12"}, "memcg_id is not a cgroup id: '12'"),
        ({"memcg_id": 12, "kernel_cgroup": "/a"}, "id 12 cannot be looked up here"),
    ]
    for fields, reason in cases:
        verdict = which_limit(fields)
        assert verdict.scope == "unknown", (fields, verdict)
        assert verdict.text.startswith("which limit killed is unknown: "), verdict.text
        assert reason in verdict.text, (fields, verdict.text)


@settings(max_examples=300, deadline=None)  # a shared, loaded machine: no per-example deadline
@given(
    st.dictionaries(
        st.sampled_from(
            ["oom_memcg", "kernel_cgroup", "oom_group", "constraint", "memcg_id", "totalpages"]
        ),
        st.none() | st.integers() | st.text(max_size=30) | st.lists(st.integers(), max_size=2),
    )
)
def test_fuzz_never_raises(fields: dict[str, Any]) -> None:
    verdict = which_limit(fields, CgroupTree(None))
    assert verdict.scope in SCOPES and verdict.text


def test_human_size() -> None:
    assert [human_size(n) for n in (100_000, 512 * MiB, 1536 * MiB, 1024**4)] == [
        "97.7Ki",
        "512Mi",
        "1.5Gi",
        "1Ti",
    ]
