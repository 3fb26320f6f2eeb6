"""log: one JSON line per event (the event contract) to stdout or a file."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError
from pressured.model import Event


class LogAction(Action):
    type = "log"

    def __init__(self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]") -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown({"path"})
        path = self.opt("path", str, ctx.extra.get("events_out") or ctx.config.get("events_out"))
        self._lock = threading.Lock()
        self._own = False
        self._out: IO[str]
        if path in (None, "-"):
            self._out = sys.stdout
        else:
            try:
                self._out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - held for the daemon's life
            except OSError as exc:
                raise ConfigError(f"{where}.path: cannot open {path!r} for appending: {exc.strerror}") from exc
            self._own = True

    def run(self, event: Event) -> None:
        # dry_run has no effect here: the line is the record of what happened, and it says dry_run
        line = json.dumps(event.to_json(), separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except OSError as exc:
                raise ActionError(f"log: cannot write event: {exc.strerror}") from exc

    def close(self) -> None:
        if self._own:
            self._out.close()
