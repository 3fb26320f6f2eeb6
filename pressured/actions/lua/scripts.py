"""The scripts of one ``lua`` section, run in a worker process (the package docstring says what
a script sees).

LuaScripts validates a ``plugins.lua``-shaped section, starts a worker (worker.py, driven
through process.py) and has it load every script: each top level runs there, so a syntax error
or a failing top level is a LuaError naming the file and line. Then each event is one request
per script to the worker, which calls the script's on_event in the script's own interpreter.

Nothing a script does runs in the daemon's process: the daemon waits for each answer in poll(2),
without the GIL, for at most the script's timeout_ms plus KILL_GRACE_MS (budget.py). The hook in
the worker stops a runaway Lua loop at timeout_ms; a call the hook cannot interrupt (one long C
call, such as a pathological string.find) gets the worker killed at the grace's end, and the
failure says "timed out after N ms, worker killed". A worker that dies (its CPU or memory limit,
a crash) is reaped and reported the same way. The next call then starts a new worker, which
loads every script again: the globals scripts kept are lost with the killed one.

A failing handler (error, timeout, memory, a dead worker) is logged with the script name and
line and reported in ``LuaScripts.run``'s result; the other handlers and later events run
normally.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pressured.actions.base import ActionContext
from pressured.actions.lua.budget import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_MS,
    KILL_GRACE_MS,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_MS,
    START_TIMEOUT_MS,
)
from pressured.actions.lua.convert import clip
from pressured.actions.lua.process import WorkerGone, WorkerProcess, WorkerTimeout, levels
from pressured.actions.lua.sandbox import ScriptFailure, ScriptSource
from pressured.errors import ConfigError, LuaError, quote
from pressured.k8s.annotations import validated_annotations
from pressured.model import Event
from pressured.settings import Checker

log = logging.getLogger("pressured.lua")

_SOURCE_KEYS = ("script", "scripts_dir", "inline_script")
_KNOWN_KEYS = {*_SOURCE_KEYS, "timeout_ms", "memory_mb", "env_allow"}
_QUOTE_WORKER = 1000
"""Characters of a worker's own error message quoted (a load failure names file and line)."""


