"""The threshold engine: samples in, pressure events out. Pure: no I/O, the clock is an argument.

Per target (keyed by ``Sample.key``) the engine keeps a severity, ok < warn < critical.

Percent thresholds. The metric (``unreclaimable`` by default: what the kernel cannot reclaim
short of a kill, so page cache never raises it; or the working set, or usage) as a percent of
the limit is compared with ``warn_percent`` and ``critical_percent`` (``>=``). While a target
is in a state, the thresholds that hold it there are lowered by ``hysteresis_percent``: in
warn the warn level is lowered; in critical both levels are. So with 70/85/5 a target in
critical stays critical down to 80 %, then stays warn down to 65 %. The band never exceeds half
of a level, so a pod override of warn_percent below the band still lets the target recover.

Rules. ``rules.critical`` is evaluated first, then ``rules.warning``; a value >= 1 matches. A
configured rule *replaces* the percent threshold of its own severity (OOMHero semantics: the
expression is the whole condition; write ``memory_usage > 85 || ...`` to keep the percent
test). Rules have no hysteresis: they are the whole condition, so they can say it themselves.

Prediction. The growth rate (bytes/s) is the Theil-Sen slope (median of pairwise slopes) of
the metric over the last ``predict_samples`` samples within ``predict_window_seconds``; one
spike among them moves it little. ``eta_seconds`` is the time left to the limit while growing,
None otherwise. With ``predict_seconds`` set, a target below every threshold is raised to warn
(rule ``predict eta<120s``) while its ETA is shorter. The fit restarts from the current sample
when the sample's oom-kill counter rose, or when the metric dropped by more than the hysteresis
band (capped as for the warn level) below both previous points: what grew before is gone, and
its slope would report memory being freed as growth.

Events. An event is emitted while severity is above ok when the severity changed, or when
``cooldown_seconds`` have passed since the target's last event (so a held severity repeats
once per cooldown, and a change is reported at once). Returning to ok emits ``recovered``
(unless ``recovered_events`` is false). Targets without a limit never trip percent thresholds;
rules may still match on PSI.

Thrash. Page-cache thrash is pressure, not an OOM risk: the kernel keeps dropping and reading
back file pages, the cgroup slows down, and nothing is killed. A target thrashes while its
memory PSI "some" avg10 is at least ``thrash_psi_percent`` and its file refaults
(workingset_refault_file) rose over the last THRASH_WINDOW_SECONDS. It is reported on its own,
as event_type "memory_thrash" with severity "thrash" (on entry, then once per cooldown while it
lasts); it neither starts an episode nor moves the OOM severity.

Re-check. ``still_holds(event, sample)`` answers, for a fresh sample of the event's target,
whether the engine would still be at the event's severity (same band, rules, growth fit and
prediction) without recording anything: the daemon asks it before a destructive action.

Throttling (cgroup v2). A target held at memory.high is not killed: the kernel makes every
allocation above it reclaim and then sleep (mm/memcontrol.c, mem_cgroup_handle_over_high), and
a workload can live there for good, slowed to a crawl (KEP-2570). While the "high" count of
memory.events keeps rising (once within ``HIGH_QUIET_SECONDS``: the kernel's sleep is at most
2 s) and memory PSI "full" avg10 is at least ``throttle_full_percent``, the target is held;
held for ``throttle_seconds`` it gets a ``memory_throttled`` event (severity warn, rule
``memory_throttled full_avg10>=<level> for <seconds>s``) whose ``extra["throttle"]`` carries
the evidence: the high count's rise, full avg10, the full stall and the seconds held since the
hold began. It repeats once per cooldown while held. ``take_throttled_seconds(key)`` hands
out the seconds held since the last call (the metric). ``throttle_full_percent: null`` turns
this off.

Episodes. An episode runs from the first sample above ok to the sample that returns to ok.
``first_warn_time(key, at=t)`` answers for the episode in progress at monotonic time ``t``, and
ended episodes are kept for ``EPISODE_RETENTION_SECONDS``: a kill empties the cgroup, so the
engine usually sees the recovery before the kill reconciler asks when the warning began.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from pressured.errors import ConfigError, quote
from pressured.expr import Expr, compile_expr
from pressured.model import (
    DEFAULT_METRIC,
    METRICS,
    SEVERITY_RANK,
    EventSeverity,
    Identity,
    Metric,
    Overrides,
    PressureEvent,
    Psi,
    Sample,
    Severity,
)
from pressured.settings import Checker

__all__ = [
    "EPISODE_RETENTION_SECONDS",
    "VARIABLES",
    "Engine",
    "EngineSettings",
    "expression_variables",
    "theil_sen_slope",
]

EPISODE_RETENTION_SECONDS: Final = 300.0
"""How long an ended episode is remembered for ``first_warn_time(key, at=...)``."""

THRASH_WINDOW_SECONDS: Final = 10.0
"""The refault rate is measured over about this long: PSI's avg10 window. The kernel flushes
memcg counters lazily (every 2 s at most), so back-to-back reads may show no change."""

KILL_GRACE_SECONDS: Final = 5.0
"""A kill timestamped this long after the sample that ended an episode still belongs to it:
kernel timestamps (kmsg) and the sampling clock are read at different moments."""

_PSI_FIELDS: Final = tuple(
    f"{kind}_{window}"
    for kind in ("some", "full")
    for window in ("avg10", "avg60", "avg300", "total")
)

VARIABLES: Final[frozenset[str]] = frozenset(
    {
        "memory_usage",
        "memory_current",
        "memory_max",
        "working_set",
        "unreclaimable",
        "oom_score",
        "oom_score_adj",
        "growth_bytes_per_s",
        "eta_seconds",
        *(f"{res}_pressure_{f}" for res in ("memory", "io", "cpu") for f in _PSI_FIELDS),
    }
)
"""Names a rule expression may use.

