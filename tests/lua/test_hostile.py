"""What a hostile tenant (or a script that met one) must not do to the daemon: hold it in one
long C call, exhaust its memory, flood its log with a huge error, or steer a request to another
host through a pod annotation. Scripts run in a worker process; the daemon (this test process)
must stay responsive and go on."""

from __future__ import annotations

import itertools
import logging
import os
import re
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pressured import httpget
from pressured.actions.base import ActionContext
from pressured.actions.lua import LuaAction, bundled_script, scripts
from pressured.errors import ActionError
from pressured.model import PressureEvent
from pressured.storage.local import LocalStorage
from tests.lua import PROBED, LoopbackServer, Route, pressure

pytestmark = pytest.mark.hostile

MakeAction = Callable[..., LuaAction]
BIG = 20 * 1024 * 1024


# Backtracking over 30000 characters for every "a*": far beyond any timeout, inside one C call
# (string.find, gsub or match) that the instruction hook never interrupts.
PATTERN = 'string.rep("a", 30000):{fn}(string.rep("a*", 10) .. "b"{more})'
GSUB = ', ""'


def probe_event() -> PressureEvent:
    return pressure(annotations={"probe": "1"})


class Ticker:
    """A thread of the daemon's process that ticks every 10 ms: the longest gap between two
    ticks is how long the GIL (or anything else) held this process."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ticks.append(time.monotonic())
            time.sleep(0.01)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_gap(self, start: float, end: float) -> float:
        during = [start, *(t for t in self.ticks if start <= t <= end), end]
        return max(b - a for a, b in itertools.pairwise(during))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_dead(pid: int) -> None:
    """Until ``pid`` is a zombie (dead, not yet reaped by its parent)."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.01)