class LuaScripts:
    """The loaded scripts of one ``plugins.lua``-shaped section, in one worker process, each in
    its own interpreter."""

    def __init__(
        self,
        sources: Sequence[ScriptSource],
        *,
        ctx: ActionContext,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        memory_mb: int = DEFAULT_MEMORY_MB,
        env_allow: Sequence[str] = (),
    ) -> None:
        """Start the worker, compile and run the top level of every script; raises LuaError
        naming the script."""
        self.ctx = ctx
        self.sources = list(sources)
        self.timeout_ms = timeout_ms
        self.memory_mb = memory_mb
        self.env_allow = frozenset(env_allow)
        self.config: Mapping[str, Any] = ctx.config
        self.workers_started = 0
        """Workers started so far: 1 at start, one more after each killed or dead one."""
        self._worker: WorkerProcess | None = None
        self._not_loaded: dict[int, str] = {}
        """Scripts whose top level failed when a new worker loaded them again."""
        self._lock = threading.Lock()
        try:
            self._start(again=False)
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return [source.name for source in self.sources]

    @property
    def worker_pid(self) -> int | None:
        """The pid of the running worker (None between a killed one and the next call)."""
        return None if self._worker is None else self._worker.pid

    @property
    def _call_timeout_s(self) -> float:
        return (self.timeout_ms + KILL_GRACE_MS) / 1000

    def _start(self, again: bool) -> WorkerProcess:
        """A new worker with every script loaded. A script whose top level fails is a LuaError
        at start; ``again`` (after a worker was lost) it is remembered and reported at each of
        its calls instead. A worker that cannot start or load is a LuaError."""
        try:
            worker = WorkerProcess(self.env_allow, self.ctx.storage_factory, self.memory_mb)
        except OSError as exc:
            raise LuaError(f"cannot start the Lua worker: {exc}") from exc
        self._worker = worker
        self.workers_started += 1
        init = {
            "op": "init",
            "scripts": [source.to_json() for source in self.sources],
            "timeout_ms": self.timeout_ms,
            "memory_mb": self.memory_mb,
            "env_allow": sorted(self.env_allow),
            "config": self.config,
            "storage": self.ctx.storage_factory is not None,
            "levels": levels(),
        }
        try:
            answer = worker.request(init, START_TIMEOUT_MS / 1000)
        except WorkerGone as exc:
            raise LuaError(f"the Lua worker did not start ({exc})") from exc
        if answer.get("error") is not None:
            raise LuaError(clip(str(answer["error"]), _QUOTE_WORKER))
        self._not_loaded = {}
        for index, source in enumerate(self.sources):
            load = {"op": "load", "index": index, "levels": levels()}
            try:
                answer = worker.request(load, self._call_timeout_s)
            except WorkerTimeout as exc:
                raise LuaError(f"{source.name}: {self._killed_message()}") from exc
            except WorkerGone as exc:
                raise LuaError(f"{source.name}: the Lua worker ended ({exc})") from exc
            error = answer.get("error")
            if error is not None:
                message = clip(str(error), _QUOTE_WORKER)
                if not again:
                    raise LuaError(message)
                log.error("lua: %s (loading it in a new worker)", message)
                self._not_loaded[index] = message
        return worker

    def _killed_message(self) -> str:
        return f"timed out after {self.timeout_ms} ms, worker killed"

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], where: str = "plugins.lua", *, ctx: ActionContext
    ) -> LuaScripts:
        """Validate a ``plugins.lua`` section (or a ``{type: lua}`` action entry) and load its
        scripts; every problem is a ConfigError naming ``where.key``."""
        check = Checker()
        if not isinstance(section, Mapping):
            check.bad(where, "expected a mapping", section)
            check.raise_if_any()
        own = {k: v for k, v in section.items() if k != "type"}  # an action entry names its type
        options = check.section(own, where, _KNOWN_KEYS, noun="option")
        given = [k for k in _SOURCE_KEYS if options.get(k) is not None]
        if len(given) != 1:
            check.add(
                f"{where}: set exactly one of script, scripts_dir, inline_script "
                f"(got {', '.join(given) if given else 'none'})"
            )
        timeout_ms = check.number(
            options.get("timeout_ms", DEFAULT_TIMEOUT_MS),
            f"{where}.timeout_ms",
            DEFAULT_TIMEOUT_MS,
            min=1,
            max=MAX_TIMEOUT_MS,
            integer=True,
            expected=f"a positive integer up to {MAX_TIMEOUT_MS}",
        )
        memory_mb = check.number(
            options.get("memory_mb", DEFAULT_MEMORY_MB),
            f"{where}.memory_mb",
            DEFAULT_MEMORY_MB,
            min=1,
            max=MAX_MEMORY_MB,
            integer=True,
            expected=f"a positive integer up to {MAX_MEMORY_MB}",
        )
        env_allow = options.get("env_allow", [])
        if not isinstance(env_allow, list) or not all(isinstance(n, str) for n in env_allow):
            check.bad(f"{where}.env_allow", "expected a list of names", env_allow)
        check.raise_if_any()
        key = given[0]
        sources = _sources(key, options[key], f"{where}.{key}")
        try:
            return cls(
                sources, ctx=ctx, timeout_ms=timeout_ms, memory_mb=memory_mb, env_allow=env_allow
            )
        except LuaError as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from exc

    def run(self, event: Event) -> list[ScriptFailure]:
        """Call every script's on_event; a failure is logged and returned, never raised."""
        event_json, pprof = script_view(event)
        dry_run = bool(self.ctx.dry_run or event.dry_run)
        failures: list[ScriptFailure] = []
        with self._lock:
            for index, source in enumerate(self.sources):
                ctx = {"dry_run": dry_run, "script": source.name, "pprof": pprof}
                failure = self._run_one(index, source, event_json, ctx)
                if failure is not None:
                    log.error("%s", failure)
                    failures.append(failure)
        return failures

    def _run_one(
        self,
        index: int,
        source: ScriptSource,
        event_json: Mapping[str, Any],
        ctx: Mapping[str, Any],
    ) -> ScriptFailure | None:
        request = {"op": "run", "index": index, "event": event_json, "ctx": ctx}
        for attempt in (1, 2):
            worker = self._live_worker(source)
            if isinstance(worker, ScriptFailure):
                return worker
            if index in self._not_loaded:
                return ScriptFailure(source.name, f"not loaded: {self._not_loaded[index]}")
            try:
                answer = worker.request({**request, "levels": levels()}, self._call_timeout_s)
            except WorkerTimeout:
                self._worker = None
                return ScriptFailure(source.name, self._killed_message(), kind="timeout")
            except WorkerGone as exc:
                self._worker = None
                if not exc.delivered and attempt == 1:
                    # it ended between two calls, before this one reached it: nothing ran
                    log.warning("lua: the Lua worker (pid %d) ended (%s)", worker.pid, exc)
                    continue
                return ScriptFailure(
                    source.name,
                    f"the Lua worker ended ({exc}); a new one takes the next call",
                    kind="crashed",
                )
            if answer.get("error") is not None:
                return ScriptFailure(source.name, f"the Lua worker failed: {answer['error']}")
            failure = answer.get("failure")
            return None if failure is None else ScriptFailure.from_json(failure, source.name)
        raise AssertionError("unreachable")  # pragma: no cover

    def _live_worker(self, source: ScriptSource) -> WorkerProcess | ScriptFailure:
        """The running worker, or a new one when there is none (or it ended while idle)."""
        worker = self._worker
        if worker is not None and not worker.alive():
            log.warning("lua: the Lua worker (pid %d) ended (%s)", worker.pid, worker.reap())
            worker = self._worker = None
        if worker is None:
            try:
                worker = self._start(again=True)
            except LuaError as exc:
                self._drop_worker()
                return ScriptFailure(source.name, f"no Lua worker: {exc}", kind="crashed")
            log.warning("lua: a new Lua worker (pid %d) has loaded the scripts", worker.pid)
        return worker

    def _drop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def close(self) -> None:
        """Stop the worker (it ends, or is killed after a second)."""
        with self._lock:
            self._drop_worker()


