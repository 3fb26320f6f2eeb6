"""signal: a Unix signal per severity to the processes of the target cgroup.

Defaults: SIGUSR1 for warn, SIGUSR2 for critical (OOMHero's). ``processes: all`` (default)
or ``oldest``. Never PID 1 of a pod (a process that is PID 1 in its own PID namespace: the
pause container or the container's init, whose death restarts the pod), never pressured itself.
A failed kill() is logged and counted, never fatal.

The pids come from the event (``extra["pids"]``, read from cgroup.procs by the daemon) and are
looked up under ``extra["proc_root"]`` when the daemon sees the target's processes through
another /proc (sidecar mode), else under the context's proc root.
"""

from __future__ import annotations

import errno
import logging
import os
import signal as _signal
from collections.abc import Mapping
from typing import Any

from pressured.actions.base import Action, ActionContext
from pressured.config import parse_signal
from pressured.errors import ActionError, ConfigError
from pressured.kernel.procfs import is_namespace_init, namespace_pids, started_after_boot
from pressured.model import Event

log = logging.getLogger("pressured.actions.signal")

TERMINATING = {
    _signal.SIGKILL,
    _signal.SIGTERM,
    _signal.SIGINT,
    _signal.SIGQUIT,
    _signal.SIGABRT,
}
PROCESSES = ("all", "oldest")


class SignalAction(Action):
    type = "signal"

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown({"warn", "critical", "processes", "recovered"})
        self.signals: dict[str, int] = {}
        for severity, default in (
            ("warn", "SIGUSR1"),
            ("critical", "SIGUSR2"),
            ("recovered", None),
        ):
            raw = self.options.get(severity, default)
            if raw is None or raw is False:
                continue  # `warn: false` (or null) turns a severity off
            self.signals[severity] = parse_signal(raw, f"{where}.{severity}")
        self.processes = self.opt("processes", str, "all")
        if self.processes not in PROCESSES:
            raise ConfigError(
                f"{where}.processes: must be 'all' or 'oldest', got {self.processes!r}"
            )

    @property
    def destructive(self) -> bool:  # type: ignore[override]
        return any(s in TERMINATING for s in self.signals.values())

    def choose(self, pids: list[int], proc: str) -> list[int]:
        """The pids to signal: never ourselves, never a namespace's init, never a pid whose
        /proc entry is gone (it exited, and the number may be reused)."""
        me = os.getpid()
        out: list[int] = []
        for pid in pids:
            if pid == me or pid <= 0:
                continue
            fields = namespace_pids(pid, proc)
            if fields is None:
                log.debug("signal: pid %d has no %s/%d/status, skipped", pid, proc, pid)
                continue
            if (fields[-1] == "1") if fields else pid == 1:
                log.debug("signal: pid %d is PID 1 of its namespace, skipped", pid)
                continue
            out.append(pid)
        if self.processes == "oldest" and out:
            started = [(t, p) for p in out if (t := started_after_boot(p, proc)) is not None]
            return [min(started)[1]] if started else []
        return out

    def run(self, event: Event) -> None:
        sig = self.signals.get(event.severity)
        if sig is None:
            return
        pids = [int(p) for p in event.extra.get("pids", [])]
        proc = str(event.extra.get("proc_root") or self.ctx.proc_root)
        chosen = self.choose(pids, proc)
        name = _signal.Signals(sig).name
        if not chosen:
            log.info("signal: no process to send %s to in %s", name, event.cgroup)
            return
        if self.ctx.dry_run:
            log.info("dry-run: would send %s to pids %s of %s", name, chosen, event.cgroup)
            return
        sent: list[int] = []
        failed: list[str] = []
        for pid in chosen:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue  # exited since the cgroup was read: nothing to signal
            except OSError as exc:
                failed.append(f"pid {pid}: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
            else:
                sent.append(pid)
        if sent:
            log.info("sent %s to pids %s of %s", name, sent, event.cgroup)
        if failed:
            raise ActionError(f"signal {name} failed in {event.cgroup}: {', '.join(failed)}")


__all__ = ["PROCESSES", "TERMINATING", "SignalAction", "is_namespace_init"]
