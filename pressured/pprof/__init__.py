"""Go heap profiles: decode profile.proto and compute pprof's top-N, as `go tool pprof -top`.

    profile = load_profile(data, "heap.pb.gz")       # PprofError naming the source on bad input
    profile = open_profile(path_or_url)              # a file, or a /debug/pprof/heap URL
    result = top(profile, "alloc_space", n=20)        # sample type by name; None: the default
    print(format_top(result))                         # the layout of `go tool pprof -top`
    event.extra["pprof_top"] = summarize_top(result)  # [{"function", "flat", "flat_pct", ...}]

Those run in the calling process. A profile from outside (a pod's /debug/pprof/heap, a dump
stored from one) goes through the worker instead, bounded in time and memory:

    from pressured.pprof.worker import Limits, run_top
    report = run_top(data, "heap.pb.gz", n=20, limits=Limits(seconds=5, memory_mib=512))

The modules:

    decode       profile.proto (gzip or raw) into a validated Profile; drop_frames/keep_frames
    samples      the samples decoded in bulk into arrays (numpy), not an object each
    stacks       flat, cum and inline labels summed over those arrays
    goregexp     Go's regexp syntax through RE2 (linear time), for drop_frames/keep_frames
    top          per-function flat and cum, sorted and cut as pprof does; summaries for events
    diff         new minus base, as go tool pprof -top -base (load_diff, diff)
    growth       heap growth between two captures of a target, for the heapdump action
    format       units, percentages and the text report, equal to go tool pprof's
    fetch        the bytes of a file or an http(s) URL (through pressured.httpget)
    worker       decode + top (or diff) in a child process under RLIMIT_AS/RLIMIT_CPU and a deadline
    cli          the ``pressured pprof`` commands
    _pprof_pb2   generated from profile.proto by scripts/gen_pprof_pb2.sh

Importing this package is cheap: the protobuf runtime and numpy are imported when a profile is
decoded, httpx when a URL is read.
"""

from pressured.pprof.decode import (
    GZIP_MAGIC,
    MAX_PROFILE_BYTES,
    Profile,
    ValueType,
    load_profile,
)
from pressured.pprof.fetch import open_profile, read_source
from pressured.pprof.format import format_percent, format_top, format_value, scale, summary_text
from pressured.pprof.top import (
    DEFAULT_EDGE_FRACTION,
    DEFAULT_NODE_FRACTION,
    TopResult,
    TopRow,
    summarize_top,
    top,
)

__all__ = [
    "DEFAULT_EDGE_FRACTION",
    "DEFAULT_NODE_FRACTION",
    "GZIP_MAGIC",
    "MAX_PROFILE_BYTES",
    "Profile",
    "TopResult",
    "TopRow",
    "ValueType",
    "format_percent",
    "format_top",
    "format_value",
    "load_profile",
    "open_profile",
    "read_source",
    "scale",
    "summarize_top",
    "summary_text",
    "top",
]
