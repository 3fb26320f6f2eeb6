from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.engine import (
    EPISODE_RETENTION_SECONDS,
    KILL_GRACE_SECONDS,
    VARIABLES,
    Engine,
    EngineSettings,
    theil_sen_slope,
)
from pressured.errors import ConfigError
from pressured.model import Identity, Overrides, PressureEvent, Psi, Sample

WALL0 = 1_700_000_000.0
MiB = 1 << 20


class Driver:
    """Feeds one target through an engine on a fake clock."""

    def __init__(self, engine: Engine, key: str = "pod-a", limit: int | None = 100) -> None:
        self.engine = engine
        self.key = key
        self.limit = limit
        self.now = 1000.0

    def feed(
        self,
        used: int,
        *,
        dt: float = 1.0,
        psi: Psi | None = None,
        usage: int | None = None,
        kills: int | None = None,
        **kwargs: Any,
    ) -> list[PressureEvent]:
        self.now += dt
        sample = self.sample(used, at=self.now, psi=psi, usage=usage, kills=kills)
        return self.engine.feed(
            sample, self.now, WALL0 + self.now, cgroup=f"/kubepods/{self.key}", **kwargs
        )

    def sample(
        self,
        used: int,
        *,
        at: float,
        psi: Psi | None = None,
        usage: int | None = None,
        kills: int | None = None,
    ) -> Sample:
        return Sample(
            key=self.key,
            time=at,
            usage_bytes=used if usage is None else usage,
            working_set_bytes=used,
            limit_bytes=self.limit,
            memory_psi=psi,
            oom_kill_count=kills,
        )

    def holds(self, event: PressureEvent, used: int, *, dt: float = 0.5, **kw: Any) -> bool:
        """Whether ``event`` still holds for a fresh reading ``dt`` later (nothing is fed)."""
        return self.engine.still_holds(event, self.sample(used, at=self.now + dt, **kw))

    def severities(self, used: int, **kwargs: Any) -> list[tuple[str, str]]:
        return [(e.severity, e.previous_severity) for e in self.feed(used, **kwargs)]


def rules(warning: str | None = None, critical: str | None = None) -> EngineSettings:
    return EngineSettings.from_config({"rules": {"warning": warning, "critical": critical}})


# --- the reference sequence -------------------------------------------------------------------


def test_reference_sequence_with_defaults() -> None:
    d = Driver(Engine())
    assert d.feed(60) == []
    (warn,) = d.feed(72)
    assert (warn.severity, warn.previous_severity, warn.rule) == ("warn", "ok", "warn_percent>=70")
    assert d.feed(68) == []  # held by the 5 % band
    assert d.engine.severity("pod-a") == "warn"
    (rec,) = d.feed(64)
    assert (rec.severity, rec.previous_severity, rec.rule) == ("recovered", "warn", "recovered")
    assert d.severities(72) == [("warn", "ok")]  # at once, no cooldown after a change
    (crit,) = d.feed(86)
    assert (crit.severity, crit.previous_severity, crit.rule) == (
        "critical",
        "warn",
        "critical_percent>=85",
    )
    assert d.feed(81) == []  # held: in critical both levels are lowered
    (down,) = d.feed(79)
    assert (down.severity, down.previous_severity) == ("warn", "critical")
    assert down.rule == "warn_percent>=70"

    down_at = d.now
    repeats: list[tuple[float, PressureEvent]] = []
    for _ in range(60):  # 75 % held for 60 s, one sample a second
        repeats += [(d.now, e) for e in d.feed(75)]
    ((when, repeat),) = repeats
    assert when - down_at == 60.0
    assert (repeat.severity, repeat.previous_severity) == ("warn", "warn")
    assert repeat.rule == "warn_percent>=70"


def test_levels_are_inclusive() -> None:
    d = Driver(Engine())
    assert d.severities(69) == []
    assert d.severities(70) == [("warn", "ok")]
    assert d.severities(85) == [("critical", "warn")]
    assert d.severities(80) == []  # exactly on the lowered critical level: held
    assert d.severities(65, dt=0.5) == [("warn", "critical")]
    assert d.feed(65, dt=0.5) == []  # exactly on the lowered warn level: held


def test_held_rule_names_the_lowered_level() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=0)))
    d.feed(72)
    (held,) = d.feed(66)
    assert held.rule == "warn_percent>=70 (held above 65)"
    d.feed(90)
    (held,) = d.feed(82)
    assert held.rule == "critical_percent>=85 (held above 80)"


