"""Wake latency and idle cost: the Watcher beside a plain fixed 100 ms poller.

In one run, on real cgroups of this host:

1. latency: a process leaks into a limited cgroup and stamps (CLOCK_MONOTONIC) the moment its
   cgroup's usage reads past a threshold; the Watcher (kernel notification) and a 100 ms poller
   reading the same usage file run side by side and stamp when they notice. crossing -> wake-up.
2. action (with --action): the same crossing, measured to the moment the leaking process
   receives SIGUSR1, sent by `pressured run` (a subprocess, signal action) and by the poller
   (which sends the signal itself when it notices).
3. idle: both watch N idle cgroups for S seconds, each in its own process; CPU seconds used
   (user+system, after set-up) are reported.
4. arming (with --arming 0,200,1000): `pressured run` naming N limited cgroups (N = 0: one
   unlimited cgroup, nothing to register but PSI and its removal), as a user with N
   containers: seconds from the process start to its `ready:` line (every target armed or
   reported), then its RSS and open fds once idle, and at the largest N its CPU seconds over
   --idle-seconds.
5. breakdown (with --breakdown N): the daemon in this process, its stages stamped, N crossings
   of a warn level with a signal action: median ms after the crossing at which the wake-up,
   the sample, the engine, the hand-off to the actions, the action and the signal's receipt
   happen.

The machine may be shared: the load average at the start and end is printed with the figures.

Prints one JSON object. Figures, not a test: nothing here asserts a speed.

    python bench/wake_latency.py [--trials 30] [--cgroups 200] [--idle-seconds 20] [--action]
        [--arming 0,200,1000] [--metrics] [--only arming]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured.demo.child import Child, leaker_argv, own_memory_cgroup
from pressured.kernel import cgroupfs
from pressured.kernel.watch import Watcher, WatchOptions
from tests.support.daemon import PressuredProcess

MiB = 1024 * 1024
POLL_S = 0.100
LEAK_MIB_S = 64


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return round(values[k], 3)


def poller(
    path: str,
    threshold: int,
    out: dict[str, float],
    stop: threading.Event,
    signal_pid: int | None = None,
) -> None:
    """What a fixed-interval poller does: open, read, compare, sleep."""
    while not stop.is_set():
        with open(path) as f:
            usage = int(f.read())
        if usage >= threshold:
            out["noticed"] = time.monotonic()
            if signal_pid is not None:
                os.kill(signal_pid, signal.SIGUSR1)
                out["signalled"] = time.monotonic()
            return
        stop.wait(POLL_S)


def latency_trial(n: int, threshold: int, step_kib: int) -> tuple[float, float]:
    child = Child(f"pressured-bench-{os.getpid()}-{n}", 512 * MiB)
    try:
        ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
        w = Watcher(WatchOptions(psi=None, v1_pressure_level=None))
        w.add_cgroup("b", ref, [threshold])
        polled: dict[str, float] = {}
        stop = threading.Event()
        proc = child.spawn(
            leaker_argv(
                "--rate-mib",
                str(LEAK_MIB_S),
                "--step-kib",
                str(step_kib),
                "--max-mib",
                str(threshold // MiB + 32),
                "--hold",
                "--usage-file",
                ref.usage_file,
                "--stamp-at",
                str(threshold),
                # a random phase against the poller's 100 ms ticks
                "--start-after",
                f"{0.3 + random.random() * POLL_S:.4f}",
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # READY
        t = threading.Thread(target=poller, args=(ref.usage_file, threshold, polled, stop))
        t.start()
        woke = None
        end = time.monotonic() + 20
        while woke is None and time.monotonic() < end:
            for wake in w.wait(1.0):
                if wake.cause in ("threshold", "read") and (wake.usage_bytes or 0) >= threshold:
                    woke = time.monotonic()
                    break
        crossed = None
        for line in proc.stdout:
            if line.startswith("CROSSED"):
                crossed = float(line.split()[2])
                break
        t.join(timeout=20)
        stop.set()
        w.close()
        if woke is None or crossed is None or "noticed" not in polled:
            raise RuntimeError(f"trial {n}: woke={woke} crossed={crossed} polled={polled}")
        return (woke - crossed) * 1000, (polled["noticed"] - crossed) * 1000
    finally:
        child.remove()


def action_trial(n: int, threshold_pct: int, limit: int, events_dir: str) -> tuple[float, float]:
    """crossing -> SIGUSR1 received, for `pressured run` and for the poller."""
    threshold = limit * threshold_pct // 100
    results = []
    for who in ("pressured", "poller"):
        child = Child(f"pressured-bench-act-{os.getpid()}-{n}-{who}", limit)
        daemon: PressuredProcess | None = None
        try:
            ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
            sig_file = os.path.join(events_dir, f"sig-{n}-{who}")
            if who == "pressured":
                cfg = os.path.join(events_dir, "bench.yaml")
                with open(cfg, "w") as f:
                    json.dump(
                        {
                            "thresholds": {
                                "warn_percent": threshold_pct,
                                "critical_percent": 99,
                                "metric": "usage",
                            },
                            "actions": [
                                {"type": "signal", "warn": "SIGUSR1", "critical": "SIGUSR2"}
                            ],
                            "kills": {"kmsg": {"enabled": False}, "tracepoint": {"enabled": False}},
                            "metrics": {"enabled": False},
                            "source": {"machine": False},
                        },
                        f,
                    )
                # the leak starts once the daemon says it has armed, not after a guessed time
                daemon = PressuredProcess(
                    ["run", "-c", cfg, "--cgroup", ref.path, "--events-out", os.devnull]
                )
                daemon.wait_ready()
            proc = child.spawn(
                leaker_argv(
                    "--rate-mib",
                    "64",
                    "--max-mib",
                    str(threshold // MiB + 32),
                    "--hold",
                    "--usage-file",
                    ref.usage_file,
                    "--stamp-at",
                    str(threshold),
                    "--signals-out",
                    sig_file,
                    "--start-after",
                    "0.3",
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            proc.stdout.readline()
            polled: dict[str, float] = {}
            stop = threading.Event()
            if who == "poller":
                threading.Thread(
                    target=poller,
                    args=(ref.usage_file, threshold, polled, stop, proc.pid),
                    daemon=True,
                ).start()
            crossed = None
            for line in proc.stdout:
                if line.startswith("CROSSED"):
                    crossed = float(line.split()[2])
                    break
            got = None
            end = time.monotonic() + 20
            while got is None and time.monotonic() < end:
                try:
                    with open(sig_file) as f:
                        for line in f:
                            if line.startswith("SIGUSR1"):
                                got = float(line.split()[1])
                except FileNotFoundError:
                    pass
                time.sleep(0.01)
            stop.set()
            if got is None or crossed is None:
                raise RuntimeError(f"action trial {n} ({who}): crossed={crossed} signal={got}")
            results.append((got - crossed) * 1000)
        finally:
            if daemon is not None:
                daemon.stop()
            child.remove()
    return results[0], results[1]


def idle_worker(kind: str, paths: list[str], seconds: float) -> None:
    """Runs in its own process: set up, then report CPU seconds used while idle."""
    layout = cgroupfs.detect_layout()
    refs = [cgroupfs.resolve(p, layout) for p in paths]
    if kind == "watcher":
        w = Watcher(WatchOptions())
        for i, ref in enumerate(refs):
            w.add_cgroup(str(i), ref, [400 * MiB, 480 * MiB])
        before = resource.getrusage(resource.RUSAGE_SELF)
        end = time.monotonic() + seconds
        wakeups = 0
        while (left := end - time.monotonic()) > 0:
            wakeups += len(w.wait(left))
    else:
        files = [r.usage_file for r in refs]
        before = resource.getrusage(resource.RUSAGE_SELF)
        end = time.monotonic() + seconds
        wakeups = 0
        while time.monotonic() < end:
            for path in files:
                with open(path) as f:
                    int(f.read())
            wakeups += 1
            time.sleep(POLL_S)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"cpu_s": cpu, "wakeups": wakeups}), flush=True)


def idle_run(n: int, seconds: float) -> dict[str, float]:
    children = [Child(f"pressured-bench-idle-{os.getpid()}-{i}", 512 * MiB) for i in range(n)]
    try:
        out = {}
        paths = [c.path for c in children]
        procs = {
            kind: subprocess.Popen(
                [sys.executable, __file__, "--idle-worker", kind, "--idle-seconds", str(seconds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for kind in ("watcher", "poller")
        }
        results = {}
        for kind, proc in procs.items():
            stdout, _ = proc.communicate("\n".join(paths), timeout=seconds + 600)
            results[kind] = json.loads(stdout.strip().splitlines()[-1])
        out["event_idle_cpu_s"] = round(results["watcher"]["cpu_s"], 4)
        out["poll_idle_cpu_s"] = round(results["poller"]["cpu_s"], 4)
        out["event_idle_wakeups"] = results["watcher"]["wakeups"]
        return out
    finally:
        for c in children:
            c.remove()


def _proc_status(pid: int) -> tuple[float, int, float]:
    """(RSS MiB, open fds, CPU seconds) of a live process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd")), cpu


