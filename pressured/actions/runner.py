"""The action lanes: events handed over by the daemon's loop run on threads of their own, so a
slow action never delays a wake-up, and nothing that must be immediate waits behind network work.

- The immediate lane: the actions whose class says ``lane = "immediate"`` (log, signal), in
  configured order, for every event in the order the daemon made it, on one thread. Its queue
  is not bounded: the log line is the record, and immediate actions do local work only.
- With ``inline_immediate`` (the daemon) the immediate actions that never block
  (``Action.never_blocks``: signal) have a lane of their own, and an event that finds it idle
  runs them on the submitting thread at once: no hand-off to another thread between a
  crossing and its signal (measured: a thread switch on a loaded machine cost milliseconds);
  an event that finds it busy queues behind what it holds, so the order is kept. The other
  immediate actions (log) stay on their thread: a stdout that nobody reads stalls the log
  line, never the daemon's loop.
- Slow lanes: every other action (exec, webhook, heapdump, lua, k8s-event, evict, plugins) runs
  on a lane of its own: one worker thread and a bounded queue (QUEUE_SIZE events). A slow action
  configured after a heapdump action (one that ``enriches`` the event) runs in heapdump's lane,
  after it, and reports the ``pprof_top`` heapdump added; one configured before it has a lane
  of its own and never waits for a heap dump. Each slow lane gets its own copy of the event, so
  the log line is written at once without ``pprof_top``, and heapdump logs its result as a line
  of its own.

Each slow run has a deadline: the action's ``run_deadline_s()`` (from its own timeout options)
plus RUN_GRACE_S, else RUN_CAP_S. A run past it is abandoned: logged, counted in
``pressured_actions_dropped_total{action, reason="deadline"}``, and the lane goes on with its
next event while the abandoned call ends on its own thread. An action has at most one abandoned
call at a time: a second overrun waits for the first to return before the lane goes on.

The drop rule, when a slow lane's queue is full: of the queued events and the new one, the one of
the lowest rank is dropped, the oldest first among equals. The ranks: warn and recovered, then
critical, then oom_killed. So an oom_killed is dropped only when all the others are oom_killed
too (then the oldest goes). Each drop is logged with the action, the severity and the target,
and counted in ``pressured_actions_dropped_total{action, reason="queue_full"}``.

Destructive actions (a terminating signal, evict) re-check just before they run: ``still_holds``
(the daemon re-reads the target and asks the engine) is asked once per event and lane, and they
are skipped when the event no longer holds.

Closing (SIGTERM, or the old configuration after a reload, on a background thread): no new
events; every lane goes on with what it holds until the budget runs out (CLOSE_BUDGET_S for a
stop, RELOAD_BUDGET_S after a reload); then what a lane has not run, queued or still in flight,
is logged by action and event and counted (reason "shutdown" or "reload"). No event is lost
without a line saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from pressured.actions.base import IMMEDIATE, Action
from pressured.errors import ActionError
from pressured.model import Event, PressureEvent

log = logging.getLogger("pressured.actions")

QUEUE_SIZE = 64
"""Events a slow lane holds; past that the drop rule applies."""
RUN_CAP_S = 30.0
"""The deadline of a slow run whose action states none (run_deadline_s() is None)."""
RUN_GRACE_S = 1.0
"""Added to an action's own deadline: the action's own timeouts end the run, not the runner."""
CLOSE_BUDGET_S = 5.0
"""How long a stop lets the lanes go on with what they hold."""
RELOAD_BUDGET_S = 30.0
"""How long the old configuration's lanes go on after a reload (on a background thread)."""
DROP_RANK = {"warn": 0, "recovered": 0, "critical": 1, "oom_killed": 2}
"""The drop rule's order: the lowest rank is dropped first."""

OnFailure = Callable[[str], None]
OnDrop = Callable[[str, str], None]
"""on_drop(action type, reason): an event that an action did not run, or not in time."""


def lane_chains(actions: list[Action]) -> tuple[list[Action], list[list[Action]]]:
    """(the immediate actions in configured order, the slow lanes' chains): each slow action is
    a chain of its own, except the slow actions configured after an enriching one (heapdump),
    which join its chain, after it."""
    immediate: list[Action] = []
    chains: list[list[Action]] = []
    enriched: list[Action] | None = None
    for action in actions:
        if action.lane == IMMEDIATE:
            immediate.append(action)
        elif action.enriches:
            enriched = [action]
            chains.append(enriched)
        elif enriched is not None:
            enriched.append(action)
        else:
            chains.append([action])
    return immediate, chains