def test_cooldown_is_per_severity_and_a_change_is_immediate() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=30)))
    assert d.severities(72) == [("warn", "ok")]
    assert d.severities(86, dt=1) == [("critical", "warn")]
    assert d.severities(79, dt=1) == [("warn", "critical")]
    assert d.feed(75, dt=29) == []
    assert d.severities(75, dt=1) == [("warn", "warn")]
    assert d.feed(75, dt=29.9) == []


def test_recovered_events_can_be_turned_off() -> None:
    d = Driver(Engine(EngineSettings(recovered_events=False)))
    d.feed(72)
    assert d.feed(10) == []
    assert d.engine.severity("pod-a") == "ok"
    assert d.severities(72) == [("warn", "ok")]


def test_metric_choice() -> None:
    working = Driver(Engine(EngineSettings(metric="working_set")))
    usage = Driver(Engine(EngineSettings(metric="usage")))
    # usage counts page cache; the working set does not.
    assert working.feed(50, usage=90) == []
    (e,) = usage.feed(50, usage=90)
    assert e.severity == "critical"
    assert e.usage_percent == 90.0


def test_event_carries_sample_identity_and_clock() -> None:
    d = Driver(Engine(), limit=1000 * MiB)
    ident = Identity(namespace="shop", pod_name="cart-1", container_name="app")
    psi = Psi(some_avg10=3.5, full_avg10=1.25)
    (e,) = d.feed(
        800 * MiB,
        psi=psi,
        usage=900 * MiB,
        identity=ident,
        annotations={"team": "cart"},
        dry_run=True,
    )
    assert e.time == WALL0 + d.now
    assert e.cgroup == "/kubepods/pod-a"
    assert e.key == "pod-a"
    assert (e.usage_bytes, e.working_set_bytes, e.limit_bytes) == (900 * MiB, 800 * MiB, 1000 * MiB)
    assert e.usage_percent == pytest.approx(80.0)
    assert (e.psi_some_avg10, e.psi_full_avg10) == (3.5, 1.25)
    assert e.identity == ident
    assert e.annotations == {"team": "cart"}
    assert e.dry_run is True
    assert e.to_json()["rule"] == "warn_percent>=70"


def test_target_without_limit_never_trips_percent_thresholds() -> None:
    d = Driver(Engine(), limit=None)
    for used in (10**9, 10**12, 10**15):
        assert d.feed(used) == []
    assert d.engine.levels_bytes(None) == []


def test_zero_limit_is_treated_as_no_limit() -> None:
    d = Driver(Engine(), limit=0)
    assert d.feed(10**9) == []


def test_targets_are_independent() -> None:
    engine = Engine()
    a, b = Driver(engine, "a"), Driver(engine, "b")
    assert a.severities(90) == [("critical", "ok")]
    assert b.feed(50) == []
    assert (engine.severity("a"), engine.severity("b"), engine.severity("nobody")) == (
        "critical",
        "ok",
        "ok",
    )
    engine.forget("a")
    assert engine.severity("a") == "ok"
    assert sorted(engine.keys()) == ["b"]


# --- rules (OOMHero) ------------------------------------------------------------------------


def test_oomhero_usage_rules() -> None:
    d = Driver(Engine(rules("memory_usage > 10", "memory_usage > 20")), limit=100)
    assert d.feed(0) == []
    assert d.feed(9) == []
    (w,) = d.feed(11)
    assert (w.severity, w.rule) == ("warn", "rules.warning")
    (c,) = d.feed(21)
    assert (c.severity, c.rule) == ("critical", "rules.critical")
    events = d.feed(9)
    # OOMHero stays silent here; pressured reports the recovery and nothing else.
    assert [e.severity for e in events] == ["recovered"]
    assert not [e for e in events if e.severity in ("warn", "critical")]


def test_oomhero_pressure_rule() -> None:
    settings_ = rules("memory_usage > 70", "memory_pressure_full_avg10 > 20")
    d = Driver(Engine(settings_), limit=100)
    assert d.feed(70, psi=Psi(full_avg10=20)) == []
    assert d.severities(71, psi=Psi(full_avg10=20)) == [("warn", "ok")]
    (c,) = d.feed(0, psi=Psi(full_avg10=21))
    assert (c.severity, c.rule) == ("critical", "rules.critical")


