"""oom:mark_victim through perf_event_open: the format file, raw record decoding, the
victim's cgroup from /proc; for real on this host (marker kernel): a kill in a child v1
memory cgroup read through epoll. Also the pure parts of the bcc probe (event layout,
kprobe/mark_victim pairing) and the kill sources as the daemon starts them."""

from __future__ import annotations

import importlib.util
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from pressured import native
from pressured.kills import KillsConfig, KillSources
from pressured.kills.readers import bcc
from pressured.kills.readers.bcc import BccProbe, decode_event, merge_events
from pressured.kills.readers.tracepoint import (
    MarkVictimSource,
    TracepointUnavailable,
    find_tracefs,
    online_cpus,
    parse_cpu_list,
    parse_format,
    pid_cgroup,
    read_format,
)
from pressured.model import KillRecord

from . import FIXTURES, start_allocator, v1_child, v1_oom_skip_reason, victim_of

FORMAT_6_18 = (FIXTURES / "mark_victim-6.18.format").read_text()
FORMAT_PID_ONLY = """name: mark_victim
ID: 512
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: "pid=%d", REC->pid
"""


def raw_6_18(pid: int, comm: bytes, kb: list[int], uid: int, adj: int) -> bytes:
    """A mark_victim record laid out as the 6.18 format file says (comm after the fixed
    part, reached through its __data_loc word: offset in the low 16 bits, length above)."""
    fixed = 66
    comm_z = comm + b"\0"
    head = struct.pack("<HBBi", 609, 0, 0, 1234)
    body = struct.pack("<iI", pid, (len(comm_z) << 16) | 68)
    body += struct.pack("<QQQQ", *kb[:4]) + struct.pack("<I4x", uid)
    body += struct.pack("<Q", kb[4]) + struct.pack("<h", adj)
    rec = head + body
    assert len(rec) == fixed
    return rec + b"\0\0" + comm_z + b"\0" * 3


def test_format_6_18() -> None:
    fmt = parse_format(FORMAT_6_18, "oom", "mark_victim")
    assert fmt.id == 609
    assert set(fmt.fields) >= {
        "pid",
        "comm",
        "total_vm",
        "anon_rss",
        "file_rss",
        "shmem_rss",
        "uid",
        "pgtables",
        "oom_score_adj",
    }
    assert fmt.fields["comm"].data_loc
    assert (fmt.fields["oom_score_adj"].size, fmt.fields["oom_score_adj"].signed) == (2, True)
    values = fmt.decode(raw_6_18(4321, b"python3", [100, 60, 30, 2, 8], 1000, -998))
    assert values == {
        "pid": 4321,
        "comm": "python3",
        "total_vm": 100,
        "anon_rss": 60,
        "file_rss": 30,
        "shmem_rss": 2,
        "uid": 1000,
        "pgtables": 8,
        "oom_score_adj": -998,
    }


def test_format_before_6_9_has_only_the_pid() -> None:
    fmt = parse_format(FORMAT_PID_ONLY, "oom", "mark_victim")
    assert fmt.id == 512 and list(fmt.fields)[-1] == "pid"
    values = fmt.decode(struct.pack("<HBBii", 512, 0, 0, 1, 777))
    assert values == {"pid": 777}
    # a record shorter than the layout: missing fields are left out, not garbage
    assert fmt.decode(b"\0" * 6) == {}


def test_rel_loc_and_fixed_char_arrays() -> None:
    text = """ID: 7
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:char name[8];\toffset:8;\tsize:8;\tsigned:0;
\tfield:__rel_loc char[] path;\toffset:16;\tsize:4;\tsigned:0;
"""
    fmt = parse_format(text, "x", "y")
    assert fmt.fields["name"].type == "char[8]"
    raw = b"\0" * 8 + b"abc\0\0\0\0\0" + struct.pack("<I", (4 << 16) | 0) + b"/ab\0"
    assert fmt.decode(raw) == {"name": "abc", "path": "/ab"}


@pytest.mark.parametrize(
    "text", ["field:int pid;\toffset:x;\tsize:4;", "ID: nope\n", "name: mark_victim\n"]
)
def test_bad_format_files(text: str) -> None:
    with pytest.raises(TracepointUnavailable):
        parse_format(text, "oom", "mark_victim", "/t/format")


def test_read_format_missing_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TracepointUnavailable, match="mark_victim/format: missing"):
        read_format(str(tmp_path))


def test_cpu_lists() -> None:
    assert parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert parse_cpu_list("0") == [0]
    with pytest.raises(ValueError):
        parse_cpu_list("")
    assert online_cpus()  # this machine has at least one


