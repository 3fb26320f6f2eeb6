"""Bench: `pressured pprof top` on a ~21 MB heap profile, beside `go tool pprof -top` on it.

The profile is synthesized with the protobuf runtime, shaped like a big Go heap profile: the four
heap sample types, thousands of functions, locations with inlined frames, and deep stacks
drawn from a few hundred call paths. It is written gzip-compressed (as /debug/pprof/heap serves
it) until the file reaches --target-mb. Both commands run as a person runs them (ours: the CLI,
its worker process and all), one after the other. Prints one JSON object:

    {"pprof_s": ..., "go_pprof_s": ..., "ratio": ..., "pprof_cpu_s": ..., "cpu_ratio": ...,
     "same_report_as_go": true, "in_process_load_s": ..., "in_process_top_s": ..., ...}

ratio is wall-clock (the issue's target: <= 0.2); cpu_ratio compares CPU seconds, steadier on a
shared machine (go's parallel GC uses more CPU than wall-clock time). loadavg_1m says how busy
the machine was. The go_* fields are null when `go` is not installed (Debian: golang-go).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def synthesize(target_bytes: int, seed: int = 1) -> bytes:
    pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")
    rng = random.Random(seed)
    p = pb2.Profile()
    strings: dict[str, int] = {}

    def s(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings)
            p.string_table.append(text.encode())
        return strings[text]

    s("")
    for kind, unit in (
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ):
        p.sample_type.add(type=s(kind), unit=s(unit))
    p.period_type.type, p.period_type.unit = s("space"), s("bytes")
    p.period = 524288
    p.time_nanos = 1_700_000_000_000_000_000
    p.mapping.add(
        id=1,
        memory_start=0x400000,
        memory_limit=0x2000000,
        filename=s("/app/server"),
        has_functions=True,
        has_filenames=True,
        has_line_numbers=True,
        has_inline_frames=True,
    )
    n_functions, n_locations = 8000, 40000
    for fid in range(1, n_functions + 1):
        pkg = f"example.com/svc/pkg{fid % 97}"
        p.function.add(
            id=fid,
            name=s(f"{pkg}.(*T{fid % 13}).method{fid}"),
            system_name=s(f"{pkg}.(*T{fid % 13}).method{fid}"),
            filename=s(f"/src/{pkg}/file{fid % 31}.go"),
            start_line=fid % 500,
        )
    for lid in range(1, n_locations + 1):
        loc = p.location.add(id=lid, mapping_id=1, address=0x400000 + lid * 16)
        for _ in range(1 + (lid % 4 == 0) + (lid % 16 == 0)):  # some inlined frames
            loc.line.add(function_id=rng.randint(1, n_functions), line=rng.randint(1, 900))
    # Call paths shared by many samples, as real heaps are (a few hot paths, many leaves).
    paths = [[rng.randint(1, n_locations) for _ in range(rng.randint(8, 40))] for _ in range(400)]

    def add_samples(count: int) -> None:
        for _ in range(count):
            leafs = [rng.randint(1, n_locations) for _ in range(rng.randint(1, 6))]
            size = rng.choice((16, 64, 512, 4096, 65536))
            objects = rng.randint(1, 64)
            inuse = rng.randint(0, objects)
            p.sample.add(
                location_id=leafs + rng.choice(paths),
                value=[objects, objects * size, inuse, inuse * size],
            )

    # Measure the compressed bytes per sample once, then add what the target needs.
    add_samples(20000)
    while True:
        compressed = len(gzip.compress(p.SerializeToString(), 6))
        if compressed >= target_bytes:
            break
        per_sample = compressed / len(p.sample)
        add_samples(max(1000, int((target_bytes - compressed) / per_sample) + 1000))
    return gzip.compress(p.SerializeToString(), 6)


def _run(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the command and its children, their peak RSS in KiB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-mb", type=float, default=21.0)
    ap.add_argument("--sample-index", default="inuse_space")
    args = ap.parse_args()

    from pressured.pprof import load_profile, top

    with tempfile.TemporaryDirectory(prefix="pprof-bench-") as tmp:
        path = Path(tmp) / "heap.pb.gz"
        path.write_bytes(synthesize(int(args.target_mb * 1024 * 1024)))
        size = path.stat().st_size

        # where the time goes, in this process
        t0 = time.perf_counter()
        profile = load_profile(path.read_bytes(), str(path))
        loaded = time.perf_counter()
        result = top(profile, args.sample_index, n=20)
        done = time.perf_counter()
        samples = profile.num_samples
        del profile

        # the command a person runs: CLI, worker process and all
        ours = [sys.executable, "-m", "pressured", "pprof", "top", "-n", "20"]
        ours += ["--sample-index", args.sample_index, str(path)]
        wall, cpu, rss, text = _run(ours)

        go_wall = go_cpu = None
        equal = None
        go = shutil.which("go")
        if go:
            cmd = [go, "tool", "pprof", "-top", "-nodecount=20", "-symbolize=none"]
            cmd += [f"-sample_index={args.sample_index}", str(path)]
            go_wall, go_cpu, _, go_text = _run(cmd)
            equal = text == go_text

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    print(
        json.dumps(
            {
                "pprof_s": r(wall),
                "go_pprof_s": r(go_wall),
                "ratio": r(wall / go_wall) if go_wall else None,
                "pprof_cpu_s": r(cpu),
                "go_pprof_cpu_s": r(go_cpu),
                "cpu_ratio": r(cpu / go_cpu) if go_cpu else None,
                "same_report_as_go": equal,
                "pprof_peak_rss_mib": round(rss / 1024, 1),
                "profile_bytes": size,
                "in_process_load_s": r(loaded - t0),
                "in_process_top_s": r(done - loaded),
                "samples": samples,
                "sample_index": args.sample_index,
                "top_function": result.rows[0].function if result.rows else None,
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "python": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
