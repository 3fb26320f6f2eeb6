"""Real workloads for the OOM-risk tests and bench/oom_risk.py, each run in a limited cgroup.

Each is a small Python program (run with this interpreter inside the cgroup by Child.spawn)
that prints "READY" when its steady state is reached (or, for leaks, when it starts leaking):

- page_cache: re-reads a file that fits in the limit; only page cache (active_file) grows.
- thrash: re-reads a file larger than the limit: each pass evicts what the next one needs, so
  file pages refault (workingset_refault_file) and memory stalls (PSI); nothing is killed.
  (Dropping the pages with FADV_DONTNEED would leave no shadow entries: no refaults.)
- anon_leak: anonymous memory grows until the kernel kills it.
- shmem_leak: a file in a tmpfs grows (shmem) until the kernel kills the writer.
- mixed: anonymous memory held at a level while a file is re-read (hot page cache); with
  --leak, the anonymous part then grows until the kill.
- kernel_leak: pipe buffers filled and kept (kernel memory the pipe code charges to the
  cgroup, __GFP_ACCOUNT): neither anon nor page cache grows, and the kernel kills it.

The files read are made by ``make_file`` outside the cgroup and dropped from the page cache,
so their pages are charged to the reader's cgroup when read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

MiB = 1024 * 1024

_READ_LOOP = """
def read_loop(path):
    while True:
        fd = os.open(path, os.O_RDONLY)
        while os.read(fd, 1 << 20):
            pass
        os.close(fd)
"""

PROGRAMS = {
    "page_cache": _READ_LOOP
    + """
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
os.close(fd)
print("READY", flush=True)
read_loop(path)
""",
    "thrash": _READ_LOOP
    + """
print("READY", flush=True)
read_loop(sys.argv[1])
""",
    "anon_leak": """
rate, step = float(sys.argv[1]) * MiB, 256 * 1024
chunks = []
print("READY", flush=True)
while True:
    c = bytearray(step)
    for i in range(0, step, 4096):
        c[i] = 1
    chunks.append(c)
    time.sleep(step / rate)
""",
    "shmem_leak": """
path, rate, step = sys.argv[1], float(sys.argv[2]) * MiB, 256 * 1024
block = b"x" * step
print("READY", flush=True)
with open(path, "wb", buffering=0) as f:
    while True:
        f.write(block)
        time.sleep(step / rate)
""",
    "mixed": _READ_LOOP
    + """
import threading
path, hold, rate = sys.argv[1], int(float(sys.argv[2]) * MiB), float(sys.argv[3]) * MiB
step = 256 * 1024
chunks = []
def touch(n):
    c = bytearray(n)
    for i in range(0, n, 4096):
        c[i] = 1
    chunks.append(c)
touch(hold)
fd = os.open(path, os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
os.close(fd)
threading.Thread(target=read_loop, args=(path,), daemon=True).start()
print("READY", flush=True)
if rate <= 0:
    while True:
        time.sleep(3600)
sys.stdin.readline()
print("LEAKING", flush=True)
while True:
    touch(step)
    time.sleep(step / rate)
""",
    "kernel_leak": """
import fcntl, resource
rate = float(sys.argv[1]) * MiB
size = 1 << 20
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
block = b"k" * 65536
pipes = []
print("READY", flush=True)
while True:
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    os.set_blocking(w, False)
    left = size
    while left > 0:
        left -= os.write(w, block)
    pipes.append((r, w))
    time.sleep(size / rate)
""",
}


def argv(name: str, *args: object) -> list[str]:
    """The command line of workload ``name`` with its arguments."""
    prelude = "import os, sys, time\nMiB = 1 << 20\n"
    return [sys.executable, "-u", "-c", prelude + PROGRAMS[name], *map(str, args)]


def make_file(path: str, size: int) -> str:
    """A file of ``size`` bytes on disk, written and dropped from the page cache (so reading
    it charges its pages to the reader's cgroup, not to ours)."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def shmem_dir(candidates: Sequence[str] = ("/dev/shm",)) -> str | None:
    """A tmpfs to grow shmem in, or None."""
    for path in candidates:
        try:
            with open("/proc/self/mounts") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 2 and fields[1] == path and fields[2] == "tmpfs":
                        return path
        except OSError:
            return None
    return None
