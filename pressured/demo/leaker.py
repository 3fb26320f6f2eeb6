"""A process that leaks memory at a set rate: the demo's app, kernel tests and benchmarks.

    python -m pressured.demo.leaker --rate-mib 16 --max-mib 400 [--step-kib 256]
        [--usage-file F --stamp-at BYTES] [--signals-out FILE] [--print-signals] [--hold]

Touches every page it allocates. With --usage-file/--stamp-at it prints
"CROSSED <bytes> <monotonic>" for the step after which the cgroup's usage first reads at or
above BYTES, stamped with the moment that step began. With
--signals-out it records SIGUSR1/SIGUSR2 as "<signame> <monotonic>" lines. Prints "READY"
once its handlers are installed.
"""

import argparse
import os
import signal
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate-mib", type=float, default=16.0)
    ap.add_argument("--max-mib", type=float, default=400.0)
    ap.add_argument("--step-kib", type=int, default=256)
    ap.add_argument("--usage-file")
    ap.add_argument("--stamp-at", type=int, action="append", default=[])
    ap.add_argument("--signals-out")
    ap.add_argument("--print-signals", action="store_true", help="say on stdout when signalled")
    ap.add_argument("--hold", action="store_true", help="sleep after reaching --max-mib")
    ap.add_argument("--start-after", type=float, default=0.0)
    a = ap.parse_args()

    out = open(a.signals_out, "a", buffering=1) if a.signals_out else None  # noqa: SIM115

    def record(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if out is not None:
            out.write(f"{name} {time.monotonic():.6f}\n")
        if a.print_signals:
            print(f"app (pid {os.getpid()}): received {name}", flush=True)

    if out is not None or a.print_signals:
        signal.signal(signal.SIGUSR1, record)
        signal.signal(signal.SIGUSR2, record)
    print("READY", flush=True)
    if a.start_after:
        time.sleep(a.start_after)
    step = a.step_kib * 1024
    limit = int(a.max_mib * 1024 * 1024)
    delay = step / (a.rate_mib * 1024 * 1024) if a.rate_mib > 0 else 0.0
    stamps = sorted(a.stamp_at)
    usage_fd = os.open(a.usage_file, os.O_RDONLY) if a.usage_file else -1
    chunks = []
    held = 0
    t_next = time.monotonic()
    while held < limit:
        step_start = time.monotonic()
        chunk = bytearray(step)
        for i in range(0, step, 4096):
            chunk[i] = 1
        chunks.append(chunk)
        held += step
        if usage_fd >= 0 and stamps:
            usage = int(os.pread(usage_fd, 64, 0))
            # the crossing happened during this step: stamp its start, so a latency measured
            # from here is an upper bound (it includes the time spent touching the step)
            while stamps and usage >= stamps[0]:
                print(f"CROSSED {stamps.pop(0)} {step_start:.6f}", flush=True)
        t_next += delay
        pause = t_next - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    print("DONE", flush=True)
    while a.hold:
        time.sleep(3600)
    sys.exit(0)


if __name__ == "__main__":
    main()
