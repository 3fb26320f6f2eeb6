"""`pressured run` as a subprocess against a real leak in a 256 MiB cgroup on this host."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cgroups import Child, leaker_argv
from tests.support.events import has_kill, kind, wait_for_events

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


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
    argv = [
        sys.executable,
        "-m",
        "pressured",
        "run",
        "-c",
        str(cfg),
        "--cgroup",
        child.path,
        "--events-out",
        str(events),
    ]
    if dry_run:
        argv.append("--dry-run")
    daemon = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # arm before the leak starts
        assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
        app = child.spawn(
            leaker_argv("--rate-mib", "16", "--max-mib", "400", "--signals-out", str(signals))
        )
        assert app.wait(timeout=60) == -9, "the leak should end in a real OOM kill"
        docs = wait_for_events(events, has_kill, 15)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
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


def test_dry_run_sends_nothing(make_cgroup: Callable[[int | None], Child], tmp_path: Path) -> None:
    docs, got = run_leak(make_cgroup, tmp_path, dry_run=True)
    kinds = [kind(d) for d in docs]
    assert "warn" in kinds and "critical" in kinds
    assert all(d["dry_run"] for d in docs)
    assert got == []
