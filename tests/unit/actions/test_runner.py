"""The action lanes of pressured/actions/runner.py: immediate actions never wait for slow ones,
each slow action has its own thread and bounded queue (the drop rule), a run past its deadline
is abandoned, heapdump's chain, and a close that reports what it could not run.

The slow actions here block on a threading.Event the test holds: a stand-in for a server that
does not answer, whose release the test controls (the real server is in tests/kernel)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import termios
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pressured.actions.base import IMMEDIATE, SLOW, Action, ActionContext
from pressured.actions.log import LogAction
from pressured.actions.runner import DROP_RANK, ActionRunner, lane_chains, run_deadline
from pressured.actions.signal import SignalAction
from pressured.actions.webhook import WebhookAction
from pressured.model import Event
from tests.support.wait import wait_for
from tests.unit.actions.conftest import oom_kill, pressure


class Recorder(Action):
    """Immediate: notes each event's severity (and what the event's extra held)."""

    type = "test-recorder"
    lane = IMMEDIATE

    def __init__(self, options: Mapping[str, Any], ctx: ActionContext, where: str = "") -> None:
        super().__init__(options, ctx, where)
        self.seen: list[str] = []
        self.extras: list[dict[str, Any]] = []

    def run(self, event: Event) -> None:
        self.seen.append(event.severity)
        self.extras.append(dict(event.extra))


class Blocking(Action):
    """Slow: each run waits until the test releases it (or ``deadline`` runs out first)."""

    type = "test-blocking"

    def __init__(
        self,
        options: Mapping[str, Any],
        ctx: ActionContext,
        where: str = "",
        *,
        deadline: float | None = None,
    ) -> None:
        super().__init__(options, ctx, where)
        self.release = threading.Event()
        self.started: list[str] = []
        self.done: list[str] = []
        self.extras: list[dict[str, Any]] = []
        self.deadline = deadline
        self.closed = False

    def run(self, event: Event) -> None:
        self.started.append(event.severity)
        self.extras.append(dict(event.extra))
        self.release.wait(30)
        self.done.append(event.severity)

    def run_deadline_s(self) -> float | None:
        return self.deadline

    def close(self) -> None:
        self.closed = True


class Enricher(Action):
    """Slow and enriching, as heapdump: adds pprof_top to the event."""

    type = "test-enricher"
    enriches = True

    def run(self, event: Event) -> None:
        event.extra["pprof_top"] = [{"function": "main.leak"}]


CTX = ActionContext()


@pytest.fixture
def drops() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def make_runner(drops: list[tuple[str, str]]) -> Iterator[Any]:
    made: list[tuple[ActionRunner, list[Blocking]]] = []

    def make(actions: list[Action], **kw: Any) -> ActionRunner:
        runner = ActionRunner(
            actions,
            still_holds=lambda _e: True,
            on_failure=lambda _name: None,
            on_drop=lambda name, reason: drops.append((name, reason)),
            **kw,
        )
        made.append((runner, [a for a in actions if isinstance(a, Blocking)]))
        return runner

    yield make
    for runner, blocking in made:
        for a in blocking:
            a.release.set()
        runner.close(budget=5)


def test_lanes_by_action_type() -> None:
    assert LogAction.lane == IMMEDIATE and SignalAction.lane == IMMEDIATE
    assert WebhookAction.lane == SLOW and Blocking.lane == SLOW
    log, sig = LogAction({}, CTX), SignalAction({}, CTX)
    before, heap, after = Blocking({}, CTX), Enricher({}, CTX), Blocking({}, CTX)
    immediate, chains = lane_chains([before, log, heap, sig, after])
    assert immediate == [log, sig]
    assert chains == [[before], [heap, after]]


def test_never_blocks_is_refused_on_a_slow_action() -> None:
    with pytest.raises(TypeError, match="never_blocks is only for 'immediate' actions"):

        class Odd(Action):
            never_blocks = True


def test_a_bad_lane_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="lane must be one of"):

        class Odd(Action):
            lane = "fast"


def test_immediate_actions_do_not_wait_for_a_slow_one(make_runner: Any) -> None:
    rec, slow = Recorder({}, CTX), Blocking({}, CTX)
    runner = make_runner([rec, slow])
    for ev in (pressure("warn"), pressure("critical"), oom_kill()):
        runner.submit(ev)
    wait_for(lambda: rec.seen == ["warn", "critical", "oom_killed"], what="the immediate lane")
    assert slow.started == ["warn"] and slow.done == []
    slow.release.set()
    wait_for(lambda: slow.done == ["warn", "critical", "oom_killed"], what="the slow lane")


def test_each_slow_action_has_its_own_lane(make_runner: Any) -> None:
    stuck, free = Blocking({}, CTX), Blocking({}, CTX)
    free.release.set()
    make_runner([stuck, free]).submit(pressure("warn"))
    wait_for(lambda: free.done == ["warn"], what="the free lane")
    assert stuck.done == []


def test_a_full_queue_drops_the_oldest_lowest_severity(
    make_runner: Any, drops: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    slow = Blocking({}, CTX)
    runner = make_runner([slow], queue_size=3)
    runner.submit(pressure("warn", n=0))  # taken at once: in flight
    wait_for(lambda: slow.started == ["warn"], what="the first run")
    with caplog.at_level(logging.WARNING, "pressured.actions"):
        for i, ev in enumerate(
            [
                pressure("critical", n=1),
                pressure("warn", n=2),
                oom_kill(),
                pressure("recovered", n=4),  # full: warn n=2 goes (oldest of the lowest rank)
                pressure("critical", n=5),  # full: recovered n=4 goes
                oom_kill(),  # full: critical n=1 goes (no warn or recovered left)
            ]
        ):
            ev.extra["n"] = i + 1
            runner.submit(ev)
    assert drops == [("test-blocking", "queue_full")] * 3
    assert "dropped warn of" in caplog.text and "3 events queued" in caplog.text
    slow.release.set()
    wait_for(lambda: len(slow.done) == 4, what="the rest")
    assert [e["n"] for e in slow.extras] == [0, 3, 5, 6]
    assert slow.started == ["warn", "oom_killed", "critical", "oom_killed"]


def test_oom_killed_goes_only_when_everything_queued_is_one() -> None:
    assert DROP_RANK["oom_killed"] > DROP_RANK["critical"] > DROP_RANK["warn"]
    assert DROP_RANK["warn"] == DROP_RANK["recovered"]


def test_a_run_past_its_deadline_is_abandoned_and_the_lane_goes_on(
    make_runner: Any, drops: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    slow = Blocking({}, CTX, deadline=0.0)  # the runner adds its 1 s grace
    assert run_deadline(slow) == 1.0
    runner = make_runner([slow])
    with caplog.at_level(logging.WARNING, "pressured.actions"):
        runner.submit(pressure("warn"))
        runner.submit(pressure("critical"))
        wait_for(lambda: slow.started == ["warn", "critical"], what="the second run")
    assert ("test-blocking", "deadline") in drops
    assert "run for warn of" in caplog.text and "abandoned" in caplog.text


def test_the_runner_cap_bounds_an_action_without_a_deadline(make_runner: Any) -> None:
    slow = Blocking({}, CTX)
    runner = make_runner([slow], run_cap_s=0.2)
    runner.submit(pressure("warn"))
    runner.submit(pressure("critical"))
    wait_for(lambda: slow.started == ["warn", "critical"], what="the second run")


def test_slow_actions_after_heapdump_see_its_result_the_log_does_not(make_runner: Any) -> None:
    rec, before, heap, after = (
        Recorder({}, CTX),
        Blocking({}, CTX),
        Enricher({}, CTX),
        Blocking({}, CTX),
    )
    for a in (before, after):
        a.release.set()
    make_runner([before, rec, heap, after]).submit(pressure("critical"))
    wait_for(lambda: bool(before.done and after.done and rec.seen), what="every lane")
    assert "pprof_top" in after.extras[0]
    assert "pprof_top" not in before.extras[0] and "pprof_top" not in rec.extras[0]


def test_close_runs_every_immediate_event_and_names_what_slow_lanes_did_not_run(
    make_runner: Any, drops: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    rec, slow = Recorder({}, CTX), Blocking({}, CTX)
    runner = make_runner([rec, slow])
    for ev in (pressure("warn"), pressure("critical"), oom_kill()):
        runner.submit(ev)
    wait_for(lambda: slow.started == ["warn"], what="the first run")
    with caplog.at_level(logging.WARNING, "pressured.actions"):
        missed = runner.close(budget=0.2)
    assert missed == 3
    assert rec.seen == ["warn", "critical", "oom_killed"]
    assert drops == [("test-blocking", "shutdown")] * 3
    line = next(r.getMessage() for r in caplog.records if "not delivered" in r.getMessage())
    assert line.startswith("test-blocking: 3 event(s) not delivered within 0.2 s (shutdown)")
    assert "warn of" in line and "(in flight)" in line and "oom_killed of" in line
    assert not slow.closed  # still inside a call: left to the process's exit
    runner.submit(pressure("warn"))  # after close: counted, not run
    assert drops[-1] == ("test-blocking", "closed")


def test_close_within_budget_closes_the_actions(make_runner: Any) -> None:
    slow = Blocking({}, CTX)
    slow.release.set()
    runner = make_runner([slow])
    runner.submit(pressure("warn"))
    assert runner.close(budget=5) == 0
    assert slow.done == ["warn"] and slow.closed


def test_a_new_runner_writes_after_the_one_it_replaces(make_runner: Any) -> None:
    """A reload: the old immediate lane writes what it holds before the new one writes."""
    order: list[str] = []
    gate = threading.Event()

    class Gated(Recorder):
        def run(self, event: Event) -> None:
            gate.wait(10)
            order.append("old " + event.severity)

    class Plain(Recorder):
        def run(self, event: Event) -> None:
            order.append("new " + event.severity)

    old = make_runner([Gated({}, CTX)])
    old.submit(pressure("warn"))
    new = make_runner([Plain({}, CTX)], after=old)
    closer = threading.Thread(target=old.close, kwargs={"reason": "reload"})
    closer.start()
    new.submit(pressure("critical"))
    gate.set()
    closer.join(10)
    wait_for(lambda: len(order) == 2, what="both lines")
    assert order == ["old warn", "new critical"]


def test_webhook_deadline_is_its_timeouts_and_backoffs() -> None:
    hook = WebhookAction({"url": "http://127.0.0.1:9/x"}, CTX)
    try:
        assert hook.run_deadline_s() == pytest.approx(4 * 3.0 + 0.2 + 0.4 + 0.8)
    finally:
        hook.close()


class Sheddable(Recorder):
    """Slow and optional: work the daemon sheds near its own memory limit (heapdump, lua)."""

    type = "test-optional"
    lane = SLOW
    optional = True


def test_heapdump_and_lua_are_the_optional_actions() -> None:
    from pressured.actions.heapdump import HeapdumpAction
    from pressured.actions.lua.action import LuaAction

    assert HeapdumpAction.optional and LuaAction.optional
    assert not (LogAction.optional or SignalAction.optional or WebhookAction.optional)


def test_shedding_skips_optional_actions_only_and_counts_each_skip(
    make_runner: Any, drops: list[tuple[str, str]]
) -> None:
    shed = threading.Event()
    shed.set()
    optional, recorder = Sheddable({}, CTX), Recorder({}, CTX)
    runner = make_runner([recorder, optional], shed=shed.is_set)
    runner.submit(pressure("warn"))
    wait_for(lambda: drops == [("test-optional", "shed")], what="the shed drop")
    wait_for(lambda: recorder.seen == ["warn"], what="the log-like action ran")
    assert optional.seen == []
    shed.clear()  # below the level again: optional work resumes
    runner.submit(pressure("critical"))
    wait_for(lambda: optional.seen == ["critical"], what="the optional action ran again")


class OnLoop(Recorder):
    """Immediate and never blocking, as signal: notes the thread each event ran on."""

    type = "test-onloop"
    never_blocks = True

    def __init__(self, options: Mapping[str, Any], ctx: ActionContext, where: str = "") -> None:
        super().__init__(options, ctx, where)
        self.threads: list[str] = []

    def run(self, event: Event) -> None:
        self.threads.append(threading.current_thread().name)
        super().run(event)


def test_never_blocking_actions_run_on_the_submitting_thread_when_idle(make_runner: Any) -> None:
    here = threading.current_thread().name

    class LogLike(OnLoop):
        never_blocks = False  # it writes a stream, as log

    log_like, onloop, slow = LogLike({}, CTX), OnLoop({}, CTX), Blocking({}, CTX)
    runner = make_runner([log_like, onloop, slow], inline_immediate=True)
    assert [name for name, _types in runner.lanes][:2] == ["nonblocking", "actions"]
    runner.submit(pressure("warn"))
    # run before submit returned, here, while the slow lane still holds its copy
    assert onloop.seen == ["warn"] and onloop.threads == [here]
    assert slow.done == []
    # the stream writer runs on its lane's thread, never on the submitting one
    wait_for(lambda: log_like.seen == ["warn"], what="the log-like action")
    assert log_like.threads != [here]
    slow.release.set()


def test_a_log_nobody_reads_never_stalls_the_submitting_thread(
    make_runner: Any, tmp_path: Path
) -> None:
    # a real FIFO whose reader reads nothing: the log's writes block once its buffer is full,
    # as a stdout nobody drains
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
        log, onloop = LogAction({"path": str(fifo)}, CTX), OnLoop({}, CTX)
        runner = make_runner([log, onloop], inline_immediate=True)

        def buffered() -> int:
            return struct.unpack("i", fcntl.ioctl(reader, termios.FIONREAD, b"\0" * 4))[0]

        runner.submit(pressure("warn"))
        line = wait_for(buffered, what="the first log line")  # its length, as written
        room = 4096 // line - 1
        for _ in range(room + 1 + 5):  # fills the pipe; one more blocks; five wait behind it
            runner.submit(pressure("warn"))
        sent = 1 + room + 1 + 5
        lane = runner._immediate
        wait_for(
            lambda: buffered() == line * (1 + room) and len(lane._queue) == 5,
            what="the log lane blocked on a full pipe",
        )
        assert lane._current is not None
        # meanwhile the never-blocking action ran every event here, at once
        for _ in range(3):
            runner.submit(pressure("critical"))
        sent += 3
        assert onloop.seen == ["warn"] * (sent - 3) + ["critical"] * 3
        assert set(onloop.threads) == {threading.current_thread().name}
        # the reader drains: every line arrives, none lost
        data = b""
        while data.count(b"\n") < sent:
            wait_for(lambda: buffered() > 0, what="more log lines")
            data += os.read(reader, 65536)
        lines = [json.loads(line) for line in data.decode().splitlines()]
        assert [d["severity"] for d in lines] == [*onloop.seen]
    finally:
        os.close(reader)


def test_inline_immediate_queues_behind_a_busy_lane_and_keeps_the_order(make_runner: Any) -> None:
    gate = threading.Event()
    order: list[str] = []

    class Gated(OnLoop):
        def run(self, event: Event) -> None:
            if event.severity == "warn":
                gate.wait(10)
            order.append(event.severity)

    runner = make_runner([Gated({}, CTX)], inline_immediate=True)
    first = threading.Thread(target=runner.submit, args=(pressure("warn"),))
    first.start()  # runs inline on that thread, held at the gate
    wait_for(lambda: runner._onloop._current is not None, what="the first event running")
    runner.submit(pressure("critical"))  # the lane is busy: queued, not run here
    assert order == []
    gate.set()
    first.join(10)
    wait_for(lambda: order == ["warn", "critical"], what="both events in order")