def test_a_rule_replaces_the_percent_threshold_of_its_severity_only() -> None:
    d = Driver(Engine(rules(warning="memory_pressure_some_avg10 > 5")), limit=100)
    assert d.feed(80) == []  # above warn_percent, but the warning rule decides warn
    (c,) = d.feed(90)  # critical still comes from critical_percent
    assert (c.severity, c.rule) == ("critical", "critical_percent>=85")
    assert Engine(rules(warning="1 > 0")).levels_bytes(1000) == [850]
    assert Engine(rules("1 > 0", "1 > 0")).levels_bytes(1000) == []


def test_rules_match_on_pressure_without_a_limit() -> None:
    d = Driver(Engine(rules(critical="memory_pressure_full_avg10 > 20")), limit=None)
    assert d.feed(10**12, psi=Psi(full_avg10=5)) == []
    (c,) = d.feed(10**12, psi=Psi(full_avg10=30))
    assert c.severity == "critical"
    assert c.usage_percent == 0.0


def test_rule_sees_bytes_and_infinite_limit() -> None:
    d = Driver(Engine(rules(critical="memory_current > 512 && memory_max > 1e18")), limit=None)
    assert d.feed(100) == []
    assert d.severities(1000) == [("critical", "ok")]


def test_every_documented_variable_is_accepted() -> None:
    text = " + ".join(sorted(VARIABLES)) + " > 0"
    EngineSettings.from_config({"rules": {"warning": text}})


def test_eta_rule_sees_infinity_when_not_growing() -> None:
    d = Driver(Engine(rules(warning="eta_seconds < 100")), limit=1000)
    for _ in range(5):
        assert d.feed(500) == []  # flat: eta is +inf
    events = []
    for used in range(510, 700, 10):
        events += d.feed(used)
    assert events
    assert events[0].rule == "rules.warning"
    assert events[0].eta_seconds is not None
    assert events[0].eta_seconds < 100


# --- prediction -----------------------------------------------------------------------------


def test_theil_sen_shrugs_off_one_spike() -> None:
    points = [(float(t), 1000.0 + 10.0 * t) for t in range(10)]
    points[4] = (4.0, 1e9)
    assert theil_sen_slope(points) == pytest.approx(10.0)
    assert theil_sen_slope(points[:2]) is None
    assert theil_sen_slope([(1.0, 1.0)] * 5) is None


def test_growth_and_eta_on_events() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=0)), limit=1000)
    events = []
    for used in range(600, 760, 10):  # +10 B/s
        events += d.feed(used)
    last = events[-1]
    assert last.growth_bytes_per_s == pytest.approx(10.0)
    assert last.eta_seconds == pytest.approx((1000 - 750) / 10.0)


def test_no_eta_while_shrinking() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=0)), limit=1000)
    events = []
    for used in range(900, 700, -10):
        events += d.feed(used)
    assert events[-1].growth_bytes_per_s == pytest.approx(-10.0)
    assert events[-1].eta_seconds is None


def test_predict_warns_below_the_warn_level() -> None:
    d = Driver(Engine(EngineSettings(predict_seconds=120)), limit=10_000)
    events = []
    for used in range(1000, 3000, 50):  # 50 B/s: eta drops below 120 s only near 4000
        events += d.feed(used)
    assert events == []
    events = []
    for used in range(3000, 5000, 200):  # faster growth: eta far below 120 s at 30-50 %
        events += d.feed(used)
    assert events
    first = events[0]
    assert (first.severity, first.rule) == ("warn", "predict eta<120s")
    assert first.usage_percent < 70
    assert first.eta_seconds is not None
    assert first.eta_seconds < 120


def test_an_oom_kill_restarts_the_growth_fit() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=0)), limit=1000)
    for used in range(700, 900, 10):  # +10 B/s up to 89 %
        d.feed(used, kills=0)
    # The kernel killed the leaker; its memory is being freed (a drop within the band).
    (e,) = d.feed(860, kills=1)
    assert (e.severity, e.previous_severity) == ("critical", "critical")
    assert e.growth_bytes_per_s is None or e.growth_bytes_per_s <= 0
    assert e.eta_seconds is None
    (e,) = d.feed(750, kills=1)  # still being freed: no growth from the dead process's samples
    assert e.severity == "warn"
    assert e.growth_bytes_per_s is None and e.eta_seconds is None
    for used in (760, 770, 780):  # a new life grows: a new fit
        (e,) = d.feed(used, kills=1)
    assert e.growth_bytes_per_s == pytest.approx(10.0)
    assert e.eta_seconds == pytest.approx((1000 - 780) / 10.0)