def arming_run(
    n: int, idle_s: float, events_dir: str, metrics: bool = False
) -> dict[str, float | int]:
    """`pressured run` over a parent cgroup with ``n`` limited children: start -> ready, then
    RSS, fds (and, with ``idle_s``, CPU seconds while idle). ``metrics``: with /metrics served
    (on a free port)."""
    parent = Child(f"pressured-bench-arm-{os.getpid()}-{n}", None)
    children: list[Child] = []
    daemon: PressuredProcess | None = None
    try:
        for i in range(n):
            children.append(Child(f"{os.path.basename(parent.path)}/c{i}", 512 * MiB))
        cfg = os.path.join(events_dir, f"arm-{n}.yaml")
        with open(cfg, "w") as f:
            json.dump(
                {
                    "thresholds": {"warn_percent": 80, "critical_percent": 95},
                    "actions": [{"type": "signal", "warn": "SIGUSR1", "critical": "SIGUSR2"}],
                    "kills": {"kmsg": {"enabled": False}, "tracepoint": {"enabled": False}},
                    "metrics": {"enabled": metrics, "port": 0, "address": "127.0.0.1"},
                    "source": {"machine": False},
                },
                f,
            )
        started = time.monotonic()
        # named as a user with many containers would; n = 0: the (unlimited) parent alone
        named = [c.path for c in children] or [parent.path]
        args = [a for path in named for a in ("--cgroup", path)]
        daemon = PressuredProcess(["run", "-c", cfg, "--events-out", os.devnull, *args])
        daemon.wait_ready(timeout=600)
        ready_s = time.monotonic() - started
        m = re.search(r"ready: (\d+) target", daemon.stderr.text())
        watched = int(m.group(1)) if m else -1
        time.sleep(2.0)  # idle: what the process holds once it has nothing to do
        rss, fds, cpu0 = _proc_status(daemon.proc.pid)
        out: dict[str, float | int] = {
            "targets": watched,
            "ready_s": round(ready_s, 3),
            "rss_mib": round(rss, 1),
            "fds": fds,
            "metrics": metrics,
        }
        if idle_s:
            time.sleep(idle_s)
            out["idle_cpu_s"] = round(_proc_status(daemon.proc.pid)[2] - cpu0, 3)
            out["idle_seconds"] = idle_s
        return out
    finally:
        if daemon is not None:
            daemon.stop()
        for c in children:
            c.remove()
        parent.remove()


