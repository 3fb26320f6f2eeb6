"""Bench: parse + top of a ~20 MB heap profile, beside `go tool pprof -top` on the same file.

The profile is synthesized with the protobuf runtime, shaped like a big Go heap profile: the four
heap sample types, thousands of functions, locations with inlined frames, and deep stacks
drawn from a few hundred call paths. It is written gzip-compressed (as /debug/pprof/heap serves
it) until the file reaches --target-mb. Prints one JSON object:

    {"pprof_s": ..., "go_pprof_s": ..., "profile_bytes": ..., ...}

go_pprof_s is null when `go` is not installed (Debian: golang-go).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import random
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-mb", type=float, default=20.0)
    ap.add_argument("--sample-index", default="inuse_space")
    args = ap.parse_args()

    from pressured.pprof import load_profile, top

    with tempfile.TemporaryDirectory(prefix="pprof-bench-") as tmp:
        path = Path(tmp) / "heap.pb.gz"
        path.write_bytes(synthesize(int(args.target_mb * 1024 * 1024)))
        size = path.stat().st_size

        t0 = time.perf_counter()
        profile = load_profile(path.read_bytes(), str(path))
        loaded = time.perf_counter()
        result = top(profile, args.sample_index, n=20)
        done = time.perf_counter()

        go_s = None
        go = shutil.which("go")
        if go:
            cmd = [
                go,
                "tool",
                "pprof",
                "-top",
                "-nodecount=20",
                "-symbolize=none",
                f"-sample_index={args.sample_index}",
                str(path),
            ]
            g0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            go_s = round(time.perf_counter() - g0, 3)

    print(
        json.dumps(
            {
                "pprof_s": round(done - t0, 3),
                "go_pprof_s": go_s,
                "profile_bytes": size,
                "load_s": round(loaded - t0, 3),
                "top_s": round(done - loaded, 3),
                "samples": profile.num_samples,
                "sample_index": args.sample_index,
                "top_function": result.rows[0].function if result.rows else None,
                "python": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
