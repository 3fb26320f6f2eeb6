"""The daemon watching itself (pressured/daemon/selfwatch.py) over cgroup trees built here,
and the live state it publishes (pressured/daemon/state.py). The real cgroup, the real
/healthz and the real shedding are in tests/kernel/test_selfwatch_kernel.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pressured.daemon.selfwatch import SelfWatch
from pressured.daemon.state import MAX_WAIT_S, LiveState
from pressured.kernel.cgroupfs import CgroupRef
from pressured.model import Identity, OomKill, Sample
from tests.support.wait import wait_for

MiB = 1 << 20


def v2_cgroup(path: Path, *, current: int, max_: str, inactive_file: int = 0) -> CgroupRef:
    path.mkdir(parents=True, exist_ok=True)
    (path / "memory.current").write_text(f"{current}\n")
    (path / "memory.max").write_text(f"{max_}\n")
    (path / "memory.stat").write_text(f"anon {current}\ninactive_file {inactive_file}\n")
    return CgroupRef(str(path), 2, "/" + path.name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(refs: list[CgroupRef], clock: Clock, **kw: float) -> SelfWatch:
    return SelfWatch(
        degraded_percent=kw.get("degraded", 85.0),
        shed_percent=kw.get("shed", 90.0),
        clock=clock,
        cgroups=refs,
        hold_s=kw.get("hold", 300.0),
    )


def test_below_its_levels_the_daemon_is_healthy(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "own", current=50 * MiB, max_="100000000000")
    sw = watch([own], Clock())
    reading = sw.observe(0.0)
    assert reading is not None and reading.rss_bytes and reading.rss_bytes > 0
    assert not sw.shedding
    assert sw.degraded() == []


def test_near_its_own_limit_it_is_degraded_then_sheds(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "own", current=87 * MiB, max_=str(100 * MiB))
    sw = watch([own], Clock())
    sw.observe(0.0)
    assert not sw.shedding
    (why,) = sw.degraded()
    assert "own memory at 87.0% of its limit" in why and "degraded from 85%" in why
    own_current = Path(own.path) / "memory.current"
    own_current.write_text(f"{95 * MiB}\n")
    (Path(own.path) / "memory.stat").write_text(f"anon {95 * MiB}\ninactive_file 0\n")
    assert sw.observe(0.5) is None, "read at most once a second"
    sw.observe(1.0)
    assert sw.shedding
    assert "shedding heap captures and Lua" in sw.degraded()[0]
    (Path(own.path) / "memory.stat").write_text(f"anon {95 * MiB}\ninactive_file {7 * MiB}\n")
    sw.observe(2.0)
    assert sw.reading.percent == pytest.approx(88.0) and sw.shedding, "5 points of hysteresis"
    (Path(own.path) / "memory.stat").write_text(f"anon {95 * MiB}\ninactive_file {11 * MiB}\n")
    sw.observe(3.0)
    assert not sw.shedding
    assert sw.degraded() == []


def test_reclaimable_cache_does_not_count(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "own", current=95 * MiB, max_=str(100 * MiB), inactive_file=60 * MiB)
    sw = watch([own], Clock())
    sw.observe(0.0)
    assert sw.reading.percent == pytest.approx(35.0)
    assert sw.degraded() == [] and not sw.shedding


def test_the_limit_is_the_smallest_up_the_tree(tmp_path: Path) -> None:
    parent = v2_cgroup(tmp_path / "pod", current=0, max_=str(100 * MiB))
    own = v2_cgroup(tmp_path / "pod" / "ctr", current=92 * MiB, max_="max")
    sw = watch([own, parent], Clock())
    sw.observe(0.0)
    assert sw.reading.limit_bytes == 100 * MiB
    assert sw.shedding


def test_without_a_cgroup_only_rss_and_nothing_is_shed() -> None:
    sw = watch([], Clock())
    sw.observe(0.0)
    assert sw.reading.rss_bytes and sw.reading.limit_bytes is None
    assert not sw.shedding and sw.degraded() == []


def test_drops_degrade_for_the_hold_time_by_action_and_reason(tmp_path: Path) -> None:
    clock = Clock()
    sw = watch([], clock, hold=300.0)
    sw.dropped("webhook", "queue_full")
    sw.dropped("webhook", "queue_full")
    sw.dropped("exec", "failed")
    (why,) = sw.degraded()
    assert why.startswith("3 event(s) dropped or not delivered in the last 300s")
    assert "exec: failed x1" in why and "webhook: queue_full x2" in why
    clock.now += 301
    assert sw.degraded() == []


def sample(key: str, t: float, usage: int, limit: int | None) -> Sample:
    return Sample(key, t, usage, usage, limit)


def test_live_state_rows_sorted_by_headroom_with_growth_and_eta() -> None:
    live = LiveState("node-a", wall=lambda: 2_000_000_000.0)
    ident = Identity(namespace="shop", pod_name="web-0", container_name="app")
    for i in range(5):
        live.sample("a", "/a", ident, sample("a", float(i), (10 + i) * MiB, 100 * MiB),
                    value=(10 + i) * MiB, severity="ok")  # fmt: skip
    live.sample("b", "/b", Identity(), sample("b", 0.0, 90 * MiB, 100 * MiB),
                value=90 * MiB, severity="critical")  # fmt: skip
    live.sample("c", "/c", Identity(), sample("c", 0.0, 5 * MiB, None), value=5 * MiB,
                severity="ok")  # fmt: skip
    doc = live.snapshot()
    assert [r["key"] for r in doc["targets"]] == ["b", "a", "c"]
    a = doc["targets"][1]
    assert a["pod"] == "web-0" and a["growth_bytes_per_s"] == pytest.approx(MiB, rel=1e-3)
    assert a["eta_seconds"] == pytest.approx(86.0, rel=1e-2)
    assert doc["targets"][2]["headroom_bytes"] is None
    assert doc["node"] == "node-a" and doc["version"] == 1


def test_kills_and_events_are_kept_bounded() -> None:
    live = LiveState(None)
    for i in range(80):
        live.event(OomKill(1.0 + i, "/a", 100 + i, "leaker", 1, ("kmsg",), 2.5))
    doc = live.snapshot()
    assert len(doc["kills"]) == 50 and len(doc["events"]) == 50
    assert doc["kills"][-1]["pid"] == 179
    assert doc["kills"][-1]["victim"] == "leaker"
    assert doc["kills"][-1]["warned_seconds_before"] == 2.5


def test_a_reader_waits_for_the_next_turn_not_a_timer() -> None:
    live = LiveState(None)
    live.turn()
    assert live.generation == 0, "a turn that changed nothing is no new generation"
    live.sample("a", "/a", Identity(), sample("a", 0.0, MiB, None), value=MiB, severity="ok")
    live.turn()
    assert live.generation == 1
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.append(live.snapshot(1, 60)["generation"]))
    reader.start()
    wait_for(lambda: live._waiters == 1, what="the reader waiting")
    assert got == []
    live.forget("a")
    live.turn()
    reader.join(10)
    assert got == [2]


def test_a_wait_is_bounded_and_bad_queries_are_refused() -> None:
    live = LiveState(None)
    status, ctype, body = live.route({"after": ["0"], "wait": ["0.01"]})
    assert status == "200 OK" and ctype == "application/json"
    assert json.loads(body)["generation"] == 0
    assert live.route({"after": ["x"]})[0] == "400 Bad Request"
    assert MAX_WAIT_S <= 30


def test_an_adopted_cgroup_is_read_with_its_ancestors_up_to_the_mount(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    mount.mkdir()
    (mount / "memory.max").write_text("max\n")  # the mount itself is not read
    v2_cgroup(mount / "kubepods", current=0, max_="max")
    v2_cgroup(mount / "kubepods" / "podU", current=0, max_=str(100 * MiB))
    ctr = mount / "kubepods" / "podU" / "c1"
    v2_cgroup(ctr, current=91 * MiB, max_="max")
    sw = watch([], Clock())
    sw.observe(0.0)
    assert sw.reading.limit_bytes is None and not sw.shedding
    sw.adopt(CgroupRef(str(ctr), 2, "/kubepods/podU/c1"))
    assert sw.cgroup == str(ctr)
    sw.observe(0.1)  # an adoption is read at once
    assert sw.reading.limit_bytes == 100 * MiB
    assert sw.shedding
