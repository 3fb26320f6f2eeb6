"""cgroup v2 threshold crossing -> noticed: the adaptive Watcher beside a fixed 100 ms poller.

cgroup v2 has no usage-threshold notifier: pressured reads usage adaptively (the interval
shrinks with headroom and growth, and a level's predicted crossing is read at half the time
left), and watches memory.events, whose "high" and "max" counts move the moment usage passes
memory.high or reaches memory.max. This bench runs, in the same guest run, two watcher
processes over the same N cgroups (limit LIMIT each):

- adaptive: the Watcher (add_cgroups, levels at the threshold), woken by its own deadlines and
  by memory.events;
- poller: what a fixed-interval poller does, every 100 ms: read every cgroup's memory.current.

Each trial a leaking process in one of the cgroups grows past the threshold (80 % of the
limit) and stamps the moment its own read of memory.current passes it; each watcher stamps
when it notices. In the second half of the trials memory.high is set at the threshold on the
trial's cgroup: the "high" event is then an early notifier. Reported: detection delay p50 and
p99 per watcher and per half, and each watcher's CPU per watched cgroup (ms per second).
Under software emulation absolute times stretch; the ratios between the two are the figure.

Needs a pure cgroup v2 host with the memory controller (the VM lane: make bench-vm).
Prints one JSON object. Figures, not a test: nothing here asserts a speed.

    python bench/v2_detection.py [--cgroups 20] [--trials 20] [--rate-mib 32]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured.demo.child import Child, leaker_argv
from pressured.kernel import cgroupfs
from pressured.kernel.watch import Watcher, WatchOptions

MiB = 1024 * 1024
LIMIT = 128 * MiB
THRESHOLD = LIMIT * 80 // 100
POLL_S = 0.100


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return round(values[k], 2)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def say(*words: object) -> None:
    print(*words, flush=True)


# ---------------------------------------------------------------------------- the watchers
def run_poller(paths: list[str]) -> None:
    noticed = [False] * len(paths)
    say("READY")
    start = cpu_seconds()
    while True:
        for i, path in enumerate(paths):
            with open(path) as f:
                usage = int(f.read())
            if usage >= THRESHOLD and not noticed[i]:
                noticed[i] = True
                say("NOTICED", i, time.monotonic())
            elif usage < THRESHOLD // 2:
                noticed[i] = False
        if select.select([sys.stdin], [], [], 0)[0] and sys.stdin.readline().strip() == "STOP":
            break
        time.sleep(POLL_S)
    say("CPU", cpu_seconds() - start)


def run_adaptive(paths: list[str]) -> None:
    layout = cgroupfs.detect_layout()
    refs = [cgroupfs.resolve(os.path.dirname(p), layout) for p in paths]
    w = Watcher(WatchOptions(psi=None))
    results = w.add_cgroups([(str(i), ref, [THRESHOLD]) for i, ref in enumerate(refs)])
    bad = {k: str(r) for k, r in results.items() if isinstance(r, Exception)}
    if bad:
        say("ERROR", json.dumps(bad))
        return
    w.watch_fd(0, "stdin")
    noticed = [False] * len(paths)
    say("READY")
    start = cpu_seconds()
    while True:
        for wake in w.wait(None):
            if wake.cause == "fd":
                if sys.stdin.readline().strip() == "STOP":
                    say("CPU", cpu_seconds() - start)
                    w.close()
                    return
                continue
            i = int(wake.key)
            usage = wake.usage_bytes
            if wake.cause == "events":  # memory.events moved ("high", "max"): read now
                with open(paths[i]) as f:
                    usage = int(f.read())
            if usage is None:
                continue
            if usage >= THRESHOLD and not noticed[i]:
                noticed[i] = True
                say("NOTICED", i, time.monotonic(), wake.cause)
            elif usage < THRESHOLD // 2:
                noticed[i] = False


# ---------------------------------------------------------------------------- the driver
class Worker:
    def __init__(self, kind: str, paths: list[str]) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(paths) + "\n")
        self.proc.stdin.flush()
        first = self.proc.stdout.readline().split()
        if first[:1] != ["READY"]:
            raise RuntimeError(f"{kind} watcher: {' '.join(first)}")

    def notice(self, index: int, timeout: float) -> tuple[float, str] | None:
        """The next NOTICED line for cgroup ``index`` (others are skipped)."""
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            words = self.proc.stdout.readline().split()
            if not words:
                return None
            if words[0] == "NOTICED" and int(words[1]) == index:
                return float(words[2]), words[3] if len(words) > 3 else "read"
        return None

    def stop(self) -> float:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("STOP\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("CPU"):
                self.proc.wait(30)
                return float(line.split()[1])
        raise RuntimeError(f"{self.kind} watcher ended without its CPU line")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cgroups", type=int, default=20)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rate-mib", type=float, default=32.0)
    ap.add_argument("--worker", choices=["adaptive", "poller"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        paths = json.loads(sys.stdin.readline())
        (run_adaptive if a.worker == "adaptive" else run_poller)(paths)
        return
    root = "/sys/fs/cgroup"
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            v2_memory = "memory" in f.read().split()
    except OSError:
        v2_memory = False
    if os.geteuid() != 0 or not v2_memory:
        print(
            json.dumps(
                {"error": "needs root on pure cgroup v2 with the memory controller (make bench-vm)"}
            )
        )
        sys.exit(1)
    children = [Child(f"pressured-bench-v2-{os.getpid()}-{i}", LIMIT) for i in range(a.cgroups)]
    workers: list[Worker] = []
    try:
        paths = [c.memory_file for c in children]
        workers = [Worker("adaptive", paths), Worker("poller", paths)]
        started = time.monotonic()
        delays: dict[str, dict[str, list[float]]] = {
            w.kind: {"reads": [], "high": []} for w in workers
        }
        causes: dict[str, int] = {}
        for n in range(a.trials):
            half = "high" if n >= a.trials // 2 else "reads"
            child = children[n % len(children)]
            high = os.path.join(child.path, "memory.high")
            with open(high, "w") as f:
                f.write(str(THRESHOLD) if half == "high" else "max")
            proc = child.spawn(
                leaker_argv(
                    *("--rate-mib", str(a.rate_mib), "--step-kib", "256"),
                    *("--max-mib", str(THRESHOLD // MiB + 8), "--hold"),
                    *("--usage-file", child.memory_file, "--stamp-at", str(THRESHOLD)),
                    "--start-after",
                    "0.5",
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            crossed = None
            for line in proc.stdout:
                if line.startswith("CROSSED"):
                    crossed = float(line.split()[2])
                    break
            for w in workers:
                got = w.notice(n % len(children), 60)
                if got is None or crossed is None:
                    raise RuntimeError(f"trial {n}: {w.kind} noticed {got}, crossed {crossed}")
                delays[w.kind][half].append((got[0] - crossed) * 1000)
                if w.kind == "adaptive":
                    causes[got[1]] = causes.get(got[1], 0) + 1
            proc.kill()
            proc.wait()
            # the memory is freed with the process: usage falls, the watchers re-arm
            end = time.monotonic() + 30
            while child.usage() >= THRESHOLD // 2 and time.monotonic() < end:
                time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = {w.kind: w.stop() for w in workers}
        workers = []
        out: dict[str, object] = {
            "path": "cgroup v2",
            "cgroups": a.cgroups,
            "trials": a.trials,
            "limit_mib": LIMIT // MiB,
            "threshold_mib": THRESHOLD // MiB,
            "leak_mib_s": a.rate_mib,
            "seconds": round(elapsed, 1),
            "adaptive_noticed_by": causes,
        }
        for kind, halves in delays.items():
            for half, values in halves.items():
                out[f"{kind}_{half}_p50_ms"] = pct(values, 50)
                out[f"{kind}_{half}_p99_ms"] = pct(values, 99)
            every = halves["reads"] + halves["high"]
            out[f"{kind}_p50_ms"] = pct(every, 50)
            out[f"{kind}_p99_ms"] = pct(every, 99)
            out[f"{kind}_cpu_ms_per_cgroup_s"] = round(cpu[kind] * 1000 / a.cgroups / elapsed, 4)
        print(json.dumps(out))
    finally:
        for w in workers:
            w.proc.kill()
        for c in children:
            c.remove()


if __name__ == "__main__":
    main()
