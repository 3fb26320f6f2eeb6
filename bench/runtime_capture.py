"""JVM and Node.js heap capture times, on a real OpenJDK JVM (run as nobody) and Node.js.

- jvm_first_s: the first GC.class_histogram of a JVM (attach file, SIGQUIT, listener start,
  the helper taking on its uid, the histogram's full GC, storing it);
- jvm_again_s: the next ones (the attach socket is up);
- jvm_full_dump_s and hprof_bytes: histogram plus GC.heap_dump, read back, removed;
- node_overhead_s: a Node.js capture less its sampling window (SIGUSR1, inspector, profile,
  conversion, closing the inspector).

Medians over --runs. Prints one JSON object.

    python bench/runtime_capture.py [--runs 5] [--records 500000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured.runtimes import CaptureOptions, Target, jvm, node
from pressured.storage.local import LocalStorage

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "runtimes" / "fixtures"
NOBODY = 65534
MiB = 1024 * 1024


def _jvm(classes: Path, records: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", str(classes), "LeakyJvm", str(records)],
        cwd=classes,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("retained ")
    return proc


def bench_jvm(runs: int, records: int, store: LocalStorage) -> dict[str, object]:
    classes = Path(tempfile.mkdtemp(prefix="pressured-bench-jvm-"))
    classes.chmod(0o755)
    subprocess.run(["javac", "-d", str(classes), str(FIXTURES / "LeakyJvm.java")], check=True)
    for path in classes.iterdir():
        path.chmod(0o644)
    never = CaptureOptions(timeout_s=30, max_bytes=1024 * MiB, full_dump="never")
    always = CaptureOptions(timeout_s=60, max_bytes=1024 * MiB, full_dump="always")
    first: list[float] = []
    again: list[float] = []
    full: list[float] = []
    hprof = histo = 0
    try:
        for i in range(runs):
            proc = _jvm(classes, records)
            try:
                target = Target(proc.pid)
                t0 = time.perf_counter()
                cap = jvm.capture(target, store, f"b/first-{i}", never)
                first.append(time.perf_counter() - t0)
                histo = cap.size
                t0 = time.perf_counter()
                jvm.capture(target, store, f"b/again-{i}", never)
                again.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cap = jvm.capture(target, store, f"b/full-{i}", always)
                full.append(time.perf_counter() - t0)
                hprof = int(cap.info["full_dump_bytes"])
            finally:
                proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
    finally:
        shutil.rmtree(classes, ignore_errors=True)
    return {
        "jvm_records": records,
        "jvm_first_s": round(statistics.median(first), 3),
        "jvm_again_s": round(statistics.median(again), 3),
        "jvm_full_dump_s": round(statistics.median(full), 3),
        "histogram_bytes": histo,
        "hprof_bytes": hprof,
    }


def bench_node(runs: int, store: LocalStorage) -> dict[str, object]:
    overhead: list[float] = []
    size = 0
    window = 1.0
    for i in range(runs):
        proc = subprocess.Popen(
            ["node", str(FIXTURES / "leaky.js"), "512"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready")
            options = CaptureOptions(timeout_s=10, max_bytes=64 * MiB, sample_seconds=window)
            t0 = time.perf_counter()
            cap = node.capture(Target(proc.pid), store, f"b/node-{i}", options)
            overhead.append(time.perf_counter() - t0 - window)
            size = cap.size
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return {"node_overhead_s": round(statistics.median(overhead), 3), "node_profile_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=500_000)
    args = parser.parse_args()
    out: dict[str, object] = {"runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStorage(tmp)
        if shutil.which("javac") and shutil.which("java"):
            out.update(bench_jvm(args.runs, args.records, store))
        else:
            out["jvm"] = "skipped: no JDK"
        if shutil.which("node"):
            out.update(bench_node(args.runs, store))
        else:
            out["node"] = "skipped: no Node.js"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
