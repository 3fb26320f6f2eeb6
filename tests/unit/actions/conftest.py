"""Shared by the action tests: the events they run, and helpers for real processes.

``pressure()`` and ``oom_kill()`` build the events every action test feeds in; ``wait_for``
polls for something a real process does; ``fake_proc`` writes a /proc entry for pids that
exist only on paper. Fixtures used by one file only live in that file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pressured.kernel.pidfd import open_processes
from pressured.model import Identity, OomKill, PressureEvent

CGROUP = "/sys/fs/cgroup/kubepods/pod-a/app"
WALL = 1_763_702_534.25  # 2025-11-21T05:22:14.250Z
IDENTITY = Identity(namespace="shop", pod_name="web-0", pod_uid="uid-1", container_name="app")


def pressure(
    severity: str = "warn",
    *,
    pids: list[int] | None = None,
    dry_run: bool = False,
    **extra: Any,
) -> PressureEvent:
    return PressureEvent(
        time=WALL,
        severity=severity,  # type: ignore[arg-type]
        previous_severity="ok",
        cgroup=CGROUP,
        usage_bytes=900 << 20,
        working_set_bytes=800 << 20,
        limit_bytes=1 << 30,
        usage_percent=78.125,
        growth_bytes_per_s=1048576.04,
        eta_seconds=224.0,
        psi_some_avg10=1.5,
        psi_full_avg10=None,
        rule="percent",
        key=CGROUP,
        identity=IDENTITY,
        dry_run=dry_run,
        extra={"pids": list(pids or []), **extra},
    )


def oom_kill() -> OomKill:
    return OomKill(
        time=WALL,
        cgroup=CGROUP,
        pid=4242,
        comm="python3",
        oom_kill_count=1,
        sources=("counters", "kmsg"),
        warned_seconds_before=12.5,
        key=CGROUP,
        identity=IDENTITY,
    )


def fake_proc(root: Path, pid: int, nspid: str | None, start_ticks: int = 100) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    lines = ["Name:\tapp", f"Pid:\t{pid}"]
    if nspid is not None:
        lines.append(f"NSpid:\t{nspid}")
    (d / "status").write_text("\n".join(lines) + "\n")
    # /proc/PID/stat: field 22 (starttime) is the 20th after the ") " that ends comm
    rest = ["S", *(str(i) for i in range(4, 22)), str(start_ticks), "0", "0"]
    (d / "stat").write_text(f"{pid} (app (v2)) " + " ".join(rest) + "\n")


def held(event: PressureEvent, proc: str = "/proc") -> PressureEvent:
    """``event`` as the daemon emits it: its pids held (``event.processes``) from when they were
    read. A fake /proc's pids are held by number and start time (its cgroup file is needed)."""
    return replace(event, processes=open_processes(event.extra["pids"], proc))
