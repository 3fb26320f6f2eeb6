"""Streaming upload to an S3-protocol server: throughput and peak memory of the client.

Uploads SIZE MiB, generated chunk by chunk, to moto's standalone server (a subprocess on
loopback, so its memory is not ours) twice: straight through S3Storage, and through
SpoolingStorage (local spool file first, then streamed to S3). Peak RSS growth is VmHWM after
the upload minus VmRSS before it, with the peak mark reset through /proc/self/clear_refs
(proc(5)) after a warm-up upload. Loopback throughput says little about a real network;
the memory figure is the point.

Prints one JSON object. Figures, not a test: nothing here asserts a speed.

    python bench/s3_upload.py [--size-mib 256] [--part-mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured.storage.s3 import MIB, S3Storage
from pressured.storage.spool import SpoolingStorage
from tests.storage.conftest import MotoServer, raw_client

BUCKET = "pressured-bench"


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def chunks(size: int) -> Iterator[bytes]:
    for i in range(size // MIB):
        yield i.to_bytes(8, "big") * (MIB // 8)


def measure(store: S3Storage | SpoolingStorage, key: str, size: int) -> dict[str, float]:
    Path("/proc/self/clear_refs").write_text("5")
    before = vm_kib("VmRSS")
    start = time.perf_counter()
    store.write_stream(key, chunks(size))
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "mib_per_s": round(size / MIB / seconds, 1),
        "peak_rss_growth_mib": round((vm_kib("VmHWM") - before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-mib", type=int, default=8)
    args = parser.parse_args()
    size = args.size_mib * MIB

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true"
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = MotoServer(Path(tmp))
        server.start()
        try:
            raw_client(server.url).create_bucket(Bucket=BUCKET)
            s3 = S3Storage(
                BUCKET,
                region="us-east-1",
                endpoint_url=server.url,
                path_style=True,
                part_size=args.part_mib * MIB,
            )
            s3.write_stream("warm-up", chunks(args.part_mib * MIB + MIB))
            direct = measure(s3, "direct", size)
            spool = SpoolingStorage(s3, Path(tmp) / "spool", max_bytes=2 * size)
            spooled = measure(spool, "spooled", size)
            spool.close()
        finally:
            server.stop()
    result = {
        "size_mib": args.size_mib,
        "part_mib": args.part_mib,
        "direct": direct,
        "spooled": spooled,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
