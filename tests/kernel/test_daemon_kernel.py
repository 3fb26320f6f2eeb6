"""`pressured run` as a subprocess against a real leak in a 256 MiB cgroup on this host."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pressured.kills.readers.kmsg import KmsgReader
from tests.support.cgroups import Child, leaker_argv
from tests.support.daemon import STOPPED_UNTIL_CONT, PressuredProcess, running, wait_stopped
from tests.support.events import Event, has_kill, kind, wait_for_events

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def recovered(docs: list[Event]) -> bool:
    return any(kind(d) == "recovered" for d in docs)


def run_leak(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, *, dry_run: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    child = make_cgroup(256 * MiB)
    events, signals, cfg = (
        tmp_path / "events.jsonl",
        tmp_path / "signals.txt",
        tmp_path / "cfg.yaml",
    )
    cfg.write_text(
        "thresholds: {warn_percent: 60, critical_percent: 80, metric: usage}\n"
        "actions:\n  - {type: log}\n  - {type: signal, warn: SIGUSR1, critical: SIGUSR2}\n"
        "metrics: {enabled: false}\n"
    )
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    if dry_run:
        args.append("--dry-run")
    with running(args) as daemon:
        app = child.spawn(
            leaker_argv("--rate-mib", "16", "--max-mib", "400", "--signals-out", str(signals))
        )
        assert app.wait(timeout=60) == -9, "the leak should end in a real OOM kill"
        docs = wait_for_events(events, lambda d: has_kill(d) and recovered(d), 15)
        assert daemon.stop() == 0, daemon.stderr.text()
    got = signals.read_text().split()[::2] if signals.exists() else []
    return docs, got


def test_warn_and_critical_precede_the_kill_and_signals_arrive(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    docs, got = run_leak(make_cgroup, tmp_path, dry_run=False)
    kinds = [kind(d) for d in docs]
    assert "warn" in kinds and "critical" in kinds and "oom_killed" in kinds, kinds
    assert kinds.index("warn") < kinds.index("critical") < kinds.index("oom_killed")
    warn = docs[kinds.index("warn")]
    assert warn["usage_percent"] >= 60 and warn["limit_bytes"] == 256 * MiB
    assert warn["eta_seconds"] is None or warn["eta_seconds"] > 0
    assert got[:2] == ["SIGUSR1", "SIGUSR2"], got
    kill = docs[kinds.index("oom_killed")]
    assert kill["pid"] is not None and "counters" in kill["sources"]
    assert kill["warned_seconds_before"] > 0
    # After the kill, while the victim's memory is freed: neither its growth nor its pid.
    after = [d for d in docs if d["event_type"] == "memory_pressure" and d["time"] > kill["time"]]
    assert recovered(after), kinds
    for d in after:
        assert kill["pid"] not in d["pids"], d
        assert d["growth_bytes_per_s"] is None or d["growth_bytes_per_s"] <= 0, d
        assert d["eta_seconds"] is None, d


def test_dry_run_sends_nothing(make_cgroup: Callable[[int | None], Child], tmp_path: Path) -> None:
    docs, got = run_leak(make_cgroup, tmp_path, dry_run=True)
    kinds = [kind(d) for d in docs]
    assert "warn" in kinds and "critical" in kinds
    assert all(d["dry_run"] for d in docs)
    assert got == []


def test_rule_based_critical_terminates_the_leak_before_the_kernel_does(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    """A critical decided by a rule far below critical_percent: the re-check before the
    destructive SIGTERM asks the same rule, so the signal is sent, not skipped."""
    child = make_cgroup(224 * MiB)
    events, cfg = tmp_path / "events.jsonl", tmp_path / "cfg.yaml"
    cfg.write_text(
        "rules: {critical: 'memory_usage > 30 && growth_bytes_per_s > 3000000'}\n"
        "actions:\n  - {type: log}\n  - {type: signal, warn: false, critical: SIGTERM}\n"
        "metrics: {enabled: false}\n"
    )
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    with running(args) as daemon:
        app = child.spawn(leaker_argv("--rate-mib", "12", "--max-mib", "448"))
        status = app.wait(timeout=60)
        docs = wait_for_events(events, lambda d: "critical" in [kind(x) for x in d], 10)
        code = daemon.stop()
        log = daemon.stderr.text()
    assert status == -15, f"the leak should end by SIGTERM, not {status}:\n{log}"
    assert child.oom_kills() == 0, log
    crit = next(d for d in docs if kind(d) == "critical")
    assert crit["rule"] == "rules.critical" and crit["usage_percent"] < 75, crit
    assert "sent SIGTERM to pids" in log and "skipped" not in log, log
    assert code == 0, log


def test_a_kill_while_the_daemon_starts_is_reported(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    """The daemon's process exists, a kill happens before it has armed anything (here: before
    it has even run), and the kill is still reported once it is up: kmsg is read back from
    the daemon's own start."""
    child = make_cgroup(32 * MiB)
    events = tmp_path / "events.jsonl"
    args = ["run", "--cgroup", child.path, "--no-metrics", "--events-out", str(events)]
    with PressuredProcess(args, wrapper=STOPPED_UNTIL_CONT) as daemon:
        wait_stopped(daemon.proc.pid)
        victim = kill_with_full_report(child)
        daemon.proc.send_signal(signal.SIGCONT)
        daemon.wait_ready()
        docs = wait_for_events(events, has_kill, 30)
        kills = [d for d in docs if d["event_type"] == "oom_killed"]
        assert [(k["pid"], k["cgroup"]) for k in kills] == [(victim, child.path)], (
            daemon.stderr.text()
        )
        assert "kmsg" in kills[0]["sources"]
        assert kills[0]["warned_seconds_before"] is None
        assert daemon.stop() == 0


OOM_REPORT_RATELIMIT_S = 5  # the kernel prints at most 10 full OOM reports per 5 s (oom_rs)


def kill_with_full_report(child: Child) -> int:
    """A real OOM kill in ``child`` whose kernel report names the cgroup; the pid.

    The lines that name the cgroup ("oom-kill:... task_memcg=") are rate-limited by the
    kernel; after a burst of kills elsewhere only "Killed process" (a pid) is printed, and a
    pid alone cannot name the cgroup of a process that is gone. So the test makes sure of its
    premise: it reads the report back and, if the kernel cut it short, waits out the limit.
    """
    for _ in range(3):
        victim = child.spawn(leaker_argv("--rate-mib", "0", "--max-mib", "200"))
        assert victim.wait(timeout=30) == -9
        reader = KmsgReader(replay=True)
        try:
            records = reader.read()
        finally:
            reader.close()
        name = os.path.basename(child.path)
        if any(r.pid == victim.pid and r.cgroup and r.cgroup.endswith(name) for r in records):
            return victim.pid
        time.sleep(OOM_REPORT_RATELIMIT_S)
    raise AssertionError("the kernel's OOM reports stayed rate-limited over three kills")
