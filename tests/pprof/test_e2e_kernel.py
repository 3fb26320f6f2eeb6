"""End to end on this host: a real Go program with net/http/pprof leaks in a limited cgroup;
`pressured run` warns, captures its heap into storage, finds the leaking function on top, and
confirms the kernel's kill.

The warn's log line is written when the warn is made, without waiting for the dump (log is an
immediate action, heapdump a slow one): the dump's result is the JSON stored beside it and
heapdump's own line in the daemon's log."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pressured.demo.child import Child, own_memory_cgroup
from tests.pprof.conftest import LEAK_FUNCTION
from tests.support.daemon import running
from tests.support.events import has_kill, wait_for_events

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_go_leak_warned_dumped_analysed_and_kill_confirmed(leaky_bin: Path, tmp_path: Path) -> None:
    base, why = own_memory_cgroup()
    if base is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    child = Child(f"pressured-e2e-go-{time.monotonic_ns()}", 160 * MiB)
    port = free_port()
    storage, events, cfg = tmp_path / "store", tmp_path / "events.jsonl", tmp_path / "cfg.yaml"
    cfg.write_text(
        "thresholds: {warn_percent: 45, critical_percent: 95, metric: usage}\n"
        "actions:\n"
        "  - {type: log}\n"
        f"  - {{type: heapdump, port: {port}, severities: [warn]}}\n"
        f"storage: {{type: local, path: {storage}}}\n"
        "metrics: {enabled: false}\n"
    )
    try:
        with running(
            ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
        ) as daemon:
            go = child.spawn(
                [str(leaky_bin), "-port", str(port), "-rate", "12", "-cap", "4000"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert go.wait(timeout=120) == -9, "the Go program should end in a real OOM kill"
            docs = wait_for_events(events, has_kill, 20)
            stored = daemon.wait_for_log(r"heapdump: stored (\S+) \(\d+ bytes\).*; top: (.*)", 30)
            assert daemon.stop() == 0, daemon.stderr.text()
    finally:
        child.remove()
    key, top = stored[1], stored[2]
    assert top.startswith(LEAK_FUNCTION), top
    assert key.startswith(f"heaps/local/{Path(child.path).name}/") and key.endswith(".pb.gz")
    assert (storage / key).stat().st_size > 0
    beside = json.loads((storage / key.replace(".pb.gz", ".json")).read_text())
    assert beside["severity"] == "warn"
    assert beside["pprof_top"][0]["function"] == LEAK_FUNCTION, beside.get("pprof_top")
    assert beside["heapdump"]["key"] == key
    kill = next(d for d in docs if d["event_type"] == "oom_killed")
    assert kill["pid"] == go.pid and "counters" in kill["sources"]
    assert kill["warned_seconds_before"] > 0
