"""exec: run a command with the event JSON on stdin and PRESSURED_* variables, with a timeout."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError
from pressured.model import Event

log = logging.getLogger("pressured.actions.exec")


def event_env(doc: Mapping[str, Any]) -> dict[str, str]:
    """PRESSURED_<FIELD> for every scalar field of the event (PRESSURED_SEVERITY, ...)."""
    out = {}
    for key, value in doc.items():
        if value is None or isinstance(value, dict | list):
            continue
        out[f"PRESSURED_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    psi = doc.get("psi") or {}
    for key, value in psi.items():
        if value is not None:
            out[f"PRESSURED_PSI_{key.upper()}"] = str(value)
    return out


class ExecAction(Action):
    type = "exec"

    def __init__(self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]") -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown({"command", "timeout_ms", "severities", "env"})
        command = self.opt("command", (str, list), required=True)
        self.argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        if not self.argv:
            raise ConfigError(f"{where}.command: must not be empty")
        self.timeout = self.opt("timeout_ms", int, 10_000) / 1000
        if self.timeout <= 0:
            raise ConfigError(f"{where}.timeout_ms: must be positive")
        sev = self.opt("severities", list, ["warn", "critical", "recovered", "oom_killed"])
        self.severities = {str(s) for s in sev}
        self.env = {str(k): str(v) for k, v in self.opt("env", dict, {}).items()}

    def run(self, event: Event) -> None:
        if event.severity not in self.severities:
            return
        doc = event.to_json()
        if self.ctx.dry_run:
            log.info("dry-run: would run %s for %s %s", self.argv, event.severity, event.cgroup)
            return
        env = {**os.environ, **self.env, **event_env(doc)}
        try:
            done = subprocess.run(
                self.argv, input=json.dumps(doc).encode(), env=env, capture_output=True,
                timeout=self.timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ActionError(f"exec {self.argv[0]}: killed after timeout {self.timeout:g}s") from exc
        except OSError as exc:
            raise ActionError(f"exec {self.argv[0]}: cannot run: {exc.strerror}") from exc
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise ActionError(f"exec {self.argv[0]}: exit status {done.returncode}: {tail[0][:200]}")