def test_a_drop_larger_than_the_band_restarts_the_growth_fit() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=0, hysteresis_percent=5)), limit=1000)
    for used in range(700, 900, 10):  # no kill counter here (None): only the drop tells
        d.feed(used)
    (e,) = d.feed(850)  # 4 % down: within the band, the fit goes on
    assert e.growth_bytes_per_s is not None and e.growth_bytes_per_s > 0
    (e,) = d.feed(780)  # 7 % down: memory was given back
    assert e.growth_bytes_per_s is None and e.eta_seconds is None


def test_one_spike_up_and_back_does_not_restart_the_fit() -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=0)), limit=1000)
    for used in range(700, 800, 10):
        d.feed(used)
    d.feed(950)  # a spike
    (e,) = d.feed(810)
    assert e.growth_bytes_per_s == pytest.approx(10.0, rel=0.3)
    assert e.eta_seconds is not None


def test_still_holds_sees_a_kill_since_the_event() -> None:
    settings_ = rules(critical="memory_usage > 30 && growth_bytes_per_s > 100")
    d = Driver(Engine(settings_), limit=10_000)
    events: list[PressureEvent] = []
    used = 2000
    while not events:
        used += 500
        events = d.feed(used, kills=0)
    (crit,) = events
    assert d.holds(crit, used + 500, kills=0)
    assert not d.holds(crit, used + 500, kills=1)  # killed since: the growth is not known


def test_prediction_window_drops_old_samples() -> None:
    s = EngineSettings(predict_window_seconds=10, predict_samples=5, cooldown_seconds=0)
    d = Driver(Engine(s), limit=1000)
    for used in (100, 200, 300, 400):  # steep, but soon out of the window
        d.feed(used, dt=1)
    for _ in range(5):
        d.feed(800, dt=3)  # flat and recent
    (e,) = d.feed(800, dt=3)
    assert e.growth_bytes_per_s == 0.0
    assert e.eta_seconds is None


# --- the re-check before a destructive action ---------------------------------------------------


def test_still_holds_a_threshold_event_down_to_the_band() -> None:
    d = Driver(Engine())
    (warn,) = d.feed(72)
    assert d.holds(warn, 72) and d.holds(warn, 65)  # warn is held down to 65
    assert not d.holds(warn, 64)
    (crit,) = d.feed(86)
    assert d.holds(crit, 80)  # critical is held down to 80, as feed would
    assert not d.holds(crit, 79)
    assert d.holds(warn, 79)  # still above ok


def test_still_holds_uses_the_capped_band_and_the_targets_overrides() -> None:
    d = Driver(Engine(EngineSettings(hysteresis_percent=5)))
    ov = Overrides(warn_percent=4, critical_percent=90)
    (warn,) = d.feed(5, overrides=ov)
    assert d.holds(warn, 2)  # the band is capped at half of the 4 % level
    assert not d.holds(warn, 1)
    assert d.feed(1, overrides=ov)[0].severity == "recovered"  # the same verdict as feed


def test_still_holds_evaluates_the_rule_with_the_growth_fit() -> None:
    # 12 MiB/s into 224 MiB, critical by rule from 30 %: far below critical_percent's band.
    settings_ = rules(critical="memory_usage > 30 && growth_bytes_per_s > 3000000")
    d = Driver(Engine(settings_), limit=224 * MiB)
    events: list[PressureEvent] = []
    used = 40 * MiB
    while not events:
        used += 3 * MiB
        events = d.feed(used, dt=0.25)
    (crit,) = events
    assert (crit.severity, crit.rule) == ("critical", "rules.critical")
    assert crit.usage_percent < 40
    assert d.holds(crit, used + 6 * MiB)  # still growing: the rule still matches
    assert d.holds(crit, used)  # one flat reading does not undo the fit
    assert not d.holds(crit, 60 * MiB)  # below 30 %
    assert not d.holds(crit, used, dt=120)  # the growth is no longer known
    # The re-check recorded nothing: a twin engine fed the same sees the same next event.
    twin = Driver(Engine(settings_), limit=224 * MiB)
    for u in range(43 * MiB, used + 1, 3 * MiB):
        twin.feed(u, dt=0.25)
    assert d.feed(used + 3 * MiB, dt=0.25) == twin.feed(used + 3 * MiB, dt=0.25)


def test_still_holds_a_rule_on_pressure_without_a_limit() -> None:
    d = Driver(Engine(rules(critical="memory_pressure_full_avg10 > 20")), limit=None)
    (crit,) = d.feed(100, psi=Psi(full_avg10=30))
    assert d.holds(crit, 100, psi=Psi(full_avg10=25))
    assert not d.holds(crit, 100, psi=Psi(full_avg10=5))


