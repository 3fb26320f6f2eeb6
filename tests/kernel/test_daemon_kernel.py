"""`pressured run` as a subprocess against a real leak in a 256 MiB cgroup on this host."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cgroups import Child, leaker_argv
from tests.support.events import Event, has_kill, kind, wait_for_events

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def recovered(docs: list[Event]) -> bool:
    return any(kind(d) == "recovered" for d in docs)


class DaemonProcess:
    """``pressured run`` as a subprocess; a thread collects its stderr lines."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._eof = False
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._eof = True
            self._new_line.notify_all()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Until a stderr line contains ``text``; fails when the daemon exits or time is up."""
        with self._new_line:
            seen = self._new_line.wait_for(
                lambda: self._eof or any(text in x for x in self.lines),
                timeout,
            )
        assert seen and any(text in x for x in self.lines), f"no {text!r} in:\n{self.log}"

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=20)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


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
    daemon = DaemonProcess(argv)
    try:
        daemon.wait_for_line(f"watching {child.path}:", 30)  # armed before the leak starts
        app = child.spawn(
            leaker_argv("--rate-mib", "16", "--max-mib", "400", "--signals-out", str(signals))
        )
        assert app.wait(timeout=60) == -9, "the leak should end in a real OOM kill"
        docs = wait_for_events(events, lambda d: has_kill(d) and recovered(d), 15)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
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
    argv = [sys.executable, "-m", "pressured", "run", "-c", str(cfg), "--cgroup", child.path]
    daemon = DaemonProcess([*argv, "--events-out", str(events)])
    try:
        daemon.wait_for_line(f"watching {child.path}:", 30)  # armed before the leak starts
        app = child.spawn(leaker_argv("--rate-mib", "12", "--max-mib", "448"))
        status = app.wait(timeout=60)
        docs = wait_for_events(events, lambda d: "critical" in [kind(x) for x in d], 10)
    finally:
        code = daemon.stop()
    log = daemon.log
    assert status == -15, f"the leak should end by SIGTERM, not {status}:\n{log}"
    assert child.oom_kills() == 0, log
    crit = next(d for d in docs if kind(d) == "critical")
    assert crit["rule"] == "rules.critical" and crit["usage_percent"] < 75, crit
    assert "sent SIGTERM to pids" in log and "skipped" not in log, log
    assert code == 0, log
