"""Frozen value types that flow between the parts (no I/O here).

Target        who is watched: a cgroup (or the machine) and, in Kubernetes, its pod identity
Sample        one reading of a target at one instant
PressureEvent the engine's verdict (event_type "memory_pressure", "memory_throttled", or
              "memory_thrash" for page-cache thrash: pressure, not an OOM risk)
KillRecord    what one kill source saw of one kill, the kill reconciler's input
OomKill       a confirmed kill (event_type "oom_killed"), built by the kill reconciler

An event's ``processes`` holds the processes of ``extra["pids"]`` open from when they were read
(kernel.pidfd): what a signal goes to, never the numbers. It is not part of the event contract:
``to_json`` leaves it out, equality and repr ignore it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from pressured.kernel.pidfd import ProcessHandles

Severity = Literal["ok", "warn", "critical"]
EventSeverity = Literal["warn", "critical", "recovered", "thrash"]
"""An engine event's severity: the OOM-risk states, or "thrash" (event_type "memory_thrash":
page-cache thrash, pressure that is no OOM risk)."""
SEVERITY_RANK: dict[str, int] = {"ok": 0, "warn": 1, "critical": 2}

MACHINE = "machine"
"""Target key of the machine itself (limit MemTotal, working set from MemAvailable)."""


def rfc3339(ts: float) -> str:
    """Wall-clock seconds as RFC 3339 UTC with milliseconds, e.g. 2026-11-21T05:22:14.123Z."""
    d = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_time(text: Any) -> float | None:
    """An RFC 3339 timestamp (ours, the API server's) as epoch seconds; None when absent or
    malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Identity:
    """Kubernetes identity of a target; every field None outside Kubernetes."""

    namespace: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    container_name: str | None = None
    container_id: str | None = None
    node_name: str | None = None
    pod_ip: str | None = None

    def as_event_fields(self) -> dict[str, str | None]:
        return {
            "namespace": self.namespace,
            "pod_name": self.pod_name,
            "pod_uid": self.pod_uid,
            "container_name": self.container_name,
            "node_name": self.node_name,
            "pod_ip": self.pod_ip,
        }


@dataclass(frozen=True, slots=True)
class Psi:
    """One line pair of a pressure file (psi.rst): percentages and total stall in us."""

    some_avg10: float = 0.0
    some_avg60: float = 0.0
    some_avg300: float = 0.0
    some_total: int = 0
    full_avg10: float = 0.0
    full_avg60: float = 0.0
    full_avg300: float = 0.0
    full_total: int = 0


Metric = Literal["unreclaimable", "working_set", "usage"]
"""What warn/critical and the ETA are decided on:

- unreclaimable (the default): what the kernel cannot reclaim short of an OOM kill (anonymous
  memory, shmem/tmpfs, locked file pages, unreclaimable kernel memory; the terms and their
  kernel docs are in kernel/cgroupfs.py). Page cache cannot raise it, so it cannot fool it.
- working_set: usage less inactive file pages, the kubelet's eviction measure (it still counts
  active page cache, cadvisor#2582).
- usage: the raw charge (memory.current, memory.usage_in_bytes)."""
METRICS: Final = ("unreclaimable", "working_set", "usage")
DEFAULT_METRIC: Final[Metric] = "unreclaimable"
METRIC_SHORT: Final[dict[str, str]] = {
    "unreclaimable": "unrecl",
    "working_set": "ws",
    "usage": "usage",
}
"""A metric's name in a table cell (diagnose, top)."""
METRIC_FIELDS: Final[dict[str, str]] = {
    "unreclaimable": "unreclaimable_bytes",
    "working_set": "working_set_bytes",
    "usage": "usage_bytes",
}
"""The sample, event and state field that holds each metric's bytes."""


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-target threshold overrides (pod annotations pressured.io/*); None keeps the
    configured value."""

    warn_percent: float | None = None
    critical_percent: float | None = None
    cooldown_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a target. Bytes are bytes; limit None means unlimited."""

    key: str
    time: float  # monotonic seconds (the engine's clock)
    usage_bytes: int
    working_set_bytes: int
    limit_bytes: int | None
    memory_psi: Psi | None = None
    io_psi: Psi | None = None
    cpu_psi: Psi | None = None
    oom_score: int | None = None
    oom_score_adj: int | None = None
    oom_kill_count: int | None = None
    memory_high_events: int | None = None
    """memory.events "high" (cgroup v2): times the cgroup was throttled over memory.high."""
    memory_high_bytes: int | None = None
    """memory.high (cgroup v2), read while the "high" count is above 0; None: not set."""
    unreclaimable_bytes: int | None = None
    """The OOM-risk figure; None where the source cannot tell (the kubelet's summary API)."""
    refault_file: int | None = None
    """The cgroup's workingset_refault_file counter (file pages read again after eviction)."""

    def decided_by(self, metric: Metric) -> Metric:
        """The metric a decision really rests on: the configured one, or the working set where
        the sample has no unreclaimable figure (it over-counts, so nothing is missed)."""
        if metric == "unreclaimable" and self.unreclaimable_bytes is None:
            return "working_set"
        return metric

    def metric_bytes(self, metric: Metric) -> int:
        """The value warn/critical are decided on, by the configured metric."""
        value: int = getattr(self, METRIC_FIELDS[self.decided_by(metric)])
        return value


@dataclass(frozen=True)
class PressureEvent:
    """An engine verdict; ``to_json`` is the event contract of the README."""

    time: float  # wall clock (seconds since the epoch)
    severity: EventSeverity
    previous_severity: Severity
    cgroup: str
    usage_bytes: int
    working_set_bytes: int
    limit_bytes: int | None
    usage_percent: float
    growth_bytes_per_s: float | None
    eta_seconds: float | None
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    rule: str
    key: str = ""
    identity: Identity = field(default_factory=Identity)
    annotations: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    unreclaimable_bytes: int | None = None
    decided_by: Metric = "working_set"
    """The metric ``usage_percent``, the severity and the ETA rest on."""
    refault_file_per_s: float | None = None

    event_type: Literal["memory_pressure", "memory_throttled", "memory_thrash"] = "memory_pressure"
    """"memory_throttled": held at memory.high with memory stalled (engine.py), severity warn,
    its evidence in ``extra["throttle"]``. "memory_thrash": page-cache thrash, severity
    thrash."""
    processes: ProcessHandles | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_type": self.event_type,
            "time": rfc3339(self.time),
            "severity": self.severity,
            "previous_severity": self.previous_severity,
            "cgroup": self.cgroup,
            **self.identity.as_event_fields(),
            "usage_bytes": self.usage_bytes,
            "working_set_bytes": self.working_set_bytes,
            "unreclaimable_bytes": self.unreclaimable_bytes,
            "limit_bytes": self.limit_bytes,
            "usage_percent": round(self.usage_percent, 2),
            "decided_by": self.decided_by,
            "refault_file_per_s": None
            if self.refault_file_per_s is None
            else round(self.refault_file_per_s, 1),
            "growth_bytes_per_s": None
            if self.growth_bytes_per_s is None
            else round(self.growth_bytes_per_s, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "psi": {"some_avg10": self.psi_some_avg10, "full_avg10": self.psi_full_avg10},
            "rule": self.rule,
            "annotations": dict(self.annotations),
            "dry_run": self.dry_run,
        }
        out.update(self.extra)
        return out


SOURCE_COUNTERS = "counters"
"""The oom_kill counters of memory.events(.local) (v2) and memory.oom_control (v1)."""
SOURCE_COUNTERS_RESTART = "counters:restart"
"""Counter deltas since the last run: kills while the daemon was down."""
SOURCE_KMSG = "kmsg"
SOURCE_TRACEPOINT = "tracepoint"
SOURCE_BCC = "bcc"


@dataclass(frozen=True)
class KillRecord:
    """What one source saw of one kill (or, for counters, of ``count_delta`` kills).

    ``time`` is monotonic (the daemon's clock) when the record was read, ``wall`` the wall
    clock of the kill as well as the source knows it. ``cgroup`` is a cgroup path as the
    kernel names it, relative to the root of its hierarchy ("/kubepods/pod.../abc"), or None.
    ``rss`` holds bytes: anon_rss, file_rss, shmem_rss, total_vm, pgtables.
    """

    source: str
    time: float
    wall: float
    cgroup: str | None = None
    cgroup_id: int | None = None
    pid: int | None = None
    comm: str | None = None
    count_delta: int = 1
    rss: dict[str, int] = field(default_factory=dict)
    uid: int | None = None
    oom_score_adj: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def restart(self) -> bool:
        return self.source == SOURCE_COUNTERS_RESTART


@dataclass(frozen=True, slots=True)
class RiskFigures:
    """The OOM-risk figures of a target's last sample before a kill: what the engine decided
    on when it last read the target."""

    unreclaimable_bytes: int | None
    working_set_bytes: int
    decided_by: Metric

    @classmethod
    def of(cls, sample: Sample, metric: Metric) -> RiskFigures:
        return cls(sample.unreclaimable_bytes, sample.working_set_bytes, sample.decided_by(metric))


@dataclass(frozen=True)
class OomKill:
    """A confirmed OOM kill, reported once (event_type "oom_killed"). ``risk``: the figures of
    the target's last sample (None: no sample, a kill while the daemon was down, or none of
    ours)."""

    time: float  # wall clock
    cgroup: str
    pid: int | None
    comm: str | None
    oom_kill_count: int | None
    sources: tuple[str, ...]
    warned_seconds_before: float | None
    key: str = ""
    identity: Identity = field(default_factory=Identity)
    annotations: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    risk: RiskFigures | None = None

    event_type: Literal["oom_killed"] = "oom_killed"
    processes: ProcessHandles | None = field(default=None, compare=False, repr=False)

    @property
    def severity(self) -> str:
        return "oom_killed"

    def to_json(self) -> dict[str, Any]:
        risk = self.risk
        out: dict[str, Any] = {
            "event_type": self.event_type,
            "time": rfc3339(self.time),
            "cgroup": self.cgroup,
            **self.identity.as_event_fields(),
            "pid": self.pid,
            "comm": self.comm,
            "oom_kill_count": self.oom_kill_count,
            "unreclaimable_bytes": None if risk is None else risk.unreclaimable_bytes,
            "working_set_bytes": None if risk is None else risk.working_set_bytes,
            "decided_by": None if risk is None else risk.decided_by,
            "sources": list(self.sources),
            "warned_seconds_before": None
            if self.warned_seconds_before is None
            else round(self.warned_seconds_before, 3),
            "annotations": dict(self.annotations),
            "dry_run": self.dry_run,
        }
        out.update(self.extra)
        return out


Event = PressureEvent | OomKill
