"""signal: a Unix signal per severity to the processes of the target cgroup.

Defaults: SIGUSR1 for warn, SIGUSR2 for critical (OOMHero's). ``processes: all`` (default)
or ``oldest``. Never PID 1 of a pod (a process that is PID 1 in its own PID namespace: the
pause container or the container's init, whose death restarts the pod), never pressured itself.
A failed kill() is logged and counted, never fatal.

A signal goes to a process, never to a number. The event's ``processes`` hold the target's
processes from when their pids (``extra["pids"]``, from cgroup.procs) were read, through pidfds
where the kernel has them (kernel.pidfd.open_processes, called where the event is emitted). Just
before sending, each must still be in the memory cgroup it was read in: one that left is not
signalled, one that exited is "gone" (info, not an error). An event that holds none has its pids
opened here, and only those the target's cgroup.procs lists after that are signalled.

Which processes qualify (namespace inits, the oldest) is looked up under the context's proc
root: cgroup.procs numbers pids in the reader's PID namespace, also when a sidecar reads a
container's cgroup through /proc/PID/root.
"""

from __future__ import annotations

import errno
import logging
import os
import signal as _signal
from collections.abc import Mapping
from typing import Any

from pressured.actions.base import IMMEDIATE, Action, ActionContext
from pressured.config import parse_signal
from pressured.errors import ActionError, CgroupFileError, ConfigError
from pressured.kernel.cgroupfs import read_procs
from pressured.kernel.pidfd import ProcessHandle, ProcessHandles, open_processes
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
    lane = IMMEDIATE  # a kill(2): never behind network work
    holds_processes = True
    never_blocks = True

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
        if event.processes is not None:
            self._send(event, event.processes, sig)
            return
        # Not held since they were read: opened now, and kept only where the target's
        # cgroup.procs lists them after that (a number now held by a process elsewhere is not)
        pids = [int(p) for p in event.extra.get("pids", [])]
        try:
            held = open_processes(
                pids, self.ctx.proc_root, members=lambda: read_procs(event.cgroup)
            )
        except CgroupFileError as exc:
            log.info(
                "signal: cannot tell which processes are in %s (%s): %s not sent",
                event.cgroup,
                exc.reason,
                _signal.Signals(sig).name,
            )
            return
        with held:
            left = sorted(set(pids) - set(held.pids))
            if left:
                log.info(
                    "signal: pids %s are no longer in %s (exited or moved), skipped",
                    left,
                    event.cgroup,
                )
            self._send(event, held, sig)

    def _send(self, event: Event, held: ProcessHandles, sig: int) -> None:
        name = _signal.Signals(sig).name
        proc = self.ctx.proc_root
        by_pid: dict[int, ProcessHandle] = {}
        for h in held:
            why = h.refusal()
            if why is not None:
                log.info("signal: pid %d %s: %s not sent", h.pid, why, name)
            else:
                by_pid.setdefault(h.pid, h)
        ready = [by_pid[p] for p in self.choose(list(by_pid), proc)]
        if not ready:
            log.info("signal: no process to send %s to in %s", name, event.cgroup)
            return
        if self.ctx.dry_run:
            log.info(
                "dry-run: would send %s to pids %s of %s",
                name,
                [h.pid for h in ready],
                event.cgroup,
            )
            return
        sent: list[int] = []
        failed: list[str] = []
        for h in ready:
            try:
                h.send(sig)
            except ProcessLookupError:
                # exited since it was read: the signal reached nobody, whoever has the number
                log.info("signal: pid %d of %s is gone: %s not sent", h.pid, event.cgroup, name)
            except OSError as exc:
                failed.append(f"pid {h.pid}: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
            else:
                sent.append(h.pid)
        if sent:
            log.info("sent %s to pids %s of %s", name, sent, event.cgroup)
        if failed:
            raise ActionError(f"signal {name} failed in {event.cgroup}: {', '.join(failed)}")


__all__ = ["PROCESSES", "TERMINATING", "SignalAction", "is_namespace_init"]