def test_still_holds_a_predicted_warning_while_the_eta_is_short() -> None:
    d = Driver(Engine(EngineSettings(predict_seconds=120)), limit=10_000)
    events: list[PressureEvent] = []
    used = 3000
    while not events:
        used += 200
        events = d.feed(used)
    (warn,) = events
    assert warn.rule == "predict eta<120s" and warn.usage_percent < 65
    assert d.holds(warn, used + 200)
    assert not d.holds(warn, used, dt=61)  # out of the window: no growth, no ETA


def test_still_holds_a_recovery_while_below_the_exit_level() -> None:
    d = Driver(Engine())
    d.feed(72)
    (rec,) = d.feed(60)
    assert rec.severity == "recovered"
    assert d.holds(rec, 64)
    assert not d.holds(rec, 66)


# --- overrides, levels, settings ----------------------------------------------------------------


def test_overrides_per_target() -> None:
    d = Driver(Engine())
    ov = Overrides(warn_percent=40, critical_percent=50, cooldown_seconds=5)
    assert d.severities(45, overrides=ov) == [("warn", "ok")]
    assert d.feed(45, dt=4, overrides=ov) == []
    assert d.severities(45, dt=1, overrides=ov) == [("warn", "warn")]
    (c,) = d.feed(55, overrides=ov)
    assert c.rule == "critical_percent>=50"
    assert d.engine.levels_bytes(1000, ov) == [400, 500]


def test_override_below_hysteresis_still_recovers() -> None:
    d = Driver(Engine(EngineSettings(hysteresis_percent=5)))
    ov = Overrides(warn_percent=4, critical_percent=90)
    assert d.severities(5, overrides=ov) == [("warn", "ok")]
    assert d.severities(1, overrides=ov) == [("recovered", "warn")]


def test_override_critical_below_warn_clamps_warn() -> None:
    engine = Engine()
    assert engine.thresholds(Overrides(critical_percent=60)) == (60, 60, 60)
    d = Driver(engine)
    assert d.severities(65, overrides=Overrides(critical_percent=60)) == [("critical", "ok")]


def test_levels_bytes() -> None:
    engine = Engine()
    assert engine.levels_bytes(1000) == [700, 850]
    assert engine.levels_bytes(1000, include_hysteresis=True) == [650, 700, 800, 850]
    assert engine.levels_bytes(0) == []


def test_update_settings_keeps_state() -> None:
    engine = Engine()
    d = Driver(engine)
    d.feed(72)
    start = engine.first_warn_time("pod-a")
    engine.update_settings(EngineSettings(warn_percent=50, critical_percent=95))
    assert engine.severity("pod-a") == "warn"
    assert engine.first_warn_time("pod-a") == start
    assert d.feed(60) == []  # same severity inside the cooldown: state survived the reload
    assert d.severities(96) == [("critical", "warn")]
    assert engine.settings.critical_percent == 95


# --- episodes ---------------------------------------------------------------------------------


def test_first_warn_time_follows_the_episode() -> None:
    engine = Engine()
    d = Driver(engine)
    d.feed(50)
    assert engine.first_warn_time("pod-a") is None
    d.feed(72)
    start = d.now
    assert engine.first_warn_time("pod-a") == start
    d.feed(90)
    assert engine.first_warn_time("pod-a") == start  # critical continues the episode
    kill_at = d.now + 0.5
    d.feed(5)  # the kill emptied the cgroup: back to ok
    end = d.now
    assert engine.first_warn_time("pod-a") is None
    # The reconciler asks about the moment of the kill and still gets the warning's start.
    assert engine.first_warn_time("pod-a", at=kill_at) == start
    assert engine.first_warn_time("pod-a", at=end + KILL_GRACE_SECONDS) == start
    assert engine.first_warn_time("pod-a", at=end + KILL_GRACE_SECONDS + 1) is None
    assert engine.first_warn_time("pod-a", at=start - 1) is None
    # A new episode does not hide the old one from a question about the old kill.
    d.feed(80)
    assert engine.first_warn_time("pod-a") == d.now
    assert engine.first_warn_time("pod-a", at=kill_at) == start