def soft_limits(pid: int) -> dict[str, str]:
    """Soft limits of a process, by name ("Max address space": "123456" or "unlimited")."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        m = re.match(r"^(Max [a-z ]+?)\s{2,}(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture
def make_action(make_ctx: Callable[..., ActionContext]) -> Iterator[MakeAction]:
    """make_action(lua_text, **plugins.lua options) -> a lua action, closed after."""
    made: list[LuaAction] = []

    def make(text: str | None, ctx: ActionContext | None = None, **options: Any) -> LuaAction:
        if text is not None:
            options["inline_script"] = text
        action = LuaAction({"type": "lua", **options}, ctx or make_ctx())
        made.append(action)
        return action

    yield make
    for action in made:
        action.close()


# -- huge errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raise_it", "huge"),
    [
        (f'error(string.rep("x", {BIG}))', "message"),
        (
            f'error(setmetatable({{}}, {{__tostring = function() return ("x"):rep({BIG}) end}}))',
            "message",
        ),
        (f'load("error(\'boom\', 0)", "=" .. string.rep("c", {BIG}))()', "file"),
    ],
    ids=["string", "tostring", "chunk name"],
)
def test_a_huge_lua_error_is_quoted_by_a_short_prefix(
    raise_it: str, huge: str, make_action: MakeAction, caplog: pytest.LogCaptureFixture
) -> None:
    action = make_action(f"function on_event(event, ctx)\n  {raise_it}\nend\n", memory_mb=128)
    [failure] = action.scripts.run(pressure())
    clipped = getattr(failure, huge)
    assert clipped.endswith(f"... ({BIG} bytes)"), clipped[-100:]
    assert len(clipped) < 250
    assert len(str(failure)) < 600
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [str(failure)]
    with pytest.raises(ActionError) as err:
        action.run(pressure())
    assert len(str(err.value)) < 700


# -- one long C call -------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["find", "gsub", "match"])
def test_a_pathological_pattern_gets_the_worker_killed_and_the_daemon_goes_on(
    fn: str, make_action: MakeAction, storage: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    pattern = PATTERN.format(fn=fn, more=GSUB if fn == "gsub" else "")
    action = make_action(PROBED.format(probe="    " + pattern), timeout_ms=1000)
    old_pid = action.scripts.worker_pid
    assert old_pid is not None and old_pid != os.getpid()
    with Ticker() as ticker:
        start = time.monotonic()
        with pytest.raises(ActionError) as err:
            action.run(probe_event())
        end = time.monotonic()
    assert str(err.value) == (
        "lua: 1 of 1 handler(s) failed: inline_script: timed out after 1000 ms, worker killed"
    )
    assert 1.0 <= end - start < 10
    # the daemon's other threads ran all along: the wait did not hold the GIL
    assert len([t for t in ticker.ticks if start <= t <= end]) >= 20
    assert ticker.longest_gap(start, end) < 1.0  # held, it would be the whole call: 2 s
    assert not alive(old_pid)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["inline_script: timed out after 1000 ms, worker killed"]

    # the next event runs, in a new worker that loaded the script again
    action.run(pressure())
    assert storage.read("calls") == b"1"
    assert action.scripts.worker_pid not in (None, old_pid)
    assert action.scripts.workers_started == 2
    action.run(pressure())
    assert storage.read("calls") == b"2"


def test_every_handler_runs_after_a_worker_was_killed_for_another(
    make_action: MakeAction, storage: LocalStorage, tmp_path: Path
) -> None:
    (tmp_path / "a.lua").write_text(
        PROBED.format(probe="    " + PATTERN.format(fn="find", more=""))
    )
    (tmp_path / "b.lua").write_text(
        "function on_event(e, c) assert(storage.write('b', e.severity)) end\n"
    )
    action = make_action(None, scripts_dir=str(tmp_path), timeout_ms=300)
    with pytest.raises(ActionError, match=r"1 of 2 handler\(s\) failed: .*a\.lua: timed out"):
        action.run(probe_event())
    assert storage.read("b") == b"critical"


@pytest.mark.slow
def test_the_cpu_limit_kills_a_worker_the_daemon_did_not(
    make_action: MakeAction, monkeypatch: pytest.MonkeyPatch, storage: LocalStorage
) -> None:
    # the daemon waits far longer than the worker's CPU limit allows: the kernel ends it
    monkeypatch.setattr(scripts, "KILL_GRACE_MS", 60_000)
    action = make_action(
        PROBED.format(probe="    " + PATTERN.format(fn="find", more="")), timeout_ms=500
    )
    pid = action.scripts.worker_pid
    assert pid is not None
    cpu = soft_limits(pid)["Max cpu time"]
    assert cpu != "unlimited" and int(cpu) <= 10, cpu
    start = time.monotonic()
    [failure] = action.scripts.run(probe_event())
    assert time.monotonic() - start < 30
    assert failure.kind == "crashed"
    assert failure.message == (
        "the Lua worker ended (killed by SIGXCPU, its CPU time limit); a new one takes the next "
        "call"
    )
    assert action.scripts.run(pressure()) == []
    assert storage.read("calls") == b"1"


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_event(
    make_action: MakeAction, storage: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    action = make_action(PROBED.format(probe=""))
    pid = action.scripts.worker_pid
    assert pid is not None
    action.run(pressure())
    os.kill(pid, signal.SIGKILL)  # the kernel's OOM killer, say
    wait_dead(pid)
    action.run(pressure())
    assert storage.read("calls") == b"1"
    assert any(
        "killed by SIGKILL" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )


# -- memory ----------------------------------------------------------------------------------------
def test_unbounded_allocation_stops_in_the_worker_and_the_daemon_is_unharmed(
    make_action: MakeAction, storage: LocalStorage
) -> None:
    bomb = 'local t = {} while true do t[#t + 1] = string.rep("x", 1e6) end'
    own_limit = resource.getrlimit(resource.RLIMIT_AS)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    action = make_action(PROBED.format(probe="    " + bomb), memory_mb=200)
    pid = action.scripts.worker_pid
    assert pid is not None
    address_space = soft_limits(pid)["Max address space"]
    assert address_space != "unlimited"
    assert int(address_space) < (200 * 4 + 512) * 2**20  # the scripts' caps and some room
    # the kernel's OOM killer would take the worker first
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "1000"

    [failure] = action.scripts.run(probe_event())
    assert failure.kind == "memory"
    assert failure.message == "not enough memory (memory_mb=200)"
    # the 200 MB were the worker's: this process neither grew nor got a limit
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before < 100 * 2**20
    assert resource.getrlimit(resource.RLIMIT_AS) == own_limit
    # the worker's own cap stopped it: the same worker handles the next event
    action.run(pressure())
    assert storage.read("calls") == b"1"
    assert action.scripts.worker_pid == pid


# -- annotations a pod's owner writes --------------------------------------------------------------
@pytest.fixture
def other_host() -> Iterator[LoopbackServer]:
    """A recording server on another address: "another host" for the pod's annotations."""
    srv = LoopbackServer("127.0.0.2")
    try:
        yield srv
    finally:
        srv.close()


