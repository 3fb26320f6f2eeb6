"""Stall a test can rely on: measure what a workload really stalls before arming a trigger."""

from __future__ import annotations

import time

from pressured.kernel import cgroupfs

PSI_WINDOW_US = 2_000_000  # the smallest window allowed without CAP_SYS_RESOURCE

# Re-reads a file after dropping its pages (a fresh start each pass); in a cgroup limited below
# the file's size, reclaim and refaults make memory stall
THRASH_READER = (
    "import os,sys\n"
    "p=sys.argv[1]\n"
    "while True:\n"
    "    fd=os.open(p,os.O_RDONLY)\n"
    "    os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)\n"
    "    while os.read(fd,1<<20): pass\n"
    "    os.close(fd)\n"
)


def measure_stall_per_window(
    psi_file: str, *, at_least_us: int = 20_000, timeout: float = 60.0, kind: str = "some"
) -> float:
    """Microseconds of ``kind`` ("some", or "full") stall per PSI window that the running
    workload causes.

    How much a workload stalls is a property of the machine (its disk, its cores), not of the
    kernel: one machine gave about 9 ms per second for the reader that gave another well over
    50 ms per 2 s. So a test measures first, until the total has grown by ``at_least_us``
    (enough for a stable rate) or ``timeout`` passed, and arms relative to what it saw.
    """
    field = f"{kind}_total"
    first = getattr(cgroupfs.read_psi_file(psi_file), field)
    t0 = time.monotonic()
    while True:
        time.sleep(0.25)
        grown = getattr(cgroupfs.read_psi_file(psi_file), field) - first
        elapsed = time.monotonic() - t0
        enough = grown >= at_least_us and elapsed >= 2 * PSI_WINDOW_US / 1e6
        if enough or elapsed > timeout:
            return grown / elapsed * (PSI_WINDOW_US / 1e6)


def trigger_threshold_us(per_window_us: float) -> int:
    """A quarter of the measured stall per window: single windows vary, the average less."""
    return max(1, min(int(per_window_us / 4), PSI_WINDOW_US // 2))