memory_usage is the chosen metric in percent of the limit (0 without a limit); memory_current
is usage in bytes; memory_max the limit in bytes (+inf without one); working_set in bytes;
growth_bytes_per_s 0 until known; eta_seconds +inf unless growing toward a limit; scores and
PSI 0 when not read; unreclaimable in bytes (the working set where the source cannot tell).
"""

_THRESHOLD_KEYS: Final = frozenset(
    {
        "warn_percent",
        "critical_percent",
        "hysteresis_percent",
        "cooldown_seconds",
        "metric",
        "thrash_psi_percent",
        "predict_seconds",
        "recovered_events",
        "predict_window_seconds",
        "predict_samples",
        "throttle_full_percent",
        "throttle_seconds",
    }
)
_RULE_KEYS: Final = frozenset({"warning", "critical"})
_MIN_FIT_SAMPLES: Final = 3
MAX_FIT_SAMPLES: Final = 300
"""The Theil-Sen fit costs the square of its samples: 300 is about 45,000 slopes."""
MAX_SECONDS: Final = {
    "cooldown_seconds": 86_400.0,
    "predict_seconds": 86_400.0,
    "predict_window_seconds": 3_600.0,
    "throttle_seconds": 3_600.0,
}
"""Upper bounds: a cooldown or a prediction horizon of a day, a growth window of an hour (the
samples of a longer one would no longer say how fast memory grows now)."""


@dataclass(frozen=True)
class EngineSettings:
    """Validated engine configuration; construction raises ConfigError on bad values."""

    warn_percent: float = 70.0
    critical_percent: float = 85.0
    hysteresis_percent: float = 5.0
    cooldown_seconds: float = 60.0
    metric: Metric = DEFAULT_METRIC
    thrash_psi_percent: float | None = 10.0
    predict_seconds: float | None = None
    recovered_events: bool = True
    warning_expr: Expr | None = None
    critical_expr: Expr | None = None
    predict_window_seconds: float = 60.0
    predict_samples: int = 30
    throttle_full_percent: float | None = 10.0
    throttle_seconds: float = 30.0

    def __post_init__(self) -> None:
        problems = _settings_problems(
            {f.name: getattr(self, f.name) for f in fields(self)}, "thresholds"
        )
        if problems:
            raise ConfigError(problems)

    @functools.cached_property
    def uses_growth(self) -> bool:
        """Whether every sample needs the growth fit (otherwise only events do)."""
        if self.predict_seconds is not None:
            return True
        wanted = {"growth_bytes_per_s", "eta_seconds"}
        return any(
            e is not None and e.names & wanted for e in (self.warning_expr, self.critical_expr)
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "thresholds") -> EngineSettings:
        """Build from the root config mapping: its ``thresholds`` and ``rules`` sections.

        ``where`` is the key path of the thresholds section; the rules section is its sibling
        (``rules.warning``). Every problem is collected into one ConfigError. Numbers and
        booleans may also be given as text ("60", "false").
        """
        parent, _, leaf = where.rpartition(".")
        rules_where = f"{parent}.rules" if parent else "rules"
        check = Checker()

        section = check.section(cfg.get(leaf), where, _THRESHOLD_KEYS)
        d: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key in (
            "warn_percent",
            "critical_percent",
            "hysteresis_percent",
            "cooldown_seconds",
            "predict_window_seconds",
            "throttle_seconds",
        ):
            kwargs[key] = check.number(
                section.get(key, d[key]), f"{where}.{key}", float(d[key]), from_text=True
            )
        samples = check.number(
            section.get("predict_samples", d["predict_samples"]),
            f"{where}.predict_samples",
            float(d["predict_samples"]),
            from_text=True,
        )
        if not samples.is_integer():
            check.bad(f"{where}.predict_samples", "expected a whole number", samples)
        kwargs["predict_samples"] = int(samples)
        if section.get("predict_seconds") is not None:
            kwargs["predict_seconds"] = check.number(
                section["predict_seconds"], f"{where}.predict_seconds", 0.0, from_text=True
            )
        if "throttle_full_percent" in section:
            raw = section["throttle_full_percent"]
            kwargs["throttle_full_percent"] = (
                None
                if raw is None
                else check.number(raw, f"{where}.throttle_full_percent", 0.0, from_text=True)
            )
        kwargs["recovered_events"] = check.flag(
            section.get("recovered_events", True),
            f"{where}.recovered_events",
            True,
            from_text=True,
        )
        kwargs["metric"] = check.choice(
            section.get("metric", DEFAULT_METRIC), f"{where}.metric", METRICS, DEFAULT_METRIC
        )
        if "thrash_psi_percent" in section:
            raw = section["thrash_psi_percent"]
            kwargs["thrash_psi_percent"] = (
                None
                if raw is None
                else check.number(raw, f"{where}.thrash_psi_percent", 10.0, from_text=True)
            )

        rules = check.section(cfg.get("rules"), rules_where, _RULE_KEYS)
        for key, target in (("warning", "warning_expr"), ("critical", "critical_expr")):
            text = rules.get(key)
            if text is None or (isinstance(text, str) and not text.strip()):
                continue
            try:
                kwargs[target] = compile_expr(text, f"{rules_where}.{key}", VARIABLES)
            except ConfigError as exc:
                check.problems.extend(exc.problems)

        if not check.problems:
            check.problems.extend(_settings_problems({**d, **kwargs}, where))
        check.raise_if_any()
        return cls(**kwargs)


def _settings_problems(v: Mapping[str, Any], where: str) -> list[str]:
    """The bounds of each value, and the rules between them."""
    check = Checker()
    warn, critical = (
        check.number(v[key], f"{where}.{key}", None, above=0, max=100)
        for key in ("warn_percent", "critical_percent")
    )
    if warn is not None and critical is not None and warn >= critical:
        check.bad(
            f"{where}.warn_percent",
            f"must be below critical_percent ({quote(v['critical_percent'])})",
            v["warn_percent"],
        )
    hysteresis = check.number(v["hysteresis_percent"], f"{where}.hysteresis_percent", None)
    if hysteresis is not None and warn is not None and not 0 <= hysteresis < warn:
        check.bad(
            f"{where}.hysteresis_percent",
            "must be at least 0 and below warn_percent",
            v["hysteresis_percent"],
        )
    check.number(
        v["cooldown_seconds"],
        f"{where}.cooldown_seconds",
        None,
        min=0,
        max=MAX_SECONDS["cooldown_seconds"],
    )
    check.choice(v["metric"], f"{where}.metric", METRICS, None)
    check.number(
        v["thrash_psi_percent"],
        f"{where}.thrash_psi_percent",
        None,
        above=0,
        max=100,
        nullable=True,
    )
    check.number(
        v["predict_seconds"],
        f"{where}.predict_seconds",
        None,
        above=0,
        max=MAX_SECONDS["predict_seconds"],
        nullable=True,
    )
    check.number(
        v["predict_window_seconds"],
        f"{where}.predict_window_seconds",
        None,
        above=0,
        max=MAX_SECONDS["predict_window_seconds"],
    )
    check.number(
        v["throttle_full_percent"],
        f"{where}.throttle_full_percent",
        None,
        above=0,
        max=100,
        nullable=True,
    )
    check.number(
        v["throttle_seconds"],
        f"{where}.throttle_seconds",
        None,
        min=0,
        max=MAX_SECONDS["throttle_seconds"],
    )
    check.number(
        v["predict_samples"],
        f"{where}.predict_samples",
        None,
        min=_MIN_FIT_SAMPLES,
        max=MAX_FIT_SAMPLES,
    )
    return check.problems


def theil_sen_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Median of the slopes between every pair of points with distinct times, or None when
    there are fewer than three points (two points cannot outvote a spike)."""
    if len(points) < _MIN_FIT_SAMPLES:
        return None
    slopes = [
        (y2 - y1) / (t2 - t1)
        for i, (t1, y1) in enumerate(points)
        for t2, y2 in points[i + 1 :]
        if t2 > t1
    ]
    return statistics.median(slopes) if slopes else None


