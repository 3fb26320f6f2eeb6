"""exec: run a command with the event JSON on stdin and PRESSURED_* variables, with a timeout.

The command runs in its own session so that a timeout kills everything it started (a shell's
children included), not only the first process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError
from pressured.model import Event

log = logging.getLogger("pressured.actions.exec")

STDERR_TAIL = 200


def event_env(doc: Mapping[str, Any]) -> dict[str, str]:
    """PRESSURED_<FIELD> for every scalar field of the event (PRESSURED_SEVERITY, ...)."""
    out = {}
    for key, value in doc.items():
        if value is None or isinstance(value, dict | list):
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out[f"PRESSURED_{key.upper()}"] = text
    psi = doc.get("psi") or {}
    for key, value in psi.items():
        if value is not None:
            out[f"PRESSURED_PSI_{key.upper()}"] = str(value)
    return out


def _status(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


class ExecAction(Action):
    type = "exec"

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown({"command", "timeout_ms", "severities", "env"})
        command = self.opt("command", (str, list), required=True)
        if isinstance(command, str):
            try:
                self.argv = shlex.split(command)
            except ValueError as exc:
                raise ConfigError(f"{where}.command: cannot split {command!r}: {exc}") from exc
        else:
            if not all(isinstance(c, str | int | float) for c in command):
                raise ConfigError(f"{where}.command: expected a list of words, got {command!r}")
            self.argv = [str(c) for c in command]
        if not self.argv or not self.argv[0]:
            raise ConfigError(f"{where}.command: must not be empty, got {command!r}")
        timeout_ms = self.opt("timeout_ms", int, 10_000)
        if timeout_ms <= 0:
            raise ConfigError(f"{where}.timeout_ms: must be positive, got {timeout_ms!r}")
        self.timeout = timeout_ms / 1000
        self.severities = self.severities_opt()
        self.env = {str(k): str(v) for k, v in self.opt("env", dict, {}).items()}

    def run(self, event: Event) -> None:
        if event.severity not in self.severities:
            return
        doc = event.to_json()
        if self.ctx.dry_run:
            log.info("dry-run: would run %s for %s %s", self.argv, event.severity, event.cgroup)
            return
        env = {**os.environ, **self.env, **event_env(doc)}
        name = self.argv[0]
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ActionError(f"exec {name}: cannot run: {exc.strerror}") from exc
        try:
            _, stderr = proc.communicate(json.dumps(doc).encode(), timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                # something left the session and holds the pipes: stop waiting for it
                proc.kill()
                proc.wait()
            raise ActionError(f"exec {name}: killed after timeout {self.timeout:g}s") from exc
        if proc.returncode != 0:
            lines = stderr.decode("utf-8", "replace").strip().splitlines()
            tail = lines[-1][:STDERR_TAIL] if lines else "(no stderr)"
            status = _status(proc.returncode)
            raise ActionError(f"exec {name}: {status}: {tail}")
        log.debug("exec %s done for %s %s", name, event.severity, event.cgroup)
