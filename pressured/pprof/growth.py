"""Heap growth between two captures of one target: the functions that grew most.

    rows = heap_growth_top(previous, "heaps/shop/web-1/...T1.pb.gz", current, "...T2.pb.gz",
                           k=3, limits=DAEMON_LIMITS)
    event.extra["heap_growth_top"] = rows   # [{"function", "flat", "flat_pct", "cum", ...}]

The diff is `go tool pprof -top -base PREVIOUS CURRENT` (pressured.pprof.diff) of the profile's
default sample type (inuse_space for a Go heap), computed in the bounded worker process as every
analysis of a pod's profile is. ``flat`` is the growth of the function's own in-use bytes; only
functions that grew are listed, the largest growth first.
"""

from __future__ import annotations

from typing import Any

from pressured.pprof.worker import DAEMON_LIMITS, Limits, run_diff

GROWTH_ROWS = 64
"""Rows of the diff looked at for growers (shrinking functions take rows too)."""


def heap_growth_top(
    previous: bytes,
    previous_source: str,
    current: bytes,
    current_source: str,
    *,
    k: int = 3,
    limits: Limits = DAEMON_LIMITS,
) -> list[dict[str, Any]]:
    """The ``k`` functions whose in-use bytes grew most; PprofError (naming the files) if the
    two cannot be compared or the analysis fails."""
    report = run_diff(
        previous,
        previous_source,
        current,
        current_source,
        n=max(GROWTH_ROWS, k),
        summary_k=k,
        grown_only=True,
        limits=limits,
    )
    return report.summary
