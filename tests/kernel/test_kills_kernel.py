"""Real kills on this host: 5 cgroups, 50 kills in quick succession, exactly 50 oom_killed events.

Three cgroups (24 MiB) are covered by a warning rule, two (40 MiB) by none: their kills must
say warned_seconds_before null, the others a positive lead. Also: a neighbour's kill is not
reported, and the start-up sweep writes the kill counters' state file once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pressured import config
from pressured.daemon import Daemon
from pressured.daemon import loop as daemon_loop
from pressured.kills import KillState
from tests.support.cgroups import Child, leaker_argv
from tests.support.daemon import running
from tests.support.events import has_kill, read_events, wait_for_events

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024
KILLS_PER_CGROUP = 10
WINDOW_S = 5  # kills.window_seconds (the default): records of one kill meet within it


def test_fifty_kills_fifty_events(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    warned = [make_cgroup(24 * MiB) for _ in range(3)]
    unwarned = [make_cgroup(40 * MiB) for _ in range(2)]
    events, cfg = tmp_path / "events.jsonl", tmp_path / "cfg.yaml"
    cfg.write_text(
        "rules:\n"
        "  warning: 'memory_max < 30000000 && memory_usage > 40'\n"
        "  critical: '0 > 1'\n"
        "thresholds: {metric: usage}\n"
        f"kills: {{window_seconds: {WINDOW_S}}}\n"
        "metrics: {enabled: false}\n"
    )
    args = ["run", "-c", str(cfg), "--events-out", str(events)]
    for c in warned + unwarned:
        args += ["--cgroup", c.path]
    victims: dict[int, str] = {}
    # the daemon's output is drained while it runs: a full pipe would block it
    with running(args) as daemon:

        def kill_round() -> None:
            # slow in the warned cgroups: the rule is evaluated on the read that the warn level's
            # eventfd wakes (a rule has no notifier of its own), and at 12 MiB/s the leak takes
            # ~0.4 s from there to the limit, a margin no machine's scheduling eats; fast in
            # the others
            procs = [
                (
                    c,
                    c.spawn(
                        leaker_argv("--rate-mib", "12" if c in warned else "64", "--max-mib", "200")
                    ),
                )
                for c in warned + unwarned
            ]
            for c, p in procs:
                assert p.wait(timeout=30) == -9, "each allocator must die of the OOM killer"
                victims[p.pid] = c.path

        for _ in range(KILLS_PER_CGROUP):
            kill_round()
        kills: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            docs = (
                [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []
            )
            kills = [d for d in docs if d["event_type"] == "oom_killed"]
            if len(kills) >= len(victims):
                # anything counted twice would arrive within one merge window
                time.sleep(WINDOW_S + 1)
                docs = [json.loads(x) for x in events.read_text().splitlines()]
                kills = [d for d in docs if d["event_type"] == "oom_killed"]
                break
            time.sleep(0.5)
        assert daemon.stop() == 0, daemon.stderr.text()
    assert len(victims) == 50
    extra = [
        (k["pid"], k["sources"], k["oom_kill_count"]) for k in kills if k["pid"] not in victims
    ]
    assert len(kills) == 50, f"{len(kills)} oom_killed events for 50 kills; extra: {extra}"
    assert sorted(k["pid"] for k in kills) == sorted(victims)  # type: ignore[type-var]
    for k in kills:
        assert k["cgroup"] == victims[k["pid"]]  # type: ignore[index]
        assert "counters" in k["sources"]  # type: ignore[operator]
        assert len(k["sources"]) >= 2, k  # type: ignore[arg-type]
        lead = k["warned_seconds_before"]
        if k["cgroup"] in {c.path for c in warned}:
            assert lead is not None and lead > 0, k  # type: ignore[operator]
        else:
            assert lead is None, k


def test_a_neighbour_kill_is_not_reported(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    """kmsg and the tracepoint see every kill of the machine; with named targets only theirs
    are reported."""
    watched, neighbour = make_cgroup(24 * MiB), make_cgroup(24 * MiB)
    events = tmp_path / "events.jsonl"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"kills: {{window_seconds: {WINDOW_S}}}\n")
    args = ["run", "-c", str(cfg), "--cgroup", watched.path, "--no-metrics"]
    with running([*args, "--events-out", str(events)]) as daemon:
        other = neighbour.spawn(leaker_argv("--rate-mib", "0", "--max-mib", "200"))
        assert other.wait(timeout=30) == -9
        ours = watched.spawn(leaker_argv("--rate-mib", "0", "--max-mib", "200"))
        assert ours.wait(timeout=30) == -9
        docs = wait_for_events(events, has_kill, 15)
        time.sleep(WINDOW_S + 1)  # one merge window: a neighbour's kill would be out by now
        docs = read_events(events)
        assert daemon.stop() == 0, daemon.stderr.text()
    kills = [d for d in docs if d["event_type"] == "oom_killed"]
    assert [(k["pid"], k["cgroup"]) for k in kills] == [(ours.pid, watched.path)]


def test_start_up_saves_the_kill_counters_once(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oom_kill counter of every target found at start is kept in kills.json, written
    (and fsynced) once for all of them rather than once per target."""
    children = [make_cgroup(64 * MiB) for _ in range(3)]
    saved: list[int] = []
    save = KillState.save

    def counted(self: KillState, wall: float | None = None) -> None:
        saved.append(len(self.entries))
        save(self, wall)

    monkeypatch.setattr(KillState, "save", counted)
    # the daemon lowers its own oom_score_adj: in this process the victims of later tests
    # would inherit it
    monkeypatch.setattr(daemon_loop, "protect_self", lambda: "oom_score_adj left alone")
    state_dir = tmp_path / "state"
    cfg = config.load(
        None,
        env={},
        flags={
            "source.cgroup.paths": [c.path for c in children],
            "source.machine": False,
            "state_dir": str(state_dir),
            "metrics.enabled": False,
            "events_out": os.devnull,
            "kills.kmsg.enabled": False,
            "kills.tracepoint.enabled": False,
        },
    )
    daemon = Daemon(cfg)
    try:
        daemon.start()
        assert daemon.ready and len(daemon.targets) == 3
    finally:
        daemon.close()
    assert saved == [3]
    kept = json.loads((state_dir / "kills.json").read_text())["cgroups"]
    assert sorted(entry["key"] for entry in kept.values()) == sorted(daemon.targets.all_keys())
