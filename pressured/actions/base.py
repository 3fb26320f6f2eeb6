"""The action plugin contract (validate at start, act at run time).

An action class is registered in the ``pressured.actions.v1`` entry-point group under its
``type`` name. The daemon builds one instance per entry of ``actions:`` at start:

    instance = ActionClass(options, ctx)   # validate; raise ConfigError naming "actions[i].key"

and calls ``instance.run(event)`` for each event, in its lane (actions/runner.py): an action's
``lane`` is "immediate" (local work that must never wait: log, signal; run in configured order
on one thread) or "slow" (network, processes, storage: exec, webhook, heapdump, lua,
k8s-event, evict and any plugin that says nothing; each on a thread of its own, with a bounded
queue and a deadline per run, ``run_deadline_s``). ``run`` raises
ActionError for a failure worth counting (actions_failed_total); any other exception is caught
by the daemon, logged with the action's name, and counted the same way. Nothing an action does
stops the daemon. With ``ctx.dry_run`` an action has no side effect at all: it logs what it
would have done and returns.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pressured.errors import ConfigError
from pressured.model import Event
from pressured.settings import COMMA, Checker

SEVERITIES = ("warn", "critical", "recovered", "oom_killed", "thrash")
"""What an event's ``severity`` can be: the engine's three, a confirmed kill, and page-cache
thrash (event_type "memory_thrash": pressure, no OOM risk)."""

IMMEDIATE = "immediate"
SLOW = "slow"
LANES = (IMMEDIATE, SLOW)


@dataclass
class ActionContext:
    """What every action may use; filled in by the daemon (tests build their own)."""

    dry_run: bool = False
    mode: str = "local"
    node_name: str | None = None
    proc_root: str = "/proc"
    config: Mapping[str, Any] = field(default_factory=dict)
    """The whole effective configuration, as plain data (Lua's global ``config``)."""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("pressured.actions"))
    storage_factory: Callable[[], Any] | None = None
    """Returns the configured Storage (pressured.storage.base.Storage), built on first use."""
    reread: Callable[[str], Any] | None = None
    """reread(target_key) -> fresh Sample or None: destructive actions re-check before acting."""
    kube: Any = None
    """The Kubernetes client wrapper (pressured.k8s) in node/sidecar/cluster modes, else None."""
    extra: dict[str, Any] = field(default_factory=dict)


class Action:
    """Base class: subclasses set ``type`` and override ``run``."""

    type: ClassVar[str] = ""
    destructive: ClassVar[bool] = False
    """Destructive actions (signal, evict) run only after the daemon re-read the target."""
    holds_processes: ClassVar[bool] = False
    """The action acts on the target's processes (signal): events for it should carry them
    held open from when their pids were read (``event.processes``, kernel.pidfd)."""
    lane: ClassVar[str] = SLOW
    """IMMEDIATE: runs at once, in order with the other immediate actions, never behind network
    work; it must not block (no network, no child process). SLOW: its own worker thread and
    bounded queue; it may wait on the network, but only until ``run_deadline_s``."""

    never_blocks: ClassVar[bool] = False
    """Only for IMMEDIATE actions whose run makes no call that can block (signal: a kill(2) per
    process, no output of its own but log records): the daemon runs them on its loop's thread
    when nothing of theirs is pending, so a crossing reaches them without a thread hand-off. An
    immediate action that writes a stream (log: stdout can fill) never runs there."""

    enriches: ClassVar[bool] = False
    """It adds to ``event.extra`` what the actions after it report (heapdump's pprof_top): the
    slow actions configured after it run in its lane, after it, and see what it added."""
    optional: ClassVar[bool] = False
    """Work the daemon sheds near its own memory limit (heap captures, Lua: they hold large
    buffers or a second interpreter); the runner skips it then (daemon/selfwatch.py)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.lane not in LANES:
            raise TypeError(f"{cls.__name__}.lane must be one of {LANES}, got {cls.lane!r}")
        if cls.never_blocks and cls.lane != IMMEDIATE:
            raise TypeError(f"{cls.__name__}.never_blocks is only for {IMMEDIATE!r} actions")

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        self.options = dict(options)
        self.ctx = ctx
        self.where = where

    def run(self, event: Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release what the action holds (clients, interpreters)."""

    def run_deadline_s(self) -> float | None:
        """The longest one ``run`` may take, from the action's own options (timeouts, retries);
        None: the runner's cap (actions.runner.RUN_CAP_S). A slow run past it is abandoned by
        the runner, which goes on with the next event."""
        return None

    # helpers for option validation: every error names actions[i].key and the bad value
    def opt(
        self,
        key: str,
        kind: builtins.type | tuple[builtins.type, ...],
        default: Any = None,
        *,
        required: bool = False,
    ) -> Any:
        """The option ``key`` of the Python type ``kind``; a number where ``kind`` is float or
        (int, float): a finite float."""
        where = f"{self.where}.{key}"
        if key not in self.options:
            if required:
                raise ConfigError(f"{where}: required for type {self.type!r}")
            return default
        check = Checker(got=COMMA)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and set(kinds) <= {int, float}:
            value = check.number(self.options[key], where, None)
        else:
            value = check.kind(self.options[key], where, kinds)
        check.raise_if_any()
        return value

    def at_most(self, key: str, value: float | None, most: float) -> None:
        """Refuse an option above its upper bound (None: not given)."""
        if value is not None:
            check = Checker(got=COMMA)
            integer = isinstance(value, int)
            check.number(value, f"{self.where}.{key}", None, max=most, integer=integer)
            check.raise_if_any()

    def severities_opt(self, default: tuple[str, ...] = SEVERITIES) -> set[str]:
        """The ``severities`` option: which events the action handles, each name checked."""
        raw = self.opt("severities", list, list(default))
        check = Checker(got=COMMA)
        out = {
            s
            for i, s in enumerate(raw)
            if check.choice(s, f"{self.where}.severities[{i}]", SEVERITIES, None) is not None
        }
        check.raise_if_any()
        return out

    def reject_unknown(self, known: set[str]) -> None:
        check = Checker(got=COMMA)
        options = {k: v for k, v in self.options.items() if k != "type"}
        check.section(options, self.where, known, noun=f"option for type {self.type!r}")
        check.raise_if_any()