def test_forgotten_target_keeps_its_episode_until_retention() -> None:
    engine = Engine()
    d = Driver(engine)
    d.feed(90)
    start = d.now
    engine.forget("pod-a")
    assert engine.first_warn_time("pod-a") is None
    assert engine.first_warn_time("pod-a", at=start + 1) == start
    other = Driver(engine, "other")
    other.now = d.now + EPISODE_RETENTION_SECONDS + 1
    other.feed(10)  # any feed prunes expired episodes
    assert engine.first_warn_time("pod-a", at=start + 1) is None


# --- configuration --------------------------------------------------------------------------------


def test_from_config_defaults_and_values() -> None:
    assert EngineSettings.from_config({}) == EngineSettings()
    s = EngineSettings.from_config(
        {
            "thresholds": {
                "warn_percent": "60",  # environment variables arrive as strings
                "critical_percent": 90,
                "hysteresis_percent": 2.5,
                "cooldown_seconds": 0,
                "metric": "usage",
                "predict_seconds": 300,
                "recovered_events": "false",
            },
            "rules": {"warning": "oom_score > 900", "critical": ""},
        }
    )
    assert (s.warn_percent, s.critical_percent, s.hysteresis_percent) == (60, 90, 2.5)
    assert (s.cooldown_seconds, s.metric, s.predict_seconds) == (0, "usage", 300)
    assert s.recovered_events is False
    assert s.warning_expr is not None
    assert s.warning_expr.names == {"oom_score"}
    assert s.critical_expr is None


@pytest.mark.parametrize(
    ("thresholds", "problem"),
    [
        ({"warn_percent": 90}, "thresholds.warn_percent: must be below critical_percent"),
        ({"warn_percent": 0}, "thresholds.warn_percent: must be above 0 (got 0"),
        ({"critical_percent": 101}, "thresholds.critical_percent: must be at most 100"),
        ({"hysteresis_percent": -1}, "thresholds.hysteresis_percent: must be at least 0"),
        ({"hysteresis_percent": 75}, "thresholds.hysteresis_percent:"),
        ({"cooldown_seconds": -5}, "thresholds.cooldown_seconds: must be at least 0 (got -5"),
        (
            {"metric": "rss"},
            "thresholds.metric: must be one of unreclaimable, working_set, usage (got 'rss')",
        ),
        ({"predict_seconds": 0}, "thresholds.predict_seconds: must be above 0"),
        ({"predict_samples": 2}, "thresholds.predict_samples: must be at least 3"),
        ({"warn_percent": True}, "thresholds.warn_percent: expected a number (got True)"),
        ({"warn_percent": "lots"}, "thresholds.warn_percent: expected a number (got 'lots')"),
        ({"cooldown_seconds": math.nan}, "thresholds.cooldown_seconds: expected a number"),
        ({"recovered_events": "maybe"}, "thresholds.recovered_events: expected true or false"),
        ({"warn_pct": 10}, "thresholds.warn_pct: unknown key"),
    ],
)
def test_from_config_rejects(thresholds: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_config({"thresholds": thresholds})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_from_config_collects_every_problem_and_names_rule_keys() -> None:
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_config(
            {
                "thresholds": {"metric": "rss", "bogus": 1},
                "rules": {"critical": "memory_usage > (20))", "warning": "memry > 1", "x": "1"},
            }
        )
    problems = info.value.problems
    assert len(problems) == 5
    assert any(
        p.startswith("rules.critical: unexpected token ')' at position 20\n") for p in problems
    )
    assert any(p.startswith("rules.warning: unknown variable 'memry'") for p in problems)
    assert any(p.startswith("rules.x: unknown key") for p in problems)


def test_from_config_where_names_a_nested_section() -> None:
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_config(
            {"thresholds": {"cooldown_seconds": -1}, "rules": {"warning": "1 +"}},
            where="profiles.batch.thresholds",
        )
    assert info.value.problems[0].startswith("profiles.batch.rules.warning: ")
    with pytest.raises(ConfigError, match=r"^profiles.batch.thresholds.cooldown_seconds"):
        EngineSettings.from_config(
            {"thresholds": {"cooldown_seconds": -1}}, where="profiles.batch.thresholds"
        )


def test_from_config_rejects_a_non_mapping_section() -> None:
    with pytest.raises(ConfigError, match=r"thresholds: expected a mapping \(got \[1\]\)"):
        EngineSettings.from_config({"thresholds": [1]})


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="warn_percent: must be below critical_percent"):
        EngineSettings(warn_percent=90, critical_percent=80)


# --- properties ---------------------------------------------------------------------------------

