"""memory.high livelock in the engine, on synthetic samples: a target whose memory.events "high"
count keeps rising while memory PSI full avg10 stays at the level gets one memory_throttled
event once held for throttle_seconds, with its evidence; then once per cooldown; held seconds
go to the metric; the settings are checked by the one Checker."""

from __future__ import annotations

import pytest

from pressured.engine import HIGH_QUIET_SECONDS, Engine, EngineSettings
from pressured.errors import ConfigError
from pressured.model import PressureEvent, Psi, Sample

MiB = 1 << 20
WALL0 = 1_700_000_000.0


class Held:
    """One target sampled once a second: ``high`` and the full stall grow as told."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = 100.0
        self.high = 0
        self.stall_us = 5_000_000

    def sample(self, *, rise: int, full: float) -> Sample:
        self.high += rise
        self.stall_us += int(full * 10_000)  # full% of one second, in us
        psi = Psi(some_avg10=full + 5, full_avg10=full, full_total=self.stall_us)
        return Sample(
            key="app",
            time=self.now,
            usage_bytes=70 * MiB,
            working_set_bytes=70 * MiB,
            limit_bytes=512 * MiB,
            memory_psi=psi,
            memory_high_events=self.high,
            memory_high_bytes=64 * MiB if self.high else None,
        )

    def step(self, *, rise: int = 40, full: float = 30.0, dt: float = 1.0) -> list[PressureEvent]:
        self.now += dt
        s = self.sample(rise=rise, full=full)
        return self.engine.feed(s, self.now, WALL0 + self.now, cgroup="/sys/fs/cgroup/app")

    def throttled(self, **kw: float) -> list[PressureEvent]:
        return [e for e in self.step(**kw) if e.event_type == "memory_throttled"]  # type: ignore[arg-type]


def engine(**kw: object) -> Engine:
    return Engine(
        EngineSettings.from_config(
            {"thresholds": {"throttle_full_percent": 20, "throttle_seconds": 10, **kw}}
        )
    )


def test_held_at_memory_high_for_the_time_gives_one_event_with_its_evidence() -> None:
    t = Held(engine(cooldown_seconds=60))
    assert t.throttled(rise=0, full=0.0) == []  # the first reading: a baseline
    begun = t.now + 1
    for _ in range(10):  # held 0..9 s: not yet
        assert t.throttled() == []
    (ev,) = t.throttled()  # held 10 s
    assert ev.severity == "warn" and ev.previous_severity == "ok"
    assert ev.rule == "memory_throttled full_avg10>=20 for 10s"
    assert ev.to_json()["event_type"] == "memory_throttled"
    assert ev.psi_full_avg10 == 30.0
    assert ev.extra["throttle"] == {
        "memory_high_bytes": 64 * MiB,
        "high_events_delta": 11 * 40,  # from the count before the rise that began the hold
        "psi_full_avg10": 30.0,
        "full_stall_us": 10 * 300_000,
        "held_seconds": pytest.approx(t.now - begun),
        "full_percent_level": 20.0,
    }
    # still held: nothing more until the cooldown has passed, then once again
    for _ in range(59):
        assert t.throttled() == []
    assert len(t.throttled()) == 1
    # the pressure state machine is untouched: 70 MiB of 512 MiB is ok
    assert t.engine.severity("app") == "ok"


def test_held_seconds_feed_the_metric() -> None:
    t = Held(engine())
    t.step(rise=0, full=0.0)
    for _ in range(5):
        t.step()
    assert t.engine.take_throttled_seconds("app") == pytest.approx(4.0)  # 5 held samples
    assert t.engine.take_throttled_seconds("app") == 0.0
    t.step(full=1.0)  # no longer stalled
    t.step(full=1.0)
    assert t.engine.take_throttled_seconds("app") == 0.0
    assert t.engine.take_throttled_seconds("unknown") == 0.0


def test_stalled_without_memory_high_is_not_throttled() -> None:
    t = Held(engine(throttle_seconds=0))
    t.step(rise=0, full=0.0)
    for _ in range(20):
        assert t.throttled(rise=0, full=90.0) == []  # stalled (page cache thrash), not at high


def test_a_pause_in_the_high_count_longer_than_the_kernels_sleep_ends_the_hold() -> None:
    t = Held(engine(throttle_seconds=5))
    t.step(rise=0, full=0.0)
    for _ in range(4):
        assert t.throttled() == []
    # the kernel sleeps at most 2 s per charge: a count quiet for longer is no hold
    assert t.throttled(rise=0, dt=HIGH_QUIET_SECONDS + 1) == []
    # a new hold starts from zero: 4 s held is not 5
    for _ in range(5):
        assert t.throttled() == []
    assert len(t.throttled()) == 1
    # a short quiet spell (within the kernel's sleep) keeps the hold
    t2 = Held(engine(throttle_seconds=5))
    t2.step(rise=0, full=0.0)
    events = [t2.throttled(rise=0 if i % 2 else 40) for i in range(7)]
    assert sum(len(e) for e in events) == 1


def test_full_below_the_level_ends_the_hold_and_a_new_hold_reports_again() -> None:
    t = Held(engine(throttle_seconds=2, cooldown_seconds=600))
    t.step(rise=0, full=0.0)
    got = [len(t.throttled()) for _ in range(4)]
    assert got == [0, 0, 1, 0]
    assert t.throttled(full=19.9) == []
    got = [len(t.throttled()) for _ in range(4)]
    assert got == [0, 0, 1, 0]  # a new hold: reported again despite the cooldown


def test_still_holds_for_a_destructive_action() -> None:
    t = Held(engine(throttle_seconds=1))
    t.step(rise=0, full=0.0)
    t.step()
    (ev,) = t.throttled()
    assert t.engine.still_holds(ev, t.sample(rise=40, full=25.0))
    assert not t.engine.still_holds(ev, t.sample(rise=40, full=10.0))
    t.step(full=5.0)  # the hold ended
    assert not t.engine.still_holds(ev, t.sample(rise=40, full=25.0))


def test_turned_off_and_v1_samples() -> None:
    off = Held(engine(throttle_full_percent=None, throttle_seconds=0))
    off.step(rise=0, full=0.0)
    assert all(off.throttled(full=99.0) == [] for _ in range(5))
    # cgroup v1 and the machine have no "high" count
    e = engine(throttle_seconds=0)
    s = Sample("m", 1.0, 1, 1, None, memory_psi=Psi(full_avg10=99.0))
    assert e.feed(s, 1.0, WALL0, cgroup="m") == []
    assert e.feed(s, 2.0, WALL0, cgroup="m") == []


@pytest.mark.parametrize(
    ("thresholds", "problem"),
    [
        ({"throttle_full_percent": 0}, "thresholds.throttle_full_percent: must be above 0"),
        ({"throttle_full_percent": 101}, "thresholds.throttle_full_percent: must be at most 100"),
        ({"throttle_full_percent": "lots"}, "thresholds.throttle_full_percent: expected a number"),
        ({"throttle_seconds": -1}, "thresholds.throttle_seconds: must be at least 0"),
        ({"throttle_seconds": 7200}, "thresholds.throttle_seconds: must be at most 3600"),
        ({"throttle_second": 5}, "did you mean 'throttle_seconds'"),
    ],
)
def test_settings_are_checked(thresholds: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_config({"thresholds": thresholds})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_settings_from_text_and_null() -> None:
    s = EngineSettings.from_config(
        {"thresholds": {"throttle_full_percent": "12.5", "throttle_seconds": "45"}}
    )
    assert (s.throttle_full_percent, s.throttle_seconds) == (12.5, 45.0)
    assert (
        EngineSettings.from_config(
            {"thresholds": {"throttle_full_percent": None}}
        ).throttle_full_percent
        is None
    )
    assert EngineSettings().throttle_full_percent == 10.0
