"""cgroup readers on fake trees: v1, v2, hybrid, unlimited, malformed and missing files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import cgroupfs, parse, procfs, sampler
from pressured.model import MACHINE, Sample

PSI = (
    "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\n"
    "full avg10=0.50 avg60=0.25 avg300=0.00 total=6543\n"
)


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def v2_tree(root: Path, *, limit: str = "268435456") -> Path:
    write(root, "cgroup.controllers", "cpu io memory pids\n")
    cg = root / "app"
    write(root, "app/cgroup.controllers", "memory\n")
    write(root, "app/memory.current", "104857600\n")
    write(root, "app/memory.max", limit + "\n")
    write(
        root,
        "app/memory.stat",
        "anon 80000000\nfile 24857600\ninactive_file 4857600\nactive_file 20000000\n",
    )
    write(root, "app/memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    write(
        root,
        "app/memory.events.local",
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    write(root, "app/memory.pressure", PSI)
    write(root, "app/io.pressure", PSI)
    write(root, "app/cpu.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    write(root, "app/cgroup.procs", "101\n102\n")
    return cg


def v1_tree(root: Path, *, hybrid: bool, limit: str = "134217728") -> Path:
    write(root, "memory/memory.usage_in_bytes", "0\n")
    write(root, "memory/job/memory.usage_in_bytes", "67108864\n")
    write(root, "memory/job/memory.limit_in_bytes", limit + "\n")
    write(
        root,
        "memory/job/memory.stat",
        "cache 1000\ninactive_file 99\ntotal_inactive_file 16777216\n",
    )
    write(root, "memory/job/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    write(root, "memory/job/cgroup.procs", "7\n")
    if hybrid:
        write(root, "unified/cgroup.controllers", "\n")
        write(root, "unified/job/memory.pressure", PSI)
    return root / "memory" / "job"


def test_v2_detect_and_read(tmp_path: Path) -> None:
    cg = v2_tree(tmp_path)
    layout = cgroupfs.detect_layout(str(tmp_path))
    assert layout.kind == "v2" and layout.memory_root == str(tmp_path)
    ref = cgroupfs.resolve(str(cg), layout)
    assert (ref.version, ref.relpath, ref.psi_dir) == (2, "/app", str(cg))
    mem = cgroupfs.read_memory(ref)
    assert mem.usage_bytes == 104857600
    assert mem.limit_bytes == 268435456
    assert mem.working_set_bytes == 104857600 - 4857600
    k = cgroupfs.read_kill_counters(ref)
    assert (k.oom, k.oom_kill, k.oom_kill_local) == (2, 2, 1)
    psi = cgroupfs.read_psi(ref, "memory")
    assert psi is not None and psi.some_avg10 == 1.5 and psi.full_total == 6543
    cpu = cgroupfs.read_psi(ref, "cpu")
    assert cpu is not None and cpu.full_avg10 == 0.0  # no 'full' line before 5.13
    assert cgroupfs.read_pids(ref) == [101, 102]
    assert [r.path for r in cgroupfs.list_limited(str(tmp_path), layout)] == [str(cg)]


def test_v2_max_is_unlimited(tmp_path: Path) -> None:
    cg = v2_tree(tmp_path, limit="max")
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path)))
    assert cgroupfs.read_limit(ref) is None
    assert cgroupfs.list_limited(str(tmp_path), cgroupfs.detect_layout(str(tmp_path))) == []


def test_v1_detect_and_read(tmp_path: Path) -> None:
    cg = v1_tree(tmp_path, hybrid=False)
    layout = cgroupfs.detect_layout(str(tmp_path))
    assert layout.kind == "v1"
    ref = cgroupfs.resolve(str(cg), layout)
    assert (ref.version, ref.relpath, ref.psi_dir) == (1, "/job", None)
    mem = cgroupfs.read_memory(ref)
    # v1 working set uses total_inactive_file (hierarchical), not inactive_file
    assert mem.working_set_bytes == 67108864 - 16777216
    k = cgroupfs.read_kill_counters(ref)
    assert (k.oom, k.oom_kill, k.oom_kill_local, k.under_oom) == (None, 4, 4, False)
    assert cgroupfs.read_psi(ref) is None


def test_v1_unlimited_sentinel(tmp_path: Path) -> None:
    cg = v1_tree(tmp_path, hybrid=False, limit="9223372036854771712")
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path)))
    assert cgroupfs.read_limit(ref) is None


def test_hybrid_takes_psi_from_the_v2_mirror(tmp_path: Path) -> None:
    cg = v1_tree(tmp_path, hybrid=True)
    layout = cgroupfs.detect_layout(str(tmp_path))
    assert layout.kind == "hybrid"
    ref = cgroupfs.resolve(str(cg), layout)
    assert ref.version == 1 and ref.psi_dir == str(tmp_path / "unified" / "job")
    psi = cgroupfs.read_psi(ref)
    assert psi is not None and psi.some_avg60 == 0.75


def test_working_set_floors_at_zero() -> None:
    assert cgroupfs.working_set(100, {"inactive_file": 500}, 2) == 0


@pytest.mark.parametrize(
    ("rel", "text", "match"),
    [
        ("app/memory.current", "lots\n", "memory.current: expected an integer, got 'lots'"),
        ("app/memory.current", "-5\n", "memory.current: expected a non-negative integer"),
        ("app/memory.max", "12ab\n", "memory.max: expected an integer"),
        ("app/memory.stat", "anon 1\nbroken\n", "memory.stat: line 2: expected 'key value'"),
        ("app/memory.stat", "anon x\n", "memory.stat: line 1: value of 'anon' is not an integer"),
        ("app/memory.events", "oom_kill\n", "memory.events: line 1"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, rel: str, text: str, match: str) -> None:
    cg = v2_tree(tmp_path)
    write(tmp_path, rel, text)
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path)))
    read = cgroupfs.read_kill_counters if rel.endswith("events") else cgroupfs.read_memory
    with pytest.raises(CgroupFileError, match=match) as info:
        read(ref)
    assert info.value.path == str(tmp_path / rel)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no 'some' line"),
        ("partial avg10=1\n", "expected 'some' or 'full'"),
        ("some avg10=x avg60=0 avg300=0 total=0\n", "avg10 is not a number"),
        ("some avg10=1 bogus=2\n", "unexpected field 'bogus=2'"),
    ],
)
def test_malformed_psi(text: str, match: str) -> None:
    with pytest.raises(CgroupFileError, match=match):
        parse.parse_psi(text, "/x/memory.pressure")


def test_missing_file_is_named(tmp_path: Path) -> None:
    cg = v2_tree(tmp_path)
    (cg / "memory.stat").unlink()
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path)))
    with pytest.raises(CgroupFileError, match=r"memory\.stat: missing"):
        cgroupfs.read_memory(ref)


def test_resolve_refuses_what_is_not_a_memory_cgroup(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    write(tmp_path, "nomem/cgroup.controllers", "\n")
    layout = cgroupfs.detect_layout(str(tmp_path))
    with pytest.raises(CgroupError, match="without the memory controller"):
        cgroupfs.resolve(str(tmp_path / "nomem"), layout)
    with pytest.raises(CgroupError, match="no such cgroup directory"):
        cgroupfs.resolve(str(tmp_path / "absent"), layout)
    (tmp_path / "plain").mkdir()
    with pytest.raises(CgroupError, match="not a memory cgroup"):
        cgroupfs.resolve(str(tmp_path / "plain"), layout)


def test_machine_from_a_fake_proc(tmp_path: Path) -> None:
    write(
        tmp_path,
        "meminfo",
        "MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n",
    )
    m = procfs.read_machine(str(tmp_path))
    assert m.total_bytes == 16000000 * 1024
    assert m.working_set_bytes == 4000000 * 1024
    write(tmp_path, "meminfo", "MemTotal: 1 kB\n")
    with pytest.raises(CgroupFileError, match="no MemAvailable line"):
        procfs.read_machine(str(tmp_path))


def fake_task(
    proc: Path, rel: str, *, state: str = "S", flags: int = 0x400000, sigkill: bool = False
) -> None:
    """/proc/<rel>/stat and status as the kernel writes them (state, flags, pending)."""
    pid = rel.rsplit("/", 1)[-1]
    stat = [state, "1", pid, pid, "0", "-1", str(flags), *("0" for _ in range(40))]
    write(proc, f"{rel}/stat", f"{pid} (a (b) c) " + " ".join(stat) + "\n")
    pending = f"{1 << 8:016x}" if sigkill else "0" * 16
    threads = sum(1 for _ in (proc / rel / "task").glob("*")) or 1
    write(
        proc,
        f"{rel}/status",
        f"Name:\tapp\nState:\t{state}\nThreads:\t{threads}\n"
        f"SigPnd:\t{'0' * 16}\nShdPnd:\t{pending}\n",
    )


def test_process_alive_tells_a_dying_process_from_a_live_one(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_task(proc, "10")
    fake_task(proc, "11", sigkill=True)  # OOM-killed, not yet exiting
    fake_task(proc, "12", state="R", flags=0x40040C)  # exiting: its memory being freed
    fake_task(proc, "13", state="Z", flags=0x40040C)  # a zombie not reaped yet
    # A process whose first thread exited lives on in its other thread.
    fake_task(proc, "14/task/15")
    fake_task(proc, "14/task/14", state="Z", flags=0x40044C)
    fake_task(proc, "14", state="Z", flags=0x40044C)
    # A process whose every thread is exiting does not.
    fake_task(proc, "16/task/17", state="R", flags=0x40040C)
    fake_task(proc, "16/task/16", state="R", flags=0x40040C)
    fake_task(proc, "16", state="R", flags=0x40040C)
    alive = {pid: procfs.process_alive(pid, str(proc)) for pid in (10, 11, 12, 13, 14, 16, 99)}
    assert alive == {10: True, 11: False, 12: False, 13: False, 14: True, 16: False, 99: False}


@pytest.mark.parametrize(
    ("text", "v1_memory", "unified", "memory"),
    [
        ("12:memory:/a/b\n4:cpu,cpuacct:/c\n0::/d\n", "/a/b", "/d", "/a/b"),  # hybrid
        ("5:cpu,memory:/a/b\n", "/a/b", None, "/a/b"),  # co-mounted v1 controllers
        (
            "0::/kubepods.slice/pod.slice/cri.scope\n",
            None,
            "/kubepods.slice/pod.slice/cri.scope",
            None,
        ),
        ("0::/../cri-containerd-abc.scope\n", None, "/../cri-containerd-abc.scope", None),
        ("", None, None, None),  # a reaped process reads empty
        ("garbage\n12:memory\n0::/x\n", None, "/x", None),  # other shapes are skipped
    ],
)
def test_proc_cgroups(
    text: str, v1_memory: str | None, unified: str | None, memory: str | None
) -> None:
    got = parse.parse_proc_cgroups(text)
    assert (got.v1_memory, got.unified) == (v1_memory, unified)
    assert got.memory == (memory if memory is not None else unified)


def fake_process(proc: Path, pid: int, *, comm: str, start_ticks: int, cgroup: str) -> None:
    write(proc, f"{pid}/comm", comm + "\n")
    rest = ["S", *(str(i) for i in range(4, 22)), str(start_ticks), "0", "0"]
    write(proc, f"{pid}/stat", f"{pid} ({comm}) " + " ".join(rest) + "\n")
    write(proc, f"{pid}/cgroup", cgroup)
    (proc / str(pid) / "fd").mkdir()


def test_processes_in_a_fake_proc(tmp_path: Path) -> None:
    fake_process(tmp_path, 30, comm="app", start_ticks=500, cgroup="0::/pod/app\n")
    fake_process(tmp_path, 7, comm="init", start_ticks=100, cgroup="3:memory:/pod/init\n")
    write(tmp_path, "self/cgroup", "0::/pod/sidecar\n")
    write(tmp_path, "meminfo", "MemTotal: 2 kB\nMemAvailable: 1 kB\n")
    proc = str(tmp_path)
    assert procfs.pids(proc) == [7, 30]
    assert procfs.process_name(30, proc) == "app"
    assert procfs.process_name(31, proc) is None
    assert procfs.process_start_ticks(30, proc) == 500
    ticks = procfs.started_after_boot(7, proc)
    assert ticks is not None and ticks * os.sysconf("SC_CLK_TCK") == pytest.approx(100)
    assert procfs.started_after_boot(31, proc) is None
    assert procfs.count_open_fds(30, proc) == 0
    assert procfs.memory_cgroup(30, proc) == "/pod/app"
    assert procfs.memory_cgroup(7, proc) == "/pod/init"
    assert procfs.memory_cgroup("self", proc) == "/pod/sidecar"
    assert procfs.memory_cgroup(31, proc) is None  # gone
    with pytest.raises(CgroupFileError, match="31/cgroup: missing"):
        procfs.read_cgroups(31, proc)


def test_processes_in_the_real_proc_agree_with_its_files() -> None:
    me = os.getpid()
    assert me in procfs.pids()
    comm = Path(f"/proc/{me}/comm").read_text().strip()
    name = procfs.process_name(me)
    assert name is not None and name.startswith(comm)
    ticks = procfs.process_start_ticks(me)
    started = procfs.started_after_boot(me)
    assert ticks is not None and started is not None
    assert started == pytest.approx(ticks / os.sysconf("SC_CLK_TCK"), abs=0.02)
    assert procfs.count_open_fds() == len(os.listdir(f"/proc/{me}/fd"))  # each counts its own
    assert procfs.memory_cgroup("self") == procfs.read_cgroups(me).memory
    assert procfs.started_after_boot(2**22 + 1) is None  # above pid_max: no such process


def test_samples_of_a_cgroup_and_of_the_machine(tmp_path: Path) -> None:
    cg = v2_tree(tmp_path / "cg")
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path / "cg")))
    proc = tmp_path / "proc"
    for pid, score in ((101, "300"), (102, "900")):
        write(proc, f"{pid}/oom_score", score + "\n")
        write(proc, f"{pid}/oom_score_adj", "0\n")
    s = sampler.read_sample("app", ref, now=5.0, proc=str(proc), pids=[101, 102, 103])
    assert (s.key, s.time, s.usage_bytes, s.limit_bytes) == ("app", 5.0, 104857600, 268435456)
    assert s.working_set_bytes == 104857600 - 4857600
    assert s.memory_psi is not None and s.io_psi is not None and s.cpu_psi is not None
    assert (s.oom_score, s.oom_score_adj) == (900, 0)
    assert s.oom_kill_count == 1  # memory.events.local
    (cg / "memory.events.local").unlink()
    assert sampler.read_sample("app", ref, now=6.0).oom_kill_count == 2  # memory.events
    (cg / "memory.events").unlink()
    assert sampler.read_sample("app", ref, now=6.0).oom_kill_count is None
    # a PSI file that cannot be read fails the reading, or only empties its field
    (cg / "io.pressure").write_text("bogus\n")
    with pytest.raises(CgroupFileError, match=r"io\.pressure"):
        sampler.read_sample("app", ref, now=7.0)
    lenient = sampler.read_sample("app", ref, now=7.0, strict_psi=False)
    assert lenient.io_psi is None and lenient.memory_psi is not None
    write(proc, "meminfo", "MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
    write(proc, "pressure/memory", PSI)
    m = sampler.read_sample(MACHINE, None, now=8.0, proc=str(proc))
    assert (m.usage_bytes, m.working_set_bytes, m.limit_bytes) == (750 * 1024, 750 * 1024, 1024000)
    assert m.memory_psi is not None and m.io_psi is None and m.oom_kill_count is None
    assert m.unreclaimable_bytes == 750 * 1024  # MemAvailable is what the kernel can free


# --- the OOM-risk figure (cgroupfs.unreclaimable) ------------------------------------------
M = 1 << 20


def test_unreclaimable_v2_leaves_out_page_cache_and_reclaimable_slab() -> None:
    # a job re-reading a file: page cache on the file LRUs, a little kernel memory
    stat = {
        "anon": 5 * M,
        "file": 48 * M,
        "shmem": 0,
        "active_file": 40 * M,
        "inactive_file": 8 * M,
        "kernel": 3 * M,
        "slab_reclaimable": 2 * M,
        "sock": M // 2,
    }
    risk = cgroupfs.unreclaimable(stat, 2, usage=56 * M)
    assert risk.as_dict() == {"anon": 5 * M, "shmem": 0, "file_locked": 0, "kernel": M + M // 2}
    assert risk.total == 6 * M + M // 2


def test_unreclaimable_v2_counts_tmpfs_and_locked_file_pages() -> None:
    # tmpfs pages are file pages on the anon LRUs; mlocked and ramfs pages are off the file LRUs
    stat = {
        "anon": 4 * M,
        "file": 80 * M,
        "shmem": 50 * M,
        "active_file": 6 * M,
        "inactive_file": 4 * M,
        "unevictable": 20 * M,
        "kernel": M,
    }
    risk = cgroupfs.unreclaimable(stat, 2, usage=85 * M)
    assert (risk.anon, risk.shmem, risk.file_locked, risk.kernel) == (4 * M, 50 * M, 20 * M, M)


def test_dirty_and_writeback_file_pages_are_not_unreclaimable() -> None:
    # a buffered writer: its dirty and writeback pages sit on the file LRUs, and writeback
    # frees them (cgroupfs.unreclaimable says why they are left out)
    v2 = {
        "anon": 4 * M,
        "file": 60 * M,
        "shmem": 0,
        "active_file": 10 * M,
        "inactive_file": 50 * M,
        "kernel": M,
    }
    dirty = {**v2, "file_dirty": 40 * M, "file_writeback": 8 * M}
    assert cgroupfs.unreclaimable(dirty, 2, usage=65 * M) == cgroupfs.unreclaimable(
        v2, 2, usage=65 * M
    )
    assert cgroupfs.unreclaimable(dirty, 2, usage=65 * M).total == 5 * M
    v1 = {
        "total_rss": 4 * M,
        "total_cache": 60 * M,
        "total_active_file": 10 * M,
        "total_inactive_file": 50 * M,
    }
    dirty = {**v1, "total_dirty": 40 * M, "total_writeback": 8 * M}
    assert cgroupfs.unreclaimable(dirty, 1, usage=65 * M, kmem=M).total == 5 * M


def test_unreclaimable_v2_before_the_kernel_total() -> None:
    # kernels before 5.18 have no "kernel" line: its unreclaimable parts are added up
    stat = {
        "anon": M,
        "kernel_stack": M,
        "pagetables": 2 * M,
        "percpu": M,
        "slab_unreclaimable": 3 * M,
        "slab_reclaimable": 50 * M,
        "sock": M,
    }
    assert cgroupfs.unreclaimable(stat, 2, usage=0).kernel == 8 * M


def test_unreclaimable_v1_from_total_counters_and_kmem() -> None:
    stat = {
        "rss": 1,  # this cgroup only: the total_ (hierarchical) forms win
        "total_rss": 10 * M,
        "total_cache": 60 * M,
        "total_shmem": 20 * M,
        "total_active_file": 30 * M,
        "total_inactive_file": 8 * M,
    }
    risk = cgroupfs.unreclaimable(stat, 1, usage=80 * M, kmem=3 * M)
    assert risk.as_dict() == {
        "anon": 10 * M,
        "shmem": 20 * M,
        "file_locked": 2 * M,
        "kernel": 3 * M,
    }
    # without memory.kmem.usage_in_bytes: what usage holds beyond rss and cache
    assert cgroupfs.unreclaimable(stat, 1, usage=75 * M).kernel == 5 * M


def test_read_memory_v1_reads_kmem(tmp_path: Path) -> None:
    cg = v1_tree(tmp_path, hybrid=False)
    write(
        tmp_path,
        "memory/job/memory.stat",
        "total_rss 20000000\ntotal_cache 40000000\ntotal_inactive_file 30000000\n"
        "total_active_file 10000000\ntotal_workingset_refault_file 77\n",
    )
    write(tmp_path, "memory/job/memory.kmem.usage_in_bytes", "1000000\n")
    mem = cgroupfs.read_memory(cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path))))
    assert mem.unreclaimable_bytes == 21000000
    assert mem.working_set_bytes == 67108864 - 30000000
    assert mem.refault_file == 77
    write(tmp_path, "memory/job/memory.kmem.usage_in_bytes", "many\n")
    with pytest.raises(CgroupFileError, match=r"memory\.kmem\.usage_in_bytes"):
        cgroupfs.read_memory(cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path))))


def test_sample_decides_on_the_working_set_where_unreclaimable_is_unknown(tmp_path: Path) -> None:
    cg = v2_tree(tmp_path / "cg")
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path / "cg")))
    s = sampler.read_sample("app", ref, now=1.0)
    assert s.unreclaimable_bytes == 80000000  # anon; the file pages are all on the file LRUs
    assert (s.decided_by("unreclaimable"), s.metric_bytes("unreclaimable")) == (
        "unreclaimable",
        80000000,
    )
    assert s.metric_bytes("working_set") == 104857600 - 4857600
    assert s.metric_bytes("usage") == 104857600
    kubelet = Sample("pod", 1.0, 900, 800, 1000)  # the summary API has no memory.stat
    assert kubelet.decided_by("unreclaimable") == "working_set"
    assert kubelet.metric_bytes("unreclaimable") == 800
