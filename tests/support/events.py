"""Reading the event JSON lines `pressured run --events-out FILE` writes, from a test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pressured.model import Identity, OomKill, PressureEvent

Event = dict[str, Any]


def read_events(path: Path) -> list[Event]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def kind(doc: Event) -> str:
    """warn / critical / recovered, or oom_killed."""
    return str(doc.get("severity") or doc["event_type"])


def wait_for_events(
    path: Path, done: Callable[[list[Event]], bool], timeout: float, *, poll: float = 0.2
) -> list[Event]:
    """The events once ``done(events)`` holds, or what there is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    docs = read_events(path)
    while not done(docs) and time.monotonic() < deadline:
        time.sleep(poll)
        docs = read_events(path)
    return docs


def has_kill(docs: list[Event]) -> bool:
    return any(d["event_type"] == "oom_killed" for d in docs)


# ------------------------------------------------------------ events as actions receive them

WALL = 1772446560.0  # 2026-03-02T10:16:00Z
MiB = 1 << 20


def pressure_event(
    who: Identity,
    severity: str = "warn",
    *,
    eta: float | None = 42.0,
    extra: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> PressureEvent:
    """A pressure event on ``who``'s container (200 MiB working set of a 256 MiB limit), as
    the k8s-event and evict actions receive one."""
    return PressureEvent(
        time=WALL,
        severity=severity,  # type: ignore[arg-type]
        previous_severity="ok",
        cgroup=f"/kubepods/burstable/pod{who.pod_uid}/{who.container_id}",
        usage_bytes=230 * MiB,
        working_set_bytes=200 * MiB,
        limit_bytes=256 * MiB,
        usage_percent=78.125,
        growth_bytes_per_s=1.5 * MiB,
        eta_seconds=eta,
        psi_some_avg10=None,
        psi_full_avg10=None,
        rule="warn_percent>=70",
        key="/sys/fs/cgroup/kubepods/x",
        identity=who,
        extra=dict(extra or {}),
        dry_run=dry_run,
    )


def oom_kill_event(who: Identity, extra: dict[str, Any] | None = None) -> OomKill:
    """A confirmed kill of ``who``'s python3, 12.4 s after the first warning."""
    return OomKill(
        time=WALL,
        cgroup=f"/kubepods/burstable/pod{who.pod_uid}",
        pid=41807,
        comm="python3",
        oom_kill_count=1,
        sources=("kmsg", "counters"),
        warned_seconds_before=12.4,
        identity=who,
        extra=dict(extra or {}),
    )
