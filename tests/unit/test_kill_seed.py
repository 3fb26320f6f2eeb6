"""A restarted daemon lists again at /v1/state the kills its kill journal kept, so
`pressured diagnose --cluster` still shows a kill that happened before a rollout or a crash."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pressured import config
from pressured.daemon import Daemon
from pressured.daemon.state import MAX_KILLS, LiveState
from pressured.k8s.cluster_view import recent_kills
from pressured.kills.journal import JOURNAL_FILE, KillJournal, boot_id, read_kills
from pressured.model import Identity, OomKill, RiskFigures

CGROUP = "/sys/fs/cgroup/kubepods/burstable/podU/c1"


def kill(pid: int, at: float, warned: float | None = 4.25) -> OomKill:
    return OomKill(
        time=at,
        cgroup=CGROUP,
        pid=pid,
        comm="java",
        oom_kill_count=pid,
        sources=("counters", "kmsg"),
        warned_seconds_before=warned,
        key=CGROUP,
        identity=Identity(namespace="shop", pod_name="cart-1", container_name="app"),
        extra={"limit_scope": "container", "limit": 64 << 20},
        risk=RiskFigures(60 << 20, 63 << 20, "unreclaimable"),
    )


def daemon_state(state_dir: Path) -> dict[str, Any]:
    """A daemon built on ``state_dir`` (not started: nothing is watched), its /v1/state."""
    cfg = config.load(
        None,
        env={},
        flags={
            "state_dir": str(state_dir),
            "source.machine": False,
            "metrics.enabled": False,
            "events_out": os.devnull,
            "kills.kmsg.enabled": False,
            "kills.tracepoint.enabled": False,
        },
    )
    daemon = Daemon(cfg)
    try:
        status, ctype, body = daemon.live.route({})
    finally:
        daemon.close()
    assert (status, ctype) == ("200 OK", "application/json")
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_a_restarted_daemon_lists_the_journals_kills_within_the_view_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    KillJournal(str(tmp_path), boot="an-earlier-boot").append(kill(101, now - 7200))
    journal = KillJournal(str(tmp_path))
    journal.append(kill(102, now - 300, warned=None))
    with open(tmp_path / JOURNAL_FILE, "a", encoding="utf-8") as f:
        f.write('{"torn": \n')  # a crash mid-write
        f.write(json.dumps({"boot_id": boot_id(), "time": "yesterday", "pid": 7}) + "\n")
    journal.append(kill(103, now - 60))

    with caplog.at_level(logging.INFO, "pressured.daemon"):
        doc = daemon_state(tmp_path)
    assert [k["pid"] for k in doc["kills"]] == [101, 102, 103]
    assert f"{tmp_path / JOURNAL_FILE}: 1 kill(s) without a readable time skipped" in caplog.text
    assert f"{tmp_path / JOURNAL_FILE}: 3 earlier kill(s) listed at /v1/state" in caplog.text
    last = doc["kills"][-1]
    assert last == {
        "time": kill(103, now - 60).to_json()["time"],
        "event_type": "oom_killed",
        "severity": "oom_killed",
        "key": CGROUP,
        "cgroup": CGROUP,
        "namespace": "shop",
        "pod": "cart-1",
        "container": "app",
        "pid": 103,
        "victim": "java",
        "warned_seconds_before": 4.25,
        "limit_scope": "container",
        "unreclaimable_bytes": 60 << 20,
        "working_set_bytes": 63 << 20,
        "decided_by": "unreclaimable",
    }
    assert doc["kills"][1]["warned_seconds_before"] is None
    assert doc["events"] == [], "only the kills are listed again"

    # diagnose --cluster --since 10m: the two recent kills, not the one of two hours ago
    shown = recent_kills(doc, "node-a", since=600, now=now)
    assert [(k["node"], k["pid"]) for k in shown] == [("node-a", 102), ("node-a", 103)]
    assert [round(k["age_seconds"]) for k in shown] == [300, 60]
    assert [k["pid"] for k in recent_kills(doc, "node-a", since=3 * 3600, now=now)] == [
        101,
        102,
        103,
    ]


def test_a_listed_again_kill_is_the_row_the_live_kill_was(tmp_path: Path) -> None:
    at = time.time() - 5
    live = LiveState("node-a")
    live.event(kill(55, at))
    KillJournal(str(tmp_path)).append(kill(55, at))
    assert daemon_state(tmp_path)["kills"] == live.snapshot()["kills"]


def test_the_newest_kills_are_kept_and_new_ones_come_after(tmp_path: Path) -> None:
    now = time.time()
    journal = KillJournal(str(tmp_path))
    for pid in range(1, MAX_KILLS + 11):
        journal.append(kill(pid, now - 1000 + pid))
    live = LiveState("node-a")
    assert live.seed_kills(read_kills(str(tmp_path))) == MAX_KILLS
    live.event(kill(999, now))
    pids = [k["pid"] for k in live.snapshot()["kills"]]
    assert len(pids) == MAX_KILLS and pids[-1] == 999
    assert pids[:-1] == list(range(12, MAX_KILLS + 11))


def test_a_journal_that_cannot_be_read_leaves_the_daemon_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / JOURNAL_FILE).mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, "pressured.daemon"):
        doc = daemon_state(tmp_path)
    assert doc["kills"] == []
    assert f"{tmp_path / JOURNAL_FILE}: cannot list the earlier kills" in caplog.text


def test_fields_of_the_wrong_type_are_listed_as_unknown() -> None:
    live = LiveState(None)
    bad = {"time": "2026-11-21T05:22:14.123Z", "pid": "12", "comm": 5, "pod_name": ["x"]}
    assert live.seed_kills([bad, {"time": 5}], where="kills.jsonl") == 1
    (row,) = live.snapshot()["kills"]
    assert row["pid"] is None and row["victim"] is None and row["pod"] is None
    assert row["warned_seconds_before"] is None and row["time"] == bad["time"]
