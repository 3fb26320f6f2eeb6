"""The daemon's life on this host: new cgroups picked up and removed ones dropped without a
restart, metrics served over HTTP, SIGHUP reloads (a bad config is refused and the old one
kept), SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cgroups import Child, own_memory_cgroup
from tests.support.daemon import PressuredProcess

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


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
    with PressuredProcess(
        ["run", "-c", str(cfg), "--metrics-port", "0", "--events-out", os.devnull],
        log_level="debug",
    ) as daemon:
        port = int(daemon.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
        # /healthz says 503 until the start-up targets are armed, 200 once the daemon is ready
        daemon.wait_ready()
        assert daemon.wait_for_log(r"watching machine")
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (health.status_code, health.text) == (200, "ok")

        child = make_cgroup(64 * MiB)  # mkdir, then the limit: the limit alone sends no event
        daemon.wait_for_log(rf"watching {re.escape(child.path)}:")
        m = scrape(port)
        assert m["pressured_watched_cgroups"][0][1] >= 2  # the machine and the new cgroup
        active = {lab["source"]: v for lab, v in m["pressured_kill_sources_active"]}
        assert active["counters"] == 1.0

        cfg.write_text("thresholds: {warn_percent: 95, critical_percent: 90}\n")  # warn > critical
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"reload refused, keeping the running config")
        cfg.write_text("thresholds: {warn_percent: 60}\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"configuration reloaded")

        child.remove()
        daemon.wait_for_log(rf"stopped watching {re.escape(child.path)}")
        assert daemon.alive()

        # SIGQUIT: every thread's stack on stderr, and the daemon goes on
        mark = daemon.log_mark()
        dump = daemon.dump_stacks()
        assert "Thread 0x" in dump and "pressured/daemon" in dump, dump
        cfg.write_text("thresholds: {warn_percent: 65}\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"configuration reloaded", start=mark)
        assert daemon.stop() == 0
        daemon.wait_for_log(r"stopping on SIGTERM")
