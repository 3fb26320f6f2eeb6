"""Kill -> oom_killed event latency, on real OOM kills of this host; and the bcc compile time.

N kills, one at a time, in a small limited cgroup watched by the daemon (in this process, with
every kill source this machine offers). The kill moment is when the bench's waitpid() sees the
victim die of SIGKILL; the event moment is when the daemon hands the merged oom_killed event to
its actions. A negative latency means pressured knew before the parent did (the tracepoint and
kmsg report at oom:mark_victim, before the victim is reaped). Prints one JSON object.

    python bench/kill_latency.py [--kills 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured import config as config_mod
from pressured.daemon import Daemon
from pressured.demo.child import Child, leaker_argv, own_memory_cgroup
from pressured.model import OomKill

MiB = 1024 * 1024


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 3)


def bcc_compile_seconds() -> tuple[float | None, str]:
    try:
        from pressured.kills.readers.bcc import BccProbe
    except ImportError as exc:
        return None, f"bcc probe module unavailable: {exc}"
    probe = BccProbe(True)
    try:
        probe.start()
        if not probe.active:
            return None, probe.reason
        return getattr(probe, "compile_seconds", None), probe.reason
    finally:
        probe.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    a = ap.parse_args()
    base, why = own_memory_cgroup()
    if base is None:
        print(json.dumps({"error": f"no writable memory cgroup: {why}"}))
        sys.exit(1)
    child = Child(f"pressured-bench-kill-{os.getpid()}", 32 * MiB)
    seen: dict[int, float] = {}
    sources: dict[int, list[str]] = {}
    try:
        cfg = config_mod.load(
            None,
            env={},
            flags={
                "source.cgroup.paths": [child.path],
                "source.machine": False,
                "metrics.enabled": False,
                "events_out": os.devnull,
                "log_level": "warning",
            },
        )
        daemon = Daemon(cfg)
        emit = daemon.emit

        def capture(event: object, state: object) -> None:
            if isinstance(event, OomKill) and event.pid is not None:
                seen[event.pid] = time.monotonic()
                sources[event.pid] = list(event.sources)
            emit(event, state)  # type: ignore[arg-type]

        daemon.emit = capture  # type: ignore[method-assign]
        deaths: dict[int, float] = {}
        ready = threading.Event()
        start = daemon.start

        def start_then_signal() -> None:
            start()
            ready.set()

        daemon.start = start_then_signal  # type: ignore[method-assign]

        def killer() -> None:
            # a kill before the daemon has armed is one it never watched (the VM guest takes
            # seconds to start it): begin only once it is ready
            ready.wait(120)
            for _ in range(a.kills):
                proc = child.spawn(leaker_argv("--rate-mib", "0", "--max-mib", "200"))
                proc.wait()
                deaths[proc.pid] = time.monotonic()
                time.sleep(0.3)
            time.sleep(daemon.cfg.get("kills.window_seconds") + 1)
            os.kill(os.getpid(), 15)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        daemon.run(run_for=a.kills * 3 + 30)
        status = daemon.kill_status
    finally:
        child.remove()
    lat = [(seen[p] - d) * 1000 for p, d in deaths.items() if p in seen]
    compile_s, bcc_note = bcc_compile_seconds()
    print(
        json.dumps(
            {
                "kills": len(deaths),
                "events": len(seen),
                "kill_event_p50_ms": pct(lat, 50),
                "kill_event_p99_ms": pct(lat, 99),
                "sources": sorted({s for v in sources.values() for s in v}),
                "sources_active": {k: v[0] for k, v in status.items()},
                "bcc_compile_s": compile_s,
                "bcc_note": bcc_note,
            }
        )
    )


if __name__ == "__main__":
    main()