def test_a_hostile_pprof_port_sends_nothing_to_another_host(
    make_action: MakeAction,
    server: LoopbackServer,
    other_host: LoopbackServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.routes["/debug/pprof/heap"] = Route(200, b"pod profile")
    other_host.routes["/debug/pprof/heap"] = Route(200, b"somebody else's data")
    hostile = f"{server.port}@{other_host.host}:{other_host.port}"
    # pasted into "http://<pod-ip>:<port><path>" it names the other host: what the script used to
    # fetch does reach it (so its log below would show such a request)
    pasted = f"http://127.0.0.1:{hostile}/debug/pprof/heap"
    with httpget.stream(pasted, deadline_s=5) as reply:
        assert b"".join(reply) == b"somebody else's data"
    assert len(other_host.seen) == 1
    other_host.seen.clear()

    action = make_action(None, script=str(bundled_script("heapdump.lua")))
    event = pressure("critical", annotations={"pressured.io/pprof-port": hostile})
    # the annotation is refused: the default port is asked, on the pod's own address
    with pytest.raises(ActionError, match=r"heap profile from http://127\.0\.0\.1:6060/debug/"):
        action.run(event)
    assert other_host.seen == []
    assert server.seen == []
    assert list(storage.list()) == []
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]
    assert refused == [
        f"lua: shop/web-7f9c: annotation pressured.io/pprof-port={hostile!r} ignored: not a port "
        "number (refused: Lua scripts do not see it)"
    ]


@pytest.mark.parametrize(
    "path",
    ["//127.0.0.2/x", "/x@127.0.0.2/", "/\\127.0.0.2/", "http://127.0.0.2/", "/a b", "/a\r\nX: y"],
)
def test_a_hostile_pprof_path_is_refused(
    path: str,
    make_action: MakeAction,
    server: LoopbackServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.routes["/debug/pprof/heap"] = Route(200, b"pod profile")
    action = make_action(None, script=str(bundled_script("heapdump.lua")))
    annotations = {"pressured.io/pprof-port": str(server.port), "pressured.io/pprof-path": path}
    action.run(pressure("critical", annotations=annotations))
    # the default path, on the pod's port
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/debug/pprof/heap")]
    assert [storage.read(k) for k in storage.list()] == [b"pod profile"]
    assert any(
        "pressured.io/pprof-path" in r.getMessage() and "refused" in r.getMessage()
        for r in caplog.records
    )


def test_scripts_see_checked_annotation_values_only(make_action: MakeAction) -> None:
    action = make_action(
        """
function on_event(event, ctx)
  local a = event.annotations
  assert(a["pressured.io/pprof-port"] == "8080", a["pressured.io/pprof-port"])
  assert(ctx.pprof.port == 8080 and math.type(ctx.pprof.port) == "integer")
  assert(a["pressured.io/pprof-path"] == nil and ctx.pprof.path == nil)
  assert(a["pressured.io/pprof-enabled"] == "true" and ctx.pprof.enabled == true)
  assert(a["pressured.io/warn-percent"] == nil)
  assert(a["pressured.io/made-up"] == nil)
  assert(a.team == "checkout")
end
"""
    )
    annotations = {
        "pressured.io/pprof-port": " 8080 ",
        "pressured.io/pprof-path": "//elsewhere/heap",
        "pressured.io/pprof-enabled": "true",
        "pressured.io/warn-percent": "lots",
        "pressured.io/made-up": "1",
        "team": "checkout",
    }
    assert action.scripts.run(pressure(annotations=annotations)) == []


def test_heapdump_lua_honours_pprof_enabled_false(
    make_action: MakeAction, server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/debug/pprof/heap"] = Route(200, b"pod profile")
    action = make_action(None, script=str(bundled_script("heapdump.lua")))
    annotations = {
        "pressured.io/pprof-port": str(server.port),
        "pressured.io/pprof-enabled": "false",
    }
    action.run(pressure("critical", annotations=annotations))
    assert server.seen == []
    assert list(storage.list()) == []