steps = st.lists(
    st.tuples(st.floats(0.0, 40.0), st.integers(0, 100)),  # (seconds since last, percent)
    max_size=60,
)


@settings(max_examples=200)
@given(
    steps,
    st.floats(0.0, 120.0),
    st.floats(0.0, 10.0),
    st.booleans(),
)
def test_event_stream_invariants(
    seq: list[tuple[float, int]], cooldown: float, hysteresis: float, recovered: bool
) -> None:
    engine = Engine(
        EngineSettings(
            cooldown_seconds=cooldown, hysteresis_percent=hysteresis, recovered_events=recovered
        )
    )
    d = Driver(engine)
    last_event_at: float | None = None
    for dt, percent in seq:
        before = engine.severity("pod-a")
        events = d.feed(percent, dt=dt)
        after = engine.severity("pod-a")
        assert len(events) <= 1
        if before == "ok" and after == "ok":
            assert events == []  # nothing is said while ok
        for e in events:
            assert e.previous_severity == before
            if e.severity == "recovered":
                assert after == "ok"
                assert recovered
            else:
                assert e.severity == after
            if e.severity == e.previous_severity:
                # A repeat: never within the cooldown of the previous event.
                assert last_event_at is not None
                assert d.now - last_event_at >= cooldown
            last_event_at = d.now
        if after != before and after != "ok":
            assert events, "a change to warn or critical is reported at once"
        if after != "ok":
            assert engine.first_warn_time("pod-a") is not None
        else:
            assert engine.first_warn_time("pod-a") is None


@given(st.lists(st.integers(0, 69), max_size=40), st.floats(0.0, 120.0))
def test_below_warn_from_ok_never_emits(percents: list[int], cooldown: float) -> None:
    d = Driver(Engine(EngineSettings(cooldown_seconds=cooldown)))
    for p in percents:
        assert d.feed(p) == []


# --- the OOM-risk metric and page-cache thrash ------------------------------------------------


def risk_sample(
    t: float,
    *,
    unreclaimable: int | None,
    working_set: int = 90,
    psi: float = 0.0,
    refaults: int | None = None,
) -> Sample:
    return Sample(
        key="job",
        time=t,
        usage_bytes=95,
        working_set_bytes=working_set,
        limit_bytes=100,
        memory_psi=Psi(some_avg10=psi),
        unreclaimable_bytes=unreclaimable,
        refault_file=refaults,
    )


def feed_risk(engine: Engine, sample: Sample) -> list[PressureEvent]:
    return engine.feed(sample, sample.time, WALL0 + sample.time, cgroup="/job")


def test_unreclaimable_is_the_default_and_page_cache_does_not_warn() -> None:
    engine = Engine()
    assert engine.settings.metric == "unreclaimable"
    # a working set of 90 % made of page cache: nothing to warn about
    assert feed_risk(engine, risk_sample(1.0, unreclaimable=20)) == []
    (warn,) = feed_risk(engine, risk_sample(2.0, unreclaimable=75))
    assert (warn.severity, warn.decided_by, warn.usage_percent) == ("warn", "unreclaimable", 75.0)
    doc = warn.to_json()
    assert (doc["unreclaimable_bytes"], doc["working_set_bytes"]) == (75, 90)
    assert doc["decided_by"] == "unreclaimable"


def test_without_an_unreclaimable_figure_the_working_set_decides() -> None:
    engine = Engine()
    (warn,) = feed_risk(engine, risk_sample(1.0, unreclaimable=None))
    assert (warn.decided_by, warn.usage_percent, warn.unreclaimable_bytes) == (
        "working_set",
        90.0,
        None,
    )
    ws = Engine(EngineSettings.from_config({"thresholds": {"metric": "working_set"}}))
    (warn,) = feed_risk(ws, risk_sample(1.0, unreclaimable=20))
    assert (warn.decided_by, warn.unreclaimable_bytes) == ("working_set", 20)