def _psi_values(prefix: str, psi: Psi | None) -> dict[str, float]:
    if psi is None:
        return {f"{prefix}_{f}": 0.0 for f in _PSI_FIELDS}
    return {f"{prefix}_{f}": float(getattr(psi, f)) for f in _PSI_FIELDS}


def expression_variables(
    sample: Sample,
    usage_percent: float,
    growth: float | None,
    eta: float | None,
) -> dict[str, float]:
    """The variables a rule sees for one sample (see VARIABLES for absent readings)."""
    limit = sample.limit_bytes
    out = {
        "memory_usage": usage_percent,
        "memory_current": float(sample.usage_bytes),
        "memory_max": float(limit) if limit is not None and limit > 0 else math.inf,
        "working_set": float(sample.working_set_bytes),
        "unreclaimable": float(sample.metric_bytes("unreclaimable")),
        "oom_score": float(sample.oom_score or 0),
        "oom_score_adj": float(sample.oom_score_adj or 0),
        "growth_bytes_per_s": 0.0 if growth is None else growth,
        "eta_seconds": math.inf if eta is None else eta,
    }
    out.update(_psi_values("memory_pressure", sample.memory_psi))
    out.update(_psi_values("io_pressure", sample.io_psi))
    out.update(_psi_values("cpu_pressure", sample.cpu_psi))
    return out


