"""The Watcher against real kernel notifications on this host (marker: kernel)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from pressured.kernel import cgroupfs
from pressured.kernel.procfs import count_open_fds
from pressured.kernel.watch import PsiSpec, Wakeup, Watcher, WatchOptions
from tests.support.cgroups import Child, leaker_argv
from tests.support.psi import (
    PSI_WINDOW_US,
    THRASH_READER,
    measure_stall_per_window,
    trigger_threshold_us,
)

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def wait_for(
    w: Watcher, pred: Callable[[Wakeup], bool], timeout: float, seen: list[Wakeup] | None = None
) -> Wakeup | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for wake in w.wait(max(0.0, end - time.monotonic())):
            if seen is not None:
                seen.append(wake)
            if pred(wake):
                return wake
    return None


def test_v1_usage_threshold_eventfd_fires_on_crossing(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    child = make_cgroup(256 * MiB)
    layout = cgroupfs.detect_layout()
    ref = cgroupfs.resolve(child.path, layout)
    w = Watcher(WatchOptions(psi=None))
    try:
        report = w.add_cgroup("t", ref, [48 * MiB, 96 * MiB])
        if ref.version == 1:
            assert f"threshold {48 * MiB}" in report.armed
            assert "oom_control" in report.armed
        child.spawn(leaker_argv("--rate-mib", "64", "--max-mib", "80", "--hold"))
        wake = wait_for(
            w,
            lambda x: (
                x.cause in ("threshold", "read")
                and x.usage_bytes is not None
                and x.usage_bytes >= 48 * MiB
            ),
            15,
        )
        assert wake is not None, "no wake-up when usage crossed 48 MiB"
        assert wake.key == "t"
    finally:
        w.close()


def test_oom_control_fires_and_counts_a_real_kill(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    child = make_cgroup(32 * MiB)
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    before = cgroupfs.read_kill_counters(ref).oom_kill
    w = Watcher(WatchOptions(psi=None))
    try:
        w.add_cgroup("t", ref, [24 * MiB])
        proc = child.spawn(leaker_argv("--rate-mib", "200", "--max-mib", "200"))
        cause = "oom" if ref.version == 1 else "events"
        wake = wait_for(w, lambda x: x.cause == cause, 20)
        assert wake is not None, f"no {cause} wake-up for a real OOM kill"
        assert proc.wait(timeout=10) == -9
        # the counter may trail the notification by a moment
        end = time.monotonic() + 5
        while cgroupfs.read_kill_counters(ref).oom_kill == before and time.monotonic() < end:
            time.sleep(0.05)
        assert cgroupfs.read_kill_counters(ref).oom_kill >= before + 1
    finally:
        w.close()


def _thrash_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def test_psi_trigger_fires_under_page_cache_thrash(
    make_cgroup: Callable[[int | None], Child], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import sys

    child = make_cgroup(48 * MiB)
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    psi_file = ref.psi_file("memory")
    if psi_file is None:
        pytest.skip("kernel offers no per-cgroup memory.pressure for this cgroup")
    # a block-backed file (not tmpfs) four times the limit: refaults of its pages, and the
    # reclaim that makes room for them, are what PSI counts as memory stall
    data = tmp_path_factory.mktemp("thrash") / "data.bin"
    _thrash_file(str(data), 192 * MiB)
    child.spawn([sys.executable, "-c", THRASH_READER, str(data)])
    per_window = measure_stall_per_window(psi_file, at_least_us=20_000, timeout=60)
    assert per_window > 0, (
        "the thrash reader caused no memory stall in 60 s: the premise of this test does not "
        f"hold here ({psi_file})"
    )
    threshold_us = trigger_threshold_us(per_window)
    w = Watcher(WatchOptions(psi=PsiSpec("some", threshold_us, PSI_WINDOW_US)))
    try:
        report = w.add_cgroup("t", ref, [])
        assert any(a.startswith("psi some") for a in report.armed), report
        wake = wait_for(w, lambda x: x.cause == "psi", 60)
        assert wake is not None, (
            f"PSI trigger (some {threshold_us} us per {PSI_WINDOW_US} us) did not fire while "
            f"the workload stalled about {per_window:.0f} us per window"
        )
        assert wake.detail.endswith("memory.pressure")
    finally:
        w.close()


def test_removed_cgroup_is_gone_and_releases_its_fds(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    child = make_cgroup(64 * MiB)
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    w = Watcher(WatchOptions())
    baseline = count_open_fds()
    try:
        w.add_cgroup("t", ref, [16 * MiB, 32 * MiB])
        assert count_open_fds() > baseline
        child.remove()
        wake = wait_for(w, lambda x: x.cause == "gone", 10)
        assert wake is not None and wake.key == "t"
        assert "t" not in w
        assert w.open_fds() == 0
        assert count_open_fds() == baseline
    finally:
        w.close()


def test_missing_path_is_a_clear_error() -> None:
    from pressured.errors import CgroupError

    with pytest.raises(CgroupError, match="no such cgroup directory"):
        cgroupfs.resolve("/sys/fs/cgroup/memory/does-not-exist-pressured", cgroupfs.detect_layout())


def test_arm_and_release_ten_thousand_leaves_no_fd(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    """5,000 PSI triggers and 5,000 v1 registrations (or v2 kernfs watches), all released.

    Both kernel paths pay an RCU grace period per trigger (psi_trigger_destroy) or per
    registration (__mem_cgroup_usage_register_event), ~10 ms here: the work is spread over
    threads and cgroups so those waits overlap.
    """
    from concurrent.futures import ThreadPoolExecutor

    from pressured import native

    children = [make_cgroup(64 * MiB) for _ in range(10)]
    refs = [cgroupfs.resolve(c.path, cgroupfs.detect_layout()) for c in children]
    psi_path = refs[0].psi_file("memory") or "/proc/pressure/memory"
    baseline = count_open_fds()

    def psi_round(_: int) -> None:
        for _ in range(500):
            trig = native.arm_psi_trigger(psi_path, "some", 100_000, 2_000_000)
            native.close(trig.fd)

    def registration_round(ref: cgroupfs.CgroupRef) -> None:
        for i in range(500):
            if ref.version == 1:
                fd = native.register_v1_event(
                    ref.path, "memory.usage_in_bytes", str((i + 1) * 4096)
                )
            else:
                fd = native.open_read(ref.file("memory.events"))
            native.close(fd)

    with ThreadPoolExecutor(20) as pool:
        jobs = [pool.submit(psi_round, i) for i in range(10)]
        jobs += [pool.submit(registration_round, ref) for ref in refs]
        for job in jobs:
            job.result()
    assert count_open_fds() == baseline

    w = Watcher(WatchOptions())
    with_watcher = count_open_fds()
    for _ in range(20):
        for i, ref in enumerate(refs):
            w.add_cgroup(f"t{i}", ref, [8 * MiB, 16 * MiB])
        assert w.open_fds() > 0
        for i in range(len(refs)):
            w.remove(f"t{i}")
    assert w.open_fds() == 0
    assert count_open_fds() == with_watcher
    w.close()
    assert count_open_fds() == baseline