def run_deadline(action: Action, cap: float = RUN_CAP_S) -> float:
    """Seconds one slow run of ``action`` may take before the runner abandons it."""
    own = action.run_deadline_s()
    return cap if own is None else own + RUN_GRACE_S


def describe(event: Event) -> str:
    made = time.strftime("%H:%M:%S", time.gmtime(event.time))
    return f"{event.severity} of {event.key or event.cgroup} ({made}Z)"


def _without_processes(event: Event) -> Event:
    """The event for a lane that does not act on processes: those it holds stay with the lane
    that does (signal), which closes them."""
    return event if event.processes is None else replace(event, processes=None)


def _own_copy(event: Event) -> Event:
    """What a lane may add to (heapdump's pprof_top) without touching another lane's event.
    The processes the event holds stay with the lane that runs signal, which closes them."""
    return replace(event, extra=dict(event.extra), processes=None)


def run_action(action: Action, event: Event, on_failure: OnFailure) -> None:
    """One action for one event: a failure is logged and counted, never raised."""
    try:
        action.run(event)
    except ActionError as exc:
        log.warning("action %s failed for %s: %s", action.type, event.cgroup, exc)
        on_failure(action.type)
    except Exception as exc:
        log.error(
            "action %s raised for %s: %s: %s", action.type, event.cgroup, type(exc).__name__, exc
        )
        on_failure(action.type)


class _Recheck:
    """still_holds, asked once per event and lane, when the first destructive action is due."""

    def __init__(self, still_holds: Callable[[Event], bool], event: Event) -> None:
        self._still_holds = still_holds
        self._event = event
        self._answer: bool | None = None

    def allows(self, action: Action) -> bool:
        event = self._event
        if not (
            action.destructive
            and isinstance(event, PressureEvent)
            and event.severity != "recovered"
        ):
            return True
        if self._answer is None:
            self._answer = self._still_holds(event)
        if not self._answer:
            log.info(
                "%s skipped for %s: the target recovered before it ran", action.type, event.cgroup
            )
        return self._answer


