"""Arming many targets at once and moving their levels, against real cgroups (marker: kernel).

What is checked is behaviour (every target armed or its error returned by name, the order the
targets are started in, the new registration in place before the old one is closed, the new
level waking): how fast arming is goes in bench/wake_latency.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from pressured.errors import CgroupError
from pressured.kernel import cgroupfs
from pressured.kernel.procfs import count_open_fds
from pressured.kernel.watch import ArmReport, Watcher, WatchOptions
from tests.support.cgroups import Child, leaker_argv
from tests.support.wait import wait_for

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def _ref(child: Child) -> cgroupfs.CgroupRef:
    return cgroupfs.resolve(child.path, cgroupfs.detect_layout())


def test_parallel_arming_arms_every_target_and_names_each_failure(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    children = [make_cgroup(64 * MiB) for _ in range(12)]
    gone = make_cgroup(64 * MiB)
    gone_ref = _ref(gone)
    gone.remove()  # listed, then removed before arming: a per-target error, not a failure
    first = _ref(children[0])
    missing = cgroupfs.CgroupRef(
        os.path.join(os.path.dirname(first.path), "pressured-no-such-cgroup"),
        first.version,
        first.relpath + "-missing",
    )
    levels = [16 * MiB, 32 * MiB, 48 * MiB]
    items = [(f"t{i}", _ref(c), levels) for i, c in enumerate(children)]
    items += [("gone", gone_ref, levels), ("missing", missing, levels)]
    baseline = count_open_fds()
    w = Watcher(WatchOptions())
    seen: list[str] = []
    try:
        results = w.add_cgroups(items, workers=8, on_armed=lambda key, _r: seen.append(key))
        assert sorted(seen) == sorted(k for k, _r, _l in items), "every target reported once"
        for i in range(len(children)):
            report = results[f"t{i}"]
            assert isinstance(report, ArmReport), f"t{i}: {report!r}"
            if items[i][1].version == 1:
                for level in levels:
                    assert f"threshold {level}" in report.armed
                assert "oom_control" in report.armed
        assert isinstance(results["gone"], CgroupError)
        assert isinstance(results["missing"], CgroupError)
        assert "no such cgroup directory" in str(results["missing"])
        assert sorted(w.keys()) == sorted(f"t{i}" for i in range(len(children)))
        assert count_open_fds() - baseline == w.open_fds() + 2  # + its epoll and inotify fds
    finally:
        w.close()
    assert count_open_fds() == baseline


def test_arming_starts_with_the_target_nearest_its_limit(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    roomy = [make_cgroup(256 * MiB) for _ in range(3)]
    unlimited = make_cgroup(None)
    tight = make_cgroup(64 * MiB)
    tight.spawn(leaker_argv("--rate-mib", "200", "--max-mib", "32", "--hold"))
    wait_for(lambda: tight.usage() >= 24 * MiB, 20, "the leaker to fill its cgroup")
    items = [("unlimited", _ref(unlimited), [])]
    items += [(f"roomy{i}", _ref(c), [128 * MiB]) for i, c in enumerate(roomy)]
    items += [("tight", _ref(tight), [48 * MiB])]
    w = Watcher(WatchOptions(psi=None))
    order: list[str] = []
    try:
        # one worker: the order targets are started in is the order they finish in
        w.add_cgroups(items, workers=1, on_armed=lambda key, _r: order.append(key))
    finally:
        w.close()
    assert order[0] == "tight"
    assert order[-1] == "unlimited"


def test_new_levels_are_registered_before_the_old_are_closed(
    make_cgroup: Callable[[int | None], Child],
) -> None:
    children = [make_cgroup(256 * MiB) for _ in range(4)]
    refs = [_ref(c) for c in children]
    if refs[0].version != 1:
        pytest.skip("v2 has no usage-threshold registration to move: levels are read")
    w = Watcher(WatchOptions(psi=None, v1_pressure_level=None))
    released_while: list[tuple[int, set[int]]] = []
    release = w._release

    def watching_release(token: int) -> None:
        entry = w._tokens.get(token)
        if entry is not None and entry.kind == "v1_event":
            live = {e.fd for e in w._tokens.values() if e.kind == "v1_event" and e.key == entry.key}
            released_while.append((entry.fd, live - {entry.fd}))
        release(token)

    w._release = watching_release  # type: ignore[method-assign]
    try:
        for i, ref in enumerate(refs):
            w.add_cgroup(f"t{i}", ref, [200 * MiB])
        fds_before = count_open_fds()
        w.set_levels_many({f"t{i}": [24 * MiB, 220 * MiB] for i in range(len(refs))}, workers=4)
        assert len(released_while) == len(refs)
        for old_fd, others in released_while:
            assert others, f"eventfd {old_fd} closed while no new one was registered"
        assert count_open_fds() == fds_before, "the old eventfds are closed"
        assert w.levels("t0") == [24 * MiB, 220 * MiB]
        children[0].spawn(leaker_argv("--rate-mib", "64", "--max-mib", "40", "--hold"))
        woke: list[str] = []

        def crossed() -> bool:
            woke.extend(x.detail for x in w.wait(0.5) if x.key == "t0" and x.cause == "threshold")
            return str(24 * MiB) in woke

        wait_for(crossed, 20, "a wake-up at the new level 24 MiB")
    finally:
        w.close()
