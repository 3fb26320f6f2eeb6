"""The signal action against real child processes that record what they receive.

Which processes get a signal is checked on fake /proc trees too (namespace inits, start
times). The stubs: os.kill raising EPERM/ESRCH in ``test_kill_failures_are_collected_not_fatal``
(the real EPERM case needs a second uid and runs only as root), and os.pidfd_open raising ENOSYS
as a kernel before 5.3 does, in ``test_without_pidfds_a_reused_pid_is_told_by_its_start_time``.

Events carry their processes held as the daemon's emit holds them (``held``). A pid taken by
another process after the event is simulated with real processes: A is held, exits and is
reaped, B starts, and the event names B's number. The guard against a process that moved to
another cgroup needs real cgroups: tests/kernel/test_signal_kernel.py.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.signal import SignalAction, is_namespace_init
from pressured.errors import ActionError, ConfigError
from pressured.kernel import pidfd
from pressured.kernel.pidfd import ProcessHandle, ProcessHandles, open_processes
from pressured.kernel.procfs import process_start_ticks
from tests.support.catcher import CATCHER, Catcher
from tests.unit.actions.conftest import CGROUP, fake_proc, held, oom_kill, pressure


@dataclass
class Catchers:
    tmp_path: Path
    started: list[Catcher] = field(default_factory=list)

    def spawn(self) -> Catcher:
        record = self.tmp_path / f"signals-{len(self.started)}"
        proc = subprocess.Popen(
            [sys.executable, "-c", CATCHER, str(record)], stdout=subprocess.PIPE, text=True
        )
        catcher = Catcher(proc, record)
        self.started.append(catcher)
        catcher.wait_ready()
        return catcher


@pytest.fixture
def catchers(tmp_path: Path) -> Iterator[Catchers]:
    made = Catchers(tmp_path)
    yield made
    for c in made.started:
        c.stop()


@pytest.fixture
def own_signals() -> Iterator[list[int]]:
    """Record SIGUSR1/SIGUSR2 sent to the test process itself instead of dying of them."""
    got: list[int] = []
    old = {
        s: signal.signal(s, lambda n, _f: got.append(n)) for s in (signal.SIGUSR1, signal.SIGUSR2)
    }
    yield got
    for s, handler in old.items():
        signal.signal(s, handler)


def test_signal_defaults_usr1_for_warn_usr2_for_critical_to_every_process(
    catchers: Catchers,
) -> None:
    a, b = catchers.spawn(), catchers.spawn()
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(held(pressure("warn", pids=[a.pid, b.pid])))
    action.run(held(pressure("critical", pids=[a.pid, b.pid])))
    assert a.settle() == ["SIGUSR1", "SIGUSR2"]
    assert b.settle() == ["SIGUSR1", "SIGUSR2"]


def test_signal_recovered_and_kills_send_nothing_by_default(catchers: Catchers) -> None:
    a = catchers.spawn()
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(held(pressure("recovered", pids=[a.pid])))
    action.run(oom_kill())
    assert a.settle() == []


def test_signal_configured_per_severity(catchers: Catchers) -> None:
    a = catchers.spawn()
    action = SignalAction(
        {"warn": False, "critical": "HUP", "recovered": "SIGUSR2"}, ActionContext(), "actions[0]"
    )
    action.run(held(pressure("warn", pids=[a.pid])))
    action.run(held(pressure("critical", pids=[a.pid])))
    action.run(held(pressure("recovered", pids=[a.pid])))
    assert a.settle() == ["SIGHUP", "SIGUSR2"]


def test_signal_oldest_only(catchers: Catchers) -> None:
    older = catchers.spawn()
    younger = catchers.spawn()  # spawned after the first said "ready": a later start tick
    older_ticks, younger_ticks = process_start_ticks(older.pid), process_start_ticks(younger.pid)
    assert older_ticks is not None and younger_ticks is not None and older_ticks < younger_ticks
    action = SignalAction({"processes": "oldest"}, ActionContext(), "actions[0]")
    action.run(held(pressure("warn", pids=[younger.pid, older.pid])))
    assert older.settle() == ["SIGUSR1"]
    assert younger.settle() == []


def test_signal_never_sends_to_itself(catchers: Catchers, own_signals: list[int]) -> None:
    a = catchers.spawn()
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(held(pressure("warn", pids=[os.getpid(), a.pid])))
    assert a.settle() == ["SIGUSR1"]
    assert own_signals == []
    # nor to pid 0 or -1, which kill() reads as "my process group" and "everyone"
    assert action.choose([0, -1, os.getpid(), a.pid], "/proc") == [a.pid]


def test_signal_dry_run_sends_nothing(catchers: Catchers, caplog: pytest.LogCaptureFixture) -> None:
    a = catchers.spawn()
    action = SignalAction({}, ActionContext(dry_run=True), "actions[0]")
    with caplog.at_level(logging.INFO, logger="pressured.actions.signal"):
        action.run(held(pressure("critical", pids=[a.pid])))
    assert a.settle() == []
    assert f"dry-run: would send SIGUSR2 to pids [{a.pid}] of {CGROUP}" in caplog.text


def test_signal_skips_a_process_that_exited(catchers: Catchers) -> None:
    a, gone = catchers.spawn(), catchers.spawn()
    gone.proc.kill()
    gone.proc.wait()  # reaped: its pid has no /proc entry now
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(held(pressure("warn", pids=[gone.pid, a.pid])))  # no error for the missing one
    assert a.settle() == ["SIGUSR1"]


def test_a_pid_taken_by_another_process_after_emit_is_not_signalled(
    catchers: Catchers, caplog: pytest.LogCaptureFixture
) -> None:
    a = catchers.spawn()
    event = held(pressure("warn", pids=[a.pid]))  # read at emit: A
    a.stop()  # A exits and is reaped...
    b = catchers.spawn()  # ...and B, not in the event, starts
    # the event's pid list names B, as it would if B had been given A's number: the action
    # goes by the held process, never by the number
    event = replace(event, extra={**event.extra, "pids": [b.pid]})
    action = SignalAction({}, ActionContext(), "actions[0]")
    with caplog.at_level(logging.INFO, logger="pressured.actions.signal"):
        action.run(event)
    assert b.settle() == []
    assert f"signal: pid {a.pid} is gone: SIGUSR1 not sent" in caplog.text


def test_the_pidfd_of_an_exited_process_reaches_nobody_whoever_has_its_number(
    catchers: Catchers, caplog: pytest.LogCaptureFixture
) -> None:
    a = catchers.spawn()
    (held_a,) = open_processes([a.pid])
    assert held_a.pidfd is not None, "this kernel has pidfd_open (Linux 5.3)"
    a.stop()
    b = catchers.spawn()
    # A's number given to B: the handle a reused pid would leave, B's number with A's pidfd
    reused = ProcessHandle(
        b.pid,
        os.dup(held_a.pidfd),
        cgroup=held_a.cgroup,  # the same cgroup as B's: only the pidfd tells them apart
        start_ticks=held_a.start_ticks,
    )
    held_a.close()
    with pytest.raises(ProcessLookupError):
        reused.send(signal.SIGUSR1)
    event = replace(pressure("warn", pids=[b.pid]), processes=ProcessHandles([reused]))
    action = SignalAction({}, ActionContext(), "actions[0]")
    with caplog.at_level(logging.INFO, logger="pressured.actions.signal"):
        action.run(event)  # ESRCH: "gone", not an error
    assert b.settle() == []
    assert f"signal: pid {b.pid} of {CGROUP} is gone: SIGUSR1 not sent" in caplog.text
    assert not [r for r in caplog.records if r.levelno > logging.INFO]


@pytest.fixture
def no_pidfd_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 5.3: pidfd_open fails with ENOSYS (the module relearns it per test)."""

    def enosys(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", enosys)
    monkeypatch.setattr(pidfd, "_unavailable", None)
    monkeypatch.setattr(pidfd, "_said", set())


def test_without_pidfds_a_reused_pid_is_told_by_its_start_time(
    catchers: Catchers, no_pidfd_open: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        a = catchers.spawn()
        (held_a,) = open_processes([a.pid])
        assert held_a.pidfd is None
        a.stop()
        b = catchers.spawn()  # started after A said "ready": a later start tick
        # A's number given to B: the handle a reused pid would leave, B's number, A's start
        reused = ProcessHandle(b.pid, None, cgroup=held_a.cgroup, start_ticks=held_a.start_ticks)
        action = SignalAction({}, ActionContext(), "actions[0]")
        action.run(replace(pressure("warn", pids=[b.pid]), processes=ProcessHandles([reused])))
        assert b.settle() == []
        assert f"signal: pid {b.pid} is gone: the pid now names another process" in caplog.text
        action.run(held(pressure("critical", pids=[b.pid])))  # B itself, held by its start
        assert b.settle() == ["SIGUSR2"]
    said = [r.getMessage() for r in caplog.records if "no pidfds" in r.getMessage()]
    assert said == [
        "no pidfds (ENOSYS from pidfd_open: Linux before 5.3): signals go to pid numbers, "
        "each checked against the start time its process had when it was read"
    ]


def test_an_event_without_held_processes_sends_nothing_where_its_cgroup_cannot_be_read(
    catchers: Catchers, caplog: pytest.LogCaptureFixture
) -> None:
    # not emitted by the daemon: the pids are opened at run time and must then be listed in
    # the target's cgroup.procs (tests/kernel/test_signal_kernel.py has real ones); this
    # event's cgroup does not exist
    a = catchers.spawn()
    action = SignalAction({}, ActionContext(), "actions[0]")
    with caplog.at_level(logging.INFO, logger="pressured.actions.signal"):
        action.run(pressure("warn", pids=[a.pid]))
    assert a.settle() == []
    assert (
        f"signal: cannot tell which processes are in {CGROUP} (missing): SIGUSR1 not sent"
        in caplog.text
    )


def test_is_namespace_init_on_a_fake_proc_tree(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 4242, "4242\t1")  # a container's init seen from the host
    fake_proc(proc, 4243, "4243\t7")  # another process of that container
    fake_proc(proc, 1, "1")  # the host's own init
    fake_proc(proc, 17, "17")  # a host process
    fake_proc(proc, 18, None)  # a kernel without NSpid (before 4.1)
    assert is_namespace_init(4242, str(proc))
    assert not is_namespace_init(4243, str(proc))
    assert is_namespace_init(1, str(proc))
    assert not is_namespace_init(17, str(proc))
    assert not is_namespace_init(18, str(proc))
    assert not is_namespace_init(99, str(proc))  # no such process


def test_choose_skips_namespace_init_and_gone_pids_and_picks_the_oldest(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 10, "10\t1", start_ticks=5)  # the pod's init: oldest, never chosen
    fake_proc(proc, 11, "11\t2", start_ticks=300)
    fake_proc(proc, 13, "13\t3", start_ticks=200)
    # 12 has no /proc entry
    every = SignalAction({}, ActionContext(), "actions[0]")
    assert every.choose([10, 11, 12, 13], str(proc)) == [11, 13]
    oldest = SignalAction({"processes": "oldest"}, ActionContext(), "actions[0]")
    assert oldest.choose([10, 11, 12, 13], str(proc)) == [13]
    assert oldest.choose([10, 12], str(proc)) == []


def test_signal_looks_pids_up_under_the_contexts_proc_root(
    tmp_path: Path, catchers: Catchers
) -> None:
    # Here the real child's pid appears in a fake tree as a namespace init (NSpid ends in 1),
    # so it must be left alone; under the real /proc it is a normal process.
    a = catchers.spawn()
    proc = tmp_path / "proc"
    fake_proc(proc, a.pid, f"{a.pid}\t1")
    action = SignalAction({}, ActionContext(proc_root=str(proc)), "actions[0]")
    action.run(held(pressure("warn", pids=[a.pid])))
    assert a.settle() == []
    action = SignalAction({}, ActionContext(), "actions[0]")
    action.run(held(pressure("warn", pids=[a.pid])))
    assert a.settle() == ["SIGUSR1"]


def test_kill_failures_are_collected_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proc = tmp_path / "proc"
    for pid in (21, 22, 23):
        fake_proc(proc, pid, str(pid))
        (proc / str(pid) / "cgroup").write_text("0::/kubepods/pod-a/app\n")
    sent: list[tuple[int, int]] = []

    def kill_stub(pid: int, sig: int) -> None:
        """Stub at the edge: the kernel's EPERM/ESRCH for pids that exist only on paper."""
        if pid == 21:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        if pid == 22:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        sent.append((pid, sig))

    monkeypatch.setattr(os, "kill", kill_stub)
    action = SignalAction({}, ActionContext(proc_root=str(proc)), "actions[0]")
    with (
        caplog.at_level(logging.INFO, logger="pressured.actions.signal"),
        pytest.raises(ActionError) as info,
    ):
        action.run(held(pressure("warn", pids=[21, 22, 23]), str(proc)))
    assert str(info.value) == f"signal SIGUSR1 failed in {CGROUP}: pid 21: EPERM"
    assert sent == [(23, signal.SIGUSR1)]  # the failure did not stop the others
    assert f"sent SIGUSR1 to pids [23] of {CGROUP}" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to a second uid")
def test_real_eperm_from_another_uid(catchers: Catchers) -> None:
    target = catchers.spawn()  # owned by root
    script = textwrap.dedent(
        f"""
        import os
        from pressured.actions.base import ActionContext
        from pressured.actions.signal import SignalAction
        from pressured.errors import ActionError
        from dataclasses import replace
        from pressured.kernel.pidfd import open_processes
        from tests.unit.actions.conftest import pressure
        action = SignalAction({{}}, ActionContext(), "actions[0]")
        event = replace(
            pressure("warn", pids=[{target.pid}]), processes=open_processes([{target.pid}])
        )
        # the interpreter's stdlib lives under /root: load what run() needs before dropping
        assert action.choose([{target.pid}], "/proc") == [{target.pid}]
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            action.run(event)
        except ActionError as exc:
            print("ActionError:", exc)
        else:
            print("no error")
        """
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == f"ActionError: signal SIGUSR1 failed in {CGROUP}: pid {target.pid}: EPERM"
    )
    assert target.settle() == []


def test_signal_is_destructive_only_with_a_terminating_signal() -> None:
    assert not SignalAction({}, ActionContext(), "a").destructive
    assert SignalAction({"critical": "SIGTERM"}, ActionContext(), "a").destructive
    assert SignalAction({"warn": 9}, ActionContext(), "a").destructive


def test_signal_config_errors() -> None:
    ctx = ActionContext()
    with pytest.raises(ConfigError, match=r"^actions\[1\]\.warn: not a signal name: 'SIGFOO'"):
        SignalAction({"warn": "SIGFOO"}, ctx, "actions[1]")
    with pytest.raises(ConfigError, match=r"^actions\[1\]\.critical: no such signal number: 999"):
        SignalAction({"critical": 999}, ctx, "actions[1]")
    with pytest.raises(
        ConfigError, match=r"^actions\[1\]\.processes: must be 'all' or 'oldest', got 'youngest'"
    ):
        SignalAction({"processes": "youngest"}, ctx, "actions[1]")
    with pytest.raises(ConfigError, match=r"^actions\[1\]\.processes: expected str, got 1$"):
        SignalAction({"processes": 1}, ctx, "actions[1]")
    with pytest.raises(
        ConfigError, match=r"^actions\[1\]\.proceses: unknown option .*did you mean 'processes'"
    ):
        SignalAction({"proceses": "all"}, ctx, "actions[1]")