def script_view(event: Event) -> tuple[dict[str, Any], dict[str, Any]]:
    """The event as scripts see it, and their ``ctx.pprof``. A pod's owner writes its
    annotations: the ``pressured.io/*`` ones are checked as the daemon checks them
    (pressured.k8s.annotations), a refused value is left out and logged, and ``ctx.pprof``
    holds the accepted pprof settings as values (``port`` an integer)."""
    ident = event.identity
    where = f"{ident.namespace}/{ident.pod_name}" if ident.pod_name else event.key or event.cgroup
    annotations, settings = validated_annotations(event.annotations, where)
    for warning in settings.warnings:
        log.warning("lua: %s (refused: Lua scripts do not see it)", warning)
    event_json = event.to_json()
    event_json["annotations"] = annotations
    pprof = {
        "enabled": settings.pprof.enabled,
        "port": settings.pprof.port,
        "path": settings.pprof.path,
    }
    return event_json, {k: v for k, v in pprof.items() if v is not None}


def _sources(key: str, value: Any, where: str) -> list[ScriptSource]:
    check = Checker()
    if key == "inline_script":
        text = check.text(value, where, "", empty=False, expected="Lua source text")
        check.raise_if_any()
        return [ScriptSource.inline(text)]
    path = Path(check.text(value, where, "", empty=False, expected="a path"))
    check.raise_if_any()
    if key == "script":
        if not path.is_file():
            raise ConfigError(f"{where}: no such file (got {quote(value)})")
        files = [path]
    else:
        if not path.is_dir():
            raise ConfigError(f"{where}: no such directory (got {quote(value)})")
        files = sorted(p for p in path.glob("*.lua") if p.is_file())
        if not files:
            raise ConfigError(f"{where}: no *.lua files in {quote(value)}")
    out = []
    for file in files:
        try:
            out.append(ScriptSource.from_file(file))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read {file}: {exc}") from exc
    return out