class _Lane:
    """One thread running a chain of actions for each event it is offered, in order."""

    def __init__(
        self,
        name: str,
        actions: list[Action],
        *,
        still_holds: Callable[[Event], bool],
        on_failure: OnFailure,
        on_drop: OnDrop,
        limit: int | None,
        cap: float | None,
        after: _Lane | None = None,
        shed: Callable[[], bool] | None = None,
    ) -> None:
        """``limit``: the queue's bound (None: unbounded); ``cap``: the runner-level deadline of
        a run (None: runs are not timed, the immediate lane); ``after``: a lane of an older
        runner whose events come first (a reload keeps the log's order)."""
        self.name = name
        self.actions = actions
        self._still_holds = still_holds
        self._on_failure = on_failure
        self._on_drop = on_drop
        self._limit = limit
        self._cap = cap
        self._after = after
        self._shed = shed
        self._cond = threading.Condition()
        self._queue: deque[Event] = deque()
        self._closing = False
        self._given_up = False
        self._current: Event | None = None
        self._step = 0  # the chain's action now running for _current
        self._stale: dict[int, threading.Thread] = {}  # abandoned calls, by chain index
        self._thread = threading.Thread(target=self._loop, name=f"pressured-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the daemon's side
    def run_inline(self, event: Event) -> bool:
        """Run ``event`` on the caller's thread if the lane is idle (nothing queued, nothing
        running, no older lane to wait for); False, having done nothing, otherwise."""
        with self._cond:
            if self._closing or self._queue or self._current is not None or self._after:
                return False
            self._current, self._step = event, 0
        self._run_current(event)
        return True

    def offer(self, event: Event) -> None:
        with self._cond:
            if self._closing:
                dropped: Event | None = event
            else:
                dropped = None
                if self._limit is not None and len(self._queue) >= self._limit:
                    i = self._victim(event)
                    if i < len(self._queue):
                        dropped = self._queue[i]
                        del self._queue[i]
                    else:
                        dropped = event
                if dropped is not event:
                    self._queue.append(event)
                    self._cond.notify_all()
            closing = self._closing
        if dropped is None:
            return
        reason = "closed" if closing else "queue_full"
        why = "its lane is closing" if closing else f"{self._limit} events queued"
        log.warning(
            "%s: dropped %s: %s (drop rule: lowest severity, oldest first)",
            self.name,
            describe(dropped),
            why,
        )
        for action in self.actions:
            self._on_drop(action.type, reason)

    def _victim(self, new: Event) -> int:
        """The drop rule: the index of the lowest-ranked event, the oldest among equals; the
        new event is the newest (index len(queue))."""
        candidates = [*self._queue, new]
        ranks = [DROP_RANK.get(e.severity, 0) for e in candidates]
        return ranks.index(min(ranks))

    # ------------------------------------------------------------------ the lane's thread
    def _loop(self) -> None:
        if self._after is not None:
            self._after.join(RELOAD_BUDGET_S)
            with self._cond:
                self._after = None
        while True:
            with self._cond:
                # an event run inline on the submitting thread goes first (_current)
                while not self._queue or self._current is not None:
                    if self._closing and not self._queue:
                        return
                    self._cond.wait()
                event = self._queue.popleft()
                self._current, self._step = event, 0
            self._run_current(event)

    def _run_current(self, event: Event) -> None:
        """Run the event just made current (on whichever thread took it), then hand the lane
        back: its held processes closed, waiters woken."""
        try:
            self._run(event)
        finally:
            if event.processes is not None:
                event.processes.close()
            with self._cond:
                self._current = None
                self._cond.notify_all()

    def _run(self, event: Event) -> None:
        recheck = _Recheck(self._still_holds, event)
        for i, action in enumerate(self.actions):
            with self._cond:
                if self._given_up:
                    return  # reported as undelivered already
                self._step = i
            if not recheck.allows(action):
                continue
            if action.optional and self._shed is not None and self._shed():
                log.warning(
                    "%s: skipped for %s: shedding optional work near the daemon's own memory limit",
                    action.type,
                    describe(event),
                )
                self._on_drop(action.type, "shed")
                continue
            if self._cap is None:
                run_action(action, event, self._on_failure)
            else:
                self._timed(i, action, event, self._cap)

    def _timed(self, i: int, action: Action, event: Event, cap: float) -> None:
        deadline = run_deadline(action, cap)
        done = threading.Event()
        started = time.monotonic()
        abandoned: list[bool] = []

        def call() -> None:
            try:
                run_action(action, event, self._on_failure)
            finally:
                done.set()
                if abandoned:
                    log.info(
                        "%s: the abandoned run for %s ended after %.1f s",
                        action.type,
                        describe(event),
                        time.monotonic() - started,
                    )

        t = threading.Thread(target=call, name=f"pressured-{action.type}-run", daemon=True)
        t.start()
        if done.wait(deadline):
            return
        abandoned.append(True)
        log.warning(
            "%s: run for %s passed its deadline of %.1f s: abandoned, the lane goes on",
            action.type,
            describe(event),
            deadline,
        )
        self._on_drop(action.type, "deadline")
        older = self._stale.get(i)
        if older is not None and older.is_alive():
            log.warning("%s: waiting for its earlier abandoned run to end", action.type)
            older.join()
        self._stale[i] = t

    # ------------------------------------------------------------------ closing
    def stop_input(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def wait_drained(self, end: float) -> bool:
        """Until the lane has run everything it held, or ``end`` (monotonic); True if drained."""
        with self._cond:
            while self._queue or self._current is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def give_up(self) -> list[tuple[Event, list[Action], bool]]:
        """What the lane has not run (the event in flight, then the queued ones), each with the
        actions of the chain that have not run it and whether it is in flight; the lane runs
        nothing more. Once only."""
        with self._cond:
            if self._given_up:
                return []
            self._given_up = True
            self._closing = True
            left: list[tuple[Event, list[Action], bool]] = []
            if self._current is not None:
                left.append((self._current, self.actions[self._step :], True))
            left.extend((e, self.actions, False) for e in self._queue)
            self._queue.clear()
            self._cond.notify_all()
            return left

    def busy(self) -> bool:
        return self._thread.is_alive() or any(t.is_alive() for t in list(self._stale.values()))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        for t in list(self._stale.values()):
            t.join(timeout)


class ActionRunner:
    """Runs the configured actions in their lanes (see the module's docstring)."""

    def __init__(
        self,
        actions: list[Action],
        *,
        still_holds: Callable[[Event], bool],
        on_failure: OnFailure,
        on_drop: OnDrop | None = None,
        queue_size: int = QUEUE_SIZE,
        run_cap_s: float = RUN_CAP_S,
        after: ActionRunner | None = None,
        shed: Callable[[], bool] | None = None,
        inline_immediate: bool = False,
    ) -> None:
        """``after``: the runner this one replaces (a reload): this one's immediate lane starts
        once the old one's has written what it held, so the log keeps the events' order.
        ``shed``: asked before each optional action (Action.optional); True skips it, counted
        as a drop with reason "shed". ``inline_immediate``: the immediate actions that never
        block get a lane of their own, which ``submit`` runs itself when it is idle (see the
        module's docstring)."""
        self.actions = actions
        self._still_holds = still_holds
        self._on_failure = on_failure
        self._on_drop: OnDrop = on_drop or (lambda _action, _reason: None)
        immediate, chains = lane_chains(actions)
        self.holds_processes = any(a.holds_processes for a in immediate)
        """Whether events should hold their target's processes from when their pids are read
        (an immediate action such as signal uses them: Action.holds_processes)."""

        def lane(
            name: str, chain: list[Action], limit: int | None, cap: float | None, **kw: _Lane | None
        ) -> _Lane:
            return _Lane(
                name,
                chain,
                still_holds=still_holds,
                on_failure=on_failure,
                on_drop=self._on_drop,
                limit=limit,
                cap=cap,
                shed=shed,
                **kw,
            )

        onloop = [a for a in immediate if a.never_blocks] if inline_immediate else []
        rest = [a for a in immediate if a not in onloop]
        self._immediate: _Lane | None = None
        if rest:
            old = after._immediate if after is not None else None
            self._immediate = lane("actions", rest, None, None, after=old)
        self._onloop: _Lane | None = None
        """The immediate actions that never block, run by ``submit`` when idle."""
        if onloop:
            old = after._onloop if after is not None else None
            self._onloop = lane("nonblocking", onloop, None, None, after=old)
        self._slow = [
            lane("+".join(a.type for a in chain), chain, queue_size, run_cap_s) for chain in chains
        ]
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def lanes(self) -> list[tuple[str, list[str]]]:
        """(lane name, action types in order) for each lane, the immediate ones first."""
        return [(lane.name, [a.type for a in lane.actions]) for lane in self._all()]

    def _all(self) -> list[_Lane]:
        first = [lane for lane in (self._onloop, self._immediate) if lane is not None]
        return [*first, *self._slow]

    def submit(self, event: Event) -> None:
        """Hand an event to every lane; never waits for a slow one (a full slow lane drops by
        its rule). The immediate actions that never block may run here, last."""
        if self._immediate is not None:
            self._immediate.offer(event if self._onloop is None else _without_processes(event))
        for lane in self._slow:
            lane.offer(_own_copy(event))
        if self._onloop is not None and not self._onloop.run_inline(event):
            self._onloop.offer(event)

    def run_chain(self, event: Event) -> None:
        """Every action for ``event`` in configured order on the caller's thread, untimed."""
        recheck = _Recheck(self._still_holds, event)
        try:
            for action in self.actions:
                if recheck.allows(action):
                    run_action(action, event, self._on_failure)
        finally:
            if event.processes is not None:
                event.processes.close()

    # ------------------------------------------------------------------ closing
    def close(self, budget: float = CLOSE_BUDGET_S, *, reason: str = "shutdown") -> int:
        """Take no more events, let the lanes run what they hold for at most ``budget``
        seconds, then report what they did not run (logged by action and event, counted with
        ``reason``) and close the actions. Returns how many events some action did not run.

        With reason "shutdown" the actions still inside a call are left to the process's exit;
        otherwise (a reload, on a background thread) their calls are waited for first."""
        with self._close_lock:
            if self._closed:
                return 0
            self._closed = True
        end = time.monotonic() + budget
        lanes = self._all()
        for lane in lanes:
            lane.stop_input()
        for lane in lanes:
            lane.wait_drained(end)
        missed = self.abandon(reason, budget=budget)
        for lane in lanes:
            if reason != "shutdown":
                lane.join()
            elif lane.busy():
                lane.join(0.1)
            if lane.busy():
                log.debug("%s: still inside a call at exit, not closed", lane.name)
                continue
            for action in lane.actions:
                try:
                    action.close()
                except Exception as exc:
                    log.warning("closing action %s: %s", action.type, exc)
        return missed

    def abandon(self, reason: str, *, budget: float | None = None) -> int:
        """Stop every lane now and report what it has not run; the count of such events."""
        missed = 0
        for lane in self._all():
            lane.stop_input()
            left = lane.give_up()
            if not left:
                continue
            missed += len(left)
            names = sorted({a.type for _e, actions, _f in left for a in actions})
            within = f" within {budget:g} s" if budget is not None else ""
            log.warning(
                "%s: %d event(s) not delivered%s (%s): %s",
                ", ".join(names),
                len(left),
                within,
                reason,
                "; ".join(describe(e) + (" (in flight)" if f else "") for e, _a, f in left),
            )
            for _event, actions, _f in left:
                for action in actions:
                    self._on_drop(action.type, reason)
        return missed