def test_thrash_is_pressure_not_an_oom_warning() -> None:
    engine = Engine(EngineSettings.from_config({"thresholds": {"thrash_psi_percent": 5}}))
    assert feed_risk(engine, risk_sample(0.0, unreclaimable=10, psi=8, refaults=0)) == []
    # the refault rate needs a second of counters
    assert feed_risk(engine, risk_sample(0.5, unreclaimable=10, psi=8, refaults=500)) == []
    (thrash,) = feed_risk(engine, risk_sample(1.0, unreclaimable=10, psi=8, refaults=1000))
    assert (thrash.event_type, thrash.severity, thrash.previous_severity) == (
        "memory_thrash",
        "thrash",
        "ok",
    )
    assert thrash.refault_file_per_s == 1000.0
    assert thrash.rule == "thrash: memory some avg10 8>=5 with 1000 file refaults/s"
    assert thrash.to_json()["event_type"] == "memory_thrash"
    # no OOM episode, no severity
    assert engine.severity("job") == "ok" and engine.first_warn_time("job") is None
    # held: once per cooldown (60 s); a counter the kernel had not flushed yet changes nothing
    assert feed_risk(engine, risk_sample(2.0, unreclaimable=10, psi=8, refaults=1000)) == []
    assert engine.still_holds(thrash, risk_sample(3.0, unreclaimable=10, psi=8, refaults=3000))
    assert not engine.still_holds(thrash, risk_sample(3.0, unreclaimable=10, psi=1, refaults=3000))
    (again,) = feed_risk(engine, risk_sample(61.0, unreclaimable=10, psi=8, refaults=90_000))
    assert again.severity == "thrash"


def test_stall_without_refaults_is_no_thrash() -> None:
    # anonymous memory reclaim or IO can stall too: without file refaults it is not thrash
    engine = Engine(EngineSettings.from_config({"thresholds": {"thrash_psi_percent": 5}}))
    for t in range(5):
        assert feed_risk(engine, risk_sample(t, unreclaimable=10, psi=50, refaults=7)) == []
    off = Engine(EngineSettings.from_config({"thresholds": {"thrash_psi_percent": None}}))
    for t in range(5):
        assert feed_risk(off, risk_sample(t, unreclaimable=10, psi=50, refaults=t * 1000)) == []


def test_thrash_beside_an_oom_warning_is_reported_apart() -> None:
    engine = Engine(EngineSettings.from_config({"thresholds": {"thrash_psi_percent": 5}}))
    feed_risk(engine, risk_sample(0.0, unreclaimable=50, psi=9, refaults=0))
    events = feed_risk(engine, risk_sample(2.0, unreclaimable=80, psi=9, refaults=4000))
    assert [(e.event_type, e.severity) for e in events] == [
        ("memory_pressure", "warn"),
        ("memory_thrash", "thrash"),
    ]


def _grown(key: str, t: int, *, anon: int, cache: int) -> Sample:
    """A 1000 MiB cgroup holding ``anon`` MiB that reclaim cannot free and ``cache`` MiB of
    page cache it can, all in the working set."""
    return Sample(
        key=key,
        time=float(t),
        usage_bytes=(anon + cache) * MiB,
        working_set_bytes=(anon + cache) * MiB,
        limit_bytes=1000 * MiB,
        unreclaimable_bytes=anon * MiB,
    )


def test_the_eta_follows_the_unreclaimable_figure_not_the_page_cache() -> None:
    settings_ = EngineSettings(predict_seconds=120, cooldown_seconds=0)
    engine = Engine(settings_)
    ws = Engine(dataclasses.replace(settings_, metric="working_set"))
    cache_growth = [_grown("cache", t, anon=200, cache=40 * t) for t in range(20)]
    # page cache grows 40 MiB/s over flat anonymous memory: no ETA, no warning from growth...
    assert [e for s in cache_growth for e in feed_risk(engine, s)] == []
    # ...where the working set, fed the same samples, predicts the OOM (the growth is real)
    by_ws = [e for s in cache_growth for e in feed_risk(ws, s)]
    assert by_ws and by_ws[0].rule == "predict eta<120s"
    # above the warn level the events say so: no growth of what decides, no ETA
    held = [
        e for t in range(20) for e in feed_risk(engine, _grown("held", t, anon=750, cache=10 * t))
    ]
    assert len(held) == 20
    for e in held:
        assert (e.severity, e.decided_by) == ("warn", "unreclaimable")
        assert not e.growth_bytes_per_s and e.eta_seconds is None
    # the same growth in anonymous memory: a warning with the ETA at the anonymous slope
    events: list[PressureEvent] = []
    for t in range(20):
        events += feed_risk(engine, _grown("anon", t, anon=200 + 40 * t, cache=100))
    first = events[0]
    assert (first.rule, first.decided_by) == ("predict eta<120s", "unreclaimable")
    assert first.growth_bytes_per_s == pytest.approx(40 * MiB)
    assert first.unreclaimable_bytes is not None
    assert first.eta_seconds == pytest.approx((1000 * MiB - first.unreclaimable_bytes) / (40 * MiB))
