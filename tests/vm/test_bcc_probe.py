"""The bcc probe for real, in the pure cgroup v2 guest (Debian 6.1, kprobes, python3-bpfcc):
a real OOM kill in a child cgroup seen by the kprobe on oom_kill_process (confirmed by
oom:mark_victim), by /dev/kmsg and by memory.events.local, reconciled into one event; then
the tracepoint-only fallback program."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pressured import native
from pressured.kills import CounterTracker, Reconciler, attribute
from pressured.kills.readers.bcc import BccProbe
from pressured.kills.readers.kmsg import KmsgReader
from pressured.model import KillRecord

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("VMTEST_GUEST") != "1",
        reason="runs only inside the cgroup v2 guest (VMTEST_GUEST=1, set by the VM lane)",
    ),
]

CG_ROOT = "/sys/fs/cgroup"
ALLOCATOR = "b = []\nfor i in range(200):\n    b.append(b'x' * (1 << 20))\n"


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _events(path: str) -> dict[str, int]:
    with open(path, encoding="ascii") as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        _write(os.path.join(path, "cgroup.kill"), "1")
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except OSError:
            if not os.path.isdir(path):
                return
            time.sleep(0.05)


@contextlib.contextmanager
def child_cgroup(prefix: str) -> Iterator[str]:
    """<root>/<prefix>-<pid>/victim, limited to 64 MiB (two levels: the victim's parent has
    a kernfs name of its own, the root's is empty)."""
    parent = os.path.join(CG_ROOT, f"{prefix}-{os.getpid()}")
    path = os.path.join(parent, "victim")
    os.mkdir(parent)
    try:
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
        os.mkdir(path)
        _write(os.path.join(path, "memory.max"), "64M")
        with contextlib.suppress(OSError):
            _write(os.path.join(path, "memory.swap.max"), "0")
        yield path
    finally:
        _remove(path)
        _remove(parent)


def start_allocator(cgroup: str) -> subprocess.Popen[bytes]:
    # sys.executable, not a python3 shim: each shim start costs seconds in the guest
    return subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            'echo $$ > "$1/cgroup.procs" && exec "$2" -c "$3"',
            "sh",
            cgroup,
            sys.executable,
            ALLOCATOR,
        ],
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def kprobe() -> Iterator[BccProbe]:
    probe = BccProbe(True)
    try:
        assert probe.start(), probe.reason
        yield probe
    finally:
        probe.close()


def test_kprobe_kill_reconciled_with_kmsg_and_counters(kprobe: BccProbe) -> None:
    assert kprobe.mode == "kprobe", kprobe.reason
    assert kprobe.compile_seconds is not None
    print(f"bcc probe: {kprobe.reason}")
    fds = kprobe.fds()
    assert fds, "bcc offers no perf reader fds"
    kmsg = KmsgReader()
    ep = native.Epoll()
    tracker = CounterTracker()
    with child_cgroup("pk-bcc") as cg:
        name = os.path.basename(cg)
        rel = "/" + os.path.relpath(cg, CG_ROOT)
        inode = os.stat(cg).st_ino
        events_path = os.path.join(cg, "memory.events.local")
        ev_fd = native.open_read(events_path)
        try:
            for fd in fds:
                ep.add(fd, native.EPOLLIN, 1)
            for fd in kmsg.fds():
                ep.add(fd, native.EPOLLIN, 2)
            ep.add(ev_fd, native.EPOLLPRI, 3)
            start = _events(events_path)
            assert tracker.observe("child", rel, start["oom_kill"], cgroup_id=inode) is None
            proc = start_allocator(cg)
            records: list[KillRecord] = []

            def have(source: str) -> bool:
                return any(r.source == source and r.pid in (proc.pid, None) for r in records)

            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not (
                have("bcc") and have("kmsg") and have("counters")
            ):
                for token, _mask in ep.wait(1000):
                    if token == 1:
                        records += kprobe.read()
                    elif token == 2:
                        records += kmsg.read()
                    else:
                        native.pread(ev_fd, 4096, events_path)
                        counts = _events(events_path)
                        rec = tracker.observe(
                            "child",
                            rel,
                            counts["oom_kill"],
                            cgroup_id=inode,
                            group_kills=counts.get("oom_group_kill"),
                        )
                        if rec is not None:
                            records.append(rec)
            rc = proc.wait(timeout=60)
        finally:
            native.close(ev_fd)
            ep.close()
            kmsg.close()
    assert rc == -9
    (bcc,) = [r for r in records if r.source == "bcc" and r.pid == proc.pid]
    assert bcc.comm == os.path.basename(sys.executable)[:15]
    assert bcc.extra["memcg_id"] == inode  # the cgroup that hit its limit
    assert bcc.cgroup_id == inode  # the victim's own v2 cgroup
    assert bcc.extra["cgroup_name"] == name
    assert bcc.extra["parent_cgroup_name"] == f"pk-bcc-{os.getpid()}"
    assert bcc.extra["totalpages"] > 0

    # one kill, three sources: the daemon's attribution, then the reconciler
    clock = [time.monotonic()]
    reconciler = Reconciler(5.0, lambda: clock[0])
    by_id = {inode: "child"}
    for r in records:
        key = by_id.get(r.cgroup_id or -1) or attribute(r.cgroup, {"child": rel})
        if r.source == "counters":
            key = "child"
        reconciler.add(r, key=key, cgroup=rel if key else None)
    kills = reconciler.drain()
    assert [(k.pid, k.key, k.sources) for k in kills] == [
        (proc.pid, "child", ("bcc", "counters", "kmsg"))
    ]
    doc = kills[0].to_json()
    assert doc["cgroup_id"] == inode and doc["rss_bytes"]["anon_rss"] > 0


def test_tracepoint_fallback_when_the_kprobe_is_not_used() -> None:
    probe = BccProbe(True, allow_kprobe=False)
    try:
        assert probe.start(), probe.reason
        assert probe.mode == "tracepoint"
        print(f"bcc fallback: {probe.reason}")
        with child_cgroup("pk-bcc-tp") as cg:
            proc = start_allocator(cg)
            found: list[KillRecord] = []
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not found:
                time.sleep(0.5)
                found = [r for r in probe.read() if r.pid == proc.pid]
            assert proc.wait(timeout=60) == -9
        (rec,) = found
        assert rec.source == "bcc"
        assert rec.cgroup_id is None  # no kprobe: the cgroup comes only from /proc
    finally:
        probe.close()
