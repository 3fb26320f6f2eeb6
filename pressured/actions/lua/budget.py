"""The limits of one script's interpreter: its time budget and its memory cap.

``timeout_ms`` (default 5000) bounds each call of a script (its top level at start and each
on_event): a count hook checks a monotonic deadline every HOOK_INSTRUCTIONS VM instructions and
raises "pressured: script <name> exceeded timeout_ms=<N>". Lua hooks are per coroutine, so
coroutine.create/wrap install the same hook in every coroutine they make; pcall, xpcall and
coroutine.resume re-raise the timeout, so a script cannot catch it and go on. Two corners of Lua
5.4 are closed by hand: a message handler runs with hooks off when the error came from a hook,
so after the timeout xpcall skips the script's handler; and near the C-stack limit the hook
cannot be called at all (Lua raises "C stack overflow" instead), so those wrappers also check
the deadline on every error they catch. HTTP calls take their timeout from what is left of the
budget. A single long C call (a pathological string.find) is not interruptible by a hook: the
daemon kills the worker process the scripts run in KILL_GRACE_MS after timeout_ms (scripts.py),
and the worker's CPU limit ends it even without the daemon (worker.py). ``memory_mb`` (default
64) caps each
script's interpreter (lupa's allocator limit); exceeding it is a Lua "not enough memory" error
in that script. Data the host hands to Lua is sized first, because lupa cannot recover from a
failed allocation while Python pushes values (it aborts the process or deadlocks; measured with
lupa 2.8): the host raises the interpreter's limit by exactly what it is about to push and
lowers it back as soon as the script has the value, so a script that is already over its cap
fails at its next allocation.

The hook and the wrappers that re-raise the timeout are Lua, in prelude.lua; Budget is the host's
side: the deadline, the cap, and the reserve made before each push.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_TIMEOUT_MS = 5000
DEFAULT_MEMORY_MB = 64
MAX_TIMEOUT_MS = 60_000
"""The longest timeout_ms a script may be given: a minute, as for a webhook. The actions run one
after another on one thread (actions/runner.py): a longer call holds up every action after it."""
MAX_MEMORY_MB = 4096
"""The largest memory_mb: the worker's address-space limit grows by several times each
script's cap (worker.py), so an unbounded one is an unbounded worker."""
HOOK_INSTRUCTIONS = 1000
"""VM instructions between deadline checks: one Python call per ~1000 instructions costs a few
per cent of a tight loop and stops a runaway script within a fraction of a millisecond."""

KILL_GRACE_MS = 1000
"""How long past a call's timeout_ms the daemon waits for the worker's answer before it kills
the worker: the hook stops a script within a fraction of a millisecond, so only a call the hook
cannot interrupt (one long C call) or a wedged worker ever uses it."""
CPU_SLACK_S = 2
"""CPU seconds allowed past a call's timeout and grace before the kernel kills the worker."""
START_TIMEOUT_MS = 30000
"""Time a new worker has to start and answer (Python, lupa and httpx imported)."""

MIB = 1024 * 1024
PUSH_SLACK = 64 * 1024
"""Bytes allowed on top of an estimate when the host pushes values into Lua (table and stack
overhead the estimate does not count)."""


class Budget:
    """The deadline and the memory cap of one interpreter (``lua``, a lupa LuaRuntime)."""

    def __init__(self, lua: Any, script: str, timeout_ms: int, memory_mb: int) -> None:
        self.lua = lua
        self.timeout_ms = timeout_ms
        self.memory_mb = memory_mb
        self.limit = memory_mb * MIB
        self.timeout_message = f"pressured: script {script} exceeded timeout_ms={timeout_ms}"
        self._deadline: float | None = None

    # -- time ------------------------------------------------------------------------------
    @contextmanager
    def entry(self) -> Iterator[None]:
        """The time budget of one entry into Lua; nested entries keep the outer deadline."""
        outer = self._deadline
        if outer is None:
            self._deadline = time.monotonic() + self.timeout_ms / 1000
        try:
            yield
        finally:
            self._deadline = outer

    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def remaining(self) -> float:
        if self._deadline is None:
            return self.timeout_ms / 1000
        return self._deadline - time.monotonic()

    # -- memory ----------------------------------------------------------------------------
    def reserve(self, nbytes: int) -> None:
        """Let the interpreter take ``nbytes`` more than it uses now, whatever its cap."""
        used = self.lua.get_memory_used() or 0
        self.lua.set_max_memory(max(self.limit, used + nbytes + PUSH_SLACK))

    def settle(self) -> None:
        """Back to the script's own cap."""
        self.lua.set_max_memory(self.limit)

    def room(self) -> int:
        """Bytes the script may still allocate under its own cap."""
        used = self.lua.get_memory_used() or 0
        return max(0, self.limit - used)

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit under the cap, after a garbage collection if needed."""
        if nbytes <= self.room():
            return True
        self.lua.gccollect()
        return nbytes <= self.room()
