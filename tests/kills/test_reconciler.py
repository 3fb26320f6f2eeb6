"""The kill reconciler (exactly once), counters and their state across restarts, config."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.errors import ConfigError
from pressured.kills import (
    CounterTracker,
    KillsConfig,
    KillState,
    Reconciler,
    attribute,
)
from pressured.kills.readers.kmsg_parse import KmsgOomParser, parse_kmsg_record
from pressured.model import Identity, KillRecord, OomKill

from . import fixture_records

W = 5.0


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rec(
    source: str,
    pid: int | None,
    t: float,
    *,
    delta: int = 1,
    cgroup: str | None = None,
    **extra: object,
) -> KillRecord:
    return KillRecord(
        source=source,
        time=t,
        wall=1_700_000_000.0 + t,
        cgroup=cgroup,
        pid=pid,
        comm=None if pid is None else f"p{pid}",
        count_delta=delta,
        extra=dict(extra),
    )


def settle(r: Reconciler, clock: Clock, seconds: float = 3 * W) -> list[OomKill]:
    clock.now += seconds
    return r.flush()


# --------------------------------------------------------------------------- merging
def test_two_sources_agree_one_kill() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("kmsg", 10, 100.0, cgroup="/a"), key="a", cgroup="/a")
    clock.now = 100.2
    r.add(rec("tracepoint", 10, 100.2), key="a", cgroup="/a")
    assert r.flush() == []  # the window is still open
    kills = settle(r, clock)
    assert [(k.pid, k.sources, k.key, k.cgroup) for k in kills] == [
        (10, ("kmsg", "tracepoint"), "a", "/a")
    ]
    assert kills[0].warned_seconds_before is None


def test_one_source_alone_is_still_a_kill() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("tracepoint", 11, 100.0), key="a", cgroup="/a")
    kills = settle(r, clock)
    assert [(k.pid, k.sources) for k in kills] == [(11, ("tracepoint",))]


def test_counter_confirms_pid_kill_and_numbers_it() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("counters", None, 100.0, delta=1, oom_kill=7), key="a", cgroup="/a")
    r.add(rec("kmsg", 12, 100.1), key="a", cgroup="/a")
    kills = settle(r, clock)
    assert [(k.pid, k.sources, k.oom_kill_count) for k in kills] == [(12, ("counters", "kmsg"), 7)]


def test_counter_alone_gives_pidless_kills() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("counters", None, 100.0, delta=2, oom_kill=5), key="a", cgroup="/a")
    kills = settle(r, clock)
    assert [(k.pid, k.sources, k.oom_kill_count, k.cgroup) for k in kills] == [
        (None, ("counters",), 4, "/a"),
        (None, ("counters",), 5, "/a"),
    ]


def test_counter_delta_larger_than_pid_kills() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("kmsg", 1, 100.0), key="a")
    r.add(rec("kmsg", 2, 100.0), key="a")
    r.add(rec("counters", None, 100.1, delta=3, oom_kill=3), key="a")
    kills = settle(r, clock)
    assert sorted((k.pid or 0, k.sources) for k in kills) == [
        (0, ("counters",)),
        (1, ("counters", "kmsg")),
        (2, ("counters", "kmsg")),
    ]


def test_counter_of_another_target_does_not_match() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("kmsg", 1, 100.0), key="a")
    r.add(rec("counters", None, 100.1, delta=1), key="b")
    kills = settle(r, clock)
    assert sorted((k.key, k.pid or 0, k.sources) for k in kills) == [
        ("a", 1, ("kmsg",)),
        ("b", 0, ("counters",)),
    ]


def test_counter_far_outside_the_window_is_another_kill() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("kmsg", 1, 100.0), key="a")
    clock.now = 120.0
    r.add(rec("counters", None, 120.0), key="a")
    kills = r.flush() + settle(r, clock)
    assert len(kills) == 2


def test_unattributed_record_takes_the_target_of_a_counter() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("tracepoint", 5, 100.0), key=None)  # /proc/5 gone: cgroup unknown
    r.add(
        rec("counters", None, 100.1, oom_kill=1),
        key="a",
        cgroup="/a",
        identity=Identity(pod_name="web"),
    )
    clock.now = 100.1 + W  # the counter's window closed: the kill is claimed, not yet out
    assert r.flush() == []
    kills = settle(r, clock)
    assert [(k.pid, k.key, k.cgroup, k.sources, k.identity.pod_name) for k in kills] == [
        (5, "a", "/a", ("counters", "tracepoint"), "web")
    ]


def test_attributed_elsewhere_is_not_taken_by_a_counter() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    # kmsg named a cgroup that is not watched: not a candidate for target a's counter
    r.add(rec("kmsg", 5, 100.0, cgroup="/other"), key=None)
    r.add(rec("counters", None, 100.1), key="a", cgroup="/a")
    kills = settle(r, clock)
    assert sorted((k.pid or 0, k.key, k.cgroup) for k in kills) == [
        (0, "a", "/a"),
        (5, "", "/other"),
    ]


def test_unattributed_then_attributed_merge_by_pid() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("tracepoint", 9, 100.0), key=None)
    r.add(rec("kmsg", 9, 100.05, cgroup="/a"), key="a", cgroup="/a")
    kills = settle(r, clock)
    assert [(k.pid, k.key, k.sources) for k in kills] == [(9, "a", ("kmsg", "tracepoint"))]


def test_burst_one_event_per_killed_process() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    pids = list(range(200, 215))
    for i, pid in enumerate(pids):
        clock.now = 100.0 + i * 0.01
        r.add(rec("kmsg", pid, clock.now), key="a")
        r.add(rec("tracepoint", pid, clock.now + 0.001), key="a")
    r.add(rec("counters", None, clock.now, delta=len(pids), oom_kill=len(pids)), key="a")
    kills = settle(r, clock)
    assert sorted(k.pid or 0 for k in kills) == pids
    assert {k.sources for k in kills} == {("counters", "kmsg", "tracepoint")}
    assert sorted(k.oom_kill_count or 0 for k in kills) == list(range(1, len(pids) + 1))


def test_one_counter_reading_covers_a_burst_of_hundreds() -> None:
    # one oom_kill reading that covers 280 of 300 kills (the daemon woke late): every unit
    # must find its kill, not only the few nearest in time, or kills are counted twice
    clock = Clock(0.0)
    r = Reconciler(W, clock)
    pids = list(range(10_000, 10_300))
    for i, pid in enumerate(pids):
        clock.now = i * 0.002
        named = i % 2 == 0
        r.add(
            rec("kmsg", pid, clock.now, cgroup="/a" if named else None), key="a" if named else None
        )
    clock.now += 0.5
    r.add(rec("counters", None, clock.now, delta=280, oom_kill=280), key="a")
    kills = settle(r, clock)
    assert sorted(k.pid or 0 for k in kills) == pids
    assert sum("counters" in k.sources for k in kills) == 280


def test_a_counter_moves_off_a_kill_another_counter_fits_better() -> None:
    # found by the interleaving property below: counter 1.0 first took the attributed kill at
    # 6.0, which counter 7.0 fits better, and left the unattributed kill at 1.5 without one
    clock = Clock(0.0)
    r = Reconciler(W, clock)
    script = [
        (0.0, rec("counters", None, 0.0, delta=1, oom_kill=1), "a"),
        (1.0, rec("kmsg", 1001, 1.0), None),
        (1.0, rec("counters", None, 1.0, delta=2, oom_kill=3), "a"),
        (1.5, rec("kmsg", 1005, 1.5), None),
        (6.0, rec("kmsg", 1006, 6.0, cgroup="/a"), "a"),
        (7.0, rec("counters", None, 7.0, delta=1, oom_kill=4), "a"),
        (9.0, rec("kmsg", 1000, 9.0), None),
        (11.0, rec("counters", None, 11.0, delta=2, oom_kill=6), "a"),
    ]
    out: list[OomKill] = []
    for t, record, key in script:
        clock.now = t
        out += r.flush()
        r.add(record, key=key, cgroup=None if key is None else f"/{key}")
    out += settle(r, clock)
    assert len(out) == 6  # four with a pid, two seen by the counters alone
    assert sorted(k.pid for k in out if k.pid is not None) == [1000, 1001, 1005, 1006]
    assert all(k.key == "a" and "counters" in k.sources for k in out)


def test_burst_rate_limited_and_reaped() -> None:
    # 60 kills in 1.2 s: kmsg names the cgroup of the first ten (then only "Killed process"
    # lines), the tracepoint finds every victim reaped; counters arrive in batches
    clock = Clock()
    r = Reconciler(W, clock)
    out: list[OomKill] = []
    for i in range(60):
        clock.now = 100.0 + i * 0.02
        named = i < 10
        r.add(
            rec("kmsg", 300 + i, clock.now, cgroup="/a" if named else None),
            key="a" if named else None,
        )
        r.add(rec("tracepoint", 300 + i, clock.now + 0.003), key=None)
        if i % 7 == 6 or i == 59:
            r.add(
                rec(
                    "counters",
                    None,
                    clock.now + 0.01,
                    delta=7 if i % 7 == 6 else 60 % 7,
                    oom_kill=i + 1,
                ),
                key="a",
                cgroup="/a",
            )
        out += r.flush()
    out += settle(r, clock)
    assert sorted(k.pid or 0 for k in out) == list(range(300, 360))
    assert {(k.key, k.sources) for k in out} == {("a", ("counters", "kmsg", "tracepoint"))}
    assert sorted(k.oom_kill_count or 0 for k in out) == list(range(1, 61))


def test_late_record_after_emission_is_not_a_second_kill() -> None:
    clock = Clock()
    r = Reconciler(W, clock, expected=lambda key: {"kmsg", "tracepoint"})
    r.add(rec("kmsg", 3, 100.0), key="a")
    r.add(rec("tracepoint", 3, 100.0), key="a")
    first = r.flush()  # complete: every expected source saw it, out at once
    assert [(k.pid, k.sources) for k in first] == [(3, ("kmsg", "tracepoint"))]
    clock.now = 101.0
    r.add(rec("bcc", 3, 101.0), key="a")
    assert settle(r, clock) == []
    assert r.duplicates == 1


def test_expected_sources_wait_for_the_missing_one() -> None:
    clock = Clock()
    r = Reconciler(W, clock, expected=lambda key: {"counters", "kmsg"})
    r.add(rec("kmsg", 3, 100.0), key="a")
    assert r.flush() == []
    r.add(rec("counters", None, 100.0), key="a")
    assert [k.sources for k in r.flush()] == [("counters", "kmsg")]


def test_next_deadline_and_pending() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    assert r.next_deadline() is None
    r.add(rec("kmsg", 3, 100.0), key="a")
    r.add(rec("kmsg", 4, 100.0, cgroup="/unwatched"), key=None)
    r.add(rec("counters", None, 100.0, delta=2), key="b")
    assert r.next_deadline() == 100.0 + W
    assert r.pending() == 4
    assert len(r.drain()) == 4
    assert r.pending() == 0


# --------------------------------------------------------------------------- memory.oom.group
def _group_kill_records() -> list[KillRecord]:
    parser = KmsgOomParser()
    out: list[KillRecord] = []
    for raw in fixture_records("linux-6.1-v2-plain-group-burst.kmsg"):
        rec_ = parse_kmsg_record(raw)
        assert rec_ is not None
        out += parser.feed(rec_, time=100.0, wall=1.0)
    return [k for k in out if k.cgroup == "/pk-group"]


@pytest.mark.parametrize(
    "deltas",
    [
        [(4, 1)],  # one reading after everything: oom_kill +4, oom_group_kill +1
        [(1, 0), (3, 1)],  # read between the victim's kill and the group's
        [(1, 1), (3, 0)],  # read between the group event and the members
    ],
)
def test_oom_group_victim_killed_twice_counts_once(deltas: list[tuple[int, int]]) -> None:
    # measured on 6.1: a group of 3 processes gives oom_kill +4 and four "Killed process"
    # lines, the victim (154) twice; mark_victim fires once per task
    clock = Clock()
    r = Reconciler(W, clock)
    for k in _group_kill_records():
        r.add(k, key="g", cgroup="/pk-group")
    for pid in (154, 152, 153):
        r.add(rec("tracepoint", pid, 100.0), key="g", cgroup="/pk-group")
    total = 0
    for kills, groups in deltas:
        total += kills
        extra: dict[str, Any] = {"oom_kill": total}
        if groups:
            extra["oom_group_kill_delta"] = groups
        counter = KillRecord("counters", 100.0, 1.7e9, count_delta=kills, extra=extra)
        r.add(counter, key="g", cgroup="/pk-group")
    out = settle(r, clock)
    assert sorted((k.pid or 0, k.sources) for k in out) == [
        (152, ("counters", "kmsg", "tracepoint")),
        (153, ("counters", "kmsg", "tracepoint")),
        (154, ("counters", "kmsg", "tracepoint")),
    ]


def test_oom_group_counters_only() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.add(rec("counters", None, 100.0, delta=4, oom_kill=4, oom_group_kill_delta=1), key="g")
    assert len(settle(r, clock)) == 3


# --------------------------------------------------------------------------- warnings
def test_warned_seconds_before_and_unwarned() -> None:
    clock = Clock()
    r = Reconciler(W, clock)
    r.note_warn("a", 90.0)
    r.note_warn("a", 95.0)  # a later warn of the same episode does not move the start
    r.add(rec("kmsg", 1, 100.0), key="a")
    r.add(rec("kmsg", 2, 100.0), key="b")
    kills = {k.pid: k for k in settle(r, clock)}
    assert kills[1].warned_seconds_before == pytest.approx(10.0)
    assert kills[2].warned_seconds_before is None
    assert kills[1].to_json()["warned_seconds_before"] == 10.0
    r.end_episode("a")
    r.add(rec("kmsg", 3, clock.now), key="a")
    assert settle(r, clock)[0].warned_seconds_before is None


def test_first_warn_callable_and_warn_after_kill() -> None:
    clock = Clock()
    warns = {"a": 99.0, "b": 150.0}
    r = Reconciler(W, clock, first_warn=warns.get)
    r.add(rec("counters", None, 100.0), key="a")
    r.add(rec("kmsg", 1, 100.0), key="b")  # the warn came after the kill: not a warning
    kills = {k.key: k for k in settle(r, clock)}
    assert kills["a"].warned_seconds_before == pytest.approx(1.0)
    assert kills["b"].warned_seconds_before is None


def test_event_json_carries_the_kernel_details() -> None:
    clock = Clock()
    r = Reconciler(W, clock, dry_run=True)
    r.add(
        KillRecord(
            "kmsg",
            100.0,
            1_700_000_000.5,
            cgroup="/k/p/c",
            pid=42,
            comm="java",
            rss={"anon_rss": 4096},
            uid=1000,
            oom_score_adj=900,
            extra={"oom_memcg": "/k/p", "constraint": "CONSTRAINT_MEMCG"},
        ),
        key="c",
        cgroup="/k/p/c",
        annotations={"team": "x"},
    )
    (kill,) = settle(r, clock)
    doc = kill.to_json()
    assert doc["event_type"] == "oom_killed"
    assert doc["time"] == "2023-11-14T22:13:20.500Z"
    assert (doc["pid"], doc["comm"], doc["sources"], doc["dry_run"]) == (42, "java", ["kmsg"], True)
    assert doc["rss_bytes"] == {"anon_rss": 4096}
    assert (doc["uid"], doc["oom_score_adj"], doc["oom_memcg"]) == (1000, 900, "/k/p")
    assert doc["annotations"] == {"team": "x"}


# --------------------------------------------------------------------------- exactly once
@dataclass
class Kill:
    pid: int
    key: str
    time: float
    sources: frozenset[str]
    attributed: bool  # at least one pid-bearing record named its cgroup


PID_SOURCES = ("kmsg", "tracepoint", "bcc")


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[Kill], dict[str, bool], list[tuple[float, KillRecord, str | None]]]:
    keys = ["a", "b", "c"]
    # a kernel counter misses no kill of its cgroup: counters see all kills of a target or none
    counted = {k: draw(st.booleans()) for k in keys}
    n = draw(st.integers(0, 12))
    kills: list[Kill] = []
    events: list[tuple[float, KillRecord, str | None]] = []
    for i in range(n):
        key = draw(st.sampled_from(keys))
        t = draw(st.floats(0, 40, allow_nan=False))
        min_pid = 0 if counted[key] else 1
        pid_sources = draw(st.sets(st.sampled_from(PID_SOURCES), min_size=min_pid))
        sources = set(pid_sources) | ({"counters"} if counted[key] else set())
        attributed = False
        for j, src in enumerate(sorted(pid_sources)):
            jitter = draw(st.floats(0, 0.4 * W, allow_nan=False))
            # tracepoint/bcc read /proc/<pid>/cgroup (maybe gone); kmsg is rate limited. A
            # kill no record attributes is matched to a counter by elimination, so it must
            # have one: "unattributed kill of an uncounted target + counter-only kill of
            # another" cannot be told from "one kill seen by both".
            must_name = not counted[key] and not attributed and j == len(pid_sources) - 1
            named = must_name or draw(st.booleans())
            attributed |= named
            record = rec(src, 1000 + i, t + jitter, cgroup=f"/{key}" if named else None)
            events.append((t + jitter, record, key if named else None))
        kills.append(Kill(1000 + i, key, t, frozenset(sources), attributed))
    # counter readings: one wake-up per counted kill, after a delay; each reading reports
    # every kill of its target not reported yet (several kills in one delta)
    for key in keys:
        if not counted[key]:
            continue
        mine = sorted(k.time for k in kills if k.key == key)
        wakes = sorted(t + draw(st.floats(0, 0.4 * W, allow_nan=False)) for t in mine)
        reported = 0
        for wake in wakes:
            delta = sum(1 for t in mine if t <= wake) - reported
            if delta > 0:
                reported += delta
                events.append(
                    (wake, rec("counters", None, wake, delta=delta, oom_kill=reported), key)
                )
    order = draw(st.permutations(range(len(events))))
    # equal times in any order; otherwise in time order, as the daemon would read them
    events = [events[i] for i in order]
    events.sort(key=lambda e: e[0])
    return kills, counted, events


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_exactly_once_under_random_interleavings(
    scenario: tuple[list[Kill], dict[str, bool], list[tuple[float, KillRecord, str | None]]],
) -> None:
    kills, counted, events = scenario
    clock = Clock(0.0)
    r = Reconciler(W, clock)
    out: list[OomKill] = []
    for t, record, key in events:
        clock.now = t
        out += r.flush()
        r.add(record, key=key, cgroup=None if key is None else f"/{key}")
    out += settle(r, clock)

    assert len(out) == len(kills)
    by_pid = Counter(k.pid for k in out if k.pid is not None)
    with_pid = [k for k in kills if k.sources - {"counters"}]
    assert by_pid == Counter(k.pid for k in with_pid)
    pidless = Counter(k.key for k in out if k.pid is None)
    want_pidless = Counter(k.key for k in kills if k.sources == {"counters"})
    assert sum(pidless.values()) == sum(want_pidless.values())
    if all(k.attributed for k in with_pid):
        # unattributed kills of two counted targets may swap targets, never count twice
        assert pidless == want_pidless
    got = {k.pid: k for k in out if k.pid is not None}
    for k in with_pid:
        event = got[k.pid]
        assert set(event.sources) - {"counters"} == k.sources - {"counters"}
        if k.attributed:
            assert event.key == k.key
            assert ("counters" in event.sources) == counted[k.key]
        assert list(event.sources) == sorted(set(event.sources))


# --------------------------------------------------------------------------- counters + state
def test_tracker_deltas_without_state() -> None:
    t = CounterTracker(clock=Clock())
    assert t.observe("a", "/a", 3) is None  # first reading: the baseline
    assert t.observe("a", "/a", 3) is None
    r = t.observe("a", "/a", 5, group_kills=None)
    assert r is not None
    assert (r.source, r.count_delta, r.pid, r.cgroup, r.extra["oom_kill"]) == (
        "counters",
        2,
        None,
        "/a",
        5,
    )


def test_tracker_recreated_cgroup() -> None:
    t = CounterTracker(clock=Clock())
    t.observe("a", "/a", 4, cgroup_id=100)
    r = t.observe("a", "/a", 1, cgroup_id=200)  # same path, new directory
    assert r is not None and r.count_delta == 1
    r = t.observe("a", "/a", 3, cgroup_id=200)
    assert r is not None and r.count_delta == 2
    t.forget("/a")
    assert t.observe("a", "/a", 9, cgroup_id=300) is None


def test_tracker_group_kill_delta() -> None:
    t = CounterTracker(clock=Clock())
    t.observe("g", "/g", 0, group_kills=0)
    r = t.observe("g", "/g", 4, group_kills=1)
    assert r is not None and r.extra["oom_group_kill_delta"] == 1


def test_restart_reports_kills_while_down(tmp_path: Path) -> None:
    clock = Clock()
    first = CounterTracker(KillState(str(tmp_path)), clock=clock, wall_clock=lambda: 1000.0)
    with first.batch():
        assert first.observe("a", "/a", 2, cgroup_id=11) is None
        assert first.observe("b", "/b", 0, cgroup_id=12) is None
    assert first.observe("a", "/a", 3, cgroup_id=11) is not None  # a kill while up
    saved = json.loads((tmp_path / "kills.json").read_text())
    assert saved["cgroups"]["/a"]["oom_kill"] == 3
    assert saved["saved_at"] == 1000.0

    # the daemon is down; /a gets two kills, /b none; then a new daemon starts
    second = CounterTracker(KillState(str(tmp_path)), clock=clock, wall_clock=lambda: 2000.0)
    down = second.observe("a", "/a", 5, cgroup_id=11)
    assert down is not None
    assert (down.source, down.count_delta, down.extra["down_since"]) == (
        "counters:restart",
        2,
        1000.0,
    )
    assert second.observe("b", "/b", 0, cgroup_id=12) is None
    assert second.observe("c", "/c", 7) is None  # never seen before: only a baseline
    later = second.observe("a", "/a", 6, cgroup_id=11)
    assert later is not None and later.source == "counters" and later.count_delta == 1


def test_a_state_of_an_earlier_boot_counts_each_cgroup_as_made_anew(tmp_path: Path) -> None:
    # a state_dir on the node's disk outlives a reboot; the kubepods cgroups are made again
    # with the same paths (and, kernfs numbering afresh, maybe the same inodes)
    clock = Clock()
    before = CounterTracker(KillState(str(tmp_path), boot="boot-1"), clock=clock)
    with before.batch():
        before.observe("a", "/a", 5, cgroup_id=11)
        before.observe("b", "/b", 0, cgroup_id=12)
    assert json.loads((tmp_path / "kills.json").read_text())["boot_id"] == "boot-1"

    after = CounterTracker(KillState(str(tmp_path), boot="boot-2"), clock=clock)
    below = after.observe("a", "/a", 2, cgroup_id=11)  # two kills since the reboot
    assert below is not None and (below.source, below.count_delta) == ("counters:restart", 2)
    above = after.observe("b", "/b", 3, cgroup_id=12)  # more than saved: all three are new
    assert above is not None and above.count_delta == 3

    same = CounterTracker(KillState(str(tmp_path), boot="boot-2"), clock=clock)
    assert same.observe("b", "/b", 3, cgroup_id=12) is None  # same boot: nothing new


def test_restart_with_replayed_kmsg_counts_once(tmp_path: Path) -> None:
    clock = Clock(5000.0)
    CounterTracker(KillState(str(tmp_path)), clock=clock).observe("a", "/a", 0)
    tracker = CounterTracker(KillState(str(tmp_path)), clock=clock)
    r = Reconciler(W, clock, first_warn=lambda key: 4000.0)
    # a replayed /dev/kmsg names the kill that happened an hour ago
    r.add(rec("kmsg", 77, 1400.0, cgroup="/a"), key="a", cgroup="/a")
    record = tracker.observe("a", "/a", 2)
    assert record is not None
    r.add(record, key="a", cgroup="/a")
    kills = settle(r, clock)
    assert sorted((k.pid or 0, k.sources) for k in kills) == [
        (0, ("counters:restart",)),
        (77, ("counters:restart", "kmsg")),
    ]
    assert all(k.extra["while_down"] and k.warned_seconds_before is None for k in kills)


def test_corrupt_state_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "kills.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="pressured.kills"):
        state = KillState(str(tmp_path))
    assert state.entries == {}
    assert (tmp_path / "kills.json.corrupt").exists()
    assert "kills.json" in caplog.text


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"state_dir: .*got"):
        KillState(str(blocker / "sub"))


def test_state_write_is_atomic(tmp_path: Path) -> None:
    state = KillState(str(tmp_path))
    state.entries["/x"] = {"oom_kill": 1, "id": None, "key": "x"}
    state.save(1.0)
    assert sorted(os.listdir(tmp_path)) == ["kills.json"]  # no temporary left behind
    assert KillState(str(tmp_path)).get("/x") == {"oom_kill": 1, "id": None, "key": "x"}


# --------------------------------------------------------------------------- config, helpers
def test_config_defaults_and_values() -> None:
    assert KillsConfig.from_mapping(None) == KillsConfig()
    cfg = KillsConfig.from_mapping(
        {
            "kmsg": {"enabled": False, "path": "/x/kmsg", "replay": True},
            "tracepoint": {"tracefs": "/t"},
            "bcc": {"enabled": True},
            "window_seconds": 2,
        }
    )
    assert (cfg.kmsg_enabled, cfg.kmsg_path, cfg.kmsg_replay) == (False, "/x/kmsg", True)
    assert (cfg.tracefs, cfg.bcc_enabled, cfg.window_seconds) == ("/t", True, 2.0)


def test_config_errors_name_every_key() -> None:
    with pytest.raises(ConfigError) as info:
        KillsConfig.from_mapping(
            {
                "kmsg": {"enabled": "yes", "path": "relative"},
                "window_seconds": 0,
                "bcc": [],
                "nope": 1,
            }
        )
    problems = info.value.problems
    assert "kills.kmsg.enabled: expected true or false (got 'yes')" in problems
    assert "kills.kmsg.path: must be an absolute path (got 'relative')" in problems
    assert any(p.startswith("kills.window_seconds:") and "(got 0)" in p for p in problems)
    assert "kills.bcc: expected a mapping (got [])" in problems
    assert "kills.nope: unknown key (known: bcc, kmsg, tracepoint, window_seconds)" in problems


def test_attribute_deepest_target() -> None:
    targets = {"pod": "/kubepods/pod1", "ctr": "/kubepods/pod1/abc", "root": "/"}
    assert attribute("/kubepods/pod1/abc", targets) == "ctr"
    assert attribute("/kubepods/pod1/abcdef", targets) == "pod"
    assert attribute("/kubepods/pod1", targets) == "pod"
    assert attribute("/system.slice", targets) == "root"
    assert attribute("/system.slice", {"pod": "/kubepods/pod1"}) is None
    assert attribute(None, targets) is None
