"""The Watcher's adaptive read interval (no kernel notifier for usage on cgroup v2).

The interval is full while half the limit or more is free, shrinks linearly with headroom, is
cut further so that at least four reads happen before the next level (or the limit) at the
current growth, and stays within [min_interval_s, max_interval_s] except when the next level
is due before two such reads: then it is half the time left, down to PREDICT_FLOOR_S. Targets
without a
limit, and v1 targets below their lowest threshold (the kernel's eventfd watches them), are read
at the maximum interval.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.kernel.watch import PREDICT_FLOOR_S, Watcher, WatchOptions, _Target

LO, HI = 0.05, 2.0
LIMIT = 1000


@pytest.fixture(scope="module")
def watcher() -> Iterator[Watcher]:
    w = Watcher(WatchOptions(min_interval_s=LO, max_interval_s=HI, psi=None))
    yield w
    w.close()


def target(
    usage: int | None,
    *,
    limit: int | None = LIMIT,
    growth: float = 0.0,
    levels: list[int] | None = None,
    always: bool = True,
) -> _Target:
    t = _Target("k", None, sorted(levels or []), limit)
    t.adaptive_always = always
    t.last_usage = usage
    t.growth = growth
    return t


def test_full_interval_with_half_the_limit_free(watcher: Watcher) -> None:
    assert watcher._interval(target(0)) == HI
    assert watcher._interval(target(500)) == HI


def test_shrinks_linearly_with_headroom(watcher: Watcher) -> None:
    assert watcher._interval(target(750)) == pytest.approx(HI * 0.5)
    assert watcher._interval(target(900)) == pytest.approx(HI * 0.2)
    assert watcher._interval(target(950)) == pytest.approx(HI * 0.1)


def test_floor_at_and_above_the_limit(watcher: Watcher) -> None:
    assert watcher._interval(target(1000)) == LO
    assert watcher._interval(target(1200)) == LO
    assert watcher._interval(target(999)) == LO  # 0.2 % free: the formula gives less than LO


def test_never_grows_as_headroom_shrinks(watcher: Watcher) -> None:
    intervals = [watcher._interval(target(u)) for u in range(0, LIMIT + 1, 10)]
    assert all(a >= b for a, b in itertools.pairwise(intervals))
    assert intervals[0] == HI and intervals[-1] == LO
    assert len(set(intervals)) > 20  # it really moves in between


def test_faster_growth_means_shorter_interval(watcher: Watcher) -> None:
    # half free (the headroom alone allows HI): 500 bytes at 125 B/s is 4 s, so a read per 1 s
    assert watcher._interval(target(500, growth=50.0)) == HI  # 2.5 s, capped
    assert watcher._interval(target(500, growth=125.0)) == pytest.approx(1.0)
    assert watcher._interval(target(500, growth=500.0)) == pytest.approx(0.25)
    assert watcher._interval(target(500, growth=1e9)) == LO
    intervals = [watcher._interval(target(600, growth=g)) for g in (0, 10, 100, 1000, 10_000)]
    assert all(a >= b for a, b in itertools.pairwise(intervals))
    assert intervals[0] > intervals[-1]


def test_shrinking_usage_does_not_shorten_the_interval(watcher: Watcher) -> None:
    assert watcher._interval(target(600, growth=-500.0)) == watcher._interval(target(600))


def test_growth_aims_at_the_next_level_before_the_limit(watcher: Watcher) -> None:
    # the next level (700) is 200 bytes away: 2 s at 100 B/s, so a read every 0.5 s
    t = target(500, growth=100.0, levels=[300, 700, 850])
    assert watcher._interval(t) == pytest.approx(0.5)
    # above every level the limit is the goal again
    t = target(900, growth=10.0, levels=[300, 700, 850])
    assert watcher._interval(t) == pytest.approx(min(HI * 0.2, 100 / 10 / 4))


def test_unlimited_targets_use_the_maximum(watcher: Watcher) -> None:
    assert watcher._interval(target(10**12, limit=None, growth=1e9)) == HI


def test_unknown_usage_uses_the_maximum(watcher: Watcher) -> None:
    assert watcher._interval(target(None)) == HI


def test_v1_target_below_its_thresholds_is_left_to_the_kernel(watcher: Watcher) -> None:
    cold = target(799, growth=1e6, levels=[800], always=False)
    assert not cold.adaptive
    assert watcher._interval(cold) == HI
    hot = target(950, growth=0.0, levels=[800], always=False)
    assert hot.adaptive
    assert watcher._interval(hot) == pytest.approx(HI * 0.1)


@settings(max_examples=300, deadline=None)
@given(
    usage=st.integers(min_value=0, max_value=4 * LIMIT),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=2 * LIMIT)),
    growth=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    levels=st.lists(st.integers(min_value=0, max_value=2 * LIMIT), max_size=4),
    always=st.booleans(),
)
def test_always_within_bounds(
    watcher: Watcher,
    usage: int,
    limit: int | None,
    growth: float,
    levels: list[int],
    always: bool,
) -> None:
    interval = watcher._interval(
        target(usage, limit=limit, growth=growth, levels=levels, always=always)
    )
    assert PREDICT_FLOOR_S <= interval <= HI
    t = target(usage, limit=limit, growth=growth, levels=levels, always=always)
    if interval < LO:  # only a read timed to a level's predicted crossing
        assert t.adaptive and growth > 0 and any(lv > usage for lv in levels)


def cold_v1(usage: int, growth: float = 0.0) -> _Target:
    t = target(usage, growth=growth, levels=[700, 850], always=False)
    t.cold_reads = True
    return t


def test_v1_below_its_levels_is_read_on_the_cold_interval(watcher: Watcher) -> None:
    # kernel memory is charged without running v1's threshold check: reads, slow ones
    cold = watcher.options.v1_cold_interval_s
    assert cold >= HI
    assert watcher._interval(cold_v1(100)) == cold
    # growing towards the lowest level: four reads before it
    assert watcher._interval(cold_v1(500, growth=100.0)) == pytest.approx(0.5)
    # the crossing of the lowest level is the eventfd's to report: routine reads only
    assert watcher._interval(cold_v1(699, growth=1e9)) == LO
    # above the lowest level it is hot: the adaptive interval
    hot = cold_v1(750)
    assert hot.hot and watcher._interval(hot) == pytest.approx(HI * 0.5)


def test_cold_reads_share_one_tick(watcher: Watcher) -> None:
    tick = watcher.options.v1_cold_interval_s
    dues = []
    for now in (10.1, 10.7, 11.3):
        t = cold_v1(100)
        watcher._update(t, 100, now)
        dues.append(t.next_due)
    assert len(set(dues)) == 1 and dues[0] % tick == 0
    # and none waits longer than the cold interval (a kernel memory leak is seen by these only)
    assert 11.3 < dues[0] <= 10.1 + tick


def test_a_level_due_soon_is_read_at_half_the_time_left(watcher: Watcher) -> None:
    # 100 bytes below the level at 10,000 bytes/s: due in 10 ms, read in 5 ms
    t = target(700, growth=10_000.0, levels=[800])
    assert watcher._interval(t) == pytest.approx(0.005)
    t = target(799, growth=1e6, levels=[800])
    assert watcher._interval(t) == PREDICT_FLOOR_S
    # a leak that just started: the last rate runs ahead of the EWMA, and the read comes sooner
    t = target(700, growth=1_000.0, levels=[800])
    t.last_rate = 10_000.0
    assert watcher._interval(t) == pytest.approx(0.005)
    # past every level: nothing to cross but the limit, so routine reads only
    assert watcher._interval(target(900, growth=1e9, levels=[800])) == LO
