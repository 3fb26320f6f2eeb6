"""The daemon's life on this host: new cgroups picked up and removed ones dropped without a
restart, metrics served over HTTP, SIGHUP reloads (a bad config is refused and the old one
kept), SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cgroups import Child, own_memory_cgroup

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


class Stderr:
    """Collects the daemon's log lines from a thread so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._thread.join(timeout=10)
        if self._proc.stderr is not None:
            self._proc.stderr.close()

    def _pump(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end:
            for line in self.lines[seen:]:
                m = rx.search(line)
                if m:
                    return m
            seen = len(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}; got:\n{''.join(self.lines)}")


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_discovery_metrics_reload_and_stop(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    base, _ = own_memory_cgroup()
    assert base is not None
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("thresholds: {warn_percent: 70}\n")
    # local mode over the whole tree of this host's memory controller, no --cgroup
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pressured",
            "run",
            "-c",
            str(cfg),
            "--metrics-port",
            "0",
            "--events-out",
            os.devnull,
            "-l",
            "debug",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    log = Stderr(daemon)
    try:
        port = int(log.wait_for(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
        log.wait_for(r"watching machine")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        child = make_cgroup(64 * MiB)  # mkdir, then the limit: the limit alone sends no event
        log.wait_for(rf"watching {re.escape(child.path)}:")
        m = scrape(port)
        assert m["pressured_watched_cgroups"][0][1] >= 2  # the machine and the new cgroup
        active = {lab["source"]: v for lab, v in m["pressured_kill_sources_active"]}
        assert active["counters"] == 1.0

        cfg.write_text("thresholds: {warn_percent: 95, critical_percent: 90}\n")  # warn > critical
        daemon.send_signal(signal.SIGHUP)
        log.wait_for(r"reload refused, keeping the running config")
        cfg.write_text("thresholds: {warn_percent: 60}\n")
        daemon.send_signal(signal.SIGHUP)
        log.wait_for(r"configuration reloaded")

        child.remove()
        log.wait_for(rf"stopped watching {re.escape(child.path)}")
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.close()
    assert daemon.returncode == 0
    log.wait_for(r"stopping on SIGTERM")
