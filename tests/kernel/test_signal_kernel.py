"""The signal action and processes that change cgroup: real v1 (or v2) child cgroups here.

A process read in one cgroup (the event's target) and moved to another with cgroup.procs before
the action runs is not signalled, and the log says why: with its process held since the event
was emitted (the cgroup recorded then differs from /proc/PID/cgroup now), and without (the
target's cgroup.procs no longer lists it).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.signal import SignalAction
from pressured.kernel import procfs
from pressured.kernel.cgroupfs import read_procs
from pressured.kernel.pidfd import open_processes
from tests.support.catcher import CATCHER, Catcher
from tests.support.cgroups import Child
from tests.unit.actions.conftest import pressure

pytestmark = [pytest.mark.kernel, pytest.mark.hostile]


def catcher_in(child: Child, record: Path) -> Catcher:
    proc = child.spawn(
        [sys.executable, "-c", CATCHER, str(record)], stdout=subprocess.PIPE, text=True
    )
    catcher = Catcher(proc, record)
    catcher.wait_ready()
    return catcher


def move(pid: int, to: Child) -> None:
    with open(f"{to.path}/cgroup.procs", "w") as f:
        f.write(str(pid))


def test_a_held_process_that_moved_to_another_cgroup_is_not_signalled(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target, elsewhere = make_cgroup(None), make_cgroup(None)
    app = catcher_in(target, tmp_path / "signals")
    pids = read_procs(target.path)
    assert pids == [app.pid]
    # as the daemon's emit holds them: opened, then still listed in the target
    held = open_processes(pids, members=lambda: read_procs(target.path))
    assert held.pids == [app.pid]
    event = replace(pressure("warn", pids=pids), cgroup=target.path, processes=held)
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(event)
    assert app.settle() == ["SIGUSR1"]
    was = procfs.memory_cgroup(app.pid)
    move(app.pid, elsewhere)
    now = procfs.memory_cgroup(app.pid)
    assert now != was
    with caplog.at_level(logging.INFO, logger="pressured.actions.signal"):
        action.run(event)
    assert app.settle() == ["SIGUSR1"]  # nothing more
    assert f"signal: pid {app.pid} left {was} (it is in {now} now): SIGUSR1 not sent" in (
        caplog.text
    )
    held.close()


def test_an_event_without_held_processes_signals_only_what_its_cgroup_still_lists(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target, elsewhere = make_cgroup(None), make_cgroup(None)
    app = catcher_in(target, tmp_path / "signals")
    event = replace(pressure("warn", pids=[app.pid]), cgroup=target.path)
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(event)  # opened at run time, listed in the target: signalled
    assert app.settle() == ["SIGUSR1"]
    move(app.pid, elsewhere)
    with caplog.at_level(logging.INFO, logger="pressured.actions.signal"):
        action.run(event)
    assert app.settle() == ["SIGUSR1"]
    assert (
        f"signal: pids [{app.pid}] are no longer in {target.path} (exited or moved), skipped"
        in caplog.text
    )