def test_pid_cgroup_from_a_proc_tree(tmp_path: Path) -> None:
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "cgroup").write_text(
        "9:name=systemd:/\n4:memory:/process_api/x/child\n0::/\n"
    )
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "cgroup").write_text("0::/kubepods.slice/pod.slice/cri.scope\n")
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "cgroup").write_text("5:cpu,memory:/a/b\n")
    assert pid_cgroup(10, str(tmp_path)) == "/process_api/x/child"
    assert pid_cgroup(11, str(tmp_path)) == "/kubepods.slice/pod.slice/cri.scope"
    assert pid_cgroup(12, str(tmp_path)) == "/a/b"
    assert pid_cgroup(13, str(tmp_path)) is None  # already reaped


def test_find_tracefs_without_mounting(tmp_path: Path) -> None:
    good = tmp_path / "tracing"
    (good / "events").mkdir(parents=True)
    assert find_tracefs([str(tmp_path / "none"), str(good)], mount=False) == (
        str(good),
        f"tracefs at {good}",
    )
    path, why = find_tracefs([str(tmp_path / "none")], mount=False)
    assert path is None and "not mounted" in why
    path, why = find_tracefs([str(tmp_path / "none")], mount=True)
    assert path is None and "no tracefs mount point" in why


# --------------------------------------------------------------------------- bcc, pure parts
def pk_event(kind: int, pid: int, tgid: int = 0, **kw: Any) -> dict[str, Any]:
    data = bcc.EVENT_LAYOUT.pack(
        kind,
        pid,
        tgid,
        kw.get("uid", 0),
        kw.get("memcg_id", 0),
        kw.get("cgroup_id", 0),
        kw.get("totalpages", 0),
        kw.get("points", 0),
        kw.get("total_vm", 0),
        kw.get("anon_rss", 0),
        kw.get("file_rss", 0),
        kw.get("shmem_rss", 0),
        kw.get("pgtables", 0),
        kw.get("oom_score_adj", 0),
        kw.get("have", 0),
        kw.get("comm", b""),
        kw.get("cgroup_name", b""),
        kw.get("parent_name", b""),
    )
    assert len(data) == 368  # sizeof(struct pk_event) in bpf/oom_kill.c
    return decode_event(data + b"\0" * 4)  # perf pads samples to 8 bytes


KP = bcc.KIND_KPROBE
MV = bcc.KIND_MARK_VICTIM
MV_ALL = bcc.HAVE_COMM | bcc.HAVE_RSS | bcc.HAVE_UID | bcc.HAVE_PGTABLES | bcc.HAVE_ADJ
KP_ALL = bcc.HAVE_COMM | bcc.HAVE_MEMCG | bcc.HAVE_CGROUP


def kprobe_hit(pid: int) -> dict[str, Any]:
    return pk_event(
        KP,
        pid,
        pid,
        memcg_id=555,
        cgroup_id=556,
        totalpages=16384,
        points=900,
        comm=b"java",
        cgroup_name=b"cri-abc.scope",
        parent_name=b"pod1.slice",
        have=KP_ALL,
    )


def victim_hit(pid: int) -> dict[str, Any]:
    return pk_event(
        MV,
        pid,
        comm=b"java",
        total_vm=10,
        anon_rss=6,
        file_rss=3,
        shmem_rss=1,
        pgtables=2,
        uid=1000,
        oom_score_adj=-5,
        have=MV_ALL,
    )


def probe(clock: list[float], tracepoint: bool = True) -> BccProbe:
    p = BccProbe(True, clock=lambda: clock[0], wall_clock=lambda: 1e9, proc="/nonexistent")
    p._has_tracepoint = tracepoint
    return p


def test_event_layout_and_merge() -> None:
    kp, mv = kprobe_hit(70), victim_hit(70)
    assert (kp["comm"], kp["cgroup_name"], kp["parent_cgroup_name"]) == (
        "java",
        "cri-abc.scope",
        "pod1.slice",
    )
    merged = merge_events(kp, mv)
    assert merged["rss"] == {
        "total_vm": 10240,
        "anon_rss": 6144,
        "file_rss": 3072,
        "shmem_rss": 1024,
        "pgtables": 2048,
    }
    assert (merged["uid"], merged["oom_score_adj"], merged["memcg_id"], merged["cgroup_id"]) == (
        1000,
        -5,
        555,
        556,
    )
    # a global OOM: no memcg; a pre-6.9 tracepoint: only the pid
    bare = merge_events(pk_event(KP, 71, 71, have=bcc.HAVE_COMM, comm=b"x"), pk_event(MV, 71))
    assert "memcg_id" not in bare and "rss" not in bare and bare["comm"] == "x"


