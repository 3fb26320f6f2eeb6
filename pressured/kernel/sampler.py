"""One reading of a target, a cgroup or the machine itself, as the engine takes it: the daemon
and `pressured diagnose` both sample here.

A cgroup's sample is its memory numbers (usage, working set, limit), its PSI, its OOM kill
count, its memory.high throttling count (v2; memory.high itself once that count is above 0)
and the highest oom_score among its first processes. The machine's is /proc/meminfo
(its working set, as usage too: MemTotal - MemAvailable, against MemTotal) and
/proc/pressure. The memory numbers make a sample: when they cannot be read the reading fails
with CgroupFileError; a missing kill counter or machine PSI file only leaves its field empty.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from pressured.errors import CgroupFileError
from pressured.kernel import cgroupfs, procfs
from pressured.model import Psi, Sample

PSI_RESOURCES = ("memory", "io", "cpu")
OOM_SCORE_PIDS = 16
"""How many of a cgroup's processes are asked for their oom_score."""


def read_sample(
    key: str,
    ref: cgroupfs.CgroupRef | None,
    *,
    now: float,
    proc: str = procfs.PROC,
    pids: Sequence[int] = (),
    psi: Sequence[str] = PSI_RESOURCES,
    strict_psi: bool = True,
) -> Sample:
    """A sample of the cgroup ``ref``, or of the machine when ``ref`` is None, stamped ``now``.

    ``pids``: the cgroup's processes, for its top oom_score (none given: no score). ``psi``:
    the resources whose pressure is read. ``strict_psi``: a cgroup PSI file that cannot be
    read fails the reading (the daemon logs it and skips that reading); without it the field
    is left empty (diagnose keeps the row).
    """
    readings: dict[str, Psi | None] = {}
    if ref is None:
        machine = procfs.read_machine(proc)
        for resource in psi:
            path = os.path.join(proc, "pressure", resource)
            with contextlib.suppress(CgroupFileError):
                readings[resource] = cgroupfs.read_psi_file(path)
        return Sample(
            key,
            now,
            machine.working_set_bytes,
            machine.working_set_bytes,
            machine.total_bytes,
            readings.get("memory"),
            readings.get("io"),
            readings.get("cpu"),
        )
    mem = cgroupfs.read_memory(ref)
    for resource in psi:
        try:
            readings[resource] = cgroupfs.read_psi(ref, resource)
        except CgroupFileError:
            if strict_psi:
                raise
    kills = None
    with contextlib.suppress(CgroupFileError):
        kills = cgroupfs.read_kill_counters(ref)
    high_bytes = None
    if kills is not None and kills.high:
        # memory.high matters only once the cgroup was held at it: one file less per sample
        with contextlib.suppress(CgroupFileError):
            high_bytes = cgroupfs.read_high(ref)
    score = top_oom_score(pids, proc)
    return Sample(
        key,
        now,
        mem.usage_bytes,
        mem.working_set_bytes,
        mem.limit_bytes,
        readings.get("memory"),
        readings.get("io"),
        readings.get("cpu"),
        score[0] if score else None,
        score[1] if score else None,
        kills.oom_kill_count if kills else None,
        memory_high_events=kills.high if kills else None,
        memory_high_bytes=high_bytes,
    )


def top_oom_score(pids: Sequence[int], proc: str = procfs.PROC) -> tuple[int, int] | None:
    """(oom_score, oom_score_adj) of the likeliest OOM victim among the first
    OOM_SCORE_PIDS of ``pids``, or None when none of them is readable."""
    best = None
    for pid in pids[:OOM_SCORE_PIDS]:
        s = procfs.read_oom_score(pid, proc)
        if s is not None and (best is None or s[0] > best[0]):
            best = s
    return best
