"""The OOM-risk metric on real workloads in real v1 memory cgroups of this host, watched by
`pressured run` with its defaults (metric unreclaimable): page cache alone and a page-cache
thrash are not warned (the thrash is reported as pressure), anonymous, shmem, mixed and kernel
memory growth are warned before the kernel kills, and every kill was warned first."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cgroups import Child
from tests.support.daemon import running
from tests.support.events import has_kill, read_events, wait_for_events
from tests.support.oom_risk import LEAK_MIB_PER_S, LIMIT, SCENARIOS, kills
from tests.support.oom_risk_checks import run
from tests.support.workloads import argv

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_oom_risk_workload(
    name: str, make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    # tmp_path is on this host's disk (ext4): its page cache is real and refaults
    run(name, make_cgroup, tmp_path, str(tmp_path))


def test_diagnose_lists_the_kill_the_daemon_confirmed(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    child = make_cgroup(LIMIT)
    state = tmp_path / "state"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"metrics: {{enabled: false}}\nstate_dir: {state}\n")
    events = tmp_path / "events.jsonl"
    args = ["run", "-c", str(cfg), "--cgroup", child.path, "--events-out", str(events)]
    with running(args) as daemon:
        app = child.spawn(argv("anon_leak", LEAK_MIB_PER_S))
        assert app.wait(timeout=120) == -9, "the leak should end in a real OOM kill"
        wait_for_events(events, has_kill, 30)
        assert daemon.stop() == 0, daemon.stderr.text()
    (kill,) = kills(read_events(events))
    # the cgroup is still there (empty): its row lists the kill, with its warning's lead
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pressured",
            "diagnose",
            "-c",
            str(cfg),
            "--cgroup",
            child.path,
            "--json",
            "--interval",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(out.stdout)
    (seen,) = row["kills_since_boot"]
    assert seen["pid"] == kill["pid"] and seen["warned_seconds_before"] > 0
    assert seen["limit_scope"] == kill["limit_scope"] is not None
    assert row["decided_by"] == "unreclaimable"
    assert row["unreclaimable_bytes"] < row["limit_bytes"] // 2  # the victim's memory is gone
