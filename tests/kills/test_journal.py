"""The kill journal in the state directory: what `pressured diagnose` lists as kills since
boot."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pressured.kills import journal as journal_mod
from pressured.kills.journal import JOURNAL_FILE, KillJournal, boot_id, read_kills
from pressured.model import Identity, OomKill


def kill(pid: int, warned: float | None, *, pod: str | None = "cart-1") -> OomKill:
    return OomKill(
        time=1_700_000_000.0 + pid,
        cgroup="/sys/fs/cgroup/kubepods/pod-a/app",
        pid=pid,
        comm="java",
        oom_kill_count=1,
        sources=("counters", "kmsg"),
        warned_seconds_before=warned,
        identity=Identity(namespace="shop", pod_name=pod, container_name="app"),
    )


def test_this_boots_kills_are_read_back_in_order(tmp_path: Path) -> None:
    KillJournal(str(tmp_path), boot="old-boot").append(kill(1, 3.0))
    j = KillJournal(str(tmp_path), boot="this-boot")
    j.append(kill(2, 7.5))
    j.append(kill(3, None))
    got = read_kills(str(tmp_path), boot="this-boot")
    assert [(k["pid"], k["warned_seconds_before"]) for k in got] == [(2, 7.5), (3, None)]
    assert got[0]["pod_name"] == "cart-1" and got[0]["container_name"] == "app"
    assert got[0]["sources"] == ["counters", "kmsg"] and got[0]["comm"] == "java"
    assert len(read_kills(str(tmp_path), boot="old-boot")) == 1


def test_the_boot_is_the_kernels() -> None:
    real = boot_id()
    assert real is not None and len(real) == 36  # a UUID
    assert boot_id("/nonexistent/boot_id") is None


def test_lines_that_are_not_objects_are_skipped(tmp_path: Path) -> None:
    j = KillJournal(str(tmp_path), boot="b")
    j.append(kill(1, 1.0))
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write("{torn line\n[1, 2]\n")
    j.append(kill(2, 2.0))
    assert [k["pid"] for k in read_kills(str(tmp_path), boot="b")] == [1, 2]
    assert read_kills(str(tmp_path / "elsewhere"), boot="b") == []


def test_bounded_by_keeping_the_newer_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "MAX_BYTES", 2000)
    j = KillJournal(str(tmp_path), boot="b")
    for pid in range(1, 41):
        j.append(kill(pid, 1.0))
    assert os.path.getsize(tmp_path / JOURNAL_FILE) <= 2000 + 400
    pids = [k["pid"] for k in read_kills(str(tmp_path), boot="b")]
    assert pids[-1] == 40 and pids == sorted(pids) and len(pids) < 40
    assert [p.name for p in tmp_path.iterdir()] == [JOURNAL_FILE]  # no temporary left over


def test_a_write_that_fails_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / JOURNAL_FILE).mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, "pressured.kills.journal"):
        KillJournal(str(tmp_path), boot="b").append(kill(1, 1.0))
    assert f"{tmp_path / JOURNAL_FILE}: cannot record a kill" in caplog.text
