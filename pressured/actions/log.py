"""log: one JSON line per event (the event contract) to stdout or a file.

The file (``path``, else ``--events-out``, else stdout) is checked at start and opened on the
first event, so that `pressured config check` validates it without creating it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from pressured.actions.base import IMMEDIATE, Action, ActionContext
from pressured.errors import ActionError, ConfigError
from pressured.model import Event


class LogAction(Action):
    type = "log"
    lane = IMMEDIATE  # the line is the record: written when the event is made

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown({"path"})
        default = ctx.extra.get("events_out") or ctx.config.get("events_out")
        path = self.opt("path", str, default)
        self.path: str | None = None if path in (None, "", "-") else str(path)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if self.path is not None:
            _check_appendable(
                self.path, f"{where}.path" if "path" in self.options else "events_out"
            )

    def _out(self) -> IO[str]:
        if self.path is None:
            return sys.stdout  # looked up per event: whoever redirected stdout gets the lines
        if self._file is None:
            try:
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - held until close()
            except OSError as exc:
                raise ActionError(f"log: cannot open {self.path}: {exc.strerror}") from exc
        return self._file

    def run(self, event: Event) -> None:
        # dry_run has no effect here: the line is the record of what happened, and it says dry_run
        line = json.dumps(event.to_json(), separators=(",", ":"), default=str)
        with self._lock:
            out = self._out()
            try:
                out.write(line + "\n")
                out.flush()
            except OSError as exc:
                raise ActionError(
                    f"log: cannot write event to {self.path or 'stdout'}: {exc.strerror}"
                ) from exc

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _check_appendable(path: str, where: str) -> None:
    """Refuse at start what the first event could not be written to."""
    if os.path.isdir(path):
        raise ConfigError(f"{where}: {path!r} is a directory")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{where}: {path!r} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"{where}: {path!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {path!r}: cannot create files in {parent!r}")