def test_kprobe_waits_for_mark_victim() -> None:
    clock = [10.0]
    p = probe(clock)
    assert p.handle([kprobe_hit(70)]) == []
    (rec,) = p.handle([victim_hit(70)])
    assert (rec.source, rec.pid, rec.comm, rec.cgroup_id, rec.uid) == ("bcc", 70, "java", 556, 1000)
    assert rec.extra["cgroup_name"] == "cri-abc.scope"
    assert rec.extra["memcg_id"] == 555 and rec.extra["points"] == 900
    assert rec.rss["anon_rss"] == 6144


def test_kprobe_without_a_kill_is_dropped() -> None:
    clock = [10.0]
    p = probe(clock)
    assert p.handle([kprobe_hit(70)]) == []
    clock[0] = 13.0  # no mark_victim followed: the victim was exiting already
    assert p.handle([]) == []
    assert p.handle([victim_hit(71)])[0].extra == {}  # another task, nothing to pair


def test_mark_victim_first_then_kprobe_adds_identity() -> None:
    clock = [10.0]
    p = probe(clock)
    (first,) = p.handle([victim_hit(80)])
    (late,) = p.handle([kprobe_hit(80)])
    assert first.pid == late.pid == 80
    assert late.cgroup_id == 556


def test_kprobe_alone_without_tracepoint() -> None:
    clock = [10.0]
    (rec,) = probe(clock, tracepoint=False).handle([kprobe_hit(90)])
    assert (rec.pid, rec.comm, rec.extra["tgid"]) == (90, "java", 90)


def test_bcc_disabled_or_missing() -> None:
    p = BccProbe(False)
    assert not p.start() and "disabled" in p.reason
    if importlib.util.find_spec("bcc") is not None:
        pytest.skip("bcc is importable here: the VM lane tests the probe for real")
    p = BccProbe(True)
    assert not p.start()
    assert "python3-bpfcc" in p.reason
    assert p.fds() == [] and p.read() == []


def test_program_ships() -> None:
    text = bcc.program_path().read_text()
    assert "pk_oom_kill_process" in text and "TRACEPOINT_PROBE(oom, mark_victim)" in text


# --------------------------------------------------------------------------- this host, real
def _perf_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root for tracefs and perf_event_open on every CPU"
    return v1_oom_skip_reason()


@pytest.mark.kernel
def test_real_mark_victim_through_epoll() -> None:
    skip = _perf_skip()
    if skip:
        pytest.skip(skip)
    tracefs, why = find_tracefs(mount=True)
    if tracefs is None:
        pytest.skip(why)
    source = MarkVictimSource(tracefs)
    ep = native.Epoll()
    try:
        assert len(source.fds()) == len(online_cpus())
        for i, fd in enumerate(source.fds()):
            ep.add(fd, native.EPOLLIN, i + 1)
        assert source.read() == []
        with v1_child("pk-tp") as cg:
            proc = start_allocator(cg)
            found: list[KillRecord] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not found:
                if ep.wait(1000):
                    # drained while the victim is a zombie (not reaped: we are its parent)
                    found = [r for r in source.read() if r.pid == proc.pid]
            victim = victim_of(proc, cg)
        assert victim.returncode == -9
        (rec,) = found
        assert rec.source == "tracepoint"
        fields = source.format.fields
        if "comm" in fields:
            assert rec.comm == victim.comm
        if "anon_rss" in fields:
            assert rec.rss["anon_rss"] > 16 << 20  # most of the 32 MiB limit
            assert rec.rss["total_vm"] >= rec.rss["anon_rss"]
        if "uid" in fields:
            assert rec.uid == os.geteuid()
        if "oom_score_adj" in fields:
            assert rec.oom_score_adj == 0
        # read from /proc/<pid>/cgroup as the victim dies: its path, or None when the exiting
        # task already reads as the root cgroup (a race seen under load), never a wrong path
        assert rec.cgroup in (victim.relpath, None)
        assert source.lost == 0
    finally:
        ep.close()
        source.close()


@pytest.mark.kernel
def test_kill_sources_on_this_host() -> None:
    skip = _perf_skip()
    if skip:
        pytest.skip(skip)
    sources = KillSources(KillsConfig.from_mapping({"bcc": {"enabled": True}}))
    try:
        status = sources.start()
        assert set(status) == {"counters", "kmsg", "tracepoint", "bcc"}
        assert status["kmsg"][0] and status["tracepoint"][0], status
        if importlib.util.find_spec("bcc") is None:
            assert status["bcc"] == (False, sources.status()["bcc"][1])
            assert "python3-bpfcc" in status["bcc"][1]
        names = {name for _, name in sources.fds()}
        assert names == {"kmsg", "tracepoint"}
        assert sources.expected("k") == {"counters", "kmsg", "tracepoint"}
        assert sources.poll_interval() is None
        sources.read()
    finally:
        sources.close()
    assert sources.fds() == []