def breakdown_trial(n: int, events_dir: str) -> dict[str, float]:
    """One crossing, the in-process daemon's stages stamped (ms after the crossing)."""
    from pressured import config as config_mod
    from pressured.daemon import Daemon

    limit = 256 * MiB
    threshold = limit // 4
    child = Child(f"pressured-bench-bd-{os.getpid()}-{n}", limit)
    stamps: dict[str, float] = {}
    armed = threading.Event()
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
                "thresholds.warn_percent": 25,
                "thresholds.critical_percent": 99,
                "thresholds.metric": "usage",
                "kills.kmsg.enabled": False,
                "kills.tracepoint.enabled": False,
            },
        )
        cfg.data["actions"] = [{"type": "signal", "warn": "SIGUSR1", "critical": "SIGUSR2"}]
        daemon = Daemon(cfg)

        def stamp(obj: object, name: str, key: str, cond: Any = None) -> None:
            orig = getattr(obj, name)

            def wrapped(*args: Any, **kw: Any) -> Any:
                out = orig(*args, **kw)
                if armed.is_set() and (cond is None or cond(out)):
                    stamps.setdefault(key, time.monotonic())
                return out

            setattr(obj, name, wrapped)

        def past(w: Any) -> bool:
            return any((x.usage_bytes or 0) >= threshold for x in w)

        stamp(daemon.watcher, "wait", "wake", past)
        stamp(daemon.targets, "read_sample", "sample", lambda s: s and s.usage_bytes >= threshold)
        stamp(daemon.engine, "feed", "engine", bool)
        sig_file = os.path.join(events_dir, f"bd-{n}")

        def drive() -> None:
            assert daemon.runner is not None
            stamp(daemon.runner, "submit", "submit_returned")
            for action in daemon.runner.actions:
                stamp(action, "run", "action_done")
            armed.set()
            ref = cgroupfs.resolve(child.path, cgroupfs.detect_layout())
            argv = leaker_argv(
                *("--rate-mib", "64", "--max-mib", str(threshold // MiB + 32), "--hold"),
                *("--usage-file", ref.usage_file, "--stamp-at", str(threshold)),
                *("--signals-out", sig_file, "--start-after", "0.3"),
            )
            proc = child.spawn(argv, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            proc.stdout.readline()
            for line in proc.stdout:
                if line.startswith("CROSSED"):
                    stamps["crossed"] = float(line.split()[2])
                    break
            end = time.monotonic() + 10
            while "signal" not in stamps and time.monotonic() < end:
                with contextlib.suppress(FileNotFoundError), open(sig_file) as f:
                    for line in f:
                        if line.startswith("SIGUSR1"):
                            stamps["signal"] = float(line.split()[1])
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        announce = daemon._announce_ready

        def ready() -> None:
            announce()
            threading.Thread(target=drive, daemon=True).start()

        daemon._announce_ready = ready  # type: ignore[method-assign]
        daemon.run(run_for=60)
    finally:
        child.remove()
    if "crossed" not in stamps or "signal" not in stamps:
        raise RuntimeError(f"breakdown trial {n}: {stamps}")
    return {k: (v - stamps["crossed"]) * 1000 for k, v in stamps.items() if k != "crossed"}


def breakdown_run(trials: int) -> dict[str, float | None]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in range(trials):
            rows.append(breakdown_trial(n, d))
    keys = ("wake", "sample", "engine", "submit_returned", "action_done", "signal")
    return {f"{k}_p50_ms": pct([r[k] for r in rows if k in r], 50) for k in keys}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument(
        "--step-kib",
        type=int,
        default=4096,
        help="the leak allocates in steps of this size (a heap growing by arenas)",
    )
    ap.add_argument("--cgroups", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--action", action="store_true", help="also measure crossing -> signal")
    ap.add_argument("--action-trials", type=int, default=10)
    ap.add_argument(
        "--arming",
        default="0,200,1000",
        help="target counts for the whole-process arming run ('' skips it)",
    )
    ap.add_argument("--metrics", action="store_true", help="the arming runs with /metrics served")
    ap.add_argument("--breakdown", type=int, default=10, help="trials of the stage breakdown")
    ap.add_argument("--only", choices=["arming", "breakdown"], help="run only this part")
    ap.add_argument("--idle-worker", choices=["watcher", "poller"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.idle_worker:
        idle_worker(a.idle_worker, sys.stdin.read().split(), a.idle_seconds)
        return
    base, why = own_memory_cgroup()
    if base is None:
        print(json.dumps({"error": f"no writable memory cgroup: {why}"}))
        sys.exit(1)
    load_start = loadavg()
    if a.only == "breakdown":
        out: dict[str, object] = {"breakdown": breakdown_run(a.breakdown)}
        print(json.dumps({**out, "load_start": load_start, "load_end": loadavg()}))
        return
    counts = [int(x) for x in a.arming.split(",") if x.strip()]
    arming: list[dict[str, float | int]] = []
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            idle_s = a.idle_seconds if n == max(counts) else 0
            arming.append(arming_run(n, idle_s, d, a.metrics))
    if a.only == "arming":
        print(json.dumps({"arming": arming, "load_start": load_start, "load_end": loadavg()}))
        return
    threshold = 64 * MiB
    event_ms: list[float] = []
    poll_ms: list[float] = []
    for n in range(a.trials):
        e, p = latency_trial(n, threshold, a.step_kib)
        event_ms.append(e)
        poll_ms.append(p)
    result: dict[str, object] = {
        "cgroups": a.cgroups,
        "path": "v1 usage threshold eventfd"
        if not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        else "v2 adaptive read",
        "trials": a.trials,
        "leak_mib_s": LEAK_MIB_S,
        "leak_step_kib": a.step_kib,
        "event_p50_ms": pct(event_ms, 50),
        "event_p99_ms": pct(event_ms, 99),
        "poll_p50_ms": pct(poll_ms, 50),
        "poll_p99_ms": pct(poll_ms, 99),
    }
    if a.action:
        act: list[float] = []
        pact: list[float] = []
        with tempfile.TemporaryDirectory() as d:
            for n in range(a.action_trials):
                x, y = action_trial(n, 25, 256 * MiB, d)
                act.append(x)
                pact.append(y)
        result.update(
            {
                "action_p50_ms": pct(act, 50),
                "action_p99_ms": pct(act, 99),
                "poll_action_p50_ms": pct(pact, 50),
                "poll_action_p99_ms": pct(pact, 99),
            }
        )
    result.update(idle_run(a.cgroups, a.idle_seconds))
    result["idle_seconds"] = a.idle_seconds
    result["event_mean_ms"] = round(statistics.fmean(event_ms), 3)
    result["arming"] = arming
    if a.breakdown:
        result["breakdown"] = breakdown_run(a.breakdown)
    result["load_start"] = load_start
    result["load_end"] = loadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