Points = tuple[tuple[float, float], ...]
"""(monotonic time, metric bytes) of the samples the growth fit uses, oldest first."""


HIGH_QUIET_SECONDS: Final = 5.0
"""A throttled task sleeps at most 2 s per return to user space (MEMCG_MAX_HIGH_DELAY_JIFFIES)
and then charges again: a "high" count that has not risen for longer means the hold is over."""


@dataclass(slots=True)
class _Throttle:
    """A target's hold at memory.high: where its "high" count and full stall stood when the
    hold began, and what is still to be counted and reported."""

    last_high: int | None = None
    last_rise: float | None = None
    since: float | None = None
    high_at_start: int = 0
    stall_at_start: int = 0
    last_time: float | None = None
    reported_at: float | None = None
    seconds: float = 0.0
    """Held seconds not yet taken by ``take_throttled_seconds``."""


@dataclass(slots=True)
class _Target:
    history: Points = ()
    """Replaced, never changed in place: the action thread's re-check reads it unlocked."""
    severity: Severity = "ok"
    last_event_time: float | None = None
    episode_start: float | None = None
    last_seen: float = 0.0
    overrides: Overrides | None = None
    oom_kills: int | None = None
    """The oom-kill counter of the last sample that had one."""
    throttle: _Throttle = field(default_factory=_Throttle)
    refaults: Points = ()
    """(monotonic time, workingset_refault_file) over about THRASH_WINDOW_SECONDS."""
    thrashing: bool = False
    last_thrash_event: float | None = None


@dataclass(frozen=True)
class _Verdict:
    severity: Severity
    rule: str


@dataclass
class _Reading:
    """One sample as the engine sees it; growth and ETA are fitted only when someone asks."""

    sample: Sample
    limit: int | None  # None also for a zero or negative limit
    value: float  # the chosen metric, bytes
    percent: float
    points: Points
    _done: bool = False
    _growth: float | None = None
    _eta: float | None = None

    def growth(self) -> tuple[float | None, float | None]:
        if not self._done:
            self._done = True
            self._growth = theil_sen_slope(self.points)
            if self._growth is not None and self._growth > 0 and self.limit is not None:
                self._eta = max(0.0, (self.limit - self.value) / self._growth)
        return self._growth, self._eta


