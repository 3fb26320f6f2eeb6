"""Process handles (kernel.pidfd) on real processes: held, released, filtered, budgeted; and
an event's ``processes``, which never reaches its JSON."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest

from pressured.errors import CgroupFileError
from pressured.kernel import pidfd, procfs
from pressured.kernel.pidfd import open_process, open_processes
from tests.unit.actions.conftest import pressure

pytestmark = pytest.mark.hostile


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def test_a_handle_records_the_process_as_it_was_read(sleeper: subprocess.Popen[bytes]) -> None:
    h = open_process(sleeper.pid)
    assert h is not None and h.pidfd is not None
    assert h.cgroup == procfs.memory_cgroup(sleeper.pid)
    assert h.start_ticks == procfs.process_start_ticks(sleeper.pid)
    assert h.refusal() is None and h.alive()
    sleeper.kill()
    sleeper.wait()
    assert not h.alive()
    assert h.refusal() == "is gone"
    with pytest.raises(ProcessLookupError):
        h.send(0)
    h.close()
    assert open_process(sleeper.pid) is None  # reaped: nothing to hold


def test_pidfds_are_closed_by_close_or_when_dropped(sleeper: subprocess.Popen[bytes]) -> None:
    before = pidfd.held_pidfds()
    held = open_processes([sleeper.pid, sleeper.pid])
    fds = [h.pidfd for h in held]
    assert pidfd.held_pidfds() == before + 2
    held.close()
    held.close()  # twice is fine
    assert pidfd.held_pidfds() == before
    assert all(fd is not None and closed(fd) for fd in fds)
    with pytest.raises(ValueError, match="closed"):
        next(iter(held)).send(0)
    h = open_process(sleeper.pid)
    assert h is not None and h.pidfd is not None
    fd = h.pidfd
    del h
    gc.collect()
    assert closed(fd) and pidfd.held_pidfds() == before


def test_members_keep_only_what_the_cgroup_still_lists(sleeper: subprocess.Popen[bytes]) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        before = pidfd.held_pidfds()
        held = open_processes([sleeper.pid, other.pid], members=lambda: [other.pid])
        assert held.pids == [other.pid]
        assert pidfd.held_pidfds() == before + 1  # the one left out is closed
        held.close()

        def gone() -> list[int]:
            raise CgroupFileError("/sys/fs/cgroup/x/cgroup.procs", "missing")

        with pytest.raises(CgroupFileError):
            open_processes([sleeper.pid, other.pid], members=gone)
        assert pidfd.held_pidfds() == before
    finally:
        other.kill()
        other.wait()


def test_past_the_budget_processes_are_held_by_start_time(
    sleeper: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pidfd, "MAX_PIDFDS", pidfd.held_pidfds())
    monkeypatch.setattr(pidfd, "_said", set())
    with caplog.at_level(logging.WARNING, logger="pressured.kernel.pidfd"):
        first = open_process(sleeper.pid)
        second = open_process(sleeper.pid)
    assert first is not None and first.pidfd is None and first.refusal() is None
    assert second is not None and second.pidfd is None
    assert caplog.text.count("pidfds held by events still waiting") == 1


def test_the_events_processes_are_not_part_of_its_json(sleeper: subprocess.Popen[bytes]) -> None:
    event = pressure("warn", pids=[sleeper.pid])
    with open_processes([sleeper.pid]) as held:
        holding = replace(event, processes=held)
        assert json.dumps(holding.to_json()) == json.dumps(event.to_json())
        assert holding == event
        assert "processes" not in repr(holding)
        assert replace(holding, key="k").processes is held  # the daemon's replace keeps them
