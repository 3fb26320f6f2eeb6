"""cgroup v2 for real, inside the guest: memory.events on a real kill, a PSI trigger under
page-cache thrash, removal reported through cgroup.events/inotify, and the daemon end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pressured.demo.child import Child, leaker_argv
from pressured.kernel import cgroupfs
from pressured.kernel.procfs import count_open_fds
from pressured.kernel.watch import PsiSpec, Wakeup, Watcher, WatchOptions
from tests.support.daemon import running
from tests.support.events import has_kill, kind, wait_for_events
from tests.support.psi import (
    PSI_WINDOW_US,
    THRASH_READER,
    measure_stall_per_window,
    trigger_threshold_us,
)
from tests.support.wait import wait_for as wait_until

pytestmark = pytest.mark.vm
MiB = 1024 * 1024


@pytest.fixture
def v2_child() -> Iterator[Callable[[int], Child]]:
    made: list[Child] = []

    def make(limit: int) -> Child:
        c = Child(f"pressured-vm-{os.getpid()}-{len(made)}", limit)
        assert c.v2, "the guest must be pure cgroup v2"
        made.append(c)
        return c

    yield make
    for c in made:
        c.remove()


def wait_for(w: Watcher, pred: Callable[[Wakeup], bool], timeout: float) -> Wakeup | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for wake in w.wait(max(0.0, end - time.monotonic())):
            if pred(wake):
                return wake
    return None


def test_memory_events_wake_on_a_real_oom_kill(v2_child: Callable[[int], Child]) -> None:
    child = v2_child(48 * MiB)
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    assert ref.version == 2
    w = Watcher(WatchOptions(psi=None))
    try:
        report = w.add_cgroup("t", ref, [])
        assert "memory.events" in report.armed and "cgroup.events" in report.armed
        proc = child.spawn(leaker_argv("--rate-mib", "200", "--max-mib", "300"))
        wake = wait_for(
            w, lambda x: x.cause == "events" and x.detail.endswith("memory.events"), 120
        )
        assert wake is not None, "memory.events did not wake epoll on a real kill"
        assert proc.wait(timeout=60) == -9
        assert cgroupfs.read_kill_counters(ref).oom_kill >= 1
        assert cgroupfs.read_kill_counters(ref).oom_kill_local >= 1
    finally:
        w.close()


def _ext4_thrash_file(size_mib: int) -> str:
    """ext4 on a loop device: real page cache and refaults (tmpfs and 9p pages do not refault)."""
    mnt, img = "/run/pressured-vm-mnt", "/run/pressured-vm-ext4.img"
    path = os.path.join(mnt, "big.bin")
    if os.path.exists(path):
        return path
    subprocess.run(["modprobe", "loop"], check=False)
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["truncate", "-s", f"{size_mib + 64}M", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
    subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
    with open(path, "wb") as f:
        block = b"\xa5" * MiB
        for _ in range(size_mib):
            f.write(block)
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    return path


def test_psi_trigger_fires_under_page_cache_thrash(v2_child: Callable[[int], Child]) -> None:
    data = _ext4_thrash_file(192)
    child = v2_child(64 * MiB)
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    psi_file = ref.file("memory.pressure")
    child.spawn([sys.executable, "-c", THRASH_READER, data])
    per_window = measure_stall_per_window(psi_file, timeout=120)
    assert per_window > 0, f"the thrash reader caused no memory stall in 120 s ({psi_file})"
    threshold_us = trigger_threshold_us(per_window)
    w = Watcher(WatchOptions(psi=PsiSpec("some", threshold_us, PSI_WINDOW_US)))
    try:
        report = w.add_cgroup("t", ref, [])
        assert f"psi some {threshold_us}/{PSI_WINDOW_US}" in report.armed, report
        wake = wait_for(w, lambda x: x.cause == "psi", 120)
        assert wake is not None, (
            f"PSI trigger (some {threshold_us} us per {PSI_WINDOW_US} us) did not fire while "
            f"the workload stalled about {per_window:.0f} us per window"
        )
        assert wake.detail == psi_file
    finally:
        w.close()


def test_removal_is_reported_and_releases_fds(v2_child: Callable[[int], Child]) -> None:
    child = v2_child(64 * MiB)
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    w = Watcher(WatchOptions())
    before = count_open_fds()
    try:
        w.add_cgroup("t", ref, [16 * MiB])
        proc = child.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
        proc.kill()
        proc.wait()
        child.remove()
        wake = wait_for(w, lambda x: x.cause == "gone", 60)
        assert wake is not None and wake.key == "t"
        assert w.open_fds() == 0
        assert count_open_fds() == before
    finally:
        w.close()


def test_daemon_warns_and_signals_before_the_kill_on_v2(
    v2_child: Callable[[int], Child], tmp_path: object
) -> None:
    from pathlib import Path

    tmp = Path(str(tmp_path))
    child = v2_child(256 * MiB)
    events = tmp / "events.jsonl"
    signals = tmp / "signals.txt"
    cfg = tmp / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "thresholds": {"warn_percent": 60, "critical_percent": 80, "metric": "usage"},
                "actions": [{"type": "log"}, {"type": "signal"}],
                "metrics": {"enabled": False},
            }
        )
    )
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    # the guest is slow (software emulation): start-up takes long, readiness says when it is over
    with running(args, ready_timeout=240) as daemon:
        app = child.spawn(
            leaker_argv("--rate-mib", "16", "--max-mib", "400", "--signals-out", str(signals))
        )
        assert app.wait(timeout=240) == -9
        docs = wait_for_events(events, has_kill, 60, poll=1.0)
        kinds = [kind(d) for d in docs]
        assert "warn" in kinds and "critical" in kinds, kinds
        assert kinds.index("warn") < kinds.index("critical")
        got = signals.read_text().split() if signals.exists() else []
        assert "SIGUSR1" in got and "SIGUSR2" in got
        assert "oom_killed" in kinds, kinds
        kill = next(d for d in docs if d["event_type"] == "oom_killed")
        assert kill["warned_seconds_before"] is not None and kill["warned_seconds_before"] > 0
        assert daemon.stop(60) == 0, daemon.stderr.text()


def test_throttled_at_memory_high_gets_a_memory_throttled_event(
    v2_child: Callable[[int], Child], tmp_path: object
) -> None:
    """memory.high below what a process allocates: the kernel throttles it (reclaim, then a
    sleep of up to 2 s per charge) rather than killing it. Measured first: how much "full"
    stall that gives here; the daemon's level is set from it."""
    tmp = Path(str(tmp_path))
    child = v2_child(512 * MiB)  # memory.max far above: only memory.high holds it
    high = 48 * MiB
    with open(os.path.join(child.path, "memory.high"), "w") as f:
        f.write(str(high))
    ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
    app = child.spawn(leaker_argv("--rate-mib", "0", "--max-mib", "400"))
    wait_until(lambda: cgroupfs.read_kill_counters(ref).high, 120, "memory.events high > 0")
    per_window = measure_stall_per_window(
        ref.file("memory.pressure"), kind="full", at_least_us=2_000_000, timeout=60
    )
    full_percent = 100.0 * per_window / PSI_WINDOW_US
    assert full_percent > 1, f"held at memory.high, yet only {full_percent:.2f}% full stall"
    level = round(full_percent / 3, 2)  # avg10 lags and wavers around the measured share

    events, cfg = tmp / "events.jsonl", tmp / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "thresholds": {"throttle_full_percent": level, "throttle_seconds": 3},
                "actions": [{"type": "log"}],
            }
        )
    )
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    with running([*args, "--metrics-port", "0"], ready_timeout=240) as daemon:
        port = int(daemon.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1))

        def throttled(docs: list[dict[str, object]]) -> bool:
            return any(d["event_type"] == "memory_throttled" for d in docs)

        docs = wait_for_events(events, throttled, 180, poll=1.0)
        assert throttled(docs), (full_percent, level, docs[-3:])
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert daemon.stop(60) == 0, daemon.stderr.text()
    ev = next(d for d in docs if d["event_type"] == "memory_throttled")
    assert (ev["severity"], ev["cgroup"]) == ("warn", child.path)
    evidence = ev["throttle"]
    assert evidence["memory_high_bytes"] == high
    assert evidence["high_events_delta"] > 0
    assert evidence["held_seconds"] >= 3
    assert evidence["psi_full_avg10"] >= level
    assert evidence["full_stall_us"] > 0
    seconds = [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "pressured_memory_throttled_seconds_total"
        and s.labels.get("cgroup") == child.path
    ]
    assert seconds and seconds[0] >= 3, seconds
    # throttled, not killed
    assert app.poll() is None
    assert not any(d["event_type"] == "oom_killed" for d in docs)
