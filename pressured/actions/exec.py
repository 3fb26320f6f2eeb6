"""exec: run a command with the event JSON on stdin and PRESSURED_* variables, with a timeout.

The command runs in its own session so that a timeout kills everything it started (a shell's
children included), not only the first process. The timeout is a deadline for the whole run:
writing the event, reading the output and waiting for the exit. What the command writes is
read as it comes and only the first OUTPUT_CAP bytes of stdout and the last OUTPUT_CAP bytes of
stderr are kept (the rest is counted and dropped), so a chatty or hostile command costs the
daemon a bounded amount of memory and time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, cast

from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError, quote
from pressured.model import Event

log = logging.getLogger("pressured.actions.exec")

STDERR_TAIL = 200
MAX_TIMEOUT_MS = 600_000
"""Ten minutes: actions run one after another, so a longer hook holds back every later one."""
OUTPUT_CAP = 64 * 1024
"""Bytes kept of each of stdout (the first ones) and stderr (the last ones)."""
READ_CHUNK = 64 * 1024
KILL_GRACE = 5.0
"""Seconds to wait for a killed command to be reaped before leaving it to a reaper thread."""


@dataclass
class Captured:
    """One output stream of a command: at most ``cap`` bytes kept, every byte counted."""

    cap: int = OUTPUT_CAP
    keep: Literal["head", "tail"] = "head"
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.keep == "head":
            room = self.cap - len(self.data)
            if room > 0:
                self.data += chunk[:room]
        else:
            self.data += chunk[-self.cap :]
            if len(self.data) > self.cap:
                del self.data[: len(self.data) - self.cap]

    @property
    def dropped(self) -> int:
        """Bytes the command wrote that were not kept."""
        return self.total - len(self.data)

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass
class Completed:
    """How a command ended. ``returncode`` is None when it was killed at the deadline."""

    returncode: int | None
    stdout: Captured
    stderr: Captured
    elapsed: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def truncation(self) -> str:
        """' (output truncated: ...)' when bytes were dropped, else ''."""
        which = {"head": "first", "tail": "last"}
        parts = [
            f"{name} was {c.total} bytes, kept the {which[c.keep]} {len(c.data)}"
            for name, c in (("stdout", self.stdout), ("stderr", self.stderr))
            if c.dropped
        ]
        return f" (output truncated: {'; '.join(parts)})" if parts else ""


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


def run_command(
    argv: Sequence[str],
    stdin: bytes,
    env: Mapping[str, str] | None,
    timeout: float,
    *,
    cap: int = OUTPUT_CAP,
) -> Completed:
    """Run ``argv`` in a new session with ``stdin`` on its standard input, reading stdout and
    stderr as they come (at most ``cap`` bytes of each kept). ``timeout`` seconds after the
    start the whole session is killed, whatever the command is doing. Raises OSError when the
    command cannot be started."""
    start = time.monotonic()
    deadline = start + timeout
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    # all three are pipes (PIPE above), never None
    pipe_in, pipe_out, pipe_err = (
        cast("IO[bytes]", p) for p in (proc.stdin, proc.stdout, proc.stderr)
    )
    out, err = Captured(cap, "head"), Captured(cap, "tail")
    streams = {pipe_out.fileno(): out, pipe_err.fileno(): err}
    to_write = memoryview(stdin)
    in_fd = pipe_in.fileno()
    returncode: int | None = None
    timed_out = False
    with selectors.DefaultSelector() as sel:
        try:
            for fd in streams:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            if to_write:
                os.set_blocking(in_fd, False)
                sel.register(in_fd, selectors.EVENT_WRITE)
            else:
                pipe_in.close()
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True  # even when only something it started holds a pipe
                    break
                for key, _ in sel.select(left):
                    if key.fd == in_fd:
                        try:
                            to_write = to_write[os.write(in_fd, to_write) :]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            to_write = to_write[:0]  # the command does not want the event
                        if not to_write:
                            sel.unregister(in_fd)
                            pipe_in.close()
                        continue
                    try:
                        chunk = os.read(key.fd, READ_CHUNK)
                    except BlockingIOError:
                        continue
                    if chunk:
                        streams[key.fd].add(chunk)
                    else:
                        sel.unregister(key.fd)
            if not timed_out:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for pipe in (pipe_in, pipe_out, pipe_err):
                with contextlib.suppress(OSError):
                    pipe.close()
            if returncode is None:
                _kill(proc)
    return Completed(returncode, out, err, time.monotonic() - start)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command's whole session and reap it, without waiting on it for long."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        # stuck in the kernel (uninterruptible sleep): reap it whenever it goes
        log.warning("exec %s (pid %d): still not gone after SIGKILL", proc.args, proc.pid)
        threading.Thread(target=proc.wait, name=f"pressured-reap-{proc.pid}", daemon=True).start()


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
                raise ConfigError(f"{where}.command: cannot split {quote(command)}: {exc}") from exc
        else:
            if not all(isinstance(c, str | int | float) for c in command):
                raise ConfigError(
                    f"{where}.command: expected a list of words, got {quote(command)}"
                )
            self.argv = [str(c) for c in command]
        if not self.argv or not self.argv[0]:
            raise ConfigError(f"{where}.command: must not be empty, got {quote(command)}")
        timeout_ms = self.opt("timeout_ms", int, 10_000)
        if timeout_ms <= 0:
            raise ConfigError(f"{where}.timeout_ms: must be positive, got {quote(timeout_ms)}")
        self.at_most("timeout_ms", timeout_ms, MAX_TIMEOUT_MS)
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
            done = run_command(self.argv, json.dumps(doc).encode(), env, self.timeout)
        except OSError as exc:
            raise ActionError(f"exec {name}: cannot run: {exc.strerror}") from exc
        truncated = done.truncation()
        if done.returncode is None:
            raise ActionError(f"exec {name}: killed after timeout {self.timeout:g}s{truncated}")
        if done.returncode != 0:
            lines = done.stderr.text().strip().splitlines()
            tail = lines[-1][:STDERR_TAIL] if lines else "(no stderr)"
            status = _status(done.returncode)
            raise ActionError(f"exec {name}: {status}: {tail}{truncated}")
        if truncated:
            log.warning("exec %s for %s %s%s", name, event.severity, event.cgroup, truncated)
        log.debug(
            "exec %s done for %s %s in %.3fs", name, event.severity, event.cgroup, done.elapsed
        )
