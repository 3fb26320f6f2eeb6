"""Cost growth: what a wake-up and idle waiting cost as the number of watched cgroups grows.

For each N in --counts (100, 1000, 5000): N limited child cgroups armed in one Watcher
(add_cgroups: v1 usage thresholds on the kernel's eventfds; on a pure v2 host, adaptive reads),
then

1. idle: the Watcher's CPU time inside wait() over --idle-seconds while nothing changes,
   per second of waiting;
2. per wake: for each M in --changed (1, 10), M of the N cgroups get a leaking process that
   crosses five levels and holds; the CPU time spent inside the wait() calls that returned
   wake-ups, per wake-up and per such call.

The point: the per-wake figure follows the cgroups that changed (M), not the cgroups watched
(N). The idle figure grows with N by one read of each idle v1 cgroup per cold interval (4 s):
kernel memory is charged without the v1 threshold check, so only reads see it grow.
PSI triggers are off here (one fd and an RCU wait each; not what this measures).
The machine may be shared: the load average at the start and end is printed.

Prints one JSON object. Figures, not a test: nothing here asserts a speed.

    python bench/cost_growth.py [--counts 100,1000,5000] [--changed 1,10] [--idle-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured.demo.child import Child, leaker_argv, own_memory_cgroup
from pressured.kernel import cgroupfs
from pressured.kernel.watch import Watcher, WatchOptions

MiB = 1024 * 1024
LIMIT = 512 * MiB
QUIET_LEVELS = [400 * MiB, 480 * MiB]
"""Levels of the cgroups that do not change (never reached)."""
CHANGE_LEVELS = [4 * MiB, 8 * MiB, 12 * MiB, 16 * MiB, 20 * MiB]
"""Levels of a changing cgroup: its leaker crosses all five, then holds at 24 MiB."""


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def timed_wait(w: Watcher, timeout: float) -> tuple[float, int]:
    """(CPU seconds of this thread inside one wait(), wake-ups it returned)."""
    before = time.thread_time()
    wakes = w.wait(timeout)
    return time.thread_time() - before, len(wakes)


def idle(w: Watcher, seconds: float) -> dict[str, float | int]:
    cpu = 0.0
    wakeups = 0
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        c, n = timed_wait(w, left)
        cpu += c
        wakeups += n
    return {"idle_cpu_ms_per_s": round(cpu * 1000 / seconds, 4), "idle_wakeups": wakeups}


def changing(w: Watcher, children: list[Child]) -> dict[str, float | int]:
    """Leakers in ``children``: CPU inside wait() calls that returned wake-ups."""
    for child in children:
        argv = leaker_argv("--rate-mib", "64", "--max-mib", "24", "--hold")
        child.spawn(argv, stdout=subprocess.DEVNULL)
    cpu = 0.0
    calls = 0
    wakeups = 0
    end = time.monotonic() + 30
    settled_at: float | None = None
    while time.monotonic() < end:
        c, n = timed_wait(w, 0.2)
        if n:
            cpu += c
            calls += 1
            wakeups += n
        if settled_at is None and all(ch.usage() >= 24 * MiB for ch in children):
            settled_at = time.monotonic()
        if settled_at is not None and time.monotonic() - settled_at > 0.5:
            break
    return {
        "changed": len(children),
        "wakeups": wakeups,
        "calls_with_wakeups": calls,
        "cpu_us_per_wakeup": round(cpu * 1e6 / wakeups, 1) if wakeups else 0.0,
        "cpu_us_per_call": round(cpu * 1e6 / calls, 1) if calls else 0.0,
    }


def one_count(n: int, changed: list[int], idle_s: float) -> dict[str, object]:
    need = sum(changed)
    if need > n:
        raise SystemExit(f"--changed needs {need} cgroups, only {n} at this count")
    parent = Child(f"pressured-bench-cost-{os.getpid()}-{n}", None)
    children: list[Child] = []
    w: Watcher | None = None
    try:
        made = time.monotonic()
        for i in range(n):
            children.append(Child(f"{os.path.basename(parent.path)}/c{i}", LIMIT))
        layout = cgroupfs.detect_layout()
        items = [
            (str(i), cgroupfs.resolve(c.path, layout), CHANGE_LEVELS if i < need else QUIET_LEVELS)
            for i, c in enumerate(children)
        ]
        setup_s = time.monotonic() - made
        w = Watcher(WatchOptions(psi=None))
        started = time.monotonic()
        if hasattr(w, "add_cgroups"):
            results = w.add_cgroups(items)
        else:  # an older Watcher (for a before/after comparison): one at a time
            results = {k: w.add_cgroup(k, ref, levels) for k, ref, levels in items}
        arm_s = time.monotonic() - started
        failed = [k for k, r in results.items() if isinstance(r, Exception)]
        out: dict[str, object] = {
            "cgroups": n,
            "setup_s": round(setup_s, 2),
            "arm_s": round(arm_s, 3),
            "not_armed": len(failed),
            "fds": w.open_fds(),
        }
        w.wait(0)  # what arming itself left to report
        out.update(idle(w, idle_s))
        rounds = []
        first = 0
        for m in changed:
            rounds.append(changing(w, children[first : first + m]))
            first += m
        out["per_wake"] = rounds
        return out
    finally:
        if w is not None:
            w.close()
        for c in children:
            c.remove()
        parent.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="100,1000,5000")
    ap.add_argument("--changed", default="1,10")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    a = ap.parse_args()
    base, why = own_memory_cgroup()
    if base is None:
        print(json.dumps({"error": f"no writable memory cgroup: {why}"}))
        sys.exit(1)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load_start = loadavg()
    changed = [int(x) for x in a.changed.split(",") if x.strip()]
    runs = [one_count(int(n), changed, a.idle_seconds) for n in a.counts.split(",")]
    print(
        json.dumps(
            {
                "path": "v2 adaptive reads"
                if os.path.exists("/sys/fs/cgroup/cgroup.controllers")
                else "v1 usage threshold eventfd",
                "runs": runs,
                "load_start": load_start,
                "load_end": loadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
