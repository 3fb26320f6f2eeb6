"""The action chain's worker: events are handed over from the daemon's loop and run on one
thread in build order (actions.registry.build_actions), so a slow action never delays the next
wake-up. Destructive actions first ask whether the event still holds for a fresh reading
(``still_holds``: the daemon re-reads the target and asks the engine) and are skipped when it
does not."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from pressured.actions.base import Action
from pressured.errors import ActionError
from pressured.model import Event, PressureEvent

log = logging.getLogger("pressured.actions")


class ActionRunner:
    """Runs the action chain for each event on one worker thread, in order."""

    def __init__(
        self,
        actions: list[Action],
        *,
        still_holds: Callable[[Event], bool],
        on_failure: Callable[[str], None],
    ) -> None:
        self.actions = actions
        self._still_holds = still_holds
        self._on_failure = on_failure
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="pressured-actions", daemon=True)
        self._thread.start()

    def submit(self, event: Event) -> None:
        self._queue.put(event)

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self.run_chain(event)

    def run_chain(self, event: Event) -> None:
        still_valid: bool | None = None
        for action in self.actions:
            if (
                action.destructive
                and isinstance(event, PressureEvent)
                and event.severity != "recovered"
            ):
                if still_valid is None:
                    still_valid = self._still_holds(event)
                if not still_valid:
                    log.info(
                        "%s skipped for %s: the target recovered before it ran",
                        action.type,
                        event.cgroup,
                    )
                    continue
            try:
                action.run(event)
            except ActionError as exc:
                log.warning("action %s failed for %s: %s", action.type, event.cgroup, exc)
                self._on_failure(action.type)
            except Exception as exc:
                log.error(
                    "action %s raised for %s: %s: %s",
                    action.type,
                    event.cgroup,
                    type(exc).__name__,
                    exc,
                )
                self._on_failure(action.type)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        for a in self.actions:
            try:
                a.close()
            except Exception as exc:
                log.warning("closing action %s: %s", a.type, exc)