class Engine:
    """Per-target state machines over one EngineSettings (replaceable at run time)."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self._settings = settings if settings is not None else EngineSettings()
        self._targets: dict[str, _Target] = {}
        self._ended: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def settings(self) -> EngineSettings:
        return self._settings

    def update_settings(self, settings: EngineSettings) -> None:
        """Swap settings (SIGHUP) keeping each target's severity, cooldown and episode.

        Growth history is dropped only when the metric changed (points of another metric would
        skew the fit); a new window or sample count trims it on the next sample.
        """
        old = self._settings
        self._settings = settings
        if (old.metric, old.predict_samples, old.predict_window_seconds) != (
            settings.metric,
            settings.predict_samples,
            settings.predict_window_seconds,
        ):
            for target in self._targets.values():
                keep = old.metric == settings.metric
                target.history = target.history[-settings.predict_samples :] if keep else ()

    def severity(self, key: str) -> Severity:
        target = self._targets.get(key)
        return "ok" if target is None else target.severity

    def keys(self) -> list[str]:
        return list(self._targets)

    def forget(self, key: str) -> None:
        """Drop a target (its cgroup is gone); an episode in progress is kept as ended."""
        target = self._targets.pop(key, None)
        if target is not None and target.episode_start is not None:
            self._end_episode(key, target.episode_start, target.last_seen)

    def first_warn_time(self, key: str, at: float | None = None) -> float | None:
        """Monotonic time the current episode began (first sample above ok), None when ok.

        With ``at`` (a kill's monotonic time), the episode in progress at ``at``: the current
        one, or one that ended at most KILL_GRACE_SECONDS before ``at`` and within the last
        EPISODE_RETENTION_SECONDS; the recovery a kill causes does not erase its warning.
        """
        target = self._targets.get(key)
        start = None if target is None else target.episode_start
        if start is not None and (at is None or at >= start):
            return start
        if at is None:
            return None
        ended = self._ended.get(key)
        if ended is not None and ended[0] <= at <= ended[1] + KILL_GRACE_SECONDS:
            return ended[0]
        return None

    def thresholds(self, overrides: Overrides | None = None) -> tuple[float, float, float]:
        """Effective (warn_percent, critical_percent, cooldown_seconds) for a target."""
        s = self._settings
        warn, critical, cooldown = s.warn_percent, s.critical_percent, s.cooldown_seconds
        if overrides is not None:
            warn = overrides.warn_percent if overrides.warn_percent is not None else warn
            critical = (
                overrides.critical_percent if overrides.critical_percent is not None else critical
            )
            cooldown = (
                overrides.cooldown_seconds if overrides.cooldown_seconds is not None else cooldown
            )
        # An override of one level past the other: everything above critical is critical.
        return min(warn, critical), critical, max(0.0, cooldown)

    def levels_bytes(
        self,
        limit: int | None,
        overrides: Overrides | None = None,
        *,
        include_hysteresis: bool = False,
    ) -> list[int]:
        """Byte levels at which percent thresholds switch, ascending, for kernel thresholds
        (cgroup v1 memory.usage_in_bytes eventfds). Severities decided by a rule have none;
        ``include_hysteresis`` adds the lowered exit levels so recovery wakes the daemon too.
        """
        if limit is None or limit <= 0:
            return []
        s = self._settings
        warn, critical, _ = self.thresholds(overrides)
        percents: set[float] = set()
        if s.warning_expr is None:
            percents.add(warn)
            if include_hysteresis:
                percents.add(warn - _band(s.hysteresis_percent, warn))
        if s.critical_expr is None:
            percents.add(critical)
            if include_hysteresis:
                percents.add(critical - _band(s.hysteresis_percent, critical))
        return sorted({int(limit * p / 100) for p in percents})

    def feed(
        self,
        sample: Sample,
        now: float,
        wall: float,
        *,
        cgroup: str,
        identity: Identity | None = None,
        annotations: Mapping[str, str] | None = None,
        dry_run: bool = False,
        overrides: Overrides | None = None,
    ) -> list[PressureEvent]:
        """Account one sample taken at monotonic ``now`` (``wall`` stamps events): its
        pressure events, then its memory_throttled event."""
        events = self._feed_pressure(
            sample,
            now,
            wall,
            cgroup=cgroup,
            identity=identity,
            annotations=annotations,
            dry_run=dry_run,
            overrides=overrides,
        )
        target = self._targets[sample.key]
        if self._throttled(target.throttle, sample, now, overrides):
            events.append(
                self._throttle_event(
                    target,
                    sample,
                    now,
                    wall,
                    cgroup=cgroup,
                    identity=identity,
                    annotations=annotations,
                    dry_run=dry_run,
                )
            )
        return events

    def take_throttled_seconds(self, key: str) -> float:
        """Seconds ``key`` was held at memory.high since the last call (the metric's share)."""
        target = self._targets.get(key)
        if target is None:
            return 0.0
        seconds, target.throttle.seconds = target.throttle.seconds, 0.0
        return seconds

    def _throttled(
        self, t: _Throttle, sample: Sample, now: float, overrides: Overrides | None
    ) -> bool:
        """Account the sample in the hold; True when a memory_throttled event is due."""
        level = self._settings.throttle_full_percent
        high = sample.memory_high_events
        psi = sample.memory_psi
        previous = t.last_high
        rose = high is not None and previous is not None and high > previous
        if high is not None:
            t.last_high = high
        if rose:
            t.last_rise = now
        rising = t.last_rise is not None and now - t.last_rise <= HIGH_QUIET_SECONDS
        holds = (
            level is not None
            and psi is not None
            and high is not None
            and rising
            and psi.full_avg10 >= level
        )
        if not holds or psi is None or high is None:
            t.since = t.last_time = t.reported_at = None
            return False
        if t.since is None:
            t.since = now
            # the rise that began the hold counts: from the count before it
            t.high_at_start = previous if rose and previous is not None else high
            t.stall_at_start = psi.full_total
        elif t.last_time is not None and now > t.last_time:
            t.seconds += now - t.last_time
        t.last_time = now
        if now - t.since < self._settings.throttle_seconds:
            return False
        _warn, _critical, cooldown = self.thresholds(overrides)
        if t.reported_at is not None and now - t.reported_at < cooldown:
            return False
        t.reported_at = now
        return True

    def _throttle_event(
        self,
        target: _Target,
        sample: Sample,
        now: float,
        wall: float,
        *,
        cgroup: str,
        identity: Identity | None,
        annotations: Mapping[str, str] | None,
        dry_run: bool,
    ) -> PressureEvent:
        t = target.throttle
        psi = sample.memory_psi
        assert psi is not None
        assert t.since is not None
        assert t.last_high is not None
        level = self._settings.throttle_full_percent
        held = now - t.since
        limit = sample.limit_bytes if sample.limit_bytes and sample.limit_bytes > 0 else None
        value = float(sample.metric_bytes(self._settings.metric))
        high = sample.memory_high_bytes
        evidence = {
            "memory_high_bytes": high,
            "high_events_delta": t.last_high - t.high_at_start,
            "psi_full_avg10": psi.full_avg10,
            "full_stall_us": max(0, psi.full_total - t.stall_at_start),
            "held_seconds": round(held, 3),
            "full_percent_level": level,
        }
        return PressureEvent(
            time=wall,
            severity="warn",
            previous_severity=target.severity,
            cgroup=cgroup,
            usage_bytes=sample.usage_bytes,
            working_set_bytes=sample.working_set_bytes,
            limit_bytes=sample.limit_bytes,
            usage_percent=value * 100.0 / limit if limit is not None else 0.0,
            growth_bytes_per_s=None,
            eta_seconds=None,
            psi_some_avg10=psi.some_avg10,
            psi_full_avg10=psi.full_avg10,
            rule=f"memory_throttled full_avg10>={level:g} for {self._settings.throttle_seconds:g}s",
            key=sample.key,
            identity=identity if identity is not None else Identity(),
            annotations=dict(annotations or {}),
            dry_run=dry_run,
            extra={"throttle": evidence},
            event_type="memory_throttled",
            unreclaimable_bytes=sample.unreclaimable_bytes,
            decided_by=sample.decided_by(self._settings.metric),
        )

    def _feed_pressure(
        self,
        sample: Sample,
        now: float,
        wall: float,
        *,
        cgroup: str,
        identity: Identity | None = None,
        annotations: Mapping[str, str] | None = None,
        dry_run: bool = False,
        overrides: Overrides | None = None,
    ) -> list[PressureEvent]:
        s = self._settings
        target = self._targets.get(sample.key)
        if target is None:
            target = _Target()
            self._targets[sample.key] = target
        target.last_seen = now
        target.overrides = overrides
        self._prune_ended(now)

        reading = self._read(sample, target.history, target.oom_kills, overrides)
        target.history = reading.points
        if sample.oom_kill_count is not None:
            target.oom_kills = sample.oom_kill_count
        target.refaults = _refault_points(target.refaults, sample)
        refault_rate = _refault_rate(target.refaults)
        make = functools.partial(
            self._event,
            reading,
            wall,
            cgroup=cgroup,
            identity=identity,
            annotations=annotations,
            dry_run=dry_run,
            refault_rate=refault_rate,
        )

        events: list[PressureEvent] = []
        warn, critical, cooldown = self.thresholds(overrides)
        thrash = self._thrash_rule(sample, refault_rate)
        if thrash is None:
            target.thrashing = False
        else:
            due = target.last_thrash_event is None or now - target.last_thrash_event >= cooldown
            if not target.thrashing or due:
                target.last_thrash_event = now
                events.append(make("thrash", target.severity, thrash, event_type="memory_thrash"))
            target.thrashing = True

        previous = target.severity
        verdict = self._classify(reading, previous, warn, critical)

        if verdict.severity == "ok":
            target.severity = "ok"
            if previous == "ok":
                return events
            if target.episode_start is not None:
                self._end_episode(sample.key, target.episode_start, now)
            target.episode_start = None
            if not s.recovered_events:
                return events
            verdict = _Verdict("ok", "recovered")
        else:
            if previous == "ok":
                target.episode_start = now
            target.severity = verdict.severity
            due = target.last_event_time is None or now - target.last_event_time >= cooldown
            if verdict.severity == previous and not due:
                return events
        target.last_event_time = now
        severity: EventSeverity = "recovered" if verdict.severity == "ok" else verdict.severity
        return [make(severity, previous, verdict.rule), *events]

    def _event(
        self,
        reading: _Reading,
        wall: float,
        severity: EventSeverity,
        previous: Severity,
        rule: str,
        *,
        event_type: Literal["memory_pressure", "memory_thrash"] = "memory_pressure",
        cgroup: str,
        identity: Identity | None,
        annotations: Mapping[str, str] | None,
        dry_run: bool,
        refault_rate: float | None,
    ) -> PressureEvent:
        sample = reading.sample
        g, eta = reading.growth()
        memory_psi = sample.memory_psi
        return PressureEvent(
            time=wall,
            severity=severity,
            previous_severity=previous,
            cgroup=cgroup,
            usage_bytes=sample.usage_bytes,
            working_set_bytes=sample.working_set_bytes,
            limit_bytes=sample.limit_bytes,
            usage_percent=reading.percent,
            growth_bytes_per_s=g,
            eta_seconds=eta,
            psi_some_avg10=None if memory_psi is None else memory_psi.some_avg10,
            psi_full_avg10=None if memory_psi is None else memory_psi.full_avg10,
            rule=rule,
            key=sample.key,
            identity=identity if identity is not None else Identity(),
            annotations=dict(annotations or {}),
            dry_run=dry_run,
            unreclaimable_bytes=sample.unreclaimable_bytes,
            decided_by=sample.decided_by(self._settings.metric),
            refault_file_per_s=refault_rate,
            event_type=event_type,
        )

    def _thrash_rule(self, sample: Sample, refault_rate: float | None) -> str | None:
        """Why ``sample`` shows page-cache thrash (the event's rule), or None when it does not:
        memory stalls (PSI some avg10) while file pages evicted before are read back."""
        level = self._settings.thrash_psi_percent
        psi = sample.memory_psi
        if level is None or psi is None or refault_rate is None or refault_rate <= 0:
            return None
        if psi.some_avg10 < level:
            return None
        return (
            f"thrash: memory some avg10 {psi.some_avg10:g}>={level:g} "
            f"with {refault_rate:.0f} file refaults/s"
        )

    def still_holds(self, event: PressureEvent, sample: Sample) -> bool:
        """Whether ``event`` is still true of ``sample``, a fresh reading of its target: the
        re-check before a destructive action. Pure: nothing is recorded, the clock is
        ``sample.time``.

        The sample is classified as ``feed`` would with the target in the event's severity:
        the percent levels lowered by the same capped hysteresis band, a rule evaluated on this
        sample with the growth and ETA fitted over the target's history plus this sample
        (restarted as feed would after a kill or a release), and the prediction. A warn or
        critical event holds while that verdict is at least its severity, so a critical event
        needs the critical condition (its rule, or critical_percent held down to the band) and
        a warn event any reason to be above ok. A recovered event holds while the verdict is
        ok. The thresholds are those of the target's last fed sample (its overrides). A thrash
        event holds while the sample still shows thrash (PSI and file refaults).
        """
        target = self._targets.get(sample.key)
        if target is None:
            target = _Target()
        if event.event_type == "memory_throttled":
            # still held (the hold is the engine's, read not changed) and still stalled
            level = self._settings.throttle_full_percent
            psi = sample.memory_psi
            return (
                target.throttle.since is not None
                and level is not None
                and psi is not None
                and psi.full_avg10 >= level
            )
        overrides = target.overrides
        # Only points older than the sample: the loop may have fed a newer one meanwhile.
        history = tuple(p for p in target.history if p[0] < sample.time)
        if event.severity == "thrash":
            refaults = tuple(p for p in target.refaults if p[0] < sample.time)
            rate = _refault_rate(_refault_points(refaults, sample))
            return self._thrash_rule(sample, rate) is not None
        reading = self._read(sample, history, target.oom_kills, overrides)
        warn, critical, _ = self.thresholds(overrides)
        if event.severity == "recovered":
            return self._classify(reading, event.previous_severity, warn, critical).severity == "ok"
        verdict = self._classify(reading, event.severity, warn, critical)
        return SEVERITY_RANK[verdict.severity] >= SEVERITY_RANK[event.severity]

    def _read(
        self,
        sample: Sample,
        history: Points,
        kills: int | None,
        overrides: Overrides | None,
    ) -> _Reading:
        """``sample`` as the engine sees it, its point added to ``history`` (not stored);
        ``kills`` is the target's oom-kill counter before this sample."""
        s = self._settings
        limit = (
            sample.limit_bytes
            if sample.limit_bytes is not None and sample.limit_bytes > 0
            else None
        )
        value = float(sample.metric_bytes(s.metric))
        percent = value * 100.0 / limit if limit is not None else 0.0
        count = sample.oom_kill_count
        killed = kills is not None and count is not None and count > kills
        restart = killed or self._released(history, value, limit, overrides)
        points = self._fit_points(() if restart else history, sample.time, value)
        return _Reading(sample, limit, value, percent, points)

    def _released(
        self,
        history: Points,
        value: float,
        limit: int | None,
        overrides: Overrides | None,
    ) -> bool:
        """Whether ``value`` is more than the hysteresis band (capped as for the warn level)
        below both of the last two points: memory was given back, and points from before
        describe memory that is gone. One spike up and back is not a release."""
        if not history or limit is None:
            return False
        warn, _, _ = self.thresholds(overrides)
        before = min(v for _t, v in history[-2:])
        return (before - value) * 100.0 / limit > _band(self._settings.hysteresis_percent, warn)

    def _classify(
        self, reading: _Reading, previous: Severity, warn: float, critical: float
    ) -> _Verdict:
        s = self._settings
        limit, percent = reading.limit, reading.percent
        variables: dict[str, float] = {}
        if s.warning_expr is not None or s.critical_expr is not None:
            g, eta = reading.growth() if s.uses_growth else (None, None)
            variables = expression_variables(reading.sample, percent, g, eta)

        rank = SEVERITY_RANK[previous]
        if s.critical_expr is not None:
            if s.critical_expr.matches(variables):
                return _Verdict("critical", "rules.critical")
        elif limit is not None:
            level = critical - _band(s.hysteresis_percent, critical) if rank >= 2 else critical
            if percent >= level:
                return _Verdict(
                    "critical", _percent_rule("critical_percent", critical, level, percent)
                )

        if s.warning_expr is not None:
            if s.warning_expr.matches(variables):
                return _Verdict("warn", "rules.warning")
        elif limit is not None:
            level = warn - _band(s.hysteresis_percent, warn) if rank >= 1 else warn
            if percent >= level:
                return _Verdict("warn", _percent_rule("warn_percent", warn, level, percent))

        if s.predict_seconds is not None:
            _g, eta = reading.growth()
            if eta is not None and eta < s.predict_seconds:
                return _Verdict("warn", f"predict eta<{s.predict_seconds:g}s")
        return _Verdict("ok", "")

    def _fit_points(self, history: Points, t: float, value: float) -> Points:
        """``history`` with the point (t, value) added, kept to the window and sample count."""
        s = self._settings
        if history and t < history[-1][0]:
            # The sample clock went backwards (a reused key): older points describe another life.
            history = ()
        elif history and t == history[-1][0]:
            history = history[:-1]
        horizon = t - s.predict_window_seconds
        kept = tuple(p for p in history if p[0] >= horizon)
        return (*kept, (t, value))[-s.predict_samples :]

    def _end_episode(self, key: str, start: float, end: float) -> None:
        self._ended[key] = (start, end)
        self._ended.move_to_end(key)

    def _prune_ended(self, now: float) -> None:
        horizon = now - EPISODE_RETENTION_SECONDS
        while self._ended:
            key, (_start, end) = next(iter(self._ended.items()))
            if end >= horizon:
                break
            del self._ended[key]


def _refault_points(points: Points, sample: Sample) -> Points:
    """``points`` with the sample's file refault counter added, kept to the newest point at
    least THRASH_WINDOW_SECONDS old and those after it; restarted when the counter is unknown or
    went down (a recreated cgroup)."""
    count = sample.refault_file
    if count is None:
        return ()
    if points and (count < points[-1][1] or sample.time <= points[-1][0]):
        points = () if count < points[-1][1] else points[:-1]
    horizon = sample.time - THRASH_WINDOW_SECONDS
    old = [i for i, p in enumerate(points) if p[0] <= horizon]
    kept = points[old[-1] :] if old else points
    return (*kept, (sample.time, float(count)))


def _refault_rate(points: Points) -> float | None:
    """File refaults per second over ``points``; None over less than a second."""
    if len(points) < 2 or points[-1][0] - points[0][0] < 1.0:
        return None
    (t0, c0), (t1, c1) = points[0], points[-1]
    return (c1 - c0) / (t1 - t0)


def _band(hysteresis: float, level: float) -> float:
    return min(hysteresis, level / 2)


def _percent_rule(name: str, configured: float, level: float, percent: float) -> str:
    if percent >= configured:
        return f"{name}>={configured:g}"
    return f"{name}>={configured:g} (held above {level:g})"
