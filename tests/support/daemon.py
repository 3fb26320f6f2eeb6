"""The one way tests and benches run `pressured run` as a subprocess.

`PressuredProcess` starts the daemon, drains its stdout and stderr on threads (a full pipe
would block the daemon), waits for its readiness line (`ready: ...`, logged once every
start-up target is armed and the kill sources are open) instead of a guessed sleep, and, when
something times out or a test fails, asks the daemon for every thread's stack (SIGQUIT:
faulthandler) so the output in CI says what it was doing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO

READY = r"ready: \d+ target\(s\) watched"


# A wrapper that stops itself (SIGSTOP) and execs its arguments once continued: the daemon's
# process exists (its start time is set at fork) but has done nothing yet
STOPPED_UNTIL_CONT = (
    sys.executable,
    "-c",
    "import os,signal,sys; os.kill(os.getpid(), signal.SIGSTOP); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until /proc says the process is stopped (state T)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            if f.read().rpartition(")")[2].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within {timeout:g}s")


class DaemonTimeout(AssertionError):
    """The daemon did not do what the test waited for; the message carries its log and stacks."""


class _Pump:
    """Collects one pipe's lines from a thread."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        stream.close()

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, rx: re.Pattern[str], timeout: float, start: int = 0) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for i in range(seen, len(self.lines)):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return None
                self._cond.wait(min(left, 0.5))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class PressuredProcess:
    """`python -m pressured ARGS` with both outputs drained; use as a context manager."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_level: str = "info",
        wrapper: Sequence[str] = (),
    ) -> None:
        """``wrapper``: a command that execs the rest of the line (see STOPPED_UNTIL_CONT)."""
        argv = [*wrapper, sys.executable, "-m", "pressured", *args]
        if "-l" not in args and "--log-level" not in args:
            argv += ["-l", log_level]
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = _Pump(self.proc.stdout, "daemon-stdout")
        self.stderr = _Pump(self.proc.stderr, "daemon-stderr")
        self._dumped = False

    # ------------------------------------------------------------------ waiting
    def wait_for_log(self, pattern: str, timeout: float = 30.0, *, start: int = 0) -> re.Match[str]:
        """The first stderr line from line ``start`` on matching ``pattern``; on timeout, or if
        the daemon exits first, DaemonTimeout with its log and its threads' stacks."""
        m = self.stderr.wait_for(re.compile(pattern), timeout, start)
        if m is None:
            raise DaemonTimeout(self.diagnosis(f"no log line matching {pattern!r} in {timeout:g}s"))
        return m

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_for_log(READY, timeout)

    def log_mark(self) -> int:
        """A position in the log: later waits can look only at lines after it."""
        return len(self.stderr.lines)

    # ------------------------------------------------------------------ diagnosis
    def dump_stacks(self, timeout: float = 10.0) -> str:
        """Every thread's stack into the daemon's stderr (kept with the rest of its log); the
        dump's text. faulthandler writes the main thread's stack down to its bottom frame,
        runpy's (the daemon runs as ``python -m pressured``): the dump is whole once that
        line is in."""
        if self.proc.poll() is not None or self._dumped:
            return ""
        self._dumped = True
        mark = self.log_mark()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGQUIT)
        self.stderr.wait_for(
            re.compile(r"File .*runpy.*, line \d+ in _run_module_as_main"), timeout, mark
        )
        return "".join(self.stderr.lines[mark:])

    def diagnosis(self, why: str) -> str:
        self.dump_stacks()
        code = self.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        return (
            f"{why}\ndaemon ({state}): {' '.join(self.argv)}\n"
            f"--- daemon stderr ---\n{self.stderr.text()}"
            f"--- daemon stdout (last 4000 chars) ---\n{self.stdout.text()[-4000:]}"
        )

    # ------------------------------------------------------------------ stopping
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; a daemon that does not stop is dumped, killed, and reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                msg = self.diagnosis(f"did not stop within {timeout:g}s of SIGTERM")
                self.proc.kill()
                self.proc.wait()
                raise DaemonTimeout(msg) from None
        self.stdout.join(10)
        self.stderr.join(10)
        return self.proc.returncode

    def __enter__(self) -> PressuredProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(DaemonTimeout):
                self.stop()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    log_level: str = "info",
) -> Iterator[PressuredProcess]:
    """A ready daemon for the block; on an exception in the block, its stacks and log are
    added to the failure so CI output alone says what it was doing."""
    d = PressuredProcess(args, env=env, log_level=log_level)
    try:
        d.wait_ready(ready_timeout)
        try:
            yield d
        except DaemonTimeout:
            raise
        except BaseException as exc:
            report = d.diagnosis(f"the test failed while the daemon ran: {exc!r}")
            sys.stderr.write(report + "\n")
            raise
    finally:
        d.__exit__()


def environ(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    return env
