"""A child process that records every signal it gets, for the signal action's tests."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

CATCHER = textwrap.dedent(
    """
    import signal, sys
    out = sys.argv[1]
    wanted = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGWINCH}
    # blocked and taken with sigwaitinfo: recorded one at a time, in the kernel's order
    # (pending standard signals leave lowest number first), never interleaved by handlers
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    print("ready", flush=True)
    while True:
        info = signal.sigwaitinfo(wanted)
        with open(out, "a") as f:
            f.write(signal.Signals(info.si_signo).name + "\\n")
    """
)
"""Run as ``python -c CATCHER RECORD``: prints "ready", then appends each signal's name to
RECORD."""


@dataclass
class Catcher:
    """A child process that appends the name of every signal it gets to a file."""

    proc: subprocess.Popen[str]
    record: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def got(self) -> list[str]:
        return self.record.read_text().split() if self.record.exists() else []

    def settle(self, timeout: float = 10.0) -> list[str]:
        """Everything received so far. SIGWINCH is a barrier: sent after the action returned
        and numbered above the others, it is taken after any signal the action sent."""
        before = len(self.got())
        os.kill(self.pid, signal.SIGWINCH)
        deadline = time.monotonic() + timeout  # bounds a hang, asserts no speed
        while "SIGWINCH" not in self.got()[before:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for pid {self.pid} to see SIGWINCH")
            time.sleep(0.01)
        return [s for s in self.got() if s != "SIGWINCH"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
